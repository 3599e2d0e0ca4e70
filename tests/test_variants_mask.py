"""Masked statistics and the small-batch policy."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import batchnorm as bn
from batchnorm import reference as ref

D = torch.float64


def _lengths_mask(lengths, L):
    return torch.arange(L)[None, :] < torch.tensor(lengths)[:, None]  # (N, L)


@pytest.mark.parametrize("channels_last", [False, True])
def test_masked_forward_backward_match_reference_on_valid_positions(channels_last):
    torch.manual_seed(0)
    N, C, L = 4, 3, 6
    x = torch.randn(N, C, L, dtype=D) * 3 + 1e3  # a large mean: the masked path keeps its digits
    mask = _lengths_mask([6, 2, 4, 1], L)
    w, b = torch.rand(C, dtype=D) + 0.5, torch.randn(C, dtype=D)
    xin = x.transpose(1, 2).contiguous() if channels_last else x
    axis = -1 if channels_last else 1
    xr = xin.clone().requires_grad_()
    rm, rv = torch.zeros(C, dtype=D), torch.ones(C, dtype=D)
    y = bn.batch_norm(xr, rm, rv, w, b, True, momentum=1.0, axis=axis, mask=mask)
    y = y.transpose(1, 2) if channels_last else y
    # Oracle: the valid values alone, as a (M, C) batch.
    valid = x.transpose(1, 2)[mask]  # (M, C)
    y_ref, cache = ref.batch_norm_forward(valid.numpy(), w.numpy(), b.numpy(), eps=1e-5, axis=1)
    np.testing.assert_allclose(
        y.transpose(1, 2)[mask].detach().numpy(), y_ref, rtol=1e-9, atol=1e-9
    )
    # Padded positions are normalized with the same statistics.
    pad = x.transpose(1, 2)[~mask].numpy()
    expect = (pad - cache["mean"]) * cache["inv_std"] * w.numpy() + b.numpy()
    np.testing.assert_allclose(y.transpose(1, 2)[~mask].detach().numpy(), expect, rtol=1e-9)
    # Running statistics: m = number of valid values.
    np.testing.assert_allclose(rm.numpy(), cache["mean"], rtol=1e-12)
    np.testing.assert_allclose(rv.numpy(), ref.unbiased(cache["var"], cache["m"]), rtol=1e-12)
    # Backward with dy zero on padding equals the oracle's backward on the valid values.
    dy = torch.randn(N, C, L, dtype=D) * mask[:, None, :]
    dyin = dy.transpose(1, 2) if channels_last else dy
    (dx,) = torch.autograd.grad(y, xr, dyin.transpose(1, 2) if channels_last else dyin)
    dx = dx.transpose(1, 2) if channels_last else dx
    dx_ref, _, _ = ref.batch_norm_backward(dy.transpose(1, 2)[mask].numpy(), cache)
    np.testing.assert_allclose(dx.transpose(1, 2)[mask].numpy(), dx_ref, rtol=1e-7, atol=1e-9)
    assert torch.all(dx.transpose(1, 2)[~mask] == 0)


def test_masked_gradcheck_including_padded_outputs():
    torch.manual_seed(1)
    x = torch.randn(3, 2, 5, dtype=D, requires_grad=True)
    w = torch.rand(2, dtype=D, requires_grad=True)
    b = torch.randn(2, dtype=D, requires_grad=True)
    mask = _lengths_mask([5, 3, 2], 5)
    fn = lambda x, w, b: bn.batch_norm(x, None, None, w, b, True, mask=mask)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (x, w, b))
    assert torch.autograd.gradgradcheck(fn, (x, w, b))


def test_all_true_mask_is_plain_bn_and_all_false_updates_nothing():
    torch.manual_seed(2)
    x = torch.randn(4, 3, 5)
    m1, m2 = bn.BatchNorm1d(3), bn.BatchNorm1d(3)
    torch.testing.assert_close(
        m1(x, mask=torch.ones(4, 5, dtype=torch.bool)), m2(x), rtol=1e-6, atol=1e-6
    )
    torch.testing.assert_close(m1.running_var, m2.running_var)
    before = m1.state_dict()
    before = {k: v.clone() for k, v in before.items()}
    xr = x.clone().requires_grad_()
    y = m1(xr, mask=torch.zeros(4, 5, dtype=torch.bool))
    assert torch.equal(y, x)  # documented: an all-masked batch passes through unchanged
    y.sum().backward()
    assert torch.isfinite(xr.grad).all()
    for k, v in m1.state_dict().items():
        assert torch.equal(v, before[k]) and torch.isfinite(v.float()).all(), k


def test_mask_errors():
    x = torch.randn(4, 3, 5)
    with pytest.raises(TypeError, match="torch.bool"):
        bn.batch_norm(x, None, None, training=True, mask=torch.ones(4, 5))
    with pytest.raises(ValueError, match="does not broadcast"):
        bn.batch_norm(x, None, None, training=True, mask=torch.ones(4, 3, 5, dtype=torch.bool))
    with pytest.raises(ValueError, match="1 valid value per channel"):
        bn.batch_norm(x, None, None, training=True, mask=_lengths_mask([1, 0, 0, 0], 5))


def test_small_batch_policies():
    torch.manual_seed(3)
    m = bn.BatchNorm1d(3)
    m(torch.randn(8, 3) + 2)
    state = {k: v.clone() for k, v in m.state_dict().items()}
    x1 = torch.randn(1, 3)
    with pytest.raises(ValueError, match="small_batch"):
        m(x1)
    m.small_batch = "running"
    assert m.training
    y = m(x1)
    m.eval()
    assert torch.equal(y, m(x1))
    m.train()
    m.small_batch = "skip"
    with torch.no_grad():
        m.bias.copy_(torch.tensor([0.5, -1.0, 2.0]))
    assert torch.equal(m(x1), m.bias.detach()[None])  # Algorithm 1: x_hat = 0, y = beta
    for k, v in m.state_dict().items():
        if k != "bias":
            assert torch.equal(v, state[k]), k  # nothing updated
    with pytest.raises(ValueError, match="small_batch must be one of"):
        bn.BatchNorm1d(3, small_batch="ignore")
    with pytest.raises(ValueError, match="needs running statistics"):
        bn.batch_norm(x1, None, None, training=True, small_batch="running")
    # Two values per channel is a normal batch whatever the policy.
    m2 = bn.BatchNorm1d(3, small_batch="running")
    m2(torch.randn(2, 3))
    assert int(m2.num_batches_tracked) == 1


@settings(max_examples=25, deadline=None, derandomize=True)
@given(
    lengths=st.lists(st.integers(0, 6), min_size=2, max_size=5).filter(lambda ls: sum(ls) >= 2),
    scale=st.floats(1e-2, 1e2),
    shift=st.floats(-1e3, 1e3),
)
def test_property_padding_values_do_not_matter(lengths, scale, shift):
    """Valid outputs and running statistics ignore whatever sits in the padding."""
    g = torch.Generator().manual_seed(len(lengths))
    x = torch.randn(len(lengths), 2, 6, generator=g, dtype=D) * scale + shift
    mask = _lengths_mask(lengths, 6)
    junk = x.masked_fill(~mask[:, None, :], 1e6)
    rm1, rv1, rm2, rv2 = (
        torch.zeros(2, dtype=D),
        torch.ones(2, dtype=D),
        torch.zeros(2, dtype=D),
        torch.ones(2, dtype=D),
    )
    y1 = bn.batch_norm(x, rm1, rv1, training=True, mask=mask)
    y2 = bn.batch_norm(junk, rm2, rv2, training=True, mask=mask)
    m = mask[:, None, :].expand_as(x)
    torch.testing.assert_close(y1[m], y2[m], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(rm1, rm2, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(rv1, rv2, rtol=1e-12, atol=1e-12)
    # ...and the valid outputs have mean 0 and biased variance var / (var + eps) per channel.
    valid = y1.transpose(1, 2)[mask]  # (M, 2)
    torch.testing.assert_close(valid.mean(0), torch.zeros(2, dtype=D), rtol=0, atol=1e-9)


def test_float32_masked_statistics_keep_digits_of_a_large_mean():
    torch.manual_seed(5)
    x = (torch.randn(6, 3, 8, dtype=D) * 1e-2 + 1e4).float()
    mask = _lengths_mask([8, 5, 3, 7, 1, 2], 8)
    y = bn.batch_norm(x, None, None, training=True, mask=mask)
    valid = x.double().transpose(1, 2)[mask]
    y_ref, _ = ref.batch_norm_forward(valid.numpy(), eps=1e-5, axis=1)
    np.testing.assert_allclose(
        y.transpose(1, 2)[mask].double().numpy(), y_ref, rtol=0, atol=1e-5
    )  # a float32 mean: 0.08
