"""Invariants of batch normalization, checked over generated inputs (hypothesis)."""

from __future__ import annotations

import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import batchnorm.functional as F
from batchnorm import BatchNorm1d

settings.register_profile("batchnorm", max_examples=40, deadline=None, derandomize=True)
settings.load_profile("batchnorm")


@st.composite
def batches(draw):
    """A float64 batch of rank 2-4, channel axis 1 or -1, with per-channel offsets and scales."""
    rank = draw(st.integers(2, 4))
    shape = [draw(st.integers(2, 5)) for _ in range(rank)]
    axis = draw(st.sampled_from([1, -1]))
    seed = draw(st.integers(0, 2**31 - 1))
    g = torch.Generator().manual_seed(seed)
    c = shape[axis]
    bshape = [1] * rank
    bshape[axis] = c
    loc = torch.randn(c, generator=g, dtype=torch.float64).mul(
        draw(st.sampled_from([0.0, 1.0, 100.0]))
    )
    scl = torch.rand(c, generator=g, dtype=torch.float64) * 5 + 0.1
    x = torch.randn(shape, generator=g, dtype=torch.float64) * scl.reshape(bshape) + loc.reshape(
        bshape
    )
    return x, axis


def reduce_dims(x, axis):
    axis %= x.ndim
    return tuple(d for d in range(x.ndim) if d != axis)


@given(batches())
def test_output_has_mean_zero_and_variance_one_per_channel(xa):
    x, axis = xa
    y = F.batch_norm(x, None, None, training=True, eps=1e-12, axis=axis)
    dims = reduce_dims(x, axis)
    torch.testing.assert_close(
        y.mean(dims), torch.zeros(x.shape[axis], dtype=x.dtype), atol=1e-9, rtol=0
    )
    torch.testing.assert_close(
        y.var(dims, unbiased=False), torch.ones(x.shape[axis], dtype=x.dtype), atol=1e-6, rtol=0
    )


@given(batches(), st.integers(0, 2**31 - 1))
def test_invariant_to_positive_scale_and_shift_per_channel(xa, seed):
    """BN(a * x + b) = BN(x) for a > 0 per channel (the paper's scale invariance)."""
    x, axis = xa
    g = torch.Generator().manual_seed(seed)
    c = x.shape[axis]
    shape = [1] * x.ndim
    shape[axis] = c
    a = (torch.rand(c, generator=g, dtype=torch.float64) * 10 + 0.1).reshape(shape)
    b = (torch.randn(c, generator=g, dtype=torch.float64) * 10).reshape(shape)
    y1 = F.batch_norm(x, None, None, training=True, eps=1e-12, axis=axis)
    y2 = F.batch_norm(a * x + b, None, None, training=True, eps=1e-12, axis=axis)
    torch.testing.assert_close(y1, y2, atol=1e-6, rtol=1e-6)


@given(st.integers(0, 2**31 - 1), st.floats(0.1, 50.0))
def test_weight_gradient_scales_by_one_over_a(seed, a):
    """BN((aW)u) = BN(Wu), and d loss / d(aW) = (1/a) d loss / dW (eq. 26-27)."""
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(16, 6, generator=g, dtype=torch.float64)
    w = torch.randn(4, 6, generator=g, dtype=torch.float64)
    target = torch.randn(16, 4, generator=g, dtype=torch.float64)

    def loss_and_grad(weight):
        weight = weight.clone().requires_grad_(True)
        y = F.batch_norm(u @ weight.T, None, None, training=True, eps=1e-12)
        loss = ((y - target) ** 2).sum()
        return y, torch.autograd.grad(loss, weight)[0]

    y1, g1 = loss_and_grad(w)
    y2, g2 = loss_and_grad(a * w)
    torch.testing.assert_close(y1, y2, atol=1e-8, rtol=1e-8)
    torch.testing.assert_close(g2, g1 / a, atol=1e-8, rtol=1e-6)


@given(batches(), st.integers(0, 2**31 - 1))
def test_input_gradient_sums_to_zero_per_channel(xa, seed):
    x, axis = xa
    x = x.clone().requires_grad_(True)
    c = x.shape[axis]
    g = torch.Generator().manual_seed(seed)
    w = torch.rand(c, generator=g, dtype=torch.float64) + 0.5
    # eps -> 0: the orthogonality below holds up to eps / (var + eps).
    y = F.batch_norm(x, None, None, w, None, training=True, eps=1e-12, axis=axis)
    dy = torch.randn(y.shape, generator=g, dtype=torch.float64)
    (dx,) = torch.autograd.grad(y, x, dy)
    dims = reduce_dims(x, axis)
    scale = dy.abs().sum(dims) * w.max()
    assert (dx.sum(dims).abs() <= 1e-10 * scale + 1e-12).all()
    # ... and is orthogonal to x_hat (the second identity of eq. 11).
    x_hat = F.batch_norm(x.detach(), None, None, training=True, eps=1e-12, axis=axis)
    assert ((dx * x_hat).sum(dims).abs() <= 1e-9 * scale + 1e-12).all()


@given(batches(), st.integers(0, 2**31 - 1))
def test_eval_mode_is_one_affine_map(xa, seed):
    x, axis = xa
    c = x.shape[axis]
    g = torch.Generator().manual_seed(seed)
    rm = torch.randn(c, generator=g, dtype=torch.float64)
    rv = torch.rand(c, generator=g, dtype=torch.float64) + 0.1
    w = torch.randn(c, generator=g, dtype=torch.float64)
    b = torch.randn(c, generator=g, dtype=torch.float64)
    y = F.batch_norm(x, rm, rv, w, b, training=False, axis=axis)
    scale = w / torch.sqrt(rv + 1e-5)
    shift = b - rm * scale
    shape = [1] * x.ndim
    shape[axis] = c
    torch.testing.assert_close(
        y, x * scale.reshape(shape) + shift.reshape(shape), atol=1e-10, rtol=1e-10
    )
    # The map does not depend on the rest of the batch: each sample alone gives the same output.
    if axis % x.ndim != 0:
        alone = torch.cat(
            [
                F.batch_norm(x[i : i + 1], rm, rv, w, b, training=False, axis=axis)
                for i in range(len(x))
            ]
        )
        torch.testing.assert_close(alone, y, atol=0, rtol=0)


@given(st.integers(0, 2**31 - 1))
def test_running_statistics_converge_to_population(seed):
    """With momentum=None the running mean is the exact average of the batch means."""
    g = torch.Generator().manual_seed(seed)
    bn = BatchNorm1d(3, momentum=None).double()
    xs = [torch.randn(8, 3, generator=g, dtype=torch.float64) * 2 + 1 for _ in range(5)]
    for x in xs:
        bn(x)
    means = np.stack([x.mean(0).numpy() for x in xs])
    vars_ = np.stack([x.var(0).numpy() for x in xs])
    np.testing.assert_allclose(bn.running_mean.numpy(), means.mean(0), atol=1e-12)
    np.testing.assert_allclose(bn.running_var.numpy(), vars_.mean(0), atol=1e-12)
    assert int(bn.num_batches_tracked) == 5
