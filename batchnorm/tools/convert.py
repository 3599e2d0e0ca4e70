"""Conversion between ``torch.nn`` batch norm and ours, and Keras weights in and out.

:func:`convert` swaps every BN layer of a model between ``torch.nn.BatchNorm1d/2d/3d`` and
:class:`batchnorm.BatchNorm1d/2d/3d` (the state_dict keys are the same), keeping device,
dtype, training flag, ``requires_grad`` and state, so outputs are identical up to the
rounding of the two implementations. Keras's ``BatchNormalization`` weights are translated by
:func:`batchnorm.from_keras` / :func:`batchnorm.to_keras` (``batchnorm.tools.keras``).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..core.collectives import is_distributed
from ..nn.batchnorm import BatchNorm, BatchNorm1d, BatchNorm2d, BatchNorm3d, torch_equivalent
from .surgery import replace_modules

__all__ = ["convert"]

_TO_OURS: dict[type, type] = {
    nn.BatchNorm1d: BatchNorm1d,
    nn.BatchNorm2d: BatchNorm2d,
    nn.BatchNorm3d: BatchNorm3d,
}
_TO_TORCH: dict[type, type] = {v: k for k, v in _TO_OURS.items()}


def _like(m: nn.Module) -> dict[str, Any]:
    """device and dtype of a module's floating state (parameters first)."""
    for t in (*m.parameters(recurse=False), *m.buffers(recurse=False)):
        if t.is_floating_point():
            return {"device": t.device, "dtype": t.dtype}
    return {}


def _copy_state(old: nn.Module, new: nn.Module) -> nn.Module:
    new.load_state_dict(old.state_dict())
    for name in ("weight", "bias"):
        p = getattr(old, name, None)
        if p is not None:
            getattr(new, name).requires_grad_(p.requires_grad)
    return new


def _to_ours(name: str, m: nn.Module) -> nn.Module | None:
    cls = _TO_OURS.get(type(m))
    if cls is None and type(m) is nn.SyncBatchNorm:
        if is_distributed():
            raise ValueError(
                f"{name or 'the model'} is a torch.nn.SyncBatchNorm in a running process group of "
                f"{torch.distributed.get_world_size()}: converting it to a per-process BN would silently "
                "drop the synchronization; convert before init_process_group, or keep it"
            )
        cls = BatchNorm  # one process: SyncBatchNorm is plain BN over axis 1, of any rank
    if cls is None:
        return None
    try:
        new = cls(m.num_features, m.eps, m.momentum, m.affine, m.track_running_stats, **_like(m))
    except ValueError as e:
        raise ValueError(f"cannot convert {name or 'the model'} ({type(m).__name__}): {e}") from e
    return _copy_state(m, new)


def _to_torch(name: str, m: nn.Module) -> nn.Module | None:
    if not isinstance(m, BatchNorm):
        return None
    where = f"{name or 'the model'} ({type(m).__name__})"
    if type(m) not in _TO_TORCH:
        raise ValueError(
            f"{where} has no torch.nn equivalent: torch.nn has only BatchNorm1d/2d/3d with channels on "
            f"axis 1 (this layer: axis={m.axis}); use batchnorm.BatchNorm1d/2d/3d, or keep our layer"
        )
    return torch_equivalent(m, purpose=f"convert(to='torch') of {where}", share=False)


def convert(model: nn.Module, to: str = "batchnorm") -> nn.Module:
    """Swap every batch-norm layer between ``torch.nn`` and ``batchnorm``.

    ``to="batchnorm"``: ``torch.nn.BatchNorm1d/2d/3d`` become ours of the same rank, and a
    ``torch.nn.SyncBatchNorm`` outside a running process group becomes
    :class:`batchnorm.BatchNorm` (axis 1, any rank: one process has nothing to sync).
    ``to="torch"``: our ``BatchNorm1d/2d/3d`` become torch's. Layers already of the target
    kind, subclasses of torch's layers (``LazyBatchNorm*``) and other modules are left alone.

    The model is changed in place and returned (a new module only if ``model`` itself is a
    BN layer). Each new layer takes the old one's eps, momentum, affine,
    track_running_stats, device, dtype, training flag, ``requires_grad`` and its
    ``state_dict`` (``weight``, ``bias``, ``running_mean``, ``running_var``,
    ``num_batches_tracked``); hooks registered on the old layer are not carried over.

    Args:
        model: the model.
        to: ``"batchnorm"`` or ``"torch"``.

    Returns:
        The converted model.

    Raises:
        ValueError: an unknown ``to``; a ``SyncBatchNorm`` inside a running process group;
            a torch layer with ``eps=0`` (ours needs eps > 0); one of our layers that torch
            cannot express (axis other than 1 or no fixed rank, ``stats_mode`` set,
            ``store_unbiased=False``, beta without gamma, a small-batch policy):
            ``batchnorm.nn.batchnorm.torch_equivalent`` says which.

    Example:
        >>> model = convert(torchvision_model, to="batchnorm")
    """
    if to == "batchnorm":
        return replace_modules(model, _to_ours)
    if to == "torch":
        return replace_modules(model, _to_torch)
    raise ValueError(f"to must be 'batchnorm' or 'torch', got {to!r}")
