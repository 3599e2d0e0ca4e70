"""Step 2 of the core with its gradient: the training and evaluation forwards, closed form.

The internal API the variants use (``docs/architecture.md``):

- :func:`train_forward` ``(x, weight, bias, TrainOptions) -> (y, BatchStats)``: batch
  statistics (eq. 1-2), normalize (eq. 3-4), and the closed-form backward (eq. 9, 10, 12);
- :func:`eval_forward`: the fixed affine map of the running statistics (eq. 23-24);
- :func:`closed_form_backward`: the backward alone, for a variant that saves other tensors
  (the memory-efficient BN + activation recovers ``x_hat`` from its output).

Every numerical step is a kernel primitive (:mod:`batchnorm.core.kernels`), chosen by the
input's device. Equation numbers refer to ``docs/math.md``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import torch
from torch import Tensor

from . import collectives, kernels
from .kernels import _native
from .kernels._native import acc_dtype
from .stats import BatchStats, count_per_channel

__all__ = [
    "Correction",
    "TrainOptions",
    "closed_form_backward",
    "eval_forward",
    "torch_op_forward",
    "train_forward",
]

#: ``(mean, var) -> (r, d)``: per-channel factors, constants in the backward (stop-gradient),
#: that make the output ``gamma * (x_hat * r + d) + beta`` (Batch Renormalization).
Correction = Callable[[Tensor, Tensor], tuple[Tensor, Tensor]]


class TrainOptions(NamedTuple):
    """How one training forward computes its statistics; every field but two has a default.

    A named tuple (immutable, typed, and traced by ``torch.compile`` like a constant).

    Attributes:
        axis: the channel axis, non-negative.
        eps: added to the variance inside the square root, > 0.
        mask: bool, the shape of x with size 1 along ``axis`` (``validate.prepare_mask``):
            the statistics run over the valid positions only; every position is normalized.
        valid_count: the number of valid values per channel when ``mask`` is given (read
            once on the host by the caller); None: every value counts.
        correction: Batch Renormalization's ``(mean, var) -> (r, d)`` (:data:`Correction`).
        process_group: a ``torch.distributed`` group with more than one process: the
            statistics are those of the union of every rank's batch (one collective in the
            forward, one in the backward; a rank may hold zero samples and still joins both).
    """

    axis: int
    eps: float
    mask: Tensor | None = None
    valid_count: int | None = None
    correction: Correction | None = None
    process_group: Any = None


def _cast(t: Tensor, dtype: torch.dtype) -> Tensor:
    """``t.to(dtype)`` without the dispatch when it is already that dtype (per-call cost)."""
    return t if t.dtype == dtype else t.to(dtype)


def _local_stats(
    x: Tensor, kern: kernels.Kernels, opts: TrainOptions, count: int
) -> tuple[Tensor, Tensor]:
    """This rank's per-channel (mean float64, biased var) over its valid values."""
    if count == 0:
        c = x.shape[opts.axis]
        return x.new_zeros(c, dtype=torch.float64), x.new_zeros(c, dtype=acc_dtype(x.dtype))
    if opts.mask is None:
        mean, var = kern.stats(x, opts.axis)
    else:
        mean, var = _native.masked_stats(x, opts.axis, opts.mask, count)
    return mean, var


class _Train(torch.autograd.Function):
    """Normalize with given batch statistics (eq. 3-4), with the closed-form backward of the
    whole training step (eq. 9, 10, 12): the statistics are inputs here, computed from ``x``
    by :func:`train_forward` without autograd, and the backward differentiates through them.
    """

    @staticmethod
    def forward(
        ctx: Any,
        x: Tensor,
        weight: Tensor | None,
        bias: Tensor | None,
        mean: Tensor,
        var: Tensor,
        count: int,
        opts: TrainOptions,
    ) -> Tensor:
        axis = opts.axis
        kern = kernels.get(x, axis)
        r = d = None
        if count == 0:
            # An empty batch: nothing to normalize, no statistics to trust.
            inv_std = torch.zeros_like(var)
            y = x.clone()
        elif opts.correction is None and kern.normalize_stats is not None and x.numel() > 0:
            # The kernel set builds inv_std, scale and shift itself (the same bits).
            y, inv_std = kern.normalize_stats(x, axis, mean, var, weight, bias, opts.eps)
        else:
            inv_std = torch.rsqrt(var + opts.eps)
            scale, shift = _native.scale_shift(inv_std, weight, bias)
            if opts.correction is not None:
                r, d = (t.to(inv_std.dtype) for t in opts.correction(mean, var))
                gamma = torch.ones_like(inv_std) if weight is None else weight.to(inv_std.dtype)
                scale, shift = scale * r, shift + gamma * d
            # An empty rank of a synchronized batch has nothing to normalize.
            y = kern.normalize(x, axis, mean, scale, shift) if x.numel() > 0 else x.clone()
        ctx.save_for_backward(x, weight, mean, inv_std, r, d)
        ctx.opts, ctx.count = opts, count
        return y

    @staticmethod
    def backward(
        ctx: Any, dy: Tensor
    ) -> tuple[Tensor | None, Tensor | None, Tensor | None, None, None, None, None]:
        x, weight, mean, inv_std, r, d = ctx.saved_tensors
        opts: TrainOptions = ctx.opts
        grads = closed_form_backward(
            dy,
            x,
            opts.axis,
            mean,
            inv_std,
            weight,
            ctx.count,
            ctx.needs_input_grad[:3],
            eps=opts.eps,
            r=r,
            d=d,
            mask=opts.mask,
            process_group=opts.process_group,
        )
        return (*grads, None, None, None, None)


def closed_form_backward(
    dy: Tensor,
    x: Tensor,
    axis: int,
    mean: Tensor,
    inv_std: Tensor,
    weight: Tensor | None,
    count: int,
    needs: tuple[bool, ...],
    *,
    eps: float | None = None,
    k_inv_std: Tensor | None = None,
    r: Tensor | None = None,
    d: Tensor | None = None,
    mask: Tensor | None = None,
    process_group: Any = None,
) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
    """Gradients of training BN for ``(x, weight, bias)``, closed form (eq. 9, 10, 12)::

        dgamma = sum(dy * x_hat)            dbeta = sum(dy)
        dx     = k * (dy - mean(dy) - (x - mean) * inv_std^2 * mean(dy * (x - mean)))

    with ``x_hat = (x - mean) * inv_std`` and ``k = gamma * k_inv_std`` (``k_inv_std``
    defaults to ``inv_std``; the memory-efficient BN + activation passes ``x = x_hat``,
    ``mean = 0``, ``inv_std = 1`` and the true ``inv_std`` as ``k_inv_std``).

    Args:
        dy: the output gradient.
        x, axis, mean, inv_std, weight: as saved by the forward (mean float64).
        count: values per channel behind the statistics (global when synchronized).
        needs: which of (x, weight, bias) need a gradient.
        eps: needed for a double backward (``create_graph=True``), which recomputes the
            statistics from ``x`` with differentiable ops.
        r, d: Batch Renormalization's factors (stop-gradient), or None.
        mask: the statistics' valid positions, or None.
        process_group: the group the statistics were synchronized over, or None.

    Raises:
        RuntimeError: a double backward through synchronized statistics.
    """
    need_x, need_w, need_b = needs
    if count == 0:
        zeros_w = None if weight is None else torch.zeros_like(weight)
        return (
            dy.clone() if need_x else None,
            zeros_w if need_w else None,
            zeros_w if need_b else None,
        )
    plain = kernels.plain_eager(dy)  # a vmapped dy (batched gradients) needs torch ops
    if torch.is_grad_enabled() or not plain:
        if process_group is not None and torch.is_grad_enabled():
            raise RuntimeError(
                "double backward (create_graph=True) through synchronized batch norm is not "
                "supported: the statistics' collectives are not differentiable. Use local batch "
                "norm (no process group) for higher-order gradients"
            )
        # create_graph=True: recompute the statistics from x with differentiable ops so the
        # double backward sees how mean and inv_std depend on x.
        kern = kernels.NATIVE
        if k_inv_std is None and eps is not None and torch.is_grad_enabled():
            mean, var = (
                kern.stats(x, axis) if mask is None else _native.masked_stats(x, axis, mask, count)
            )
            inv_std = torch.rsqrt(var + eps)
    else:
        kern = kernels.get(x, axis)
    if k_inv_std is None:
        k_inv_std = inv_std
    # Sums over every position, masked ones included: their outputs depend on the
    # statistics too. Only the statistics' own derivative is restricted to valid positions.
    if x.numel() > 0:
        sum_dy, sum_dy_xmu = kern.backward_reduce(dy, x, axis, mean)
    else:  # an empty rank of a synchronized batch
        sum_dy, sum_dy_xmu = torch.zeros_like(inv_std), torch.zeros_like(inv_std)
    grad_x = grad_w = grad_b = None
    if need_w:
        assert weight is not None
        grad_w = sum_dy_xmu * inv_std  # (eq. 9) sum(dy * x_hat)
        if r is not None and d is not None:
            grad_w = grad_w * r + d * sum_dy  # sum(dy * (x_hat * r + d))
        grad_w = _cast(grad_w, weight.dtype)
    if need_b:
        grad_b = _cast(sum_dy, weight.dtype if weight is not None else dy.dtype)  # (eq. 10)
    if need_x:
        if process_group is not None:
            # dx of this rank's samples depends on every rank's dy through the two sums.
            sum_dy, sum_dy_xmu = collectives.all_reduce_sums(sum_dy, sum_dy_xmu, process_group)
            if x.numel() == 0:
                return dy.clone(), grad_w, grad_b
        # (eq. 12) dx = k * (dy - mean(dy) - (x - mean) * inv_std^2 * mean(dy * (x - mean)))
        simple = r is None and mask is None and k_inv_std is inv_std
        if simple and kern.backward_elemt_stats is not None:
            # The kernel set builds k, mean(dy) and the projection itself (the same bits).
            grad_x = kern.backward_elemt_stats(
                dy, x, axis, mean, inv_std, weight, sum_dy, sum_dy_xmu, count
            )
            return grad_x, grad_w, grad_b
        k, mean_dy, proj = _native.dx_coefficients(inv_std, weight, sum_dy, sum_dy_xmu, count)
        if k_inv_std is not inv_std:
            k = k_inv_std if weight is None else weight.to(k_inv_std.dtype) * k_inv_std
        if r is not None:
            k = k * r  # d(x_hat * r)/dx with r constant: eq. 12 scaled by r
        grad_x = kern.backward_elemt(dy, x, axis, mean, k, mean_dy, proj)
        if mask is not None:
            # A masked x enters no statistic: its gradient is the direct term k * dy alone.
            zero = torch.zeros_like(k)
            direct = kern.backward_elemt(dy, x, axis, mean, k, zero, zero)
            grad_x = torch.where(mask, grad_x, direct)
    return grad_x, grad_w, grad_b


class _Eval(torch.autograd.Function):
    """Fixed-statistics forward, one affine map per channel (eq. 23-24), and its backward."""

    @staticmethod
    def forward(
        ctx: Any,
        x: Tensor,
        weight: Tensor | None,
        bias: Tensor | None,
        running_mean: Tensor,
        running_var: Tensor,
        eps: float,
        axis: int,
    ) -> Tensor:
        kern = kernels.get(x, axis)
        if kern.normalize_stats is not None:
            # The kernel set builds inv_std, scale and shift itself (the same bits) and reads
            # the running mean in its own dtype.
            y, inv_std = kern.normalize_stats(x, axis, running_mean, running_var, weight, bias, eps)
        else:
            inv_std = torch.rsqrt(running_var.to(acc_dtype(x.dtype)) + eps)
            scale, shift = _native.scale_shift(inv_std, weight, bias)
            y = kern.normalize(x, axis, running_mean.to(torch.float64), scale, shift)
        ctx.axis = axis
        if not isinstance(ctx, _NoGradCtx):
            # A float64 snapshot of the running mean: as with torch.nn, a later in-place update
            # of the buffer (a train-mode forward before this backward) does not break the graph.
            ctx.save_for_backward(x, weight, running_mean.to(torch.float64, copy=True), inv_std)
        return y

    @staticmethod
    def backward(
        ctx: Any, dy: Tensor
    ) -> tuple[Tensor | None, Tensor | None, Tensor | None, None, None, None, None]:
        x, weight, mean, inv_std = ctx.saved_tensors
        axis = ctx.axis
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        plain = not torch.is_grad_enabled() and kernels.plain_eager(dy)
        kern = kernels.get(x, axis) if plain else kernels.NATIVE
        grad_x = grad_w = grad_b = None
        if need_w or need_b:
            sum_dy, sum_dy_xmu = kern.backward_reduce(dy, x, axis, mean)
            if need_w:
                grad_w = (sum_dy_xmu * inv_std).to(weight.dtype)
            if need_b:
                grad_b = sum_dy.to(weight.dtype if weight is not None else dy.dtype)
        if need_x:
            k = inv_std if weight is None else weight.to(inv_std.dtype) * inv_std
            zero = torch.zeros_like(k)
            grad_x = kern.backward_elemt(dy, x, axis, mean, k, zero, zero)
        return grad_x, grad_w, grad_b, None, None, None, None


class _NoGradCtx:
    """Stands in for an autograd ctx when nothing needs a gradient (see :func:`_apply`)."""

    def save_for_backward(self, *tensors: Tensor | None) -> None:
        pass

    def mark_non_differentiable(self, *tensors: Tensor) -> None:
        pass


def _apply(fn: type[torch.autograd.Function], *args: Any) -> Any:
    """``fn.apply(*args)``, or its forward alone where no gradient can flow: grad mode off or
    no tensor argument requiring grad, in plain eager mode. The autograd.Function machinery
    costs about 20-30 us per call, as much as the kernels of a small layer."""
    no_grad = not torch.is_grad_enabled() or not any(
        isinstance(a, Tensor) and a.requires_grad for a in args
    )
    if no_grad and kernels.plain_eager(args[0]):
        with torch.no_grad():
            return fn.forward(_NoGradCtx(), *args)
    return fn.apply(*args)  # type: ignore[no-untyped-call]


def train_forward(
    x: Tensor, weight: Tensor | None, bias: Tensor | None, opts: TrainOptions
) -> tuple[Tensor, BatchStats]:
    """The training forward (eq. 1-4) with the closed-form backward; ``(y, BatchStats)``.

    The statistics step runs first, without autograd (this rank's statistics, merged over
    ``opts.process_group`` by one collective); the normalize step and the gradient of both
    are one ``autograd.Function``. ``BatchStats.num_values`` is the number of values per channel
    behind the statistics: the valid ones with a mask, the global count with a process group
    (then read on the host once). The input must be validated (``validate.check_inputs``);
    a count of 1 is the caller's small-batch policy to handle, a count of 0 (an empty batch)
    returns ``x`` unchanged with NaN variances.
    """
    axis = opts.axis
    count = opts.valid_count if opts.valid_count is not None else count_per_channel(x, axis)
    kern = kernels.get(x, axis)
    if kern.train is not None and opts.mask is None and opts.correction is None:
        if opts.process_group is None and count > 0:
            # The whole step in one op, its closed-form backward registered with it.
            y, mean, var, _ = kern.train(x, weight, bias, opts.eps, axis)
            return y, BatchStats(mean, var, count)
    with torch.no_grad():
        mean, var = _local_stats(x, kern, opts, count)
        if opts.process_group is not None:
            mean, var, count = collectives.all_gather_stats(mean, var, count, opts.process_group)
        if count == 0:
            var = torch.full_like(var, float("nan"))
    y = _apply(_Train, x, weight, bias, mean, var, count, opts)
    return y, BatchStats(mean, var, count)


def eval_forward(
    x: Tensor,
    weight: Tensor | None,
    bias: Tensor | None,
    running_mean: Tensor,
    running_var: Tensor,
    eps: float,
    axis: int,
) -> Tensor:
    """``y = (x - running_mean) * (gamma / sqrt(running_var + eps)) + beta`` (eq. 23-24)."""
    return _apply(_Eval, x, weight, bias, running_mean, running_var, eps, axis)  # type: ignore[no-any-return]


def torch_op_forward(
    x: Tensor,
    weight: Tensor | None,
    bias: Tensor | None,
    running_mean: Tensor | None,
    running_var: Tensor | None,
    training: bool,
    eps: float,
    axis: int,
) -> tuple[Tensor, BatchStats | None]:
    """The forward as a composition of torch ops: differentiable by autograd to any order and
    transformable by ``torch.func`` (vmap, grad, jvp), with the same rules as the kernels
    (shifted statistics, the mean subtracted first, float32 or better accumulation).

    Returns ``(y, BatchStats)`` in training (the statistics detached from the graph only by
    the caller), ``(y, None)`` in evaluation.
    """
    stats = None
    if training:
        mean, var = _native.stats(x, axis)  # (C,) float64, (C,) acc dtype; differentiable
        stats = BatchStats(mean, var, count_per_channel(x, axis))
    else:
        assert running_mean is not None and running_var is not None
        mean = running_mean.to(torch.float64)
        var = running_var.to(acc_dtype(x.dtype))
    inv_std = torch.rsqrt(var + eps)
    scale, shift = _native.scale_shift(inv_std, weight, bias)
    return _native.normalize(x, axis, mean, scale, shift), stats
