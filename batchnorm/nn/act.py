"""BN followed by an activation, with a memory-saving mode for invertible activations.

``BatchNormAct`` is ``act(BN(x))`` with the state_dict of plain BN. With
``memory_efficient=True`` (training, invertible activation: identity, leaky_relu with slope
> 0, elu with alpha > 0) the autograd graph keeps only the output ``z = act(y)``, not ``x``
(InPlace-ABN, Rota Bulo et al. 2018, arXiv:1712.02616). The backward inverts::

    y     = act^-1(z)               dy = dz * act'(act^-1(z))   (act' written in terms of z)
    x_hat = (y - beta) / gamma                                  (gamma != 0 is required)

and runs the core's two backward primitives on ``x_hat`` in place of ``x`` (mean 0,
``inv_std`` folded into k)::

    dgamma = sum(dy * x_hat), dbeta = sum(dy)                   (eq. 9, 10)
    dx     = gamma * inv_std * (dy - mean(dy) - x_hat * mean(dy * x_hat))   (eq. 12)

The unfused path keeps x (for BN) and the BN output (for the activation): two tensors of the
input's size; the fused one keeps one. Precision: elu's inverse ``log1p(z / alpha)`` loses
digits where z is close to -alpha (deep in saturation), as in InPlace-ABN.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as tnf
from torch import Tensor
from torch.autograd.function import once_differentiable

from ..core import functional as F
from ..core import validate
from ..core.autograd import TrainOptions, closed_form_backward, train_forward
from ..core.kernels._native import per_channel
from ..core.stats import count_per_channel
from .batchnorm import BatchNorm, Rank1d, Rank2d, Rank3d

__all__ = ["ACTIVATIONS", "BatchNormAct", "BatchNormAct1d", "BatchNormAct2d", "BatchNormAct3d"]

ACTIVATIONS = ("identity", "relu", "leaky_relu", "elu", "sigmoid", "tanh", "gelu", "silu")
INVERTIBLE = ("identity", "leaky_relu", "elu")


def _activate(y: Tensor, activation: str, param: float) -> Tensor:
    if activation == "identity":
        return y
    if activation == "leaky_relu":
        return tnf.leaky_relu(y, param)
    if activation == "elu":
        return tnf.elu(y, param)
    return getattr(tnf, activation)(y)


def _invert(z: Tensor, activation: str, param: float) -> tuple[Tensor, Tensor]:
    """``(y, act'(y))`` from ``z = act(y)``, both computed from z alone."""
    if activation == "identity":
        return z, torch.ones_like(z)
    pos = z >= 0 if activation == "leaky_relu" else z > 0
    if activation == "leaky_relu":
        return torch.where(pos, z, z / param), torch.where(pos, torch.ones_like(z), param)
    # elu: z = alpha * (exp(y) - 1) for y <= 0, so y = log1p(z / alpha), act' = z + alpha.
    return torch.where(pos, z, torch.log1p(z / param)), torch.where(
        pos, torch.ones_like(z), z + param
    )


class _BatchNormActTrain(torch.autograd.Function):
    """Training BN + invertible activation that saves only its output (InPlace-ABN).

    The forward is the core's training forward; the backward recovers ``x_hat`` from the
    output and runs the core's closed-form backward on it (module docstring).
    """

    @staticmethod
    def forward(
        ctx: Any,
        x: Tensor,
        weight: Tensor | None,
        bias: Tensor | None,
        eps: float,
        axis: int,
        activation: str,
        param: float,
    ) -> tuple[Tensor, Tensor, Tensor]:
        with torch.no_grad():
            y, stats = train_forward(x, weight, bias, TrainOptions(axis, eps))
        z = _activate(y, activation, param)
        inv_std = torch.rsqrt(stats.var + eps)
        ctx.save_for_backward(z, weight, bias, inv_std)
        ctx.axis, ctx.activation, ctx.param, ctx.count = axis, activation, param, stats.num_values
        ctx.mark_non_differentiable(stats.mean, stats.var)
        return z, stats.mean, stats.var

    @staticmethod
    @once_differentiable
    def backward(
        ctx: Any, dz: Tensor, _dmean: Any, _dvar: Any
    ) -> tuple[Tensor | None, Tensor | None, Tensor | None, None, None, None, None]:
        z, weight, bias, inv_std = ctx.saved_tensors
        axis = ctx.axis
        acc = inv_std.dtype
        y, act_grad = _invert(z.to(acc), ctx.activation, ctx.param)
        dy = dz.to(acc) * act_grad
        x_hat = y if bias is None else y - per_channel(bias.to(acc), z.ndim, axis)
        if weight is not None:
            x_hat = x_hat / per_channel(weight.to(acc), z.ndim, axis)
        # x_hat has mean 0 and "inv_std" 1 by construction; k keeps the true inv_std.
        grad_x, grad_w, grad_b = closed_form_backward(
            dy,
            x_hat,
            axis,
            torch.zeros_like(inv_std, dtype=torch.float64),
            torch.ones_like(inv_std),
            weight,
            ctx.count,
            ctx.needs_input_grad[:3],
            k_inv_std=inv_std,
        )
        if grad_x is not None:
            grad_x = grad_x.to(z.dtype)
        return grad_x, grad_w, grad_b, None, None, None, None


class BatchNormAct(BatchNorm):
    """``act(BatchNorm(x))`` with torch's BN state_dict; optionally saving only the output.

    Args:
        num_features, eps, momentum, affine, track_running_stats, device, dtype: as BatchNorm.
        activation: keyword-only, one of :data:`ACTIVATIONS`.
        activation_param: keyword-only, leaky_relu's negative slope (default 0.01) or elu's
            alpha (default 1.0); ignored by the others.
        memory_efficient: keyword-only; in training with batch statistics, keep only the
            output for the backward (module docstring). Needs an invertible activation
            (identity, leaky_relu with slope > 0, elu with alpha > 0) and gamma != 0 in every
            channel (checked at each call: one host synchronisation). No double backward.
        axis, center, scale, store_unbiased, small_batch: keyword-only, as BatchNorm.

    Raises:
        ValueError: unknown activation, memory_efficient with a non-invertible activation or
            a non-positive slope/alpha, or (at call time) a zero gamma.
    """

    def __init__(
        self,
        num_features: int,
        *args,
        activation: str = "relu",
        activation_param: float | None = None,
        memory_efficient: bool = False,
        **kwargs,
    ) -> None:
        super().__init__(num_features, *args, **kwargs)
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")
        if activation_param is None:
            activation_param = {"leaky_relu": 0.01, "elu": 1.0}.get(activation, 0.0)
        if memory_efficient and (
            activation not in INVERTIBLE or (activation != "identity" and not activation_param > 0)
        ):
            raise ValueError(
                f"memory_efficient=True recomputes the input from the output, so the activation must be "
                f"invertible: identity, leaky_relu with slope > 0 or elu with alpha > 0; got "
                f"{activation!r} with parameter {activation_param}. Use leaky_relu (e.g. slope 0.01) "
                "instead of relu, or memory_efficient=False"
            )
        self.activation, self.activation_param = activation, float(activation_param)
        self.memory_efficient = memory_efficient

    def forward(self, input: Tensor, mask: Tensor | None = None) -> Tensor:
        fused = self.memory_efficient and mask is None and self.training and input.shape[0] > 1
        fused = fused and torch.is_grad_enabled()
        if not fused or count_per_channel(input, self.axis % input.ndim) < 2:
            return _activate(super().forward(input, mask), self.activation, self.activation_param)
        self._check_input_dim(input)
        axis = validate.check_inputs(
            input,
            self.running_mean,
            self.running_var,
            self.weight,
            self.bias,
            True,
            self.momentum,
            self.eps,
            self.axis,
        )
        if self.weight is not None and bool((self.weight == 0).any()):
            raise ValueError(
                "memory_efficient=True divides by gamma to recover x_hat, but a channel has weight 0 "
                f"(channels {torch.nonzero(self.weight == 0).flatten().tolist()}); use memory_efficient=False"
            )
        z, mean, var = _BatchNormActTrain.apply(
            input, self.weight, self.bias, self.eps, axis, self.activation, self.activation_param
        )
        if self.running_mean is not None and self.running_var is not None:
            F.update_running_stats(
                self.running_mean,
                self.running_var,
                mean,
                var,
                count_per_channel(input, axis),
                self.momentum,
                num_batches_tracked=self.num_batches_tracked,
                store_unbiased=self.store_unbiased,
                skipped_updates=self.skipped_updates,
            )
        return z

    def extra_repr(self) -> str:
        s = super().extra_repr() + f", activation={self.activation!r}"
        if self.activation in ("leaky_relu", "elu"):
            s += f", activation_param={self.activation_param}"
        return s + (", memory_efficient=True" if self.memory_efficient else "")


class BatchNormAct1d(Rank1d, BatchNormAct):
    """:class:`BatchNormAct` for (N, C) or (N, C, L) input."""


class BatchNormAct2d(Rank2d, BatchNormAct):
    """:class:`BatchNormAct` for (N, C, H, W) input."""


class BatchNormAct3d(Rank3d, BatchNormAct):
    """:class:`BatchNormAct` for (N, C, D, H, W) input."""
