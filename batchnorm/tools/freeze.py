"""Freezing a model's batch norm, and a per-layer statistics policy that survives ``model.train()``.

Fine-tuning with small batches, or a backbone whose statistics must not move, needs batch
norm that uses its stored statistics whatever ``model.train()`` says. Two tools:

- :func:`freeze` / :func:`unfreeze` swap every BN layer for a buffers-only
  :class:`batchnorm.FrozenBatchNorm` (the fixed map of eq. 23-24) and back.
- :func:`set_stats_mode`: a per-layer policy on :class:`batchnorm.BatchNorm` layers,
  ``"batch"`` (always batch statistics; running ones updated in training), ``"running"``
  (always running statistics, never updated; gamma and beta still train) or ``"frozen"``
  (``"running"`` and gamma, beta with ``requires_grad=False``). ``None`` restores torch's
  behaviour (follow ``self.training``).

The common fine-tuning bug, ``requires_grad_(False)`` on a BN layer left in training mode so
that its running statistics keep drifting, raises :class:`batchnorm.FrozenStatisticsWarning`
(once per layer, from the forward of our layers; :func:`check_frozen` finds it in any model,
torch.nn layers included). The rule itself is ``batchnorm.nn.batchnorm.frozen_params_updating``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from ..nn.batchnorm import (
    BatchNorm,
    BatchNorm1d,
    BatchNorm2d,
    BatchNorm3d,
    frozen_params_updating,
    warn_frozen_params_updating,
)
from ..nn.frozen import FrozenBatchNorm, FrozenBatchNorm1d, FrozenBatchNorm2d, FrozenBatchNorm3d
from .surgery import replace_modules

__all__ = ["STATS_MODES", "check_frozen", "freeze", "set_stats_mode", "unfreeze"]

STATS_MODES = (None, "batch", "running", "frozen")


_TRAINABLE_BY_FROZEN: dict[type, tuple[type, type]] = {
    FrozenBatchNorm1d: (BatchNorm1d, nn.BatchNorm1d),
    FrozenBatchNorm2d: (BatchNorm2d, nn.BatchNorm2d),
    FrozenBatchNorm3d: (BatchNorm3d, nn.BatchNorm3d),
}


# --------------------------------------------------------------------------- model-wide


def freeze(model: nn.Module) -> nn.Module:
    """Replace every BN layer (ours, ``torch.nn.BatchNorm*d``, ``SyncBatchNorm``) by a frozen copy.

    In place: the model is changed and returned (a new module only if ``model`` itself is a
    BN layer). Each frozen layer keeps its statistics, gamma, beta, eps, device and dtype.

    Raises:
        ValueError: a BN layer has no running statistics.
    """
    return replace_modules(
        model, lambda _n, m: FrozenBatchNorm.from_bn(m) if isinstance(m, _BatchNorm) else None
    )


def unfreeze(model: nn.Module, to: str = "batchnorm", momentum: float | None = 0.1) -> nn.Module:
    """Replace every :class:`FrozenBatchNorm` by a trainable BN layer with the same state.

    In place, as :func:`freeze`. gamma and beta become parameters (``requires_grad=True``);
    the statistics keep their values and resume updating in training with ``momentum``
    (a frozen layer does not remember the momentum it was trained with).

    Args:
        model: the model.
        to: ``"batchnorm"`` for our layers, ``"torch"`` for ``torch.nn.BatchNorm*d``.
        momentum: the momentum of the new layers (PyTorch convention).

    Raises:
        ValueError: an unknown ``to``, or ``to="torch"`` for a rank-free ``FrozenBatchNorm``
            whose axis is not 1 (torch.nn has no channels-last BN).
    """
    if to not in ("batchnorm", "torch"):
        raise ValueError(f"to must be 'batchnorm' or 'torch', got {to!r}")

    def swap(name: str, m: nn.Module) -> nn.Module | None:
        if not isinstance(m, FrozenBatchNorm):
            return None
        ours, theirs = _TRAINABLE_BY_FROZEN.get(type(m), (BatchNorm, None))
        kw: dict[str, Any] = {"device": m.running_mean.device, "dtype": m.running_mean.dtype}
        if to == "torch":
            if theirs is None:
                raise ValueError(
                    f"{name or 'the model'} is a rank-free FrozenBatchNorm (axis={m.axis}); torch.nn "
                    "has no such layer: use to='batchnorm', or FrozenBatchNorm1d/2d/3d"
                )
            new = theirs(m.num_features, m.eps, momentum, **kw)
        elif ours is BatchNorm:
            new = BatchNorm(m.num_features, m.eps, momentum, axis=m.axis, **kw)
        else:
            new = ours(m.num_features, m.eps, momentum, **kw)
        with torch.no_grad():
            for key in ("weight", "bias", "running_mean", "running_var"):
                getattr(new, key).copy_(getattr(m, key))
        return new

    return replace_modules(model, swap)


def set_stats_mode(model: nn.Module, mode: str | None) -> nn.Module:
    """Set the statistics policy of every :class:`batchnorm.BatchNorm` layer in ``model``.

    ====================  ===========================  =====================  =============
    mode                  normalizes with              running statistics     gamma, beta
    ====================  ===========================  =====================  =============
    ``None`` (default)    batch in train, running      updated in train       as set
                          in eval (torch.nn)
    ``"batch"``           batch, in train and eval     updated in train       as set
    ``"running"``         running, in train and eval   never updated          as set
    ``"frozen"``          running, in train and eval   never updated          requires_grad
                                                                              False
    ====================  ===========================  =====================  =============

    The policy is an attribute of each layer, so ``model.train()`` / ``model.eval()`` leave
    it alone; it is kept by ``copy.deepcopy`` but not by ``state_dict``. Leaving
    ``"frozen"`` sets ``requires_grad=True`` on gamma and beta again. ``model`` may be one
    layer. Returns ``model``, changed in place.

    Raises:
        ValueError: an unknown mode.
        TypeError: the model holds ``torch.nn`` BN layers (they have no policy): convert
            them first with ``batchnorm.convert(model, to="batchnorm")``.
    """
    if mode not in STATS_MODES:
        raise ValueError(f"mode must be one of {STATS_MODES}, got {mode!r}")
    foreign = [
        n or type(m).__name__
        for n, m in model.named_modules()
        if isinstance(m, _BatchNorm) and not isinstance(m, BatchNorm)
    ]
    if foreign:
        raise TypeError(
            f"set_stats_mode needs batchnorm's layers, but {foreign} are torch.nn BN layers; "
            "convert them first: model = batchnorm.convert(model, to='batchnorm')"
        )
    custom = [
        n or type(m).__name__
        for n, m in model.named_modules()
        if isinstance(m, BatchNorm) and type(m).forward is not BatchNorm.forward
    ]
    if custom and mode is not None:
        raise TypeError(
            f"set_stats_mode: {custom} override BatchNorm.forward (ghost, renorm, fused activation), "
            "which does not follow the statistics policy in training; freeze them with "
            "batchnorm.freeze, or set the policy on plain batchnorm.BatchNorm layers only"
        )
    for m in model.modules():
        if isinstance(m, BatchNorm):
            was_frozen = m.stats_mode == "frozen"
            m.stats_mode = mode
            for p in (m.weight, m.bias):
                if p is not None and (mode == "frozen" or was_frozen):
                    p.requires_grad_(mode != "frozen")
    return model


def check_frozen(model: nn.Module, warn: bool = True) -> list[str]:
    """Names of BN layers whose gamma/beta are frozen while their statistics still update.

    Such a layer (ours or torch.nn) is in training mode, tracks running statistics, has
    no statistics policy that stops updates, and all of its affine parameters have
    ``requires_grad=False``: every training batch moves its statistics although the user
    meant to freeze it.

    Args:
        model: the model, as it will be trained (call after ``model.train()``).
        warn: also emit one :class:`FrozenStatisticsWarning` per such layer.

    Returns:
        The layers' qualified names ("" for the model itself).
    """
    found = []
    for name, m in model.named_modules():
        if isinstance(m, _BatchNorm) and frozen_params_updating(m):
            found.append(name)
            if warn:
                warn_frozen_params_updating(m, name, stacklevel=3)
    return found
