"""The fast CPU kernels (csrc/, built at install) against the float64 reference, the native
torch-op kernels and torch.nn, on every instruction-set path this CPU runs; their fallback;
their ops under opcheck, torch.compile and torch.export; and the library's verification
(a damaged, planted or mismatched file is refused with a message, never loaded)."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import batchnorm
import batchnorm.functional as F
from batchnorm import reference as ref
from batchnorm.core import kernels
from batchnorm.core.kernels import _cpu

ROOT = Path(__file__).resolve().parents[1]
FAST = kernels.get(torch.ones(2, 2), 1)
pytestmark = pytest.mark.skipif(
    FAST.name != "cpu", reason=f"fast CPU kernels unavailable: {_cpu.info()['reason']}"
)
OPS = torch.ops.batchnorm
# Every instruction-set path of the build that this CPU runs (BATCHNORM_CPU_ISA in a new
# process, batchnorm::set_isa here).
ISAS = _cpu.isas()


@pytest.fixture(params=ISAS or ["none"])
def isa(request):
    if request.param == "none":
        pytest.skip("fast CPU kernels unavailable")
    previous = _cpu.info()["isa"]
    _cpu.set_isa(request.param)
    try:
        yield request.param
    finally:
        _cpu.set_isa(previous)


EPS = 1e-5
DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)
# Output tolerance against float64 math on the same (rounded) input, for |y| of a few units.
ATOL = {torch.float64: 1e-10, torch.float32: 2e-5, torch.bfloat16: 6e-2, torch.float16: 8e-3}


def _layout(name: str, dtype: torch.dtype, seed: int = 0) -> tuple[torch.Tensor, int]:
    """``(x, axis)`` in one of the layouts the kernels read, with per-channel offsets/scales.

    Sizes are odd on purpose: N*H*W is not a multiple of the 16-lane blocks, and the
    largest ones exceed the 32k-element threshold where a second thread joins.
    """
    shapes = {
        "nchw": ((5, 3, 7, 9), 1, None),
        "nchw-big": ((9, 4, 37, 29), 1, None),
        "cl": ((5, 3, 7, 9), 1, torch.channels_last),
        "cl-big": ((9, 19, 23, 17), 1, torch.channels_last),
        "2d": ((37, 11), 1, None),
        "2d-big": ((1031, 67), 1, None),
        "2d-wide": ((517, 131), 1, None),  # C = 131: tiles of 8 + 4 + 2 vectors and a tail of 3
        "cl-wide": ((3, 160, 5, 7), 1, torch.channels_last),
        # C = 48: rows of 192 bytes, written in blocks of 8 rows (2,331 rows: a last block
        # of 3, and the threads' split inside a block)
        "cl-48": ((37, 48, 7, 9), 1, torch.channels_last),
        "ncl": ((3, 6, 13), 1, None),
        "ncdhw": ((2, 3, 3, 5, 7), 1, None),
        "cl3d": ((2, 3, 3, 5, 7), 1, torch.channels_last_3d),
        "nhwc-axis-1": ((4, 5, 7, 6), -1, None),
        "c1": ((13, 1, 5, 7), 1, None),
        "c1-2d": ((21, 1), 1, None),
    }
    shape, axis, fmt = shapes[name]
    g = torch.Generator().manual_seed(seed)
    c = shape[axis]
    bshape = [1] * len(shape)
    bshape[axis] = c
    off = (torch.randn(c, generator=g, dtype=torch.float64) * 3).reshape(bshape)
    scl = (torch.rand(c, generator=g, dtype=torch.float64) * 2 + 0.5).reshape(bshape)
    x = (torch.randn(shape, generator=g, dtype=torch.float64) * scl + off).to(dtype)
    if fmt is not None:
        x = x.contiguous(memory_format=fmt)
    return x, axis % x.ndim


LAYOUTS = [
    "nchw",
    "nchw-big",
    "cl",
    "cl-big",
    "2d",
    "2d-big",
    "2d-wide",
    "cl-wide",
    "cl-48",
    "ncl",
    "ncdhw",
    "cl3d",
    "nhwc-axis-1",
    "c1",
    "c1-2d",
]


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().double().numpy()


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_primitives_match_reference_and_native(layout: str, dtype: torch.dtype, isa: str):
    x, axis = _layout(layout, dtype)
    # float16 is declined by default (slower than torch's half kernels) but the ops take it.
    assert kernels.get(x, axis).name == ("native" if dtype == torch.float16 else "cpu")
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    C = x.shape[axis]
    N = kernels.NATIVE

    mean, var = FAST.stats(x, axis)
    assert mean.dtype == torch.float64 and var.dtype == acc and mean.shape == var.shape == (C,)
    mean_ref, var_ref = ref.moments(_np(x), axis)
    # The reference sees the same rounded x. float64 sums give the mean to ~1e-15; the float32
    # sixteen-value blocks (planar layouts, and interleaved ones with C >= 16) to ~1e-8 of the
    # std.
    blocks = acc == torch.float32 and (x.stride(axis) > 1 or (C >= 16 and x.ndim > 1))
    mean_tol = 1e-7 if blocks else 1e-12
    np.testing.assert_allclose(
        mean.numpy(), mean_ref, rtol=0, atol=mean_tol * (1 + np.sqrt(var_ref).max())
    )
    var_tol = 1e-11 if acc == torch.float64 else (1e-6 if blocks else 2e-7)
    np.testing.assert_allclose(var.double().numpy(), var_ref, rtol=var_tol)

    g = torch.Generator().manual_seed(1)
    scale = (torch.rand(C, generator=g, dtype=torch.float64) + 0.5).to(acc)
    shift = torch.randn(C, generator=g, dtype=torch.float64).to(acc)
    y = FAST.normalize(x, axis, mean, scale, shift)
    assert y.dtype == x.dtype and y.shape == x.shape and y.stride() == x.stride()
    bc = [1] * x.ndim
    bc[axis] = C
    y_ref = (_np(x) - mean_ref.reshape(bc)) * _np(scale).reshape(bc) + _np(shift).reshape(bc)
    np.testing.assert_allclose(_np(y), y_ref, atol=ATOL[dtype], rtol=0)
    np.testing.assert_allclose(
        _np(y), _np(N.normalize(x, axis, mean, scale, shift)), atol=ATOL[dtype], rtol=0
    )

    dy = torch.randn(x.shape, generator=g, dtype=torch.float64).to(dtype)
    s_dy, s_dyx = FAST.backward_reduce(dy, x, axis, mean)
    assert s_dy.dtype == s_dyx.dtype == acc
    dims = tuple(d for d in range(x.ndim) if d != axis)
    s_dy_ref = _np(dy).sum(dims)
    s_dyx_ref = (_np(dy) * (_np(x) - mean_ref.reshape(bc))).sum(dims)
    scale_ref = np.abs(_np(dy)).sum(dims) * (1 + np.abs(_np(x) - mean_ref.reshape(bc)).max())
    tol = 1e-6 if acc == torch.float32 else 1e-13
    assert np.all(np.abs(s_dy.double().numpy() - s_dy_ref) <= tol * scale_ref)
    assert np.all(np.abs(s_dyx.double().numpy() - s_dyx_ref) <= tol * scale_ref)

    k, mean_dy, proj = (torch.randn(C, generator=g, dtype=torch.float64).to(acc) for _ in range(3))
    dx = FAST.backward_elemt(dy, x, axis, mean, k, mean_dy, proj)
    assert dx.dtype == x.dtype and dx.stride() == x.stride()
    dx_ref = _np(k).reshape(bc) * (
        _np(dy) - _np(mean_dy).reshape(bc) - (_np(x) - mean_ref.reshape(bc)) * _np(proj).reshape(bc)
    )
    np.testing.assert_allclose(_np(dx), dx_ref, atol=4 * ATOL[dtype], rtol=0)


@pytest.mark.parametrize("layout", ["nchw-big", "cl-big", "2d-big", "2d-wide", "c1"])
@pytest.mark.parametrize("training", [True, False])
def test_batch_norm_matches_reference_and_torch(layout: str, training: bool, isa: str):
    """The whole op, forward and backward, on the fast path."""
    x, axis = _layout(layout, torch.float32)
    x.requires_grad_(True)
    C = x.shape[axis]
    g = torch.Generator().manual_seed(2)
    w = (torch.rand(C, generator=g) + 0.5).requires_grad_(True)
    b = torch.randn(C, generator=g).requires_grad_(True)
    rm, rv = torch.randn(C, generator=g), torch.rand(C, generator=g) + 0.5
    rm_t, rv_t = rm.clone(), rv.clone()
    y = F.batch_norm(x, rm, rv, w, b, training, 0.1, EPS)
    dy = torch.randn(x.shape, generator=g)
    grads = torch.autograd.grad(y, (x, w, b), dy)
    y_t = torch.nn.functional.batch_norm(x, rm_t, rv_t, w, b, training, 0.1, EPS)
    grads_t = torch.autograd.grad(y_t, (x, w, b), dy)
    torch.testing.assert_close(y, y_t, atol=2e-5, rtol=1e-5)
    torch.testing.assert_close(rm, rm_t), torch.testing.assert_close(rv, rv_t)
    for a, e in zip(grads, grads_t):
        # Per-channel gradient sums run over up to 4096 rows: torch's float32 reduction order
        # (which depends on its thread count) moves them by ~1e-6 of their scale. The float64
        # reference below is the tight oracle.
        torch.testing.assert_close(a, e, atol=1e-4 * max(1.0, e.abs().max().item()), rtol=1e-4)
    if training:
        y_ref, cache = ref.batch_norm_forward(_np(x), _np(w), _np(b), EPS, axis=axis)
        np.testing.assert_allclose(_np(y), y_ref, atol=2e-5, rtol=0)
        for a, e in zip(grads, ref.batch_norm_backward(_np(dy), cache)):
            np.testing.assert_allclose(_np(a), e, atol=2e-4, rtol=1e-4)


def test_large_mean_small_std_keeps_its_digits(isa: str):
    """mean 1e4, std 1e-2 in float32: the float64 mean and (x - hi) - lo keep y exact."""
    g = torch.Generator().manual_seed(3)
    for fmt in (torch.contiguous_format, torch.channels_last):
        x64 = 1e4 + 1e-2 * torch.randn(16, 3, 9, 11, generator=g, dtype=torch.float64)
        x = x64.float().contiguous(memory_format=fmt)
        assert kernels.get(x, 1).name == "cpu"
        y = F.batch_norm(x, None, None, training=True, eps=1e-12)
        y_ref, _ = ref.batch_norm_forward(_np(x), None, None, 1e-12, axis=1)
        assert np.abs(_np(y) - y_ref).max() < 1e-3


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("layout", ["nchw-big", "cl-big", "2d-big", "2d-wide"])
def test_constant_channel_gives_exactly_beta(layout: str, dtype: torch.dtype, isa: str):
    x, axis = _layout(layout, dtype)
    x = x.clone()
    x.select(axis, 0).fill_(1e4 if dtype != torch.float16 else 1e3)
    C = x.shape[axis]
    beta = torch.linspace(-1, 1, C)
    y = F.batch_norm(x, None, None, torch.full((C,), 3.0), beta, training=True)
    assert torch.equal(y.select(axis, 0), torch.full_like(y.select(axis, 0), beta[0].item()))
    mean, var = FAST.stats(x, axis)
    assert var[0].item() == 0.0 and mean[0].item() == x.select(axis, 0).flatten()[0].double().item()


@pytest.mark.parametrize("dtype", (torch.float32, torch.bfloat16), ids=str)
def test_planar_runs_of_every_length_and_their_tails(dtype: torch.dtype, isa: str):
    """Runs of 1 to 49 values: whole 16-lane vectors, the last vector ending at the run's end
    with the lanes already counted zeroed, and runs shorter than a vector. A NaN or inf in one
    channel stays in that channel, wherever it falls in the run."""
    g = torch.Generator().manual_seed(11)
    for inner in range(1, 50):
        x = (torch.randn(3, 4, inner, generator=g, dtype=torch.float64) * 2 + 5).to(dtype)
        dy = torch.randn(x.shape, generator=g).to(dtype)
        x64, dy64 = _np(x).astype(np.float64), _np(dy).astype(np.float64)
        m_ref = x64.mean((0, 2))
        v_ref = x64.var((0, 2))
        g_ref = dy64.sum((0, 2))
        gx_ref = (dy64 * (x64 - m_ref[None, :, None])).sum((0, 2))
        mean, var = FAST.stats(x, 1)
        sum_dy, sum_dy_xmu = FAST.backward_reduce(dy, x, 1, mean)
        np.testing.assert_allclose(_np(mean), m_ref, rtol=1e-7)
        np.testing.assert_allclose(_np(var), v_ref, rtol=1e-6)
        np.testing.assert_allclose(_np(sum_dy), g_ref, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(_np(sum_dy_xmu), gx_ref, rtol=1e-5, atol=1e-4)
        for pos in sorted({0, inner // 2, inner - 1}):
            for bad in (float("nan"), float("inf")):
                xb = x.clone()
                xb[1, 2, pos] = bad
                mean, var = FAST.stats(xb, 1)
                sum_dy, sum_dy_xmu = FAST.backward_reduce(dy, xb, 1, mean)
                assert torch.isnan(var[2]) and (torch.isnan(mean[2]) or torch.isinf(mean[2]))
                assert torch.isnan(sum_dy_xmu[2]) or torch.isinf(sum_dy_xmu[2])
                keep = [0, 1, 3]
                np.testing.assert_allclose(_np(mean)[keep], m_ref[keep], rtol=1e-7)
                np.testing.assert_allclose(_np(var)[keep], v_ref[keep], rtol=1e-6)
                np.testing.assert_allclose(_np(sum_dy), g_ref, rtol=1e-5, atol=1e-5)


def test_fallback_for_layouts_and_types_the_kernels_do_not_read():
    x, _ = _layout("nchw-big", torch.float32)
    for odd in (x.transpose(2, 3), x[:, :, ::2], x.permute(0, 2, 1, 3)):  # not dense along C
        assert kernels.get(odd, 1).name == "native"
        torch.testing.assert_close(
            F.batch_norm(odd, None, None, training=True),
            torch.nn.functional.batch_norm(odd, None, None, training=True),
            atol=2e-5,
            rtol=1e-5,
        )
    assert kernels.get(torch.ones(0, 3), 1).name == "native"  # empty
    # The op itself never fails on a layout its kernel cannot read: it reads a copy.
    mean, var = OPS.stats(x.transpose(2, 3), 1)
    m2, v2 = kernels.NATIVE.stats(x.transpose(2, 3), 1)
    torch.testing.assert_close((mean, var), (m2, v2))
    previous = kernels.set_enabled(False)
    try:
        assert kernels.get(x, 1).name == "native"
    finally:
        kernels.set_enabled(previous)


def test_fallback_when_the_library_cannot_load(monkeypatch):
    monkeypatch.delitem(kernels._REGISTRY, "cpu")
    x, _ = _layout("nchw", torch.float32)
    assert kernels.get(x, 1).name == "native"
    y = F.batch_norm(x, None, None, training=True)
    torch.testing.assert_close(
        y, torch.nn.functional.batch_norm(x, None, None, training=True), atol=2e-5, rtol=1e-5
    )


def test_grad_in_another_layout_than_the_input():
    """dy contiguous while x is channels-last (and the reverse) still gives torch's gradient."""
    x, _ = _layout("cl-big", torch.float32)
    for xx in (x, x.contiguous()):
        xg = xx.detach().requires_grad_(True)
        dy = torch.randn(x.shape, generator=torch.Generator().manual_seed(4))
        dy = (
            dy.contiguous()
            if xx.is_contiguous() is False
            else dy.contiguous(memory_format=torch.channels_last)
        )
        (gx,) = torch.autograd.grad(F.batch_norm(xg, None, None, training=True), xg, dy)
        (gt,) = torch.autograd.grad(
            torch.nn.functional.batch_norm(xg, None, None, training=True), xg, dy
        )
        torch.testing.assert_close(gx, gt, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("fmt", [torch.contiguous_format, torch.channels_last], ids=str)
def test_thread_count_does_not_change_results_beyond_rounding(fmt, isa: str):
    # 247,863 values: more than two 32k-value chunks, so two threads split the work, and the
    # split falls inside a channel's run (planar) or between rows (channels-last).
    g = torch.Generator().manual_seed(6)
    x = (torch.randn(33, 7, 37, 29, generator=g) * 2 + 3).contiguous(memory_format=fmt)
    dy = torch.randn(x.shape, generator=g).contiguous(memory_format=fmt)
    before = torch.get_num_threads()
    try:
        out = []
        for threads in (1, 2):
            torch.set_num_threads(threads)
            mean, var = FAST.stats(x, 1)
            out.append((mean, var, *FAST.backward_reduce(dy, x, 1, mean)))
    finally:
        torch.set_num_threads(before)
    (m1, v1, a1, b1), (m2, v2, a2, b2) = out
    # The float32 blocks start where a thread's share starts: 1e-7 of the std for the mean.
    std = v1.double().sqrt()
    assert ((m1 - m2).abs() <= 1e-7 * std).all()
    torch.testing.assert_close(v1, v2, rtol=1e-6, atol=0)
    scale = dy.abs().sum((0, 2, 3)) * (x - m1.float().view(1, -1, 1, 1)).abs().max()
    assert ((a1 - a2).abs() <= 1e-6 * scale).all() and ((b1 - b2).abs() <= 1e-6 * scale).all()


@pytest.mark.parametrize("dtype", (torch.float32, torch.float64, torch.bfloat16), ids=str)
@pytest.mark.parametrize("layout", ["nchw-big", "cl-big", "2d-wide"])
@pytest.mark.parametrize("affine", [True, False])
def test_vectors_built_in_the_kernel_give_the_bits_of_the_torch_ops(layout, dtype, affine, isa):
    """normalize_stats and backward_elemt_stats against the core's composition of torch ops
    and the plain primitives: equal bit for bit (batch statistics, and running statistics
    kept in float32 or float64)."""
    x, axis = _layout(layout, dtype)
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    C, m = x.shape[axis], x.numel() // x.shape[axis]
    g = torch.Generator().manual_seed(5)
    weight = (torch.rand(C, generator=g) + 0.5).to(acc) if affine else None
    bias = torch.randn(C, generator=g).to(acc) if affine else None
    batch = FAST.stats(x, axis)
    running = (torch.randn(C, generator=g), torch.rand(C, generator=g, dtype=torch.float64) + 0.5)
    for mean, var in (batch, running):
        y, inv_std = FAST.normalize_stats(x, axis, mean, var, weight, bias, EPS)
        inv_ref = torch.rsqrt(var.to(acc) + EPS)
        scale = inv_ref if weight is None else weight * inv_ref
        shift = torch.zeros_like(inv_ref) if bias is None else bias
        assert torch.equal(inv_std, inv_ref)
        assert torch.equal(y, FAST.normalize(x, axis, mean.to(torch.float64), scale, shift))
    dy = torch.randn(x.shape, generator=g).to(dtype)
    mean, var = batch
    inv_std = torch.rsqrt(var + EPS)
    s1, s2 = FAST.backward_reduce(dy, x, axis, mean)
    dx = FAST.backward_elemt_stats(dy, x, axis, mean, inv_std, weight, s1, s2, m)
    k = inv_std if weight is None else weight * inv_std
    assert torch.equal(
        dx, FAST.backward_elemt(dy, x, axis, mean, k, s1 / m, s2 / m * inv_std * inv_std)
    )


RUNNING_CASES = {
    "ema": dict(momentum=0.1),
    "cumulative": dict(momentum=None),
    "biased": dict(momentum=0.3, store_unbiased=False),
    "float64-buffers": dict(momentum=0.1, buffers=torch.float64),
    "float64-var": dict(momentum=0.1, buffers=torch.float64, var=torch.float64),
    "nan-batch": dict(momentum=0.1, bad=float("nan")),
    "inf-batch-cumulative": dict(momentum=None, bad=float("inf")),
}


@pytest.mark.parametrize("case", list(RUNNING_CASES))
def test_running_update_kernel_gives_the_bits_of_the_torch_op_version(case: str):
    """The one-call running update (cpu.cpp) against update_running_stats' torch ops, with
    the fast kernels switched off: same buffers bit for bit, same counters, over 5 batches."""
    opts = dict(RUNNING_CASES[case])
    bdtype, vdtype = opts.pop("buffers", torch.float32), opts.pop("var", torch.float32)
    bad = opts.pop("bad", None)
    g = torch.Generator().manual_seed(3)
    C, count = 7, 37
    state = {
        who: (
            torch.rand(C, generator=g, dtype=bdtype),
            torch.rand(C, generator=g, dtype=bdtype) + 1,
            torch.tensor(4),
            torch.tensor(0),
        )
        for who in ("fast",)
    }
    state["ops"] = tuple(t.clone() for t in state["fast"])
    taken = []
    for step in range(5):
        mean = torch.randn(C, generator=g, dtype=torch.float64) * 3
        var = torch.rand(C, generator=g, dtype=torch.float64).to(vdtype) * 2
        if bad is not None and step == 2:
            var[3] = bad
        for who, (rm, rv, nbt, skipped) in state.items():
            v0 = rm._version
            previous = kernels.set_enabled(who == "fast")
            try:
                F.update_running_stats(
                    rm,
                    rv,
                    mean,
                    var,
                    count,
                    num_batches_tracked=nbt,
                    skipped_updates=skipped,
                    **opts,
                )
            finally:
                kernels.set_enabled(previous)
            assert rm._version > v0  # in place, seen by autograd's version check
        taken.append(
            _cpu._running_update(
                torch.zeros(C, dtype=bdtype),
                torch.ones(C, dtype=bdtype),
                mean,
                var,
                count,
                opts["momentum"],
                torch.tensor(1),
                opts.get("store_unbiased", True),
                None,
            )
        )
    assert all(taken)
    for a, b in zip(state["fast"], state["ops"], strict=True):
        assert torch.equal(a, b), (case, a, b)
    assert int(state["fast"][2]) == 4 + 5 - (bad is not None) and int(state["fast"][3]) == (
        bad is not None
    )


def test_running_update_kernel_declines_what_it_does_not_take():
    C = 3
    mean, var = torch.zeros(C, dtype=torch.float64), torch.ones(C)
    rm, rv = torch.zeros(C), torch.ones(C)
    assert not _cpu._running_update(rm, rv, mean, var, 8, torch.tensor(0.1), None, True, None)
    assert not _cpu._running_update(rm.half(), rv.half(), mean, var, 8, 0.1, None, True, None)
    assert not _cpu._running_update(rm, rv, mean.float(), var, 8, 0.1, None, True, None)
    assert not _cpu._running_update(
        rm, rv, mean, var, 8, 0.1, torch.tensor(0, dtype=torch.int32), True, None
    )
    assert not _cpu._running_update(
        torch.zeros(2 * C)[::2], rv, mean, var, 8, 0.1, None, True, None
    )
    assert torch.equal(rm, torch.zeros(C)) and torch.equal(rv, torch.ones(C))
    # A tensor momentum still works, through the torch ops.
    F.update_running_stats(rm, rv, mean + 1, var, 8, torch.tensor(0.5))
    assert torch.allclose(rm, torch.full((C,), 0.5))


def test_gradcheck_and_double_backward_on_the_fast_path(isa: str):
    x, _ = _layout("ncl", torch.float64)
    x.requires_grad_(True)
    w = torch.rand(x.shape[1], dtype=torch.float64).add_(0.5).requires_grad_(True)
    b = torch.randn(x.shape[1], dtype=torch.float64).requires_grad_(True)

    def f(x, w, b):
        return F.batch_norm(x, None, None, w, b, training=True)

    assert torch.autograd.gradcheck(f, (x, w, b))
    assert torch.autograd.gradgradcheck(f, (x, w, b))


def _small_net(bn2d, bn1d) -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3),
        bn2d(8),
        torch.nn.ReLU(),
        torch.nn.Conv2d(8, 16, 3),
        bn2d(16),
        torch.nn.ReLU(),
        torch.nn.Flatten(),
        torch.nn.Linear(16 * 5 * 5, 10),
        bn1d(10),
    )


@pytest.mark.parametrize("channels_last", [False, True])
def test_drop_in_model_matches_torch_nn(channels_last: bool):
    ours = _small_net(batchnorm.BatchNorm2d, batchnorm.BatchNorm1d)
    theirs = _small_net(torch.nn.BatchNorm2d, torch.nn.BatchNorm1d)
    theirs.load_state_dict(ours.state_dict())
    x = torch.randn(12, 3, 9, 9, generator=torch.Generator().manual_seed(5))
    if channels_last:
        ours, theirs = (
            ours.to(memory_format=torch.channels_last),
            theirs.to(memory_format=torch.channels_last),
        )
        x = x.contiguous(memory_format=torch.channels_last)
    for _step in range(2):
        yo, yt = ours(x), theirs(x)
        torch.testing.assert_close(yo, yt, atol=1e-4, rtol=1e-4)
        yo.square().sum().backward()
        yt.square().sum().backward()
        for (n, po), pt in zip(ours.named_parameters(), theirs.parameters()):
            torch.testing.assert_close(po.grad, pt.grad, atol=1e-3, rtol=1e-3, msg=n)
    sd_t = theirs.state_dict()
    for n, v in ours.state_dict().items():
        torch.testing.assert_close(v, sd_t[n], atol=1e-5, rtol=1e-5, msg=n)
    ours.eval(), theirs.eval()
    torch.testing.assert_close(ours(x), theirs(x), atol=1e-4, rtol=1e-4)


def _op_samples():
    x, _ = _layout("nchw-big", torch.float32)
    xc = x.contiguous(memory_format=torch.channels_last)
    C = x.shape[1]
    mean, _ = FAST.stats(x, 1)
    v = torch.rand(C) + 0.5
    yield OPS.stats, (x, 1)
    yield OPS.stats, (x.transpose(2, 3), 1)  # a layout the kernels read through a copy
    yield OPS.normalize, (xc, 1, mean, v, v)
    yield OPS.normalize, (x.to(torch.bfloat16), 1, mean, v, v)
    yield OPS.backward_reduce, (torch.randn_like(x), xc, 1, mean)
    yield OPS.backward_elemt, (torch.randn_like(xc), xc, 1, mean, v, v, v)
    yield OPS.normalize_stats, (xc, 1, mean, v, v, v, 1e-5)
    yield (
        OPS.normalize_stats,
        (x, 1, v, v.double(), None, None, 1e-5),
    )  # running stats, no affine
    yield OPS.normalize_stats, (x.transpose(2, 3), 1, mean, v, v, v, 1e-5)  # through a copy
    yield OPS.backward_elemt_stats, (torch.randn_like(x), x, 1, mean, v, v, v, v, 11)
    yield OPS.backward_elemt_stats, (torch.randn_like(xc), xc, 1, mean, v, None, v, v, 11)
    w = (torch.rand(C) + 0.5).requires_grad_(True)
    b = torch.randn(C).requires_grad_(True)
    yield OPS.train, (x.clone().requires_grad_(True), w, b, 1e-5, 1)
    yield OPS.train, (xc.clone().requires_grad_(True), None, None, 1e-5, 1)
    yield OPS.train_backward, (torch.randn_like(x), x, w.detach(), mean, v, 1, [True, True, True])
    yield (
        OPS.running_update,
        (torch.zeros(C), torch.ones(C), mean, v, 11, 0.1, False, True, torch.tensor(3), None),
    )
    yield OPS.max_pool2x2, (torch.randn(2, 3, 7, 6),)


def test_custom_ops_pass_opcheck():
    for op, args in _op_samples():
        torch.library.opcheck(
            op, args, test_utils=("test_schema", "test_faketensor", "test_aot_dispatch_dynamic")
        )


# Raised inside Dynamo's own handling of autograd.Function in this torch version, not by us.
@pytest.mark.filterwarnings("ignore:.*should not be instantiated:DeprecationWarning")
def test_torch_compile_sees_the_ops_and_matches_eager():
    """aot_eager runs Dynamo and AOTAutograd over the fake kernels without a C++ compile."""
    model = _small_net(batchnorm.BatchNorm2d, batchnorm.BatchNorm1d)
    compiled_model = copy.deepcopy(model)
    x = torch.randn(12, 3, 9, 9, generator=torch.Generator().manual_seed(6))
    torch._dynamo.reset()
    explain = torch._dynamo.explain(compiled_model)(x)
    assert explain.graph_break_count == 0
    # The training step is one op, batchnorm::train, with its backward registered in C++.
    graph = "\n".join(m.code for g in explain.graphs for m in g.modules() if hasattr(m, "code"))
    assert "batchnorm.train" in graph
    compiled = torch.compile(compiled_model, backend="aot_eager", fullgraph=False)
    y, y_e = compiled(x), model(x)
    torch.testing.assert_close(y, y_e, atol=1e-5, rtol=1e-5)
    y.sum().backward()
    y_e.sum().backward()
    for pc, pe in zip(compiled_model.parameters(), model.parameters()):
        torch.testing.assert_close(pc.grad, pe.grad, atol=1e-4, rtol=1e-4)
    torch._dynamo.reset()


def test_torch_export_keeps_the_op_in_training():
    # In evaluation an export holds torch's standard batch-norm node instead (test_dropin.py).
    model = _small_net(batchnorm.BatchNorm2d, batchnorm.BatchNorm1d).train()
    x = torch.randn(4, 3, 9, 9, generator=torch.Generator().manual_seed(7))
    ep = torch.export.export(model, (x,))
    targets = {  # the statistics sit in a no-grad submodule of the graph
        str(n.target)
        for m in ep.graph_module.modules()
        if isinstance(m, torch.fx.GraphModule)
        for n in m.graph.nodes
        if n.op == "call_function"
    }
    assert {"batchnorm.train.default", "batchnorm.running_update.default"} <= targets


@pytest.mark.slow
def test_cold_start_in_a_new_process_compiles_nothing(tmp_path):
    """A new process loads the library built at install: no compiler, nothing written."""
    code = (
        "import json, time, torch; t = time.perf_counter(); import batchnorm; "
        "from batchnorm.core.kernels import get, info; x = torch.randn(4, 3, 5, 5); "
        "y = batchnorm.BatchNorm2d(3)(x); name = get(x, 1).name; "
        "print(json.dumps({'name': name, 's': time.perf_counter() - t, 'info': info()}))"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PATH": str(tmp_path), "HOME": str(tmp_path)}
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, check=True, capture_output=True, text=True
    )
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["name"] == "cpu" and result["info"]["path"] == "kernels"
    assert list(tmp_path.iterdir()) == []  # nothing written (no cache, no build)


def test_disabled_by_environment_variable(tmp_path):
    code = "import torch, batchnorm; from batchnorm.core.kernels import get; print(get(torch.ones(3, 2), 1).name)"
    env = {**os.environ, "BATCHNORM_CPU_KERNELS": "0", "PYTHONPATH": str(ROOT)}
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, check=True, capture_output=True, text=True
    )
    assert out.stdout.strip() == "native"


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_half_conversions_are_exact_and_round_to_nearest_even(dtype: torch.dtype):
    """Every 16-bit pattern survives load -> float32 -> store, and float32 values (normal,
    subnormal, overflowing, inf, nan) round as torch rounds them."""
    bits = torch.arange(-32768, 32768, dtype=torch.int32).to(torch.int16)
    x = bits.view(dtype).reshape(-1, 1)  # (65536, 1): rows of one channel
    finite_nonzero = torch.isfinite(x.float()) & (x.float() != 0)
    zero64, one, zero = torch.zeros(1, dtype=torch.float64), torch.ones(1), torch.zeros(1)
    y = OPS.normalize(x, 1, zero64, one, zero)
    assert torch.equal(y.view(torch.int16)[finite_nonzero], x.view(torch.int16)[finite_nonzero])
    assert torch.isnan(y.float()[torch.isnan(x.float())]).all()
    g = torch.Generator().manual_seed(8)
    f = torch.cat(
        [torch.randn(5000, generator=g) * s for s in (1e-8, 1e-6, 1e-4, 1.0, 100.0, 6e4, 1e5)]
        + [torch.tensor([float("inf"), float("-inf"), 65504.0, 65519.99, 65520.0])]
    )
    C = f.numel()
    out = OPS.normalize(
        torch.zeros(1, C, dtype=dtype), 1, torch.zeros(C, dtype=torch.float64), torch.ones(C), f
    )  # y = 0 * 1 + f, stored in dtype
    assert torch.equal(out.flatten().view(torch.int16), f.to(dtype).view(torch.int16))


@pytest.mark.slow
def test_bench_runs_and_writes_its_rows(tmp_path, capsys):
    """`batchnorm bench` end to end on one small cell, re-executing itself with the tuned
    allocator (timings are never asserted: the machine is shared)."""
    from batchnorm.cli import bench

    out = tmp_path / "rows.json"
    rc = bench.main(
        [
            "--shapes",
            "8x32x112x112-cl",
            "--modes",
            "train,fwd+bwd",
            "--repeat",
            "2",
            "--warmup",
            "1",
            "--allocator",
            "tuned",
            "--no-cold-start",
            "--json",
            str(out),
            "--save",
            str(tmp_path / "results"),
        ]
    )
    assert rc == 0
    (saved,) = (tmp_path / "results").glob("*-float32-t*.txt")  # named by date, CPU, ISA
    assert f"-{_cpu.info()['isa']}-float32-t" in saved.name
    text = saved.read_text()
    assert "host:" in text and "CPU path: kernels, ISA" in text and "copy bandwidth" in text
    rows = json.loads(out.read_text())["rows"]
    assert [r["mode"] for r in rows] == ["train", "fwd+bwd"]
    assert all(r["kernel"] == "cpu" and r["ours_ms"] > 0 and r["torch_ms"] > 0 for r in rows)
    assert all(r["allocator"] == bench.TUNED_GLIBC for r in rows)
    with pytest.raises(ValueError, match="unknown shapes"):
        bench.main(["--shapes", "1x2x3", "--allocator", "inherit"])


@pytest.mark.slow
def test_bench_models_section(tmp_path, capsys):
    """`batchnorm bench --models`: the MLP, LeNet and small-forward ratios and the contention
    line, saved with the rest (timings never asserted: the machine is shared)."""
    from batchnorm.cli import bench

    args = ["--models-only", "--model-steps", "6", "--save", str(tmp_path), "--no-cold-start"]
    assert bench.main(args) == 0
    (saved,) = tmp_path.glob("*.txt")
    text = saved.read_text()
    for needle in ("Figure-1 MLP step", "LeNet step", "4x64x2x2 training forward", "contention:"):
        assert needle in text


# --------------------------------------------------------------------------- 2x2 max pooling


def _pool_input(shape, dtype, gen):
    """Ties, signed zeros, infinities and NaNs on purpose: the cases where two pooling loops
    could pick a different element."""
    x = torch.randint(-3, 4, shape, generator=gen).to(dtype)
    x[x == -3] = -0.0
    x[x == 3] = float("inf")
    flat = x.view(-1)
    flat[torch.randint(0, flat.numel(), (max(1, flat.numel() // 20),), generator=gen)] = float(
        "nan"
    )
    flat[torch.randint(0, flat.numel(), (max(1, flat.numel() // 20),), generator=gen)] = -float(
        "inf"
    )
    return x


def _bits(t):
    return t.view(torch.int32 if t.dtype == torch.float32 else torch.int64)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", [(3, 2, 8, 8), (2, 3, 7, 9), (1, 1, 2, 2), (4, 6, 28, 28)])
def test_max_pool2x2_is_torchs_pooling_bit_for_bit(isa, dtype, shape):
    from batchnorm.experiments.models import MaxPool2x2

    gen = torch.Generator().manual_seed(sum(shape))
    for trial in range(3):
        x = _pool_input(shape, dtype, gen)
        if trial == 1:
            x = torch.relu(x)  # the LeNet's case: many tied zeros
        y, idx = OPS.max_pool2x2(x)
        ref_y, ref_idx = torch.nn.functional.max_pool2d(x, 2, return_indices=True)
        assert torch.equal(_bits(y), _bits(ref_y)), (isa, trial)
        assert torch.equal(idx, ref_idx), (isa, trial)
        # The module: values and gradient, through torch's backward on the same indices.
        xa, xb = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
        g = torch.randint(-1, 2, ref_y.shape, generator=gen).to(dtype)
        g[g == 0] = -0.0
        MaxPool2x2()(xa).backward(g)
        torch.nn.MaxPool2d(2)(xb).backward(g)
        assert torch.equal(_bits(xa.grad), _bits(xb.grad)), (isa, trial)


def test_max_pool2x2_module_falls_back_and_op_rejects_what_it_does_not_take():
    from batchnorm.experiments.models import MaxPool2x2

    x = torch.randn(2, 3, 6, 6, generator=torch.Generator().manual_seed(0))
    for other in (
        x.contiguous(memory_format=torch.channels_last),
        x.to(torch.bfloat16),
        x[0],  # 3-D: nn.MaxPool2d takes (C, H, W) too
    ):
        torch.testing.assert_close(
            MaxPool2x2()(other), torch.nn.MaxPool2d(2)(other), rtol=0, atol=0
        )
    assert isinstance(MaxPool2x2(), torch.nn.MaxPool2d)
    assert MaxPool2x2().extra_repr() == torch.nn.MaxPool2d(2).extra_repr()
    with pytest.raises(RuntimeError, match="contiguous"):
        OPS.max_pool2x2(x.transpose(2, 3))
    with pytest.raises(RuntimeError, match="float32 or float64"):
        OPS.max_pool2x2(x.to(torch.bfloat16))
