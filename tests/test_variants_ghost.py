"""Ghost BN: per-chunk reference, ghost size = batch is BN exactly, eval independent of g."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import batchnorm as bn
from batchnorm import reference as ref

D = torch.float64


def _chunks(n, g, per_sample):
    """Chunk sizes the documented rule gives: full ghosts, a last one, merged if it is one value."""
    sizes = [g] * (n // g)
    rem = n - g * (n // g)
    if rem:
        if rem * per_sample < 2 and sizes:
            sizes[-1] += rem
        else:
            sizes.append(rem)
    return sizes or [n]


@pytest.mark.parametrize(
    "shape,g,axis",
    [
        ((12, 3), 4, 1),
        ((10, 3), 4, 1),
        ((9, 3), 4, 1),
        ((10, 3, 5), 3, 1),
        ((7, 2, 3, 3), 2, 1),
        ((10, 4, 4, 3), 4, -1),
    ],
)
def test_forward_backward_match_reference_per_chunk(shape, g, axis):
    torch.manual_seed(0)
    x = torch.randn(shape, dtype=D) * 2 + 3
    C = shape[axis]
    w = torch.rand(C, dtype=D) + 0.5
    b = torch.randn(C, dtype=D)
    xr = x.clone().requires_grad_()
    wr, br = w.clone().requires_grad_(), b.clone().requires_grad_()
    y = bn.ghost_batch_norm(xr, None, None, wr, br, True, ghost_size=g, axis=axis)
    dy = torch.randn_like(y)
    dx, dw, db = torch.autograd.grad(y, [xr, wr, br], dy)
    per_sample = x[0].numel() // C
    start, dw_ref, db_ref = 0, np.zeros(C), np.zeros(C)
    for n in _chunks(shape[0], g, per_sample):
        sl = slice(start, start + n)
        y_ref, cache = ref.batch_norm_forward(
            x[sl].numpy(), w.numpy(), b.numpy(), eps=1e-5, axis=axis
        )
        dx_ref, dwc, dbc = ref.batch_norm_backward(dy[sl].numpy(), cache)
        np.testing.assert_allclose(y[sl].detach().numpy(), y_ref, rtol=1e-10, atol=1e-10)
        np.testing.assert_allclose(dx[sl].numpy(), dx_ref, rtol=1e-9, atol=1e-10)
        dw_ref, db_ref, start = dw_ref + dwc, db_ref + dbc, start + n
    np.testing.assert_allclose(dw.numpy(), dw_ref, rtol=1e-10)
    np.testing.assert_allclose(db.numpy(), db_ref, rtol=1e-10)


def test_gradcheck_with_uneven_chunk():
    torch.manual_seed(1)
    x = torch.randn(7, 2, 3, dtype=D, requires_grad=True)
    w = torch.rand(2, dtype=D, requires_grad=True)
    b = torch.randn(2, dtype=D, requires_grad=True)
    fn = lambda x, w, b: bn.ghost_batch_norm(x, None, None, w, b, True, ghost_size=3)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (x, w, b))


@pytest.mark.parametrize(
    "cls,shape",
    [
        (bn.GhostBatchNorm1d, (8, 3)),
        (bn.GhostBatchNorm2d, (8, 3, 4, 4)),
        (bn.GhostBatchNorm3d, (8, 3, 2, 2, 2)),
    ],
)
def test_ghost_size_batch_is_plain_bn_exactly(cls, shape):
    torch.manual_seed(2)
    x = (torch.randn(shape) * 2 + 1).requires_grad_()
    plain = {2: bn.BatchNorm1d, 4: bn.BatchNorm2d, 5: bn.BatchNorm3d}[len(shape)](3)
    for g in (shape[0], 100):
        ghost = cls(3, ghost_size=g)
        ghost.load_state_dict(plain.state_dict())
        y1, y2 = plain(x), ghost(x)
        g1 = torch.autograd.grad(y1.square().sum(), [x, plain.weight])
        g2 = torch.autograd.grad(y2.square().sum(), [x, ghost.weight])
        assert torch.equal(y1, y2)
        assert all(torch.equal(a, c) for a, c in zip(g1, g2, strict=True))
        assert torch.equal(plain.running_mean, ghost.running_mean)
        assert torch.equal(plain.running_var, ghost.running_var)


def test_running_statistics_are_the_weighted_ghost_average():
    torch.manual_seed(3)
    x = torch.randn(10, 2, 3, dtype=D)
    m = bn.GhostBatchNorm1d(
        2, momentum=1.0, ghost_size=4
    ).double()  # momentum 1: running = step stat
    m(x)
    sizes, start, means, uvars = [4, 4, 2], 0, [], []
    for n in sizes:
        mu, var = ref.moments(x[start : start + n].numpy(), axis=1)
        means.append(n * mu), uvars.append(n * ref.unbiased(var, n * 3))
        start += n
    np.testing.assert_allclose(m.running_mean.numpy(), sum(means) / 10, rtol=1e-12)
    np.testing.assert_allclose(m.running_var.numpy(), sum(uvars) / 10, rtol=1e-12)


def test_eval_does_not_depend_on_ghost_size():
    torch.manual_seed(4)
    a, b = bn.GhostBatchNorm2d(3, ghost_size=2), bn.GhostBatchNorm2d(3, ghost_size=5)
    a(torch.randn(10, 3, 4, 4))
    b.load_state_dict(a.state_dict())
    a.eval(), b.eval()
    x = torch.randn(6, 3, 4, 4)
    assert torch.equal(a(x), b(x))
    plain = bn.BatchNorm2d(3)
    plain.load_state_dict(a.state_dict())
    assert torch.equal(a(x), plain.eval()(x))


def test_errors():
    with pytest.raises(ValueError, match="ghost_size must be a positive int"):
        bn.GhostBatchNorm1d(3, ghost_size=0)
    with pytest.raises(ValueError, match="one value per channel"):
        bn.ghost_batch_norm(torch.randn(8, 3), None, None, training=True, ghost_size=1)
    with pytest.raises(ValueError, match="axis 0"):
        bn.ghost_batch_norm(torch.randn(8, 3), None, None, training=True, ghost_size=2, axis=0)
