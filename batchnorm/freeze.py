"""Frozen batch norm and a per-layer statistics policy that survives ``model.train()``.

Fine-tuning with small batches, or a backbone whose statistics must not move, needs batch
norm that uses its stored statistics whatever ``model.train()`` says. Two tools:

- :class:`FrozenBatchNorm` (and ``1d/2d/3d``): gamma, beta and the statistics are buffers,
  never trained, never updated; the layer is the fixed map of eq. 23-24
  ``y = (x - running_mean) / sqrt(running_var + eps) * weight + bias``, and gradients still
  flow to its input. :func:`freeze` / :func:`unfreeze` swap them in and out.
- :func:`set_stats_mode`: a per-layer policy on :class:`batchnorm.BatchNorm` layers,
  ``"batch"`` (always batch statistics; running ones updated in training), ``"running"``
  (always running statistics, never updated; gamma and beta still train) or ``"frozen"``
  (``"running"`` and gamma, beta with ``requires_grad=False``). ``None`` restores torch's
  behaviour (follow ``self.training``).

The common fine-tuning bug, ``requires_grad_(False)`` on a BN layer left in training mode so
that its running statistics keep drifting, raises :class:`FrozenStatisticsWarning` (once per
layer, from the forward of our layers; :func:`check_frozen` finds it in any model, torch.nn
layers included).
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from . import functional as F
from ._surgery import replace_modules
from .modules import BatchNorm, BatchNorm1d, BatchNorm2d, BatchNorm3d

__all__ = [
    "FrozenBatchNorm",
    "FrozenBatchNorm1d",
    "FrozenBatchNorm2d",
    "FrozenBatchNorm3d",
    "FrozenStatisticsWarning",
    "freeze",
    "unfreeze",
    "set_stats_mode",
    "check_frozen",
    "STATS_MODES",
]

STATS_MODES = (None, "batch", "running", "frozen")


class FrozenStatisticsWarning(UserWarning):
    """A BN layer's gamma/beta are frozen but its running statistics still update in training."""


def warn_frozen_params_updating(bn: nn.Module, name: str = "") -> None:
    """Emit :class:`FrozenStatisticsWarning` for ``bn`` (called once per layer)."""
    where = f" {name!r}" if name else ""
    warnings.warn(
        f"{type(bn).__name__}{where} has weight/bias with requires_grad=False but is in training "
        "mode, so its running statistics still update on every batch (the common fine-tuning "
        "bug). Freeze it completely with batchnorm.freeze(model) or "
        "batchnorm.set_stats_mode(layer, 'frozen'), or call layer.eval() after model.train()",
        FrozenStatisticsWarning,
        stacklevel=4,
    )


# --------------------------------------------------------------------------- FrozenBatchNorm


class FrozenBatchNorm(nn.Module):
    """Batch norm with fixed statistics and fixed gamma, beta: buffers only.

    ``y = (x - running_mean) / sqrt(running_var + eps) * weight + bias``   (eq. 23-24)

    in training and evaluation alike: nothing is learned or updated, and ``model.train()``
    changes nothing. The gradient with respect to the input flows as through eval BN.
    The state_dict keys are torch's (``weight``, ``bias``, ``running_mean``, ``running_var``);
    a ``num_batches_tracked`` entry is ignored on load, and a state dict without
    ``weight``/``bias`` (an ``affine=False`` layer) loads as gamma = 1, beta = 0.

    Args:
        num_features: number of channels C.
        eps: added to the variance inside the square root; > 0.
        axis: keyword-only, the channel axis.
        device, dtype: keyword-only, of the buffers.

    Example:
        >>> frozen = FrozenBatchNorm2d.from_bn(torch.nn.BatchNorm2d(8).eval())
    """

    _ranks: tuple[int, ...] = ()

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        *,
        axis: int = 1,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(num_features, int) or num_features < 1:
            raise ValueError(f"num_features must be a positive int, got {num_features!r}")
        if not eps > 0:
            raise ValueError(f"eps must be > 0, got {eps}; PyTorch's default is 1e-5, Keras's 1e-3")
        self.num_features, self.eps, self.axis = num_features, eps, axis
        kw: dict[str, Any] = {"device": device, "dtype": dtype}
        self.register_buffer("weight", torch.ones(num_features, **kw))
        self.register_buffer("bias", torch.zeros(num_features, **kw))
        self.register_buffer("running_mean", torch.zeros(num_features, **kw))
        self.register_buffer("running_var", torch.ones(num_features, **kw))

    @classmethod
    def from_bn(cls, bn: nn.Module) -> FrozenBatchNorm:
        """A frozen copy of a trained BN layer (ours or torch.nn), same device and dtypes.

        Raises:
            ValueError: the layer has no running statistics (``track_running_stats=False``),
                or uses ``eps <= 0``.
        """
        if getattr(bn, "activation", None) not in (None, "identity"):
            raise ValueError(
                f"cannot freeze {type(bn).__name__}: it applies an activation ({bn.activation}) after "
                "normalizing, which a FrozenBatchNorm would drop; freeze it with "
                "set_stats_mode(layer, 'frozen') on a plain BatchNorm followed by the activation"
            )
        if getattr(bn, "running_mean", None) is None or getattr(bn, "running_var", None) is None:
            raise ValueError(
                f"cannot freeze {type(bn).__name__}: it has no running statistics "
                "(track_running_stats=False), so there is nothing to freeze; compute them first "
                "(batchnorm.recompute_statistics) on a layer that tracks them"
            )
        axis = getattr(bn, "axis", 1)
        if cls is FrozenBatchNorm:
            cls = _FROZEN_BY_RANK.get(type(bn), FrozenBatchNorm)
        kw: dict[str, Any] = {} if cls._ranks else {"axis": axis}
        new = cls(
            bn.num_features,
            bn.eps,
            device=bn.running_mean.device,
            dtype=bn.running_mean.dtype,
            **kw,
        )
        with torch.no_grad():
            new.running_mean.copy_(bn.running_mean)
            new.running_var.copy_(bn.running_var)
            w, b = getattr(bn, "weight", None), getattr(bn, "bias", None)
            new.weight = w.detach().clone() if w is not None else torch.ones_like(new.running_mean)
            new.bias = b.detach().clone() if b is not None else torch.zeros_like(new.running_mean)
        return new

    def _load_from_state_dict(
        self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
    ):
        # A torch / batchnorm BN state dict carries num_batches_tracked; an affine=False one
        # has no weight/bias (identity gamma, beta).
        state_dict.pop(prefix + "num_batches_tracked", None)
        if prefix + "running_mean" in state_dict:
            for key, fill in (("weight", 1.0), ("bias", 0.0)):
                if prefix + key not in state_dict:
                    state_dict[prefix + key] = torch.full_like(
                        state_dict[prefix + "running_mean"], fill
                    )
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )

    def _check_input_dim(self, input: Tensor) -> None:
        if self._ranks and input.dim() not in self._ranks:
            want = " or ".join(f"{r}D" for r in self._ranks)
            raise ValueError(
                f"{type(self).__name__} expects {want} input, got shape {tuple(input.shape)}; use "
                "the FrozenBatchNorm of the matching rank, or FrozenBatchNorm(C, axis=...) for any rank"
            )

    def forward(self, input: Tensor) -> Tensor:
        self._check_input_dim(input)
        return F.batch_norm(
            input,
            self.running_mean,
            self.running_var,
            self.weight,
            self.bias,
            False,
            0.0,
            self.eps,
            axis=self.axis,
        )

    def extra_repr(self) -> str:
        s = f"{self.num_features}, eps={self.eps}"
        return s + (f", axis={self.axis}" if self.axis != 1 else "")


class FrozenBatchNorm1d(FrozenBatchNorm):
    """:class:`FrozenBatchNorm` for (N, C) or (N, C, L) input."""

    _ranks = (2, 3)


class FrozenBatchNorm2d(FrozenBatchNorm):
    """:class:`FrozenBatchNorm` for (N, C, H, W) input."""

    _ranks = (4,)


class FrozenBatchNorm3d(FrozenBatchNorm):
    """:class:`FrozenBatchNorm` for (N, C, D, H, W) input."""

    _ranks = (5,)


_FROZEN_BY_RANK: dict[type, type[FrozenBatchNorm]] = {
    nn.BatchNorm1d: FrozenBatchNorm1d,
    nn.BatchNorm2d: FrozenBatchNorm2d,
    nn.BatchNorm3d: FrozenBatchNorm3d,
    BatchNorm1d: FrozenBatchNorm1d,
    BatchNorm2d: FrozenBatchNorm2d,
    BatchNorm3d: FrozenBatchNorm3d,
}
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
        if not isinstance(m, _BatchNorm) or not (m.training and m.track_running_stats):
            continue
        if getattr(m, "stats_mode", None) not in (None, "batch"):
            continue
        params = [p for p in (m.weight, m.bias) if p is not None]
        if params and not any(p.requires_grad for p in params):
            found.append(name)
            if warn:
                warn_frozen_params_updating(m, name)
    return found
