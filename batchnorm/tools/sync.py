"""Model surgery for synchronized batch norm: every BN layer to :class:`SyncBatchNorm` and back.

:func:`convert_sync_batchnorm` and :func:`revert_sync_batchnorm` swap the layers of a model in
place of the old ones, sharing their parameters and buffers (values, device, dtype,
``requires_grad``, optimizer references).
"""

from __future__ import annotations

import torch.distributed as dist
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from ..nn.batchnorm import BatchNorm, BatchNorm1d, BatchNorm2d, BatchNorm3d
from ..nn.sync import SyncBatchNorm
from .surgery import replace_modules

__all__ = ["convert_sync_batchnorm", "revert_sync_batchnorm"]


# The local classes a SyncBatchNorm may come from and go back to, exactly (a subclass may
# change the behaviour, e.g. a frozen or ghost variant, and is left alone).
_LOCAL_TYPES: tuple[type, ...] = (
    nn.BatchNorm1d,
    nn.BatchNorm2d,
    nn.BatchNorm3d,
    BatchNorm,
    BatchNorm1d,
    BatchNorm2d,
    BatchNorm3d,
)


def _swap(old: _BatchNorm, new: _BatchNorm) -> _BatchNorm:
    """Give ``new`` the parameters, buffers and training flag of ``old`` (shared, not copied).

    Sharing the very tensors keeps their values, device, dtype and ``requires_grad``, and
    keeps an optimizer built on the old parameters working.
    """
    new.weight, new.bias = old.weight, old.bias
    new.running_mean, new.running_var = old.running_mean, old.running_var
    new.num_batches_tracked = old.num_batches_tracked
    if isinstance(old, BatchNorm):
        new.skipped_updates = old.skipped_updates
    new.train(old.training)
    if "stats_mode" in vars(old):  # a per-layer statistics policy (batchnorm.freeze)
        new.stats_mode = old.stats_mode
    if hasattr(old, "qconfig"):
        new.qconfig = old.qconfig
    return new


def _hyper(module: _BatchNorm) -> dict:
    """Constructor arguments of a BatchNorm-like module, for our classes."""
    kwargs = dict(
        num_features=module.num_features,
        eps=module.eps,
        momentum=module.momentum,
        affine=module.affine,
        track_running_stats=module.track_running_stats,
        axis=getattr(module, "axis", 1),
        store_unbiased=getattr(module, "store_unbiased", True),
        small_batch=getattr(module, "small_batch", "raise"),
    )
    if module.affine:
        kwargs.update(center=module.bias is not None, scale=module.weight is not None)
    # Allocate the (soon replaced) tensors where the old ones are, with their dtype.
    ref = next((t for t in (module.weight, module.running_mean) if t is not None), None)
    if ref is not None:
        kwargs.update(device=ref.device, dtype=ref.dtype)
    return kwargs


def convert_sync_batchnorm(
    module: nn.Module, process_group: dist.ProcessGroup | None = None
) -> nn.Module:
    """Replace every batch-norm layer of ``module`` by a :class:`SyncBatchNorm`.

    Converted: ``torch.nn.BatchNorm1d/2d/3d``, ``torch.nn.SyncBatchNorm`` and this package's
    ``BatchNorm``, ``BatchNorm1d/2d/3d`` (exactly these types; other subclasses, such as
    frozen or ghost variants, are left as they are). The new layer shares the old one's
    parameters and buffers (values, device, dtype, ``requires_grad``, optimizer references)
    and takes its training flag, channel axis and conventions; ``SyncBatchNorm`` layers
    already there are kept. :func:`revert_sync_batchnorm` undoes it.

    Args:
        module: a model, or a single batch-norm layer.
        process_group: the group to synchronize over (None: the default world group).

    Returns:
        ``module``, changed in place, or the new layer if ``module`` itself is one.

    Example:
        >>> model = convert_sync_batchnorm(model)       # before wrapping it in DDP
    """

    def convert(name: str, m: nn.Module) -> nn.Module | None:
        if isinstance(m, _BatchNorm) and (type(m) in _LOCAL_TYPES or type(m) is nn.SyncBatchNorm):
            group = (
                process_group if process_group is not None else getattr(m, "process_group", None)
            )
            sync = SyncBatchNorm(**_hyper(m), process_group=group)
            _swap(m, sync)
            sync.label = name or type(m).__name__  # what its errors call it
            # Remember the class to go back to (torch's SyncBatchNorm reverts to our BatchNorm).
            sync._local_type = type(m) if type(m) in _LOCAL_TYPES else BatchNorm  # type: ignore[assignment]
            return sync
        return None

    return replace_modules(module, convert)


def revert_sync_batchnorm(module: nn.Module) -> nn.Module:
    """Replace every :class:`SyncBatchNorm` (ours or torch's) of ``module`` by a local layer.

    A layer made by :func:`convert_sync_batchnorm` goes back to the class it came from;
    others become :class:`~batchnorm.BatchNorm` (any rank, same axis). Parameters and
    buffers are shared as in :func:`convert_sync_batchnorm`. Useful to evaluate or export a
    model trained with synchronized statistics in a single process.

    Args:
        module: a model, or a single layer.

    Returns:
        ``module``, changed in place, or the new layer if ``module`` itself is one.
    """

    def revert(name: str, m: nn.Module) -> nn.Module | None:
        if not isinstance(m, (SyncBatchNorm, nn.SyncBatchNorm)):
            return None
        cls = getattr(m, "_local_type", BatchNorm)
        kwargs = _hyper(m)
        fixed = {k: v for k, v in kwargs.items() if k in _FIXED_ARGS}
        # The fixed-rank classes have channels on axis 1 and both or neither of gamma, beta;
        # torch's also only store the unbiased variance, raise on one value per channel and
        # know no statistics policy. What they cannot express goes to the general class.
        expressible = kwargs["axis"] == 1 and kwargs.get("center", True) == kwargs.get(
            "scale", True
        )
        if cls is not BatchNorm and issubclass(cls, BatchNorm) and expressible:
            local = cls(**fixed, small_batch=kwargs["small_batch"])
            local.store_unbiased = kwargs["store_unbiased"]
        elif (
            not issubclass(cls, BatchNorm)
            and expressible
            and kwargs["store_unbiased"]
            and kwargs["small_batch"] == "raise"
            and "stats_mode" not in vars(m)
        ):
            local = cls(**fixed)
        else:
            local = BatchNorm(**kwargs)
        return _swap(m, local)

    return replace_modules(module, revert)


_FIXED_ARGS = (
    "num_features",
    "eps",
    "momentum",
    "affine",
    "track_running_stats",
    "device",
    "dtype",
)
