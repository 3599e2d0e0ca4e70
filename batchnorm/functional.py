"""The functional core: statistics -> normalize -> update running statistics.

Every module and variant in the package calls :func:`batch_norm` (or the three steps it
is made of); the math lives here once. Equation numbers refer to ``docs/math.md``.

For each channel ``c`` (the entries of ``input`` along ``axis``), over the ``m`` values
of every other axis (batch and spatial positions alike)::

    mean    = sum(x) / m                                   (eq. 1)
    var     = sum((x - mean)^2) / m          (biased)      (eq. 2)
    inv_std = 1 / sqrt(var + eps)
    x_hat   = (x - mean) * inv_std                         (eq. 3)
    y       = gamma * x_hat + beta                         (eq. 4)

and in training the running statistics move towards the batch's (PyTorch convention)::

    running = (1 - momentum) * running + momentum * batch_stat           (eq. 13)
    running_var stores the unbiased var * m / (m - 1) by default          (eq. 16)

with ``momentum=None`` a cumulative average, ``running += (batch - running) / n``
(eq. 15), ``n`` the number of batches so far including this one.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from . import _sync, kernels
from .kernels import _cpu, _native
from .kernels._native import acc_dtype

__all__ = [
    "batch_norm",
    "batch_stats",
    "update_running_stats",
    "moments",
    "batch_normalization",
    "inference_affine",
]


# --------------------------------------------------------------------------- checks


def _normalize_axis(axis: int, ndim: int) -> int:
    if not -ndim <= axis < ndim:
        raise ValueError(
            f"channel axis {axis} is out of range for an input of rank {ndim}; "
            f"use an axis in [{-ndim}, {ndim - 1}] (1 for NCHW, -1 for channels-last/Keras)"
        )
    return axis % ndim


def _check_inputs(
    input: Tensor,
    running_mean: Tensor | None,
    running_var: Tensor | None,
    weight: Tensor | None,
    bias: Tensor | None,
    training: bool,
    momentum: float | None,
    eps: float,
    axis: int,
    check_count: bool = True,
) -> int:
    """Validate shapes, dtypes, devices and hyper-parameters; return the axis, non-negative.

    Only metadata is read: no value of any tensor, so no host synchronisation.
    ``check_count=False`` leaves the one-value-per-channel check to the caller
    (:func:`batch_norm` applies its ``small_batch`` policy there).
    """
    if not isinstance(input, Tensor):
        raise TypeError(f"batch_norm expects a torch.Tensor input, got {type(input).__name__}")
    if not input.is_floating_point():
        raise TypeError(
            f"batch_norm expects a floating-point input, got dtype={input.dtype}; "
            "convert it first, e.g. x.float()"
        )
    if input.ndim < 2:
        raise ValueError(
            f"batch_norm expects an input of rank >= 2 (batch, channels, ...), got shape "
            f"{tuple(input.shape)}; add a batch axis, e.g. x.unsqueeze(0)"
        )
    axis = _normalize_axis(axis, input.ndim)
    if not eps > 0:
        raise ValueError(
            f"eps must be > 0 (it keeps 1/sqrt(var + eps) finite for a constant channel), got {eps}; "
            "PyTorch's default is 1e-5, Keras's 1e-3"
        )
    if momentum is not None and not 0.0 <= momentum <= 1.0:
        raise ValueError(
            f"momentum must be in [0, 1] or None (cumulative average), got {momentum}; in the PyTorch "
            "convention it is the weight of the new batch (default 0.1): Keras's momentum m is 1 - m here"
        )
    if (running_mean is None) != (running_var is None):
        raise ValueError("running_mean and running_var must be given together or both be None")
    if not training and running_mean is None:
        raise ValueError(
            "batch_norm in evaluation mode (training=False) needs running_mean and running_var; "
            "pass them, or use training=True to normalize with the batch's own statistics"
        )
    channels = input.shape[axis]
    for name, t in (
        ("running_mean", running_mean),
        ("running_var", running_var),
        ("weight", weight),
        ("bias", bias),
    ):
        if t is None:
            continue
        if not isinstance(t, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor or None, got {type(t).__name__}")
        if t.numel() != channels:
            raise ValueError(
                f"{name} has {t.numel()} entries (shape {tuple(t.shape)}) but the input of shape "
                f"{tuple(input.shape)} has {channels} channels along axis {axis}; give one value per "
                "channel, or pick the right channel axis (axis=1 for NCHW, axis=-1 for channels-last)"
            )
        if t.device != input.device:
            raise ValueError(
                f"{name} is on {t.device} but the input is on {input.device}; "
                f"move them to one device, e.g. module.to({str(input.device)!r})"
            )
        if not t.is_floating_point():
            raise TypeError(f"{name} must be floating point, got dtype={t.dtype}")
    if check_count and training and input.numel() > 0 and input.numel() // channels == 1:
        raise _one_value_error(input, axis)
    return axis


def _one_value_error(input: Tensor, axis: int, valid: str = "") -> ValueError:
    return ValueError(
        f"batch_norm in training needs more than one value per channel, but the input of shape "
        f"{tuple(input.shape)} has exactly 1{valid} value per channel (axis {axis}): a batch of one "
        "sample normalizes every feature to beta. Use a batch of at least 2, call "
        "model.eval() to normalize with the running statistics, or choose a small-batch policy "
        "(small_batch='running' or 'skip', see docs/variants.md)"
    )


def _one_global_value_error(input: Tensor, axis: int) -> ValueError:
    return ValueError(
        f"synchronized batch_norm in training needs more than one value per channel over all "
        f"processes together, but they hold exactly 1 (this process's input has shape "
        f"{tuple(input.shape)}, channel axis {axis}). Use a global batch of at least 2, call "
        "model.eval(), or choose a small-batch policy (small_batch='running' or 'skip')"
    )


SMALL_BATCH_POLICIES = ("raise", "running", "skip")


def _prepare_mask(mask: Tensor, input: Tensor, axis: int) -> Tensor:
    """Check ``mask`` and view it with the shape of ``input`` but size 1 along ``axis``.

    ``mask`` is boolean, True at valid positions, and broadcasts to the input's shape without
    its channel axis (e.g. (N, L) for (N, C, L) input, or (N, L) for channels-last (N, L, C)).
    """
    if not isinstance(mask, Tensor) or mask.dtype != torch.bool:
        raise TypeError(
            f"mask must be a torch.bool tensor (True = valid position), got "
            f"{getattr(mask, 'dtype', type(mask).__name__)}; e.g. mask = lengths[:, None] > torch.arange(L)"
        )
    if mask.device != input.device:
        raise ValueError(
            f"mask is on {mask.device} but the input is on {input.device}; move it with mask.to(x.device)"
        )
    without_channel = input.shape[:axis] + input.shape[axis + 1 :]
    try:
        mask = torch.broadcast_to(mask, without_channel)
    except RuntimeError:
        raise ValueError(
            f"mask of shape {tuple(mask.shape)} does not broadcast to the input's shape without its "
            f"channel axis {axis}, {tuple(without_channel)}; give one flag per position (batch and "
            "spatial axes), not per channel"
        ) from None
    return mask.unsqueeze(axis)


# --------------------------------------------------------------------------- step 1: statistics


def batch_stats(input: Tensor, axis: int = 1) -> tuple[Tensor, Tensor]:
    """Per-channel mean and biased variance of ``input`` (eq. 1-2), without autograd.

    Accumulated in float32 (float64 for float64 input) with a stable reduction, never as
    ``E[x^2] - E[x]^2``.

    Args:
        input: tensor of rank >= 2.
        axis: channel axis.

    Returns:
        ``(mean, var)``, each of shape ``(C,)``.
    """
    axis = _normalize_axis(axis, input.ndim)
    with torch.no_grad():
        return kernels.get(input, axis).stats(input, axis)


# --------------------------------------------------------------------------- step 3: running update


def update_running_stats(
    running_mean: Tensor,
    running_var: Tensor,
    mean: Tensor,
    var: Tensor,
    count: int,
    momentum: float | Tensor | None = 0.1,
    *,
    num_batches_tracked: Tensor | None = None,
    store_unbiased: bool = True,
    skipped_updates: Tensor | None = None,
) -> None:
    """Move the running statistics towards a batch's, in place (eq. 13-14).

    ``running = (1 - momentum) * running + momentum * batch`` (PyTorch's convention: momentum
    weighs the *new* value), and for ``momentum=None`` the cumulative average
    ``running += (batch - running) / n`` with ``n = num_batches_tracked`` after this batch.
    ``running_var`` receives ``var * count / (count - 1)`` (unbiased) if ``store_unbiased``,
    else the biased ``var`` (Keras/Flax).

    A batch whose statistics are not all finite leaves every buffer untouched and adds one to
    ``skipped_updates``; the decision is made on the device (``torch.where``), with no host
    synchronisation.

    Args:
        running_mean, running_var: buffers of shape (C,), updated in place.
        mean, var: the batch's mean and biased variance, shape (C,).
        count: number of values per channel behind ``mean`` and ``var``.
        momentum: weight of the batch statistics, or None for a cumulative average.
        num_batches_tracked: scalar counter, incremented in place for a finite batch.
        store_unbiased: store the unbiased (True, PyTorch) or biased (False) variance.
        skipped_updates: scalar counter of non-finite batches, incremented in place.

    Raises:
        ValueError: ``momentum=None`` without ``num_batches_tracked``.
    """
    if momentum is None and num_batches_tracked is None:
        raise ValueError(
            "momentum=None (cumulative average) needs num_batches_tracked to know how many "
            "batches have been averaged; pass the module's num_batches_tracked buffer"
        )
    if kernels.enabled() and _cpu.running_update(
        running_mean,
        running_var,
        mean,
        var,
        count,
        momentum,
        num_batches_tracked,
        store_unbiased,
        skipped_updates,
    ):
        return  # the same rule in one call of the CPU kernels
    with torch.no_grad():
        ok = _all_finite(mean, var)
        if num_batches_tracked is not None:
            num_batches_tracked.add_(ok.to(num_batches_tracked.dtype))
        if skipped_updates is not None:
            skipped_updates.add_((~ok).to(skipped_updates.dtype))
        if momentum is None:
            # (eq. 15) as an EMA with factor 1/n; clamp keeps 1/0 out of a skipped first batch.
            factor = 1.0 / num_batches_tracked.clamp(min=1).to(running_mean.dtype)
        else:
            factor = momentum
        new_mean, new_var = running_stats_step(
            running_mean,
            running_var,
            mean,
            var,
            count,
            factor,
            store_unbiased=store_unbiased,
            ok=ok,
        )
        running_mean.copy_(new_mean)
        running_var.copy_(new_var)


def _all_finite(mean: Tensor, var: Tensor) -> Tensor:
    """A 0-d bool tensor: every entry of ``mean`` and ``var`` is finite (no host sync).

    One reduction each: a sum is finite exactly when every term is, barring an overflow that
    float64 accumulation of batch statistics cannot reach.
    """
    return torch.isfinite(mean.sum(dtype=torch.float64) + var.sum(dtype=torch.float64))


def running_stats_step(
    running_mean: Tensor,
    running_var: Tensor,
    mean: Tensor,
    var: Tensor,
    count: int,
    factor: float | Tensor,
    *,
    store_unbiased: bool = True,
    ok: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """The pure form of :func:`update_running_stats`: new ``(running_mean, running_var)``.

    ``new = (1 - factor) * running + factor * batch`` (eq. 13), the batch variance made
    unbiased (eq. 16) if ``store_unbiased``; where the batch statistics are not all finite
    the running ones are returned unchanged (``ok``, a 0-d bool tensor, is that test when the
    caller has already made it). No in-place operation, so it runs under ``torch.func``
    transforms.
    """
    if ok is None:
        ok = _all_finite(mean, var)
    # (eq. 16) Bessel's correction; count >= 2 is guaranteed by the training check.
    batch_var = var * (count / (count - 1)) if store_unbiased and count > 1 else var
    new_mean = factor * mean.to(running_mean.dtype) + (1 - factor) * running_mean
    new_var = factor * batch_var.to(running_var.dtype) + (1 - factor) * running_var
    return torch.where(ok, new_mean, running_mean), torch.where(ok, new_var, running_var)


# --------------------------------------------------------------------------- step 2: normalize (+ autograd)


def inference_affine(
    running_mean: Tensor,
    running_var: Tensor,
    weight: Tensor | None,
    bias: Tensor | None,
    eps: float,
    dtype: torch.dtype = torch.float64,
) -> tuple[Tensor, Tensor]:
    """The fixed per-channel affine map that BN is at inference (eq. 23), without autograd.

    ``scale = gamma / sqrt(var + eps)``, ``shift = beta - mean * scale``, so that
    ``BN(x) = x * scale + shift``. Used to fold BN into a neighbouring layer's weights; the
    normalize step itself keeps the mean-first form ``(x - mean) * scale + beta`` (§9).

    Args:
        running_mean, running_var: the statistics, shape (C,).
        weight, bias: gamma and beta, (C,) or None (1 and 0).
        eps: added to the variance; 0 is accepted here (torch.nn allows it) as long as
            every ``var + eps`` is positive.
        dtype: the dtype of the computation and the result (float64 for folding).

    Returns:
        ``(scale, shift)``, each (C,) in ``dtype``.

    Raises:
        ValueError: ``var + eps <= 0`` or not finite in some channel (scale would be inf/NaN).
    """
    with torch.no_grad():
        var = running_var.to(dtype) + eps
        bad = ~(torch.isfinite(var) & (var > 0))
        if bad.any():
            raise ValueError(
                f"var + eps must be finite and > 0 in every channel, got var + eps = "
                f"{var[bad].tolist()} in channels {bad.nonzero().flatten().tolist()} (eps={eps}); "
                "BN with eps=0 on a constant channel has no finite inference map: use eps > 0"
            )
        inv_std = torch.rsqrt(var)
        scale, beta = _native.scale_shift(inv_std, weight, bias)
        return scale, beta - running_mean.to(dtype) * scale  # (eq. 23)


def _cast(t: Tensor, dtype: torch.dtype) -> Tensor:
    """``t.to(dtype)`` without the dispatch when it is already that dtype (per-call cost)."""
    return t if t.dtype == dtype else t.to(dtype)


class _BatchNormTrain(torch.autograd.Function):
    """Batch statistics forward (eq. 1-4) with the closed-form backward (eq. 9, 10, 12).

    Two optional, general hooks serve the variants (docs/variants.md):

    - ``mask`` (bool, shape of x with size 1 along ``axis``): the statistics run over the
      valid positions only (``count`` of them per channel); every position is normalized.
    - ``correction(mean, var) -> (r, d)``: per-channel factors, constants in the backward
      (stop-gradient), that turn ``x_hat`` into ``x_hat * r + d`` (Batch Renormalization):
      ``y = gamma * (x_hat * r + d) + beta``, i.e. the normalize step with
      ``scale = gamma * inv_std * r`` and ``shift = beta + gamma * d``.
    - ``process_group``: the statistics are those of the union of every rank's batch (one
      collective, ``_sync.all_gather_stats``) and the backward's two sums are summed over the
      ranks (one collective, ``_sync.all_reduce_sums``); a rank may hold zero samples and
      still joins both. The weight and bias gradients stay this rank's own share (sums over
      its samples): summed over the ranks (DDP's gradient all-reduce) they are the gradients
      of the concatenated batch. A fourth output then gives the global ``count`` (an int).
    """

    @staticmethod
    def forward(
        ctx,
        x: Tensor,
        weight: Tensor | None,
        bias: Tensor | None,
        eps: float,
        axis: int,
        mask: Tensor | None = None,
        correction=None,
        count: int | None = None,
        process_group=None,
    ):
        kern = kernels.get(x, axis)
        if count is None:
            count = x.numel() // x.shape[axis] if mask is None else int(mask.sum())
        r = d = None
        if process_group is not None:
            # This rank's statistics (zeros if it holds no value), merged over the ranks.
            if count > 0:
                mean, var = (
                    kern.stats(x, axis)
                    if mask is None
                    else _native.masked_stats(x, axis, mask, count)
                )
            else:
                mean = x.new_zeros(x.shape[axis], dtype=torch.float64)
                var = x.new_zeros(x.shape[axis], dtype=acc_dtype(x.dtype))
            mean, var, count = _sync.all_gather_stats(mean, var, count, process_group)
        if count == 0:
            # An empty batch: nothing to normalize, no statistics to trust.
            mean = x.new_zeros(x.shape[axis], dtype=torch.float64)
            var = x.new_full((x.shape[axis],), float("nan"), dtype=acc_dtype(x.dtype))
            inv_std = torch.zeros_like(var)
            y = x.clone()
        else:
            if process_group is None:  # (synchronized: the global statistics, above)
                if mask is None:
                    mean, var = kern.stats(x, axis)
                else:
                    mean, var = _native.masked_stats(x, axis, mask, count)
            if correction is None and kern.normalize_stats is not None and x.numel() > 0:
                # The kernel set builds inv_std, scale and shift itself (the same bits).
                y, inv_std = kern.normalize_stats(x, axis, mean, var, weight, bias, eps)
            else:
                inv_std = torch.rsqrt(var + eps)
                scale, shift = _native.scale_shift(inv_std, weight, bias)
                if correction is not None:
                    r, d = (t.to(inv_std.dtype) for t in correction(mean, var))
                    gamma = torch.ones_like(inv_std) if weight is None else weight.to(inv_std.dtype)
                    scale, shift = scale * r, shift + gamma * d
                # An empty rank of a synchronized batch has nothing to normalize.
                y = kern.normalize(x, axis, mean, scale, shift) if x.numel() > 0 else x.clone()
        ctx.save_for_backward(x, weight, mean, inv_std, mask, r, d)
        ctx.axis, ctx.eps, ctx.count, ctx.group = axis, eps, count, process_group
        ctx.mark_non_differentiable(mean, var)
        return (y, mean, var) if process_group is None else (y, mean, var, count)

    @staticmethod
    def backward(ctx, dy: Tensor, *_stats_grads):
        x, weight, mean, inv_std, mask, r, d = ctx.saved_tensors
        axis, m, group = ctx.axis, ctx.count, ctx.group
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        if m == 0:
            zeros = lambda t: None if t is None else torch.zeros_like(t)  # noqa: E731
            return (
                dy.clone() if need_x else None,
                zeros(weight) if need_w else None,
                zeros(weight) if need_b else None,
                None,
                None,
                None,
                None,
                None,
                None,
            )
        if torch.is_grad_enabled() and group is not None:
            raise RuntimeError(
                "double backward (create_graph=True) through synchronized batch norm is not "
                "supported: the statistics' collectives are not differentiable. Use local batch "
                "norm (no process group) for higher-order gradients"
            )
        if torch.is_grad_enabled():
            # create_graph=True: recompute the statistics from x with differentiable ops so the
            # double backward sees how mean and inv_std depend on x.
            kern = kernels.NATIVE
            mean, var = (
                kern.stats(x, axis) if mask is None else _native.masked_stats(x, axis, mask, m)
            )
            inv_std = torch.rsqrt(var + ctx.eps)
        else:
            kern = kernels.get(x, axis)
        # Sums over every position, masked ones included: their outputs depend on the
        # statistics too. Only the statistics' own derivative is restricted to valid positions.
        if x.numel() > 0:
            sum_dy, sum_dy_xmu = kern.backward_reduce(dy, x, axis, mean)
        else:  # an empty rank of a synchronized batch
            sum_dy, sum_dy_xmu = torch.zeros_like(inv_std), torch.zeros_like(inv_std)
        grad_x = grad_w = grad_b = None
        if need_w:
            grad_w = sum_dy_xmu * inv_std  # (eq. 9) sum(dy * x_hat)
            if r is not None:
                grad_w = grad_w * r + d * sum_dy  # sum(dy * (x_hat * r + d))
            grad_w = _cast(grad_w, weight.dtype)
        if need_b:
            grad_b = _cast(sum_dy, weight.dtype if weight is not None else dy.dtype)  # (eq. 10)
        if need_x:
            if group is not None:
                # dx of this rank's samples depends on every rank's dy through the two sums.
                sum_dy, sum_dy_xmu = _sync.all_reduce_sums(sum_dy, sum_dy_xmu, group)
                if x.numel() == 0:
                    return dy.clone(), grad_w, grad_b, None, None, None, None, None, None
            # (eq. 12) dx = k * (dy - mean(dy) - (x - mean) * inv_std^2 * mean(dy * (x - mean)))
            if r is None and mask is None and kern.backward_elemt_stats is not None:
                # The kernel set builds k, mean(dy) and the projection itself (the same bits).
                return (
                    kern.backward_elemt_stats(
                        dy, x, axis, mean, inv_std, weight, sum_dy, sum_dy_xmu, m
                    ),
                    grad_w,
                    grad_b,
                    None,
                    None,
                    None,
                    None,
                    None,
                    None,
                )
            k, mean_dy, proj = _native.dx_coefficients(inv_std, weight, sum_dy, sum_dy_xmu, m)
            if r is not None:
                k = k * r  # d(x_hat * r)/dx with r constant: eq. 12 scaled by r
            grad_x = kern.backward_elemt(dy, x, axis, mean, k, mean_dy, proj)
            if mask is not None:
                # A masked x enters no statistic: its gradient is the direct term k * dy alone.
                zero = torch.zeros_like(k)
                grad_x = torch.where(
                    mask, grad_x, kern.backward_elemt(dy, x, axis, mean, k, zero, zero)
                )
        return grad_x, grad_w, grad_b, None, None, None, None, None, None


class _BatchNormEval(torch.autograd.Function):
    """Fixed-statistics forward, one affine map per channel (eq. 23-24), and its backward."""

    @staticmethod
    def forward(ctx, x, weight, bias, running_mean, running_var, eps: float, axis: int):
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
    def backward(ctx, dy: Tensor):
        x, weight, mean, inv_std = ctx.saved_tensors
        axis = ctx.axis
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        kern = kernels.NATIVE if torch.is_grad_enabled() else kernels.get(x, axis)
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

    def save_for_backward(self, *tensors):
        pass

    def mark_non_differentiable(self, *tensors):
        pass


def _apply(fn: type[torch.autograd.Function], *args):
    """``fn.apply(*args)``, or its forward alone where no gradient can flow: grad mode off or
    no tensor argument requiring grad, in plain eager mode. The autograd.Function machinery
    costs about 20-30 us per call, as much as the kernels of a small layer."""
    if (
        not torch.is_grad_enabled()
        or not any(isinstance(a, Tensor) and a.requires_grad for a in args)
    ) and _cpu._plain_eager(args[0]):
        with torch.no_grad():
            return fn.forward(_NoGradCtx(), *args)
    return fn.apply(*args)


def _small_batch_running(
    input, weight, bias, running_mean, running_var, eps: float, axis: int
) -> Tensor:
    """``small_batch="running"``: normalize a one-value batch with the running statistics."""
    if running_mean is None:
        raise ValueError(
            "small_batch='running' needs running statistics to normalize a batch with one "
            "value per channel, but none were given (track_running_stats=False?); use "
            "small_batch='skip' or 'raise'"
        )
    return _BatchNormEval.apply(input, weight, bias, running_mean, running_var, eps, axis)


def batch_norm(
    input: Tensor,
    running_mean: Tensor | None,
    running_var: Tensor | None,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    training: bool = False,
    momentum: float | None = 0.1,
    eps: float = 1e-5,
    *,
    axis: int = 1,
    num_batches_tracked: Tensor | None = None,
    store_unbiased: bool = True,
    skipped_updates: Tensor | None = None,
    mask: Tensor | None = None,
    small_batch: str = "raise",
    correction: Callable[[Tensor, Tensor], tuple[Tensor, Tensor]] | None = None,
    process_group: object | None = None,
) -> Tensor:
    """Batch normalization with the semantics of :func:`torch.nn.functional.batch_norm`.

    Training (``training=True``) normalizes with the batch's statistics over every axis but
    ``axis``::

        y = (x - mean_B) / sqrt(var_B + eps) * weight + bias        (eq. 1-4, var biased)

    and, if running statistics are given, updates them in place::

        running = (1 - momentum) * running + momentum * batch_stat  (eq. 13)

    storing the unbiased variance ``var_B * m / (m - 1)`` unless ``store_unbiased=False``.
    Evaluation uses the running statistics: one fixed affine map per channel (eq. 23-24).
    The gradient is the closed form of eq. 9, 10, 12, not autograd over primitive ops; double
    backward works.

    Args:
        input: tensor of rank >= 2 with channels along ``axis``.
        running_mean, running_var: (C,) buffers or None (then training must be True).
        weight, bias: gamma and beta, (C,) or None (gamma = 1, beta = 0).
        training: use (and update) batch statistics instead of the running ones.
        momentum: PyTorch convention, the weight of the new batch; None = cumulative average
            (needs ``num_batches_tracked``).
        eps: added to the variance inside the square root; must be > 0.
        axis: keyword-only, the channel axis (1 for NCHW, -1 for channels-last/Keras).
        num_batches_tracked: keyword-only scalar counter incremented for each finite update.
        store_unbiased: keyword-only; store the unbiased (PyTorch) or biased (Keras, Flax)
            batch variance in ``running_var``.
        skipped_updates: keyword-only scalar counter of updates skipped because the batch
            statistics were not finite (running statistics are never overwritten with NaN/inf).
        mask: keyword-only bool tensor, True at valid positions, broadcastable to the input's
            shape without the channel axis (e.g. (N, L) for (N, C, L)). In training the
            statistics (and the running update, with m = the number of valid values) use the
            valid positions only; every position is normalized, padded ones included. An
            all-masked batch returns the input unchanged and updates nothing. Reads the
            valid count on the host (one synchronisation).
        small_batch: keyword-only policy for training with exactly one value per channel:
            ``"raise"`` (ValueError), ``"running"`` (normalize with the running statistics,
            update nothing) or ``"skip"`` (Algorithm 1 as written, so ``y = beta``, and skip
            the running update, whose unbiased variance would divide by m - 1 = 0).
        correction: keyword-only ``(mean, var) -> (r, d)``, per-channel factors that make
            the training output ``gamma * (x_hat * r + d) + beta`` with r, d constants in the
            backward (Batch Renormalization, :mod:`batchnorm.variants`).
        process_group: keyword-only ``torch.distributed`` group (e.g. ``dist.group.WORLD``) to
            synchronize over in training, or None (local). Every rank of the group must call
            with the same layer in the same order; the statistics are those of the union of
            their batches (a rank may hold zero samples), the small-batch policy applies to
            the global count, and the running statistics, updated with the global count, are
            identical on every rank. See ``batchnorm._sync`` and docs/distributed.md.

    Shape:
        input (N, C, *) for ``axis=1``; output the same shape and dtype as input.

    Returns:
        The normalized tensor.

    Raises:
        TypeError: non-tensor or non-floating input or parameters.
        ValueError: rank < 2, axis out of range, a parameter with the wrong number of
            channels or on another device, eps <= 0, momentum outside [0, 1], one value per
            channel in training (``small_batch="raise"``; over all ranks when synchronized),
            missing running statistics in evaluation, a mask that does not broadcast.

    Example:
        >>> x = torch.randn(8, 3, 4, 4)
        >>> rm, rv = torch.zeros(3), torch.ones(3)
        >>> y = batch_norm(x, rm, rv, training=True)
    """
    axis = _check_inputs(
        input,
        running_mean,
        running_var,
        weight,
        bias,
        training,
        momentum,
        eps,
        axis,
        check_count=False,
    )
    if small_batch not in SMALL_BATCH_POLICIES:
        raise ValueError(f"small_batch must be one of {SMALL_BATCH_POLICIES}, got {small_batch!r}")
    if mask is not None:
        mask = _prepare_mask(mask, input, axis)
    if training:
        count = input.numel() // max(input.shape[axis], 1) if mask is None else int(mask.sum())
        if process_group is not None:
            # The count that matters is the global one, known after the statistics' collective;
            # every rank sees the same, so every rank takes the same branch (no hang).
            y, mean, var, count = _BatchNormTrain.apply(
                input, weight, bias, eps, axis, mask, correction, count, process_group
            )
            if count == 1:
                if small_batch == "raise":
                    raise _one_global_value_error(input, axis)
                if small_batch == "running":
                    return _small_batch_running(
                        input, weight, bias, running_mean, running_var, eps, axis
                    )
                return y  # "skip"
        elif count == 1:
            if small_batch == "raise":
                raise _one_value_error(input, axis, "" if mask is None else " valid")
            if small_batch == "running":
                return _small_batch_running(
                    input, weight, bias, running_mean, running_var, eps, axis
                )
            # "skip": Algorithm 1 as written (var = 0, y = beta), no running update.
            return _BatchNormTrain.apply(input, weight, bias, eps, axis, mask, correction, count)[0]
        else:
            y, mean, var = _apply(
                _BatchNormTrain, input, weight, bias, eps, axis, mask, correction, count
            )
        if running_mean is not None and count > 0:
            update_running_stats(
                running_mean,
                running_var,
                mean,
                var,
                count,
                momentum,
                num_batches_tracked=num_batches_tracked,
                store_unbiased=store_unbiased,
                skipped_updates=skipped_updates,
            )
        return y
    return _apply(_BatchNormEval, input, weight, bias, running_mean, running_var, eps, axis)


# --------------------------------------------------------------------------- TF-style pieces


def moments(x: Tensor, axes: Sequence[int], keepdims: bool = False) -> tuple[Tensor, Tensor]:
    """Mean and biased variance of ``x`` over ``axes``, as ``tf.nn.moments``.

    Computed stably (Welford/Chan, float32 accumulation for half inputs) and returned in
    ``x``'s dtype. Differentiable.

    Args:
        x: a floating-point tensor.
        axes: the axes to reduce, e.g. ``[0]`` for (N, C) or ``[0, 1, 2]`` for NHWC.
        keepdims: keep the reduced axes with size 1.

    Returns:
        ``(mean, variance)``.

    Example:
        >>> mean, var = moments(torch.randn(8, 4, 4, 3), axes=[0, 1, 2])
    """
    if not isinstance(x, Tensor) or not x.is_floating_point():
        raise TypeError(
            f"moments expects a floating-point tensor, got {getattr(x, 'dtype', type(x))}"
        )
    axes = tuple(_normalize_axis(a, x.ndim) for a in axes)
    if not axes:
        raise ValueError("moments needs at least one axis to reduce over, got axes=[]")
    var, mean = torch.var_mean(x.to(acc_dtype(x.dtype)), dim=axes, correction=0, keepdim=keepdims)
    return mean.to(x.dtype), var.to(x.dtype)


def batch_normalization(
    x: Tensor,
    mean: Tensor,
    variance: Tensor,
    offset: Tensor | None,
    scale: Tensor | None,
    variance_epsilon: float,
) -> Tensor:
    """``(x - mean) / sqrt(variance + variance_epsilon) * scale + offset``, as ``tf.nn.batch_normalization``.

    Statistics are given, not computed: this is the normalize step alone, with broadcasting.
    Unlike TensorFlow's ``x * inv + (offset - mean * inv)``, the mean is subtracted first,
    which keeps digits when ``|mean| >> std`` (§9 of docs/math.md).

    Args:
        x: input tensor.
        mean, variance: tensors broadcastable to ``x`` (e.g. from :func:`moments` with keepdims).
        offset: beta, broadcastable to ``x``, or None.
        scale: gamma, broadcastable to ``x``, or None.
        variance_epsilon: added to the variance; must be > 0.

    Returns:
        The normalized tensor, in ``x``'s dtype.
    """
    if not variance_epsilon > 0:
        raise ValueError(
            f"variance_epsilon must be > 0, got {variance_epsilon} (Keras's default is 1e-3)"
        )
    inv = torch.rsqrt(variance + variance_epsilon)
    if scale is not None:
        inv = inv * scale
    y = (x - mean) * inv
    return y + offset if offset is not None else y
