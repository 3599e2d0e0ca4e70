"""The fast CPU kernel set: ``cpu.cpp`` behind ``torch.library`` custom ops.

Each primitive of :mod:`batchnorm.kernels` is one custom op (``batchnorm::cpu_stats``,
``batchnorm::cpu_normalize``, ``batchnorm::cpu_backward_reduce``,
``batchnorm::cpu_backward_elemt``), and so are the two optional entries that build the
per-channel vectors in the call (``batchnorm::cpu_normalize_stats``,
``batchnorm::cpu_backward_elemt_stats``), each with a fake (meta) implementation, so
``torch.compile`` and ``torch.export`` see them as opaque nodes with known output shapes;
the core's autograd Function calls them through :func:`batchnorm.kernels.get`.
:func:`running_update` is the running-statistics update in one call (plain eager only).

Chosen for CPU tensors of float32, float64 or bfloat16 (the ops also take float16, see
``FAST_DTYPES``) that are contiguous (NCHW, NCL, NCDHW, (N, C)) or have the channel axis
innermost and the rest dense (channels-last, channels-last-3d, Keras ``axis=-1``). In plain
eager mode the implementations are called directly (:func:`_entry`). Anything else, or a machine where the library cannot
be built, gets the native torch-op kernels with the same results up to rounding.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .. import running
from . import _cpu_build, _native
from ._eager import plain_eager

_DTYPE_CODE = {torch.float32: 0, torch.float64: 1, torch.bfloat16: 2, torch.float16: 3}
# float16 runs correctly in cpu.cpp (the ops take it) but its bit-exact software conversions
# measured 2-3x slower than torch's own half kernels here, so the set declines it by default.
FAST_DTYPES = (torch.float32, torch.float64, torch.bfloat16)


def geometry(x: Tensor, axis: int) -> tuple[int, int, int] | None:
    """``(outer, C, inner)`` of a layout the kernels read, or None.

    ``inner > 1``: channel-major runs (contiguous NC*); ``inner == 1``: rows of C channels
    (channels-last or 2-D). ``axis`` is non-negative.
    """
    key = (x.shape, x.stride(), axis)
    geo = _GEOMETRY.get(key, False)
    if geo is False:
        geo = _geometry(x, axis)
        if len(_GEOMETRY) > 1024:
            _GEOMETRY.clear()
        _GEOMETRY[key] = geo
    return geo


# (shape, strides, axis) -> geometry: a layer sees the same few shapes every step, and the
# answer depends on nothing else; looking it up costs a third of working it out.
_GEOMETRY: dict = {}


def _geometry(x: Tensor, axis: int) -> tuple[int, int, int] | None:
    C = x.shape[axis]
    if x.is_contiguous():
        return math.prod(x.shape[:axis]), C, math.prod(x.shape[axis + 1 :])
    if x.stride(axis) == 1 and x.movedim(axis, -1).is_contiguous():
        return x.numel() // C, C, 1
    return None


def available() -> bool:
    """Whether the compiled library is loaded (building it on the first eager call).

    Under ``torch.compile`` only the outcome of an earlier eager call is read (building
    takes a lock, which Dynamo cannot trace): a model compiled before any eager batch norm
    in the process traces the native kernels.
    """
    state = _cpu_build._state
    if "lib" in state:
        return state["lib"] is not None
    if torch.compiler.is_compiling():
        return False
    return _cpu_build.load() is not None


def supports(x: Tensor, axis: int) -> bool:
    """True for a non-empty CPU tensor of a supported dtype and layout, once the library loads."""
    return (
        x.device.type == "cpu"
        and x.dtype in FAST_DTYPES
        and x.numel() > 0
        and geometry(x, axis) is not None
        and available()
    )


def _acc_vec(v: Tensor, acc: torch.dtype) -> Tensor:
    """``v`` as a contiguous ``acc`` vector (itself when it is one: no dispatch)."""
    if v.dtype == acc and v.is_contiguous():
        return v
    return v.to(acc).contiguous()


def _like(t: Tensor, x: Tensor) -> Tensor:
    """``t`` in ``x``'s dtype and memory layout (the kernels index both with x's geometry)."""
    if t.dtype == x.dtype and t.stride() == x.stride():
        return t
    return torch.empty_like(x).copy_(t)


# --------------------------------------------------------------------------- custom ops


def _stats_impl(x: Tensor, axis: int) -> tuple[Tensor, Tensor]:
    """Per-channel mean (float64) and biased variance (accumulation dtype); see cpu.cpp."""
    geo = geometry(x, axis)
    lib = _cpu_build.load()
    if geo is None or lib is None or x.dtype not in _DTYPE_CODE:
        mean, var = _native.stats(x, axis)
        return mean.clone(), var.clone()
    C = geo[1]
    mean = torch.empty(C, dtype=torch.float64)
    var = torch.empty(C, dtype=_native.acc_dtype(x.dtype))  # rounded from float64 in the kernel
    rc = lib.bn_stats(
        _DTYPE_CODE[x.dtype],
        x.data_ptr(),
        *geo,
        mean.data_ptr(),
        var.data_ptr(),
        torch.get_num_threads(),
    )
    assert rc == 0, rc
    return mean, var


def _stats_fake(x: Tensor, axis: int) -> tuple[Tensor, Tensor]:
    C = x.shape[axis]
    return x.new_empty(C, dtype=torch.float64), x.new_empty(C, dtype=_native.acc_dtype(x.dtype))


def _normalize_impl(x: Tensor, axis: int, mean: Tensor, scale: Tensor, shift: Tensor) -> Tensor:
    """``y = ((x - hi) - lo) * scale + shift`` per channel, in x's dtype and layout."""
    geo = geometry(x, axis)
    lib = _cpu_build.load()
    if geo is None or lib is None or x.dtype not in _DTYPE_CODE:
        return _native.normalize(x, axis, mean, scale, shift)
    acc = _native.acc_dtype(x.dtype)
    mean = _acc_vec(mean, torch.float64)
    scale, shift = _acc_vec(scale, acc), _acc_vec(shift, acc)
    y = torch.empty_like(x)
    rc = lib.bn_normalize(
        _DTYPE_CODE[x.dtype],
        x.data_ptr(),
        y.data_ptr(),
        *geo,
        mean.data_ptr(),
        scale.data_ptr(),
        shift.data_ptr(),
        torch.get_num_threads(),
    )
    assert rc == 0, rc
    return y


def _normalize_fake(x: Tensor, axis: int, mean: Tensor, scale: Tensor, shift: Tensor) -> Tensor:
    return torch.empty_like(x)


def _backward_reduce_impl(dy: Tensor, x: Tensor, axis: int, mean: Tensor) -> tuple[Tensor, Tensor]:
    """``sum(dy)`` and ``sum(dy * (x - mean))`` per channel, accumulated in float64."""
    geo = geometry(x, axis)
    lib = _cpu_build.load()
    if geo is None or lib is None or x.dtype not in _DTYPE_CODE:
        s1, s2 = _native.backward_reduce(dy, x, axis, mean)
        return s1.clone(), s2.clone()
    acc = _native.acc_dtype(x.dtype)
    dy = _like(dy, x)
    mean = _acc_vec(mean, torch.float64)
    C = geo[1]
    # Accumulated in float64, rounded to the accumulation dtype in the kernel.
    sum_dy = torch.empty(C, dtype=acc)
    sum_dy_xmu = torch.empty(C, dtype=acc)
    rc = lib.bn_backward_reduce(
        _DTYPE_CODE[x.dtype],
        dy.data_ptr(),
        x.data_ptr(),
        *geo,
        mean.data_ptr(),
        sum_dy.data_ptr(),
        sum_dy_xmu.data_ptr(),
        torch.get_num_threads(),
    )
    assert rc == 0, rc
    return sum_dy, sum_dy_xmu


def _backward_reduce_fake(dy: Tensor, x: Tensor, axis: int, mean: Tensor) -> tuple[Tensor, Tensor]:
    C = x.shape[axis]
    acc = _native.acc_dtype(x.dtype)
    return x.new_empty(C, dtype=acc), x.new_empty(C, dtype=acc)


def _backward_elemt_impl(
    dy: Tensor, x: Tensor, axis: int, mean: Tensor, k: Tensor, mean_dy: Tensor, proj: Tensor
) -> Tensor:
    """``dx = k * (dy - mean_dy - ((x - hi) - lo) * proj)`` per channel, in x's dtype and layout."""
    geo = geometry(x, axis)
    lib = _cpu_build.load()
    if geo is None or lib is None or x.dtype not in _DTYPE_CODE:
        return _native.backward_elemt(dy, x, axis, mean, k, mean_dy, proj)
    acc = _native.acc_dtype(x.dtype)
    dy = _like(dy, x)
    mean = _acc_vec(mean, torch.float64)
    k, mean_dy, proj = _acc_vec(k, acc), _acc_vec(mean_dy, acc), _acc_vec(proj, acc)
    dx = torch.empty_like(x)
    rc = lib.bn_backward_elemt(
        _DTYPE_CODE[x.dtype],
        dy.data_ptr(),
        x.data_ptr(),
        dx.data_ptr(),
        *geo,
        mean.data_ptr(),
        k.data_ptr(),
        mean_dy.data_ptr(),
        proj.data_ptr(),
        torch.get_num_threads(),
    )
    assert rc == 0, rc
    return dx


def _backward_elemt_fake(
    dy: Tensor, x: Tensor, axis: int, mean: Tensor, k: Tensor, mean_dy: Tensor, proj: Tensor
) -> Tensor:
    return torch.empty_like(x)


_VEC_CODE = {torch.float32: 0, torch.float64: 1}


def _opt_vec(v: Tensor | None, acc: torch.dtype) -> Tensor | None:
    return None if v is None else _acc_vec(v, acc)


def _ptr(t: Tensor | None):
    return None if t is None else t.data_ptr()


def _normalize_stats_impl(
    x: Tensor,
    axis: int,
    mean: Tensor,
    var: Tensor,
    weight: Tensor | None,
    bias: Tensor | None,
    eps: float,
) -> tuple[Tensor, Tensor]:
    """``(y, inv_std)``: normalize with ``scale = weight * inv_std``, ``shift = bias`` and
    ``inv_std = rsqrt(var.to(acc) + eps)``, all made in the kernel call (the same bits as the
    torch ops of the core)."""
    geo = geometry(x, axis)
    lib = _cpu_build.load()
    acc = _native.acc_dtype(x.dtype)
    w, b = _opt_vec(weight, acc), _opt_vec(bias, acc)
    if (
        geo is None
        or lib is None
        or x.dtype not in _DTYPE_CODE
        or mean.dtype not in _VEC_CODE
        or var.dtype not in _VEC_CODE
    ):
        inv_std = torch.rsqrt(var.to(acc) + eps)
        scale, shift = _native.scale_shift(inv_std, w, b)
        return _normalize_impl(x, axis, mean.to(torch.float64), scale, shift), inv_std
    mean = mean if mean.is_contiguous() else mean.contiguous()
    var = var if var.is_contiguous() else var.contiguous()
    y = torch.empty_like(x)
    inv_std = torch.empty(geo[1], dtype=acc)
    rc = lib.bn_normalize_stats(
        _DTYPE_CODE[x.dtype],
        x.data_ptr(),
        y.data_ptr(),
        *geo,
        _VEC_CODE[mean.dtype],
        mean.data_ptr(),
        _VEC_CODE[var.dtype],
        var.data_ptr(),
        _ptr(w),
        _ptr(b),
        float(eps),
        inv_std.data_ptr(),
        torch.get_num_threads(),
    )
    assert rc == 0, rc
    return y, inv_std


def _normalize_stats_fake(x, axis, mean, var, weight, bias, eps):
    return torch.empty_like(x), x.new_empty(x.shape[axis], dtype=_native.acc_dtype(x.dtype))


def _backward_elemt_stats_impl(
    dy: Tensor,
    x: Tensor,
    axis: int,
    mean: Tensor,
    inv_std: Tensor,
    weight: Tensor | None,
    sum_dy: Tensor,
    sum_dy_xmu: Tensor,
    count: int,
) -> Tensor:
    """eq. 12's ``dx`` with ``k = weight * inv_std``, ``mean_dy = sum_dy / count`` and
    ``proj = sum_dy_xmu / count * inv_std^2`` made in the kernel call (same bits as the core's
    torch ops)."""
    geo = geometry(x, axis)
    lib = _cpu_build.load()
    acc = _native.acc_dtype(x.dtype)
    w = _opt_vec(weight, acc)
    inv_std, sum_dy, sum_dy_xmu = (_acc_vec(t, acc) for t in (inv_std, sum_dy, sum_dy_xmu))
    if geo is None or lib is None or x.dtype not in _DTYPE_CODE:
        return _backward_elemt_impl(
            dy, x, axis, mean, *_native.dx_coefficients(inv_std, w, sum_dy, sum_dy_xmu, count)
        )
    dy = _like(dy, x)
    mean = _acc_vec(mean, torch.float64)
    dx = torch.empty_like(x)
    rc = lib.bn_backward_elemt_stats(
        _DTYPE_CODE[x.dtype],
        dy.data_ptr(),
        x.data_ptr(),
        dx.data_ptr(),
        *geo,
        mean.data_ptr(),
        inv_std.data_ptr(),
        _ptr(w),
        sum_dy.data_ptr(),
        sum_dy_xmu.data_ptr(),
        int(count),
        torch.get_num_threads(),
    )
    assert rc == 0, rc
    return dx


def _backward_elemt_stats_fake(dy, x, axis, mean, inv_std, weight, sum_dy, sum_dy_xmu, count):
    return torch.empty_like(x)


# --------------------------------------------------------------------------- the ops


def _op(name: str, impl, fake):
    op = torch.library.custom_op(f"batchnorm::{name}", mutates_args=(), device_types="cpu")(impl)
    op.register_fake(fake)
    return op


cpu_stats = _op("cpu_stats", _stats_impl, _stats_fake)
cpu_normalize = _op("cpu_normalize", _normalize_impl, _normalize_fake)
cpu_backward_reduce = _op("cpu_backward_reduce", _backward_reduce_impl, _backward_reduce_fake)
cpu_backward_elemt = _op("cpu_backward_elemt", _backward_elemt_impl, _backward_elemt_fake)
cpu_normalize_stats = _op("cpu_normalize_stats", _normalize_stats_impl, _normalize_stats_fake)
cpu_backward_elemt_stats = _op(
    "cpu_backward_elemt_stats", _backward_elemt_stats_impl, _backward_elemt_stats_fake
)


def _entry(op, impl):
    """The op for anything that traces; the same implementation called directly in plain eager
    mode, which skips about 15 us of Python dispatch per primitive (the op's autograd and
    dispatcher layers have nothing to do there: the core's autograd Function owns the gradient)."""

    def call(*args):
        return impl(*args) if plain_eager(args[0]) else op(*args)

    call.__name__ = call.__qualname__ = op._name.split("::")[-1]
    call.__doc__ = impl.__doc__
    return call


stats = _entry(cpu_stats, _stats_impl)
normalize = _entry(cpu_normalize, _normalize_impl)
backward_reduce = _entry(cpu_backward_reduce, _backward_reduce_impl)
backward_elemt = _entry(cpu_backward_elemt, _backward_elemt_impl)
normalize_stats = _entry(cpu_normalize_stats, _normalize_stats_impl)
backward_elemt_stats = _entry(cpu_backward_elemt_stats, _backward_elemt_stats_impl)


# --------------------------------------------------------------------------- running update

_F64 = (torch.float64,)
_I64 = (torch.int64,)


def _flat_cpu(t: Tensor, dtypes) -> bool:
    return type(t) is Tensor and t.device.type == "cpu" and t.dtype in dtypes and t.is_contiguous()


def _counter(t: Tensor) -> bool:
    return _flat_cpu(t, _I64) and t.numel() == 1


def running_update(
    running_mean: Tensor,
    running_var: Tensor,
    mean: Tensor,
    var: Tensor,
    count: int,
    momentum: float | Tensor | None,
    num_batches_tracked: Tensor | None,
    store_unbiased: bool,
    skipped_updates: Tensor | None,
) -> None:
    """The kernel set's running update: one call of ``cpu.cpp`` where :func:`_running_update`
    takes it, else the native torch-op version (the same bits)."""
    args = (running_mean, running_var, mean, var, count, momentum)
    counters = (num_batches_tracked, store_unbiased, skipped_updates)
    if not _running_update(*args, *counters):
        running.native_running_update(*args, *counters)


def _running_update(
    running_mean: Tensor,
    running_var: Tensor,
    mean: Tensor,
    var: Tensor,
    count: int,
    momentum,
    num_batches_tracked: Tensor | None,
    store_unbiased: bool,
    skipped_updates: Tensor | None,
) -> bool:
    """``update_running_stats`` in one call of ``cpu.cpp``; False where it declines.

    Taken in plain eager mode for contiguous float32/float64 CPU buffers, a float64 mean, a
    float32/float64 variance, a float (or None) momentum and int64 counters; anything else
    (a tensor momentum, half buffers, tracing, torch.func) returns False and the caller runs
    the torch-op version. The same rule (eq. 13-16, non-finite batches skipped and counted),
    each step in the precision of the torch op it replaces (the same bits). Version counters
    are bumped as an in-place op would.
    """
    if not (
        plain_eager(running_mean)
        and plain_eager(mean)
        and running_mean.dtype in _VEC_CODE
        and running_var.dtype == running_mean.dtype
        and (momentum is None or type(momentum) in (float, int))
        and _flat_cpu(running_mean, _VEC_CODE)
        and _flat_cpu(running_var, _VEC_CODE)
        and _flat_cpu(mean, _F64)
        and _flat_cpu(var, _VEC_CODE)
        and mean.numel() == var.numel() == running_mean.numel() == running_var.numel()
        and (num_batches_tracked is None or _counter(num_batches_tracked))
        and (skipped_updates is None or _counter(skipped_updates))
        and available()
    ):
        return False
    lib = _cpu_build.load()
    cumulative = momentum is None
    rc = lib.bn_running_update(
        _VEC_CODE[running_mean.dtype],
        running_mean.data_ptr(),
        running_var.data_ptr(),
        _VEC_CODE[var.dtype],
        mean.data_ptr(),
        var.data_ptr(),
        mean.numel(),
        int(count),
        0.0 if cumulative else float(momentum),
        int(cumulative),
        int(store_unbiased),
        _ptr(num_batches_tracked),
        _ptr(skipped_updates),
    )
    assert rc == 0, rc
    for t in (running_mean, running_var, num_batches_tracked, skipped_updates):
        if t is not None:
            torch.autograd.graph.increment_version(t)
    return True
