"""NumPy float64 reference of batch normalization: the paper, line by line.

This module is the oracle every other implementation in the package is tested against. It
follows Ioffe & Szegedy (2015), Algorithms 1 and 2, and the derivation in ``docs/math.md``,
whose equation numbers the comments cite as ``# (eq. N)``. It favours readability over
speed, computes everything in float64 and never imports torch.

Layout: ``x`` has a channel axis ``axis`` (1 for NCHW, -1 for NHWC; negative values count
from the end). Statistics reduce over every other axis, so a channel holds
``m = x.size // C`` values, and per-channel arrays (``gamma``, ``beta``, ``mean``, ``var``)
have shape ``(C,)``.

Conventions (PyTorch's unless an argument says otherwise):
    training normalizes with the biased variance ``var = mean((x - mean)**2)``;
    ``running = (1 - momentum) * running + momentum * batch`` (``convention="torch"``) or
    ``running = momentum * running + (1 - momentum) * batch`` (``convention="keras"``);
    the running variance stores ``var * m / (m - 1)`` (unbiased) when ``store_unbiased``;
    ``eps`` sits inside the square root: ``inv_std = 1 / sqrt(var + eps)``.
"""

from __future__ import annotations

import operator
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

__all__ = [
    "moments",
    "batch_norm_forward",
    "batch_norm_backward_chain",
    "batch_norm_backward",
    "running_update",
    "cumulative_update",
    "unbiased",
    "population_statistics",
    "pooled_statistics",
    "inference_affine",
    "batch_norm_inference",
    "batch_norm_train_step",
]

Array = NDArray[np.float64]

_CONVENTIONS = ("torch", "keras")


# --------------------------------------------------------------------------------------
# Private helpers: layout and validation
# --------------------------------------------------------------------------------------


def _as_f64(a: ArrayLike) -> Array:
    return np.asarray(a, dtype=np.float64)


def _channel_axis(x: Array, axis: int) -> int:
    """Return ``axis`` as a non-negative index into ``x.shape``, or raise."""
    try:
        axis = operator.index(axis)
    except TypeError:
        raise TypeError(
            f"axis must be an int (the channel axis), got {type(axis).__name__} {axis!r}"
        ) from None
    if x.ndim < 1:
        raise ValueError(
            f"x must have at least 1 dimension (a channel axis), got a {x.ndim}-d array; "
            "pass an array shaped (N, C, ...) or (..., C)"
        )
    if not -x.ndim <= axis < x.ndim:
        raise ValueError(
            f"axis={axis} is out of range for x of shape {x.shape} ({x.ndim} dims); "
            f"pass an axis in [{-x.ndim}, {x.ndim - 1}], e.g. 1 for NCHW or -1 for NHWC"
        )
    return axis % x.ndim


def _reduce_axes(x: Array, axis: int) -> tuple[int, ...]:
    # Every axis except the channel axis: batch and all spatial / temporal positions.
    return tuple(i for i in range(x.ndim) if i != axis)


def _per_channel(v: Array, x: Array, axis: int) -> Array:
    """Reshape a (C,) vector so that it broadcasts against ``x`` along ``axis``."""
    shape = [1] * x.ndim
    shape[axis] = x.shape[axis]
    return v.reshape(shape)  # (1, C, 1, 1) for NCHW, (1, 1, 1, C) for NHWC


def _check_vector(name: str, v: ArrayLike | None, c: int, default: float | None = None) -> Array:
    """Validate a per-channel vector of shape (C,); ``None`` means ``default`` everywhere.

    With ``default=None`` the vector is required and ``None`` is an error.
    """
    if v is None:
        if default is None:
            raise ValueError(f"{name} is required: pass a vector of shape ({c},), got None")
        return np.full(c, default, dtype=np.float64)
    v = _as_f64(v)
    if v.shape != (c,):
        optional = "" if default is None else f" (or None for {default})"
        raise ValueError(
            f"{name} must have shape ({c},), one value per channel, got shape {v.shape}; "
            f"pass a vector of length C={c}{optional}"
        )
    return v


def _check_eps(eps: float) -> float:
    eps = float(eps)
    if not (eps >= 0.0 and np.isfinite(eps)):
        raise ValueError(
            f"eps must be a finite number >= 0 (added to the variance under the square root), "
            f"got {eps!r}; use e.g. 1e-5 (PyTorch) or 1e-3 (Keras)"
        )
    return eps


def _check_count(name: str, n: int, minimum: int, why: str) -> int:
    try:
        n = operator.index(n)
    except TypeError:
        raise TypeError(f"{name} must be an int, got {type(n).__name__} {n!r}") from None
    if n < minimum:
        raise ValueError(f"{name} must be >= {minimum} ({why}), got {name}={n}")
    return n


def _check_momentum(momentum: float | None) -> float:
    if momentum is None:
        raise ValueError(
            "momentum=None (cumulative average) is not an exponential moving average; "
            "call cumulative_update(running, batch, n) instead, or pass a momentum in [0, 1]"
        )
    momentum = float(momentum)
    if not 0.0 <= momentum <= 1.0:
        raise ValueError(
            f"momentum must be in [0, 1], got {momentum!r}; PyTorch's default is 0.1 "
            "(weight of the new batch), Keras's is 0.99 (weight of the old value)"
        )
    return momentum


# --------------------------------------------------------------------------------------
# Algorithm 1: statistics, forward, backward
# --------------------------------------------------------------------------------------


def moments(x: ArrayLike, axis: int = 1) -> tuple[Array, Array]:
    """Per-channel mean and biased variance, in two passes.

    mean = 1/m * sum_i x_i                (eq. 1)
    var  = 1/m * sum_i (x_i - mean)**2    (eq. 2)

    The variance is the mean of squared deviations from the already computed mean, never
    ``E[x**2] - E[x]**2``, which cancels catastrophically when ``|mean| >> std``
    (docs/math.md, section 9).

    Args:
        x: input array with a channel axis.
        axis: the channel axis (may be negative). Statistics reduce over all other axes.

    Shape:
        x: (N, C, *) for axis=1, (*, C) for axis=-1. Outputs: (C,).

    Returns:
        ``(mean, var)``, both float64 of shape (C,); ``var`` is biased (divided by m).

    Raises:
        ValueError: if ``axis`` is out of range or a channel holds no values.

    Example:
        >>> mean, var = moments(np.arange(6.0).reshape(3, 2), axis=1)
        >>> mean.tolist(), var.tolist()
        ([2.0, 3.0], [2.6666666666666665, 2.6666666666666665])
    """
    x = _as_f64(x)
    axis = _channel_axis(x, axis)
    axes = _reduce_axes(x, axis)
    c = x.shape[axis]
    m = x.size // c if c else 0
    if m == 0:
        raise ValueError(
            f"x of shape {x.shape} has no values per channel (m=0 along axes {axes}); "
            "pass a non-empty batch"
        )
    mean = x.mean(axis=axes)  # (eq. 1) (C,)
    var = ((x - _per_channel(mean, x, axis)) ** 2).mean(axis=axes)  # (eq. 2) (C,)
    return mean, var


def batch_norm_forward(
    x: ArrayLike,
    gamma: ArrayLike | None = None,
    beta: ArrayLike | None = None,
    eps: float = 1e-5,
    axis: int = 1,
) -> tuple[Array, dict[str, Any]]:
    """Algorithm 1: normalize with the batch's own statistics, then scale and shift.

    mean    = 1/m * sum_i x_i                (eq. 1)
    var     = 1/m * sum_i (x_i - mean)**2    (eq. 2, biased)
    x_hat   = (x - mean) / sqrt(var + eps)   (eq. 3)
    y       = gamma * x_hat + beta           (eq. 4)

    Training-mode BN: the output depends on the whole batch. It needs m >= 2 values per
    channel, since with m = 1 every x_hat is 0 and y is beta whatever x is.

    Args:
        x: input with a channel axis.
        gamma: per-channel scale; None means 1 (no affine scale).
        beta: per-channel shift; None means 0 (no affine shift).
        eps: added to the variance inside the square root.
        axis: the channel axis (may be negative).

    Shape:
        x, y: (N, C, *) for axis=1, (*, C) for axis=-1. gamma, beta: (C,).

    Returns:
        ``(y, cache)``. ``cache`` holds what the backward needs: ``"x"``, ``"x_hat"``,
        ``"mean"``, ``"var"`` (biased), ``"inv_std"`` = 1/sqrt(var + eps), ``"gamma"``
        (ones if None was passed), ``"eps"``, ``"axis"`` (non-negative) and ``"m"``, the
        number of values per channel.

    Raises:
        ValueError: if a channel holds fewer than 2 values, shapes disagree, ``axis`` is out
            of range or ``eps`` < 0.

    Example:
        >>> y, cache = batch_norm_forward(np.array([[1.0], [3.0]]), eps=0.0)
        >>> y.ravel().tolist(), cache["m"]
        ([-1.0, 1.0], 2)
    """
    x = _as_f64(x)
    axis = _channel_axis(x, axis)
    eps = _check_eps(eps)
    c = x.shape[axis]
    m = x.size // c if c else 0
    if m < 2:
        raise ValueError(
            f"training batch norm needs m >= 2 values per channel, got m={m} for x of shape "
            f"{x.shape} with channel axis {axis}: with one value x_hat is 0 and the output "
            "ignores x; use a batch of at least 2, or inference mode (batch_norm_inference)"
        )
    gamma = _check_vector("gamma", gamma, c, 1.0)
    beta = _check_vector("beta", beta, c, 0.0)

    mean, var = moments(x, axis)  # (eq. 1), (eq. 2) (C,), (C,)
    inv_std = 1.0 / np.sqrt(var + eps)  # (C,) eps keeps a constant channel finite
    x_hat = (x - _per_channel(mean, x, axis)) * _per_channel(inv_std, x, axis)  # (eq. 3)
    y = _per_channel(gamma, x, axis) * x_hat + _per_channel(beta, x, axis)  # (eq. 4)

    cache = {
        "x": x,
        "x_hat": x_hat,
        "mean": mean,
        "var": var,
        "inv_std": inv_std,
        "gamma": gamma,
        "eps": eps,
        "axis": axis,
        "m": m,
    }
    return y, cache


def _check_dy(dy: ArrayLike, cache: dict[str, Any]) -> Array:
    dy = _as_f64(dy)
    if dy.shape != cache["x"].shape:
        raise ValueError(
            f"dy must have the shape of x, {cache['x'].shape}, got {dy.shape}; pass the "
            "gradient of the loss with respect to y from the same forward call"
        )
    return dy


def batch_norm_backward_chain(dy: ArrayLike, cache: dict[str, Any]) -> tuple[Array, Array, Array]:
    """Gradients of Algorithm 1 by the paper's chain rule, one intermediate at a time.

    dx_hat = dy * gamma                                                        (eq. 5)
    dvar   = sum(dx_hat * (x - mean)) * (-1/2) * (var + eps)**(-3/2)           (eq. 6)
    dmean  = sum(dx_hat * -inv_std) + dvar * sum(-2 * (x - mean)) / m          (eq. 7)
    dx     = dx_hat * inv_std + dvar * 2 * (x - mean) / m + dmean / m          (eq. 8)
    dgamma = sum(dy * x_hat)                                                   (eq. 9)
    dbeta  = sum(dy)                                                           (eq. 10)

    Sums run over the m values of each channel. This is the slow, literal form; it is
    kept as a second oracle for :func:`batch_norm_backward`.

    Args:
        dy: gradient of the loss with respect to y.
        cache: the cache returned by :func:`batch_norm_forward`.

    Shape:
        dy, dx: the shape of x. dgamma, dbeta: (C,).

    Returns:
        ``(dx, dgamma, dbeta)``.

    Raises:
        ValueError: if ``dy`` does not have the shape of x.
    """
    dy = _check_dy(dy, cache)
    x, mean, var, inv_std = cache["x"], cache["mean"], cache["var"], cache["inv_std"]
    gamma, eps, axis, m = cache["gamma"], cache["eps"], cache["axis"], cache["m"]
    axes = _reduce_axes(x, axis)

    def bc(v: Array) -> Array:
        return _per_channel(v, x, axis)

    x_mu = x - bc(mean)  # (N, C, *) deviations from the batch mean
    dx_hat = dy * bc(gamma)  # (eq. 5)
    dvar = (dx_hat * x_mu).sum(axis=axes) * -0.5 * (var + eps) ** -1.5  # (eq. 6) (C,)
    # (eq. 7) (C,); its second term is 0 up to rounding (deviations sum to 0), kept as in
    # the paper so that this function stays a literal transcription
    dmean = (dx_hat * -bc(inv_std)).sum(axis=axes) + dvar * (-2.0 * x_mu).sum(axis=axes) / m
    dx = dx_hat * bc(inv_std) + bc(dvar) * 2.0 * x_mu / m + bc(dmean) / m  # (eq. 8)
    dgamma = (dy * cache["x_hat"]).sum(axis=axes)  # (eq. 9) (C,)
    dbeta = dy.sum(axis=axes)  # (eq. 10) (C,)
    return dx, dgamma, dbeta


def batch_norm_backward(dy: ArrayLike, cache: dict[str, Any]) -> tuple[Array, Array, Array]:
    """Gradients of Algorithm 1 in the simplified three-term form.

    dx_hat = dy * gamma                                                            (eq. 5)
    dx     = inv_std / m * (m * dx_hat - sum(dx_hat) - x_hat * sum(dx_hat * x_hat))  (eq. 11)
    dgamma = sum(dy * x_hat)                                                       (eq. 9)
    dbeta  = sum(dy)                                                               (eq. 10)

    Sums run over the m values of each channel. Equal to
    :func:`batch_norm_backward_chain` in exact arithmetic (docs/math.md, section 3), with
    two reductions instead of four; ``sum(dx)`` is 0 for every channel.

    Args:
        dy: gradient of the loss with respect to y.
        cache: the cache returned by :func:`batch_norm_forward`.

    Shape:
        dy, dx: the shape of x. dgamma, dbeta: (C,).

    Returns:
        ``(dx, dgamma, dbeta)``.

    Raises:
        ValueError: if ``dy`` does not have the shape of x.
    """
    dy = _check_dy(dy, cache)
    x_hat, inv_std, gamma = cache["x_hat"], cache["inv_std"], cache["gamma"]
    axis, m = cache["axis"], cache["m"]
    axes = _reduce_axes(x_hat, axis)

    def bc(v: Array) -> Array:
        return _per_channel(v, x_hat, axis)

    dx_hat = dy * bc(gamma)  # (eq. 5)
    sum_dx_hat = dx_hat.sum(axis=axes)  # (C,)
    sum_dx_hat_x_hat = (dx_hat * x_hat).sum(axis=axes)  # (C,)
    dx = bc(inv_std / m) * (m * dx_hat - bc(sum_dx_hat) - x_hat * bc(sum_dx_hat_x_hat))  # (eq. 11)
    dgamma = (dy * x_hat).sum(axis=axes)  # (eq. 9) (C,)
    dbeta = dy.sum(axis=axes)  # (eq. 10) (C,)
    return dx, dgamma, dbeta


# --------------------------------------------------------------------------------------
# Running and population statistics
# --------------------------------------------------------------------------------------


def running_update(
    running: ArrayLike, batch: ArrayLike, momentum: float, convention: str = "torch"
) -> Array:
    """One exponential-moving-average step of a running statistic.

    convention="torch":  new = (1 - momentum) * running + momentum * batch   (eq. 13)
    convention="keras":  new = momentum * running + (1 - momentum) * batch   (eq. 14)

    PyTorch's momentum (default 0.1) weights the new batch, Keras/Flax's (default 0.99) the
    old value, so Keras momentum 0.9 equals PyTorch momentum 0.1.

    Args:
        running: current running value (mean or variance).
        batch: this batch's statistic; for the variance, already in the convention's form
            (unbiased for PyTorch, biased for Keras).
        momentum: in [0, 1], meaning set by ``convention``.
        convention: ``"torch"`` or ``"keras"``.

    Shape:
        running, batch, output: (C,) (any equal shapes work).

    Returns:
        The new running value, float64; the inputs are not modified.

    Raises:
        ValueError: for an unknown convention, momentum None or outside [0, 1], or
            mismatched shapes.
    """
    if convention not in _CONVENTIONS:
        raise ValueError(
            f"convention must be one of {_CONVENTIONS}, got {convention!r}; 'torch' means "
            "new = (1 - momentum) * running + momentum * batch, 'keras' means "
            "new = momentum * running + (1 - momentum) * batch"
        )
    momentum = _check_momentum(momentum)
    running, batch = _as_f64(running), _as_f64(batch)
    if running.shape != batch.shape:
        raise ValueError(
            f"running and batch must have the same shape, got {running.shape} and "
            f"{batch.shape}; pass one value per channel for both"
        )
    if convention == "torch":
        return (1.0 - momentum) * running + momentum * batch  # (eq. 13)
    return momentum * running + (1.0 - momentum) * batch  # (eq. 14)


def cumulative_update(running: ArrayLike, batch: ArrayLike, n: int) -> Array:
    """One step of the cumulative (equal-weight) average, PyTorch's ``momentum=None``.

    new = running + (batch - running) / n    (eq. 15)

    where ``n`` counts the batches seen *including* this one, so after batches b_1..b_n the
    result is their plain mean (1/n) * sum_t b_t. With n = 1 the result is ``batch``.

    Args:
        running: the average of the previous n - 1 batch values.
        batch: this batch's statistic.
        n: number of batches including this one, n >= 1.

    Shape:
        running, batch, output: (C,) (any equal shapes work).

    Returns:
        The new running average, float64.

    Raises:
        ValueError: if n < 1 or the shapes differ.
    """
    n = _check_count("n", n, 1, "the count of batches including this one")
    running, batch = _as_f64(running), _as_f64(batch)
    if running.shape != batch.shape:
        raise ValueError(
            f"running and batch must have the same shape, got {running.shape} and "
            f"{batch.shape}; pass one value per channel for both"
        )
    return running + (batch - running) / n  # (eq. 15)


def unbiased(var: ArrayLike, m: int) -> Array:
    """Bessel's correction of a biased variance computed from m values.

    var_unbiased = var * m / (m - 1)    (eq. 16)

    Args:
        var: biased variance (divided by m).
        m: number of values it was computed from, m >= 2.

    Returns:
        The unbiased variance, float64, same shape as ``var``.

    Raises:
        ValueError: if m < 2 (one value has no unbiased variance).
    """
    m = _check_count("m", m, 2, "values per channel; one value has no unbiased variance")
    return _as_f64(var) * m / (m - 1)  # (eq. 16)


def population_statistics(
    batch_means: ArrayLike, batch_vars: ArrayLike, m: int
) -> tuple[Array, Array]:
    """Algorithm 2: population statistics from equal-size training batches.

    E[x]   = mean over batches of mean_B                   (eq. 17)
    Var[x] = m / (m - 1) * mean over batches of var_B      (eq. 18)

    ``var_B`` are the biased batch variances of Algorithm 1, each computed from m values;
    the factor m / (m - 1) makes the estimate unbiased (docs/math.md, section 5). For
    batches of unequal size use :func:`pooled_statistics`.

    Args:
        batch_means: per-batch means.
        batch_vars: per-batch biased variances.
        m: values per channel in each batch, m >= 2.

    Shape:
        batch_means, batch_vars: (num_batches, C). Outputs: (C,).

    Returns:
        ``(mean, var)``, with ``var`` unbiased.

    Raises:
        ValueError: if shapes are not (num_batches, C) with num_batches >= 1, or m < 2.
    """
    batch_means, batch_vars = _as_f64(batch_means), _as_f64(batch_vars)
    if batch_means.ndim != 2 or batch_means.shape != batch_vars.shape or not batch_means.shape[0]:
        raise ValueError(
            "batch_means and batch_vars must both have shape (num_batches, C) with "
            f"num_batches >= 1, got {batch_means.shape} and {batch_vars.shape}; stack one row "
            "of per-channel statistics per batch"
        )
    mean = batch_means.mean(axis=0)  # (eq. 17) (C,)
    var = unbiased(batch_vars.mean(axis=0), m)  # (eq. 18) (C,)
    return mean, var


def pooled_statistics(
    counts: ArrayLike, means: ArrayLike, vars: ArrayLike
) -> tuple[Array, Array, Array]:
    """Exact statistics of the concatenation of batches of unequal sizes (Chan et al.).

    Merging batch b into the running pool a, with M2 = count * biased variance:

    n     = n_a + n_b;  delta = mean_b - mean_a;  mean = mean_a + delta * n_b / n   (eq. 19)
    M2    = M2_a + M2_b + delta**2 * n_a * n_b / n                                (eq. 20)
    var_biased = M2 / N;  var_unbiased = M2 / (N - 1)                             (eq. 21)

    The result equals :func:`moments` of ``np.concatenate`` of the batches (up to
    rounding), without ever forming ``E[x**2] - E[x]**2``. Batches with count 0 contribute
    nothing.

    Args:
        counts: values per channel in each batch, integers >= 0, with total N >= 2.
        means: per-batch means.
        vars: per-batch biased variances.

    Shape:
        counts: (num_batches,). means, vars: (num_batches, C). Outputs: (C,).

    Returns:
        ``(mean, var_biased, var_unbiased)``.

    Raises:
        ValueError: for mismatched shapes, negative or non-integer counts, or a total count
            below 2 (the unbiased variance needs two values).
    """
    counts_arr = np.asarray(counts)
    means, vars = _as_f64(means), _as_f64(vars)
    if (
        counts_arr.ndim != 1
        or means.ndim != 2
        or means.shape != vars.shape
        or means.shape[0] != counts_arr.shape[0]
    ):
        raise ValueError(
            "counts must have shape (num_batches,) and means, vars shape (num_batches, C), "
            f"got {counts_arr.shape}, {means.shape} and {vars.shape}; pass one count and one "
            "row of per-channel statistics per batch"
        )
    if counts_arr.size and (
        not np.all(np.equal(np.mod(counts_arr, 1), 0)) or np.any(counts_arr < 0)
    ):
        raise ValueError(
            f"counts must be non-negative integers (values per channel), got {counts_arr.tolist()}"
        )
    total = int(counts_arr.sum())
    _check_count("sum(counts)", total, 2, "the pooled unbiased variance needs two values")

    n_a = 0
    mean_a = np.zeros(means.shape[1])  # (C,)
    m2_a = np.zeros(means.shape[1])  # (C,)
    for n_b, mean_b, var_b in zip(counts_arr.tolist(), means, vars, strict=True):
        n_b = int(n_b)
        if n_b == 0:
            continue  # an empty batch has no mean; skipping it is exact
        n = n_a + n_b
        delta = mean_b - mean_a  # (eq. 19)
        mean_a = mean_a + delta * n_b / n  # (eq. 19)
        m2_a = m2_a + n_b * var_b + delta**2 * n_a * n_b / n  # (eq. 20)
        n_a = n
    var_biased = m2_a / total  # (eq. 21)
    var_unbiased = m2_a / (total - 1)  # (eq. 21)
    return mean_a, var_biased, var_unbiased


# --------------------------------------------------------------------------------------
# Inference and one training step
# --------------------------------------------------------------------------------------


def inference_affine(
    mean: ArrayLike,
    var: ArrayLike,
    gamma: ArrayLike | None = None,
    beta: ArrayLike | None = None,
    eps: float = 1e-5,
) -> tuple[Array, Array]:
    """The per-channel affine map that BN becomes once its statistics are fixed.

    scale = gamma / sqrt(var + eps);  shift = beta - mean * scale    (eq. 23)

    so that y = x * scale + shift (eq. 24). Folding into a preceding layer uses the same
    pair: W' = W * scale per output channel, b' = (b - mean) * scale + beta (eq. 25).

    Args:
        mean: per-channel mean (running or population).
        var: per-channel variance, as stored (unbiased for PyTorch, biased for Keras).
        gamma: per-channel scale; None means 1.
        beta: per-channel shift; None means 0.
        eps: added to the variance inside the square root.

    Shape:
        all inputs and outputs: (C,).

    Returns:
        ``(scale, shift)``.

    Raises:
        ValueError: for mismatched shapes, eps < 0, or var + eps <= 0 somewhere.
    """
    mean, var = _as_f64(mean), _as_f64(var)
    if mean.ndim != 1 or mean.shape != var.shape:
        raise ValueError(
            f"mean and var must both have shape (C,), got {mean.shape} and {var.shape}; "
            "pass one value per channel"
        )
    eps = _check_eps(eps)
    c = mean.shape[0]
    gamma = _check_vector("gamma", gamma, c, 1.0)
    beta = _check_vector("beta", beta, c, 0.0)
    if not np.all(var + eps > 0):
        raise ValueError(
            f"var + eps must be > 0 for every channel, got var={var.tolist()} with eps={eps}; "
            "pass a non-negative variance and eps > 0"
        )
    scale = gamma / np.sqrt(var + eps)  # (eq. 23) (C,)
    shift = beta - mean * scale  # (eq. 23) (C,)
    return scale, shift


def batch_norm_inference(
    x: ArrayLike,
    mean: ArrayLike,
    var: ArrayLike,
    gamma: ArrayLike | None = None,
    beta: ArrayLike | None = None,
    eps: float = 1e-5,
    axis: int = 1,
) -> Array:
    """Inference-mode BN: the fixed affine map of eq. 23, applied mean-first.

    y = (x - mean) * scale + beta,  scale = gamma / sqrt(var + eps)    (eq. 24)

    Equal to ``x * scale + shift`` in exact arithmetic, but subtracting the mean first
    avoids the cancellation of two large products when |mean| >> std (docs/math.md,
    section 9). Given the batch's own (biased) mean and var it reproduces
    :func:`batch_norm_forward`.

    Args:
        x: input with a channel axis.
        mean: per-channel mean (running or population).
        var: per-channel variance, as stored.
        gamma: per-channel scale; None means 1.
        beta: per-channel shift; None means 0.
        eps: added to the variance inside the square root.
        axis: the channel axis (may be negative).

    Shape:
        x, y: (N, C, *) for axis=1, (*, C) for axis=-1. mean, var, gamma, beta: (C,).

    Returns:
        ``y``, float64, shaped like x.

    Raises:
        ValueError: for mismatched shapes, an out-of-range axis or an invalid variance.
    """
    x = _as_f64(x)
    axis = _channel_axis(x, axis)
    c = x.shape[axis]
    mean = _check_vector("mean", mean, c)
    var = _check_vector("var", var, c)
    beta = _check_vector("beta", beta, c, 0.0)
    scale, _shift = inference_affine(mean, var, gamma, beta, eps)  # (eq. 23)
    return (x - _per_channel(mean, x, axis)) * _per_channel(scale, x, axis) + _per_channel(
        beta, x, axis
    )  # (eq. 24)


def batch_norm_train_step(
    x: ArrayLike,
    gamma: ArrayLike | None,
    beta: ArrayLike | None,
    running_mean: ArrayLike,
    running_var: ArrayLike,
    momentum: float = 0.1,
    eps: float = 1e-5,
    axis: int = 1,
    convention: str = "torch",
    store_unbiased: bool = True,
) -> tuple[Array, Array, Array]:
    """One training step: Algorithm 1 forward, then the running-statistics update.

    y                = gamma * (x - mean) / sqrt(var + eps) + beta                    (eqs. 1-4)
    var_store        = var * m / (m - 1) if store_unbiased else var                   (eq. 16)
    new_running_mean = EMA(running_mean, mean)                                        (eq. 13/14)
    new_running_var  = EMA(running_var, var_store)                                    (eq. 13/14)

    with EMA(r, b) = (1 - momentum) * r + momentum * b for ``convention="torch"`` and
    momentum * r + (1 - momentum) * b for ``convention="keras"``. PyTorch's defaults are
    momentum=0.1, store_unbiased=True; Keras's are momentum=0.99, store_unbiased=False,
    eps=1e-3, axis=-1. The output is normalized with the biased variance either way.

    Args:
        x: input with a channel axis, m >= 2 values per channel.
        gamma: per-channel scale; None means 1.
        beta: per-channel shift; None means 0.
        running_mean: current running mean.
        running_var: current running variance.
        momentum: EMA momentum in [0, 1], meaning set by ``convention``. None (cumulative
            average) is not accepted here: use :func:`cumulative_update`.
        eps: added to the variance inside the square root.
        axis: the channel axis (may be negative).
        convention: ``"torch"`` or ``"keras"``.
        store_unbiased: store var * m / (m - 1) (PyTorch, the paper) or the biased var
            (Keras, Flax).

    Shape:
        x, y: (N, C, *) for axis=1, (*, C) for axis=-1. Per-channel arrays: (C,).

    Returns:
        ``(y, new_running_mean, new_running_var)``; the inputs are not modified.

    Raises:
        ValueError: for momentum None or outside [0, 1], an unknown convention, m < 2, or
            mismatched shapes.
    """
    _check_momentum(momentum)
    if convention not in _CONVENTIONS:
        raise ValueError(
            f"convention must be one of {_CONVENTIONS}, got {convention!r}; use 'torch' "
            "(momentum weights the new batch) or 'keras' (momentum weights the old value)"
        )
    y, cache = batch_norm_forward(x, gamma, beta, eps, axis)  # (eqs. 1-4)
    c = cache["x"].shape[cache["axis"]]
    running_mean = _check_vector("running_mean", running_mean, c)
    running_var = _check_vector("running_var", running_var, c)
    var_store = unbiased(cache["var"], cache["m"]) if store_unbiased else cache["var"]  # (eq. 16)
    new_running_mean = running_update(running_mean, cache["mean"], momentum, convention)
    new_running_var = running_update(running_var, var_store, momentum, convention)
    return y, new_running_mean, new_running_var
