"""Batch Renormalization: exact BN special case, float64 reference, gradcheck, state_dict."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import batchnorm as bn
from batchnorm import reference as ref
from batchnorm.nn.renorm import PAPER_D_MAX, PAPER_R_MAX, LinearSchedule, batch_renorm

D = torch.float64


def _direct(x, w, b, rm, rv, eps, r_max, d_max):
    """Ioffe 2017 eq. in plain autograd ops, r and d detached (stop-gradient)."""
    dims = [0, 2]
    mean = x.mean(dims)
    var = x.var(dims, unbiased=False)
    sigma_b = torch.sqrt(var + eps)
    sigma = torch.sqrt(rv + eps)
    r = (sigma_b / sigma).clamp(1 / r_max, r_max).detach()
    d = ((mean - rm) / sigma).clamp(-d_max, d_max).detach()
    x_hat = (x - mean[None, :, None]) / sigma_b[None, :, None]
    return (x_hat * r[None, :, None] + d[None, :, None]) * w[None, :, None] + b[None, :, None]


@pytest.fixture
def sample():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(6, 4, 5, generator=g, dtype=D) * 2 + 0.5
    w = torch.rand(4, generator=g, dtype=D) + 0.5
    b = torch.randn(4, generator=g, dtype=D)
    rm = torch.randn(4, generator=g, dtype=D)
    rv = torch.rand(4, generator=g, dtype=D) * 3 + 0.2  # r and d hit their clips in some channels
    return x, w, b, rm, rv


def test_forward_matches_reference(sample):
    x, w, b, rm, rv = sample
    y = batch_renorm(x, rm.clone(), rv.clone(), w, b, True, r_max=1.5, d_max=0.5)
    y_ref, cache = ref.batch_norm_forward(x.numpy(), w.numpy(), b.numpy(), eps=1e-5, axis=1)
    sigma = np.sqrt(rv.numpy() + 1e-5)
    r = np.clip(np.sqrt(cache["var"] + 1e-5) / sigma, 1 / 1.5, 1.5)
    d = np.clip((cache["mean"] - rm.numpy()) / sigma, -0.5, 0.5)
    expect = (cache["x_hat"] * r[None, :, None] + d[None, :, None]) * w.numpy()[
        None, :, None
    ] + b.numpy()[None, :, None]
    np.testing.assert_allclose(y.numpy(), expect, rtol=1e-12, atol=1e-12)
    assert not np.allclose(y.numpy(), y_ref)  # the correction is really active


def test_gradient_matches_direct_formula_and_gradcheck(sample):
    x, w, b, rm, rv = sample
    args = [t.clone().requires_grad_() for t in (x, w, b)]
    y = batch_renorm(args[0], rm.clone(), rv.clone(), args[1], args[2], True, r_max=1.5, d_max=0.5)
    dy = torch.randn_like(y)
    ours = torch.autograd.grad(y, args, dy)
    args2 = [t.clone().requires_grad_() for t in (x, w, b)]
    theirs = torch.autograd.grad(_direct(*args2, rm, rv, 1e-5, 1.5, 0.5), args2, dy)
    for a, c in zip(ours, theirs, strict=True):
        torch.testing.assert_close(a, c, rtol=1e-10, atol=1e-12)
    # Finite differences see r and d move with x unless they sit on their clips: make them.
    far_m, tiny_v = rm + 100.0, torch.full_like(rv, 1e-4)

    def fn(x, w, b):
        return batch_renorm(x, far_m.clone(), tiny_v.clone(), w, b, True, r_max=1.5, d_max=0.5)

    assert torch.autograd.gradcheck(fn, args)
    assert torch.autograd.gradgradcheck(fn, args)
    # Any constant (r, d) through the core's correction hook.
    r = torch.tensor([1.5, 0.7, 1.0, 2.0], dtype=D)
    d = torch.tensor([0.3, -0.2, 0.0, 1.0], dtype=D)
    fn2 = lambda x, w, b: bn.batch_norm(x, None, None, w, b, True, correction=lambda m, v: (r, d))  # noqa: E731
    assert torch.autograd.gradcheck(fn2, args)


@pytest.mark.parametrize("shape", [(8, 3), (4, 3, 5), (2, 3, 4, 4), (2, 3, 2, 2, 3)])
def test_r_max_1_d_max_0_is_plain_bn_exactly(shape):
    torch.manual_seed(1)
    x = (torch.randn(shape) * 3 + 1).requires_grad_()
    cls = {2: bn.BatchRenorm1d, 3: bn.BatchRenorm1d, 4: bn.BatchRenorm2d, 5: bn.BatchRenorm3d}[
        len(shape)
    ]
    plain = {2: bn.BatchNorm1d, 3: bn.BatchNorm1d, 4: bn.BatchNorm2d, 5: bn.BatchNorm3d}[
        len(shape)
    ](3)
    renorm = cls(3, r_max=1.0, d_max=0.0)
    with torch.no_grad():
        plain.weight.uniform_(0.5, 2)
        plain.bias.normal_()
        plain.running_mean.normal_()
    renorm.load_state_dict(plain.state_dict())
    for _ in range(2):
        y1, y2 = plain(x), renorm(x)
        g1 = torch.autograd.grad(y1.square().sum(), [x, plain.weight, plain.bias])
        g2 = torch.autograd.grad(y2.square().sum(), [x, renorm.weight, renorm.bias])
        assert torch.equal(y1, y2)
        assert all(torch.equal(a, c) for a, c in zip(g1, g2, strict=True))
    for k, v in plain.state_dict().items():
        assert torch.equal(v, renorm.state_dict()[k]), k


def test_state_dict_both_ways_with_torch_and_eval_is_bn():
    torch.manual_seed(2)
    tb = torch.nn.BatchNorm2d(3)
    tb.train()
    tb(torch.randn(4, 3, 5, 5) * 2 + 1)
    r = bn.BatchRenorm2d(3)
    r.load_state_dict(tb.state_dict())
    assert set(r.state_dict()) == set(tb.state_dict())
    r.train()
    r(torch.randn(4, 3, 5, 5))
    tb.load_state_dict(r.state_dict())
    tb.eval(), r.eval()
    x = torch.randn(2, 3, 5, 5)
    torch.testing.assert_close(r(x), tb(x))


def test_running_stats_are_plain_bn_updates(sample):
    x, w, b, rm, rv = sample
    rm1, rv1, rm2, rv2 = rm.clone(), rv.clone(), rm.clone(), rv.clone()
    batch_renorm(x, rm1, rv1, w, b, True, momentum=0.3, r_max=2.0, d_max=1.0)
    bn.batch_norm(x, rm2, rv2, w, b, True, momentum=0.3)
    assert torch.equal(rm1, rm2) and torch.equal(rv1, rv2)


def test_schedule_paper_defaults_and_step_from_num_batches_tracked():
    assert PAPER_R_MAX(0) == 1.0 and PAPER_R_MAX(5000) == 1.0 and PAPER_R_MAX(40000) == 3.0
    assert PAPER_D_MAX(5000) == 0.0 and PAPER_D_MAX(25000) == 5.0 and PAPER_D_MAX(15000) == 2.5
    assert PAPER_R_MAX(22500) == 2.0
    m = bn.BatchRenorm1d(2, r_max=LinearSchedule(1, 2, 0, 2), d_max=lambda step: 0.5 * step)
    assert m.limits() == (1.0, 0.0)
    for _ in range(3):
        m(torch.randn(4, 2))
    assert int(m.num_batches_tracked) == 3 and m.limits() == (2.0, 1.5)


def test_errors():
    with pytest.raises(ValueError, match="r_max must be >= 1"):
        batch_renorm(torch.randn(4, 2), torch.zeros(2), torch.ones(2), training=True, r_max=0.5)
    with pytest.raises(ValueError, match="d_max must be >= 0"):
        batch_renorm(torch.randn(4, 2), torch.zeros(2), torch.ones(2), training=True, d_max=-1)
    with pytest.raises(ValueError, match="track_running_stats=True"):
        bn.BatchRenorm1d(2, track_running_stats=False)
    with pytest.raises(ValueError, match="needs running_mean"):
        batch_renorm(torch.randn(4, 2), None, None, training=True)
