"""The portable implementation of the four primitives, in torch ops.

It runs on every device and dtype, is differentiable (the double backward of the core
op is built from it), and is the fallback of every faster kernel. Equation numbers
refer to ``docs/math.md``.
"""

from __future__ import annotations

import torch


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """Accumulation dtype: float64 for float64 input, float32 for everything else."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def reduce_dims(ndim: int, axis: int) -> tuple[int, ...]:
    """Every axis but the channel axis (``axis`` already non-negative)."""
    return tuple(d for d in range(ndim) if d != axis)


def per_channel(v: torch.Tensor, ndim: int, axis: int) -> torch.Tensor:
    """View a (C,) vector so that it broadcasts along ``axis`` of a rank-``ndim`` tensor."""
    shape = [1] * ndim
    shape[axis] = -1
    return v.reshape(shape)


def center(x: torch.Tensor, axis: int, mean: torch.Tensor) -> torch.Tensor:
    """``x - mean`` per channel in the accumulation dtype, without losing digits of the mean.

    ``mean`` is float64; it is split into ``hi + lo`` in the accumulation dtype and the
    difference is taken as ``(x - hi) - lo`` (§9 of docs/math.md). ``x - hi`` is exact when x is within a
    factor 2 of ``hi`` (Sterbenz), which is the |mean| >> std case where a single-precision
    mean would shift every output by up to ulp(mean) / (2 std).
    """
    acc = acc_dtype(x.dtype)
    hi = mean.to(acc)
    x_mu = x.to(acc) - per_channel(hi, x.ndim, axis)
    if acc != mean.dtype:
        lo = (mean - hi.to(mean.dtype)).to(acc)
        x_mu = x_mu - per_channel(lo, x.ndim, axis)
    return x_mu


def scale_shift(
    inv_std: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``scale = gamma * inv_std`` and ``shift = beta`` in the statistics' dtype: the normalize
    step's per-channel map (eq. 3-4) for the core and for any kernel's fallback."""
    scale = inv_std if weight is None else weight.to(inv_std.dtype) * inv_std
    shift = torch.zeros_like(inv_std) if bias is None else bias.to(inv_std.dtype)
    return scale, shift


def dx_coefficients(
    inv_std: torch.Tensor,
    weight: torch.Tensor | None,
    sum_dy: torch.Tensor,
    sum_dy_xmu: torch.Tensor,
    count: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """eq. 12's per-channel ``k = gamma * inv_std``, ``mean_dy = sum_dy / m`` and
    ``proj = sum_dy_xmu / m * inv_std^2`` for :func:`backward_elemt`."""
    k = inv_std if weight is None else weight.to(inv_std.dtype) * inv_std
    return k, sum_dy / count, sum_dy_xmu / count * inv_std * inv_std


def stats(x: torch.Tensor, axis: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean (eq. 1, float64) and biased variance (eq. 2, accumulation dtype).

    Shifted by one sample per channel, ``K``: ``x - K`` has the variance of ``x``, is exact
    when x is near K, and its mean is small, so ``mean = K + mean(x - K)`` keeps the digits
    a float32 mean of 1e4 would drop. ``torch.var_mean`` is a Welford/Chan reduction: a
    constant channel gives var == 0 and mean == K exactly. Differentiable in ``x``.
    """
    acc = acc_dtype(x.dtype)
    dims = reduce_dims(x.ndim, axis)
    xa = x.to(acc)
    k = xa[tuple(slice(None) if d == axis else 0 for d in range(x.ndim))]  # (C,)
    var, mean_d = torch.var_mean(xa - per_channel(k, x.ndim, axis), dim=dims, correction=0)
    return k.to(torch.float64) + mean_d.to(torch.float64), var


def normalize(
    x: torch.Tensor, axis: int, mean: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor
) -> torch.Tensor:
    """``y = (x - mean) * scale + shift`` per channel (eq. 3-4), output in x's dtype.

    The mean is subtracted before scaling: ``x * scale + (shift - mean * scale)`` loses
    every digit of a channel whose |mean| is much larger than its std (§9 of docs/math.md).
    """
    acc = acc_dtype(x.dtype)

    def pc(v: torch.Tensor) -> torch.Tensor:
        return per_channel(v.to(acc), x.ndim, axis)

    return torch.addcmul(pc(shift), center(x, axis, mean), pc(scale)).to(x.dtype)


def backward_reduce(
    dy: torch.Tensor, x: torch.Tensor, axis: int, mean: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """``sum(dy)`` and ``sum(dy * (x - mean))`` per channel, in the accumulation dtype."""
    acc = acc_dtype(x.dtype)
    dims = reduce_dims(x.ndim, axis)
    dy_a = dy.to(acc)
    return dy_a.sum(dims), (dy_a * center(x, axis, mean)).sum(dims)


def backward_elemt(
    dy: torch.Tensor,
    x: torch.Tensor,
    axis: int,
    mean: torch.Tensor,
    k: torch.Tensor,
    mean_dy: torch.Tensor,
    proj: torch.Tensor,
) -> torch.Tensor:
    """``dx = k * (dy - mean_dy - (x - mean) * proj)`` per channel (eq. 12), in x's dtype."""
    acc = acc_dtype(x.dtype)

    def pc(v: torch.Tensor) -> torch.Tensor:
        return per_channel(v.to(acc), x.ndim, axis)

    dx = (dy.to(acc) - pc(mean_dy) - center(x, axis, mean) * pc(proj)) * pc(k)
    return dx.to(x.dtype)


def masked_stats(
    x: torch.Tensor, axis: int, mask: torch.Tensor, count: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean (float64) and biased variance over the positions where ``mask`` is True.

    ``mean = sum(mask * x) / count``, ``var = sum(mask * (x - mean)^2) / count`` (eq. 1-2 over
    the valid positions only). Two passes: the sum of the mean is taken in float64 (a float32
    sum would lose the digits a channel with |mean| >> std needs) and the squared deviations
    use :func:`center`. ``mask`` is boolean and broadcasts to ``x`` with size 1 along ``axis``;
    ``count`` is the number of valid values per channel (> 0). Differentiable in ``x``.
    """
    dims = reduce_dims(x.ndim, axis)
    m64 = mask.to(torch.float64)
    mean = (x.to(torch.float64) * m64).sum(dims) / count  # (C,) float64
    acc = acc_dtype(x.dtype)
    var = (center(x, axis, mean).square() * mask.to(acc)).sum(dims) / count  # (C,) biased
    return mean, var
