"""Frozen batch norm: gamma, beta and the statistics as buffers, the fixed map of eq. 23-24.

:class:`FrozenBatchNorm` (and ``1d/2d/3d``) never trains and never updates: the layer is
``y = (x - running_mean) / sqrt(running_var + eps) * weight + bias`` whatever
``model.train()`` says, and gradients still flow to its input. ``batchnorm.freeze`` /
``batchnorm.unfreeze`` swap such layers in and out of a model.
"""

from __future__ import annotations

from typing import Any, cast

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from ..core import functional as F
from ..core import validate
from .batchnorm import (
    BatchNorm1d,
    BatchNorm2d,
    BatchNorm3d,
    Rank1d,
    Rank2d,
    Rank3d,
    _RankMixin,
    refuse_unusable_statistics,
)

__all__ = ["FrozenBatchNorm", "FrozenBatchNorm1d", "FrozenBatchNorm2d", "FrozenBatchNorm3d"]


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

    weight: Tensor
    bias: Tensor
    running_mean: Tensor
    running_var: Tensor

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
        validate.check_num_features(num_features)
        validate.check_eps(eps)
        self.num_features, self.eps, self.axis = num_features, eps, axis
        kw: dict[str, Any] = {"device": device, "dtype": dtype}
        self.register_buffer("weight", torch.ones(num_features, **kw))
        self.register_buffer("bias", torch.zeros(num_features, **kw))
        self.register_buffer("running_mean", torch.zeros(num_features, **kw))
        self.register_buffer("running_var", torch.ones(num_features, **kw))

    @classmethod
    def from_bn(cls, bn: nn.Module) -> FrozenBatchNorm:
        bn = cast(_BatchNorm, bn)  # any BN-like layer: the checks below say what it needs
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
        running_mean, running_var = bn.running_mean, bn.running_var
        if running_mean is None or running_var is None:
            raise ValueError(
                f"cannot freeze {type(bn).__name__}: it has no running statistics "
                "(track_running_stats=False), so there is nothing to freeze; compute them first "
                "(batchnorm.recompute_statistics) on a layer that tracks them"
            )
        axis = getattr(bn, "axis", 1)
        if cls is FrozenBatchNorm:
            cls = _FROZEN_BY_RANK.get(type(bn), FrozenBatchNorm)
        kw: dict[str, Any] = {} if issubclass(cls, _RankMixin) else {"axis": axis}
        new = cls(
            bn.num_features,
            bn.eps,
            device=running_mean.device,
            dtype=running_mean.dtype,
            **kw,
        )
        with torch.no_grad():
            new.running_mean.copy_(running_mean)
            new.running_var.copy_(running_var)
            w, b = getattr(bn, "weight", None), getattr(bn, "bias", None)
            new.weight = w.detach().clone() if w is not None else torch.ones_like(new.running_mean)
            new.bias = b.detach().clone() if b is not None else torch.zeros_like(new.running_mean)
        return new

    def _load_from_state_dict(
        self,
        state_dict: dict[str, Any],
        prefix: str,
        local_metadata: dict[str, Any],
        strict: bool,
        missing_keys: list[str],
        unexpected_keys: list[str],
        error_msgs: list[str],
    ) -> None:
        # A torch / batchnorm BN state dict carries num_batches_tracked; an affine=False one
        # has no weight/bias (identity gamma, beta). Statistics that cannot normalize are
        # refused once here, not per call.
        if refuse_unusable_statistics(self, state_dict, prefix, error_msgs):
            return
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
        pass  # any rank >= 2 (the rank classes check theirs)

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

    def __prepare_scriptable__(self) -> nn.Module:
        """What ``torch.jit.script`` compiles in place of this layer: the same fixed map in
        torch.nn.functional's batch norm, on the same buffers (its arithmetic is torch's)."""
        if self.axis != 1:
            raise validate.BatchNormError(
                f"torch.jit.script: {type(self).__name__} normalizes axis {self.axis}; the "
                "scriptable form has channels on axis 1: use torch.export, torch.compile or "
                "torch.jit.trace"
            )
        return _ScriptableFrozenBatchNorm(self)

    def extra_repr(self) -> str:
        s = f"{self.num_features}, eps={self.eps}"
        return s + (f", axis={self.axis}" if self.axis != 1 else "")


class _ScriptableFrozenBatchNorm(nn.Module):
    """TorchScript's form of :class:`FrozenBatchNorm` (channels on axis 1)."""

    __constants__ = ["eps"]  # (not an annotation: this file's postponed ones are strings)

    def __init__(self, frozen: FrozenBatchNorm) -> None:
        super().__init__()
        self.eps = frozen.eps
        for name in ("weight", "bias", "running_mean", "running_var"):
            self.register_buffer(name, getattr(frozen, name))

    def forward(self, input: Tensor) -> Tensor:
        return torch.nn.functional.batch_norm(  # buffers, typed Tensor | Module by nn.Module
            input,
            self.running_mean,  # type: ignore[arg-type]
            self.running_var,  # type: ignore[arg-type]
            self.weight,  # type: ignore[arg-type]
            self.bias,  # type: ignore[arg-type]
            False,
            0.0,
            self.eps,
        )


class FrozenBatchNorm1d(Rank1d, FrozenBatchNorm):
    """:class:`FrozenBatchNorm` for (N, C) or (N, C, L) input."""


class FrozenBatchNorm2d(Rank2d, FrozenBatchNorm):
    """:class:`FrozenBatchNorm` for (N, C, H, W) input."""


class FrozenBatchNorm3d(Rank3d, FrozenBatchNorm):
    """:class:`FrozenBatchNorm` for (N, C, D, H, W) input."""


_FROZEN_BY_RANK: dict[type, type[FrozenBatchNorm]] = {
    nn.BatchNorm1d: FrozenBatchNorm1d,
    nn.BatchNorm2d: FrozenBatchNorm2d,
    nn.BatchNorm3d: FrozenBatchNorm3d,
    BatchNorm1d: FrozenBatchNorm1d,
    BatchNorm2d: FrozenBatchNorm2d,
    BatchNorm3d: FrozenBatchNorm3d,
}
