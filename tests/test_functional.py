"""The core op against its three oracles: the float64 NumPy reference, torch's builtin, gradcheck."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as TF
from samples import Sample, sample_inputs

import batchnorm
import batchnorm.functional as F
from batchnorm import reference as ref

EPS = 1e-5
ALL = sample_inputs()
F64 = sample_inputs(dtypes=(torch.float64,))

# Output tolerance against the float64 reference of the same (rounded) input, per dtype:
# a few units of the output dtype's rounding for |y| of a few units.
ATOL = {torch.float64: 1e-10, torch.float32: 2e-5, torch.bfloat16: 6e-2, torch.float16: 8e-3}


def np64(t: torch.Tensor | None) -> np.ndarray | None:
    return None if t is None else t.detach().double().numpy()


def run_ours(s: Sample, x, w, b, rm, rv, training: bool = True, nbt=None):
    return F.batch_norm(
        x, rm, rv, w, b, training, s.momentum, EPS, axis=s.axis, num_batches_tracked=nbt
    )


def momentum_for_torch(s: Sample, nbt_after: int) -> float:
    return 1.0 / nbt_after if s.momentum is None else s.momentum


def to_axis1(t: torch.Tensor, axis: int) -> torch.Tensor:
    return t.movedim(axis, 1)


@pytest.mark.parametrize("s", ALL, ids=str)
def test_train_forward_matches_reference(s: Sample):
    x, w, b, rm, rv = s.make()
    rm0 = None if rm is None else rm.clone()
    rv0 = None if rv is None else rv.clone()
    nbt = torch.tensor(3) if s.momentum is None else None
    y = run_ours(s, x, w, b, rm, rv, nbt=nbt)
    assert y.dtype == x.dtype and y.shape == x.shape
    y_ref, cache = ref.batch_norm_forward(np64(x), np64(w), np64(b), EPS, axis=s.axis)
    np.testing.assert_allclose(np64(y), y_ref, atol=ATOL[s.dtype], rtol=0)
    if s.track:
        m = cache["m"]
        batch_var = ref.unbiased(cache["var"], m)
        if s.momentum is None:
            want_m = ref.cumulative_update(np64(rm0), cache["mean"], 4)
            want_v = ref.cumulative_update(np64(rv0), batch_var, 4)
            assert int(nbt) == 4
        else:
            want_m = ref.running_update(np64(rm0), cache["mean"], s.momentum)
            want_v = ref.running_update(np64(rv0), batch_var, s.momentum)
        tol = 1e-12 if s.dtype == torch.float64 else 1e-5
        np.testing.assert_allclose(np64(rm), want_m, atol=tol, rtol=tol)
        np.testing.assert_allclose(np64(rv), want_v, atol=tol, rtol=tol)


@pytest.mark.parametrize("s", ALL, ids=str)
def test_train_backward_matches_reference(s: Sample):
    x, w, b, rm, rv = s.make(requires_grad=True)
    y = run_ours(s, x, w, b, rm, rv, nbt=torch.tensor(0))
    dy = torch.randn(y.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    grads = torch.autograd.grad(y, [t for t in (x, w, b) if t is not None], dy.to(y.dtype))
    _, cache = ref.batch_norm_forward(np64(x), np64(w), np64(b), EPS, axis=s.axis)
    dx_ref, dg_ref, db_ref = ref.batch_norm_backward(np64(dy.to(y.dtype)), cache)
    # Gradients in low precision: relative to the largest entry.
    rtol = {torch.float64: 1e-9, torch.float32: 1e-4, torch.bfloat16: 3e-2, torch.float16: 5e-3}[
        s.dtype
    ]
    for got, want in zip(grads, [dx_ref, dg_ref, db_ref]):
        scale = max(np.abs(want).max(), 1.0)
        np.testing.assert_allclose(np64(got), want, atol=rtol * scale, rtol=0)


@pytest.mark.parametrize("s", [s for s in ALL if s.track], ids=str)
def test_eval_matches_reference_and_affine_map(s: Sample):
    x, w, b, rm, rv = s.make(requires_grad=True)
    y = F.batch_norm(x, rm, rv, w, b, False, s.momentum, EPS, axis=s.axis)
    y_ref = ref.batch_norm_inference(
        np64(x), np64(rm), np64(rv), np64(w), np64(b), EPS, axis=s.axis
    )
    np.testing.assert_allclose(np64(y), y_ref, atol=ATOL[s.dtype], rtol=0)
    # Eval-mode BN is one affine map per channel (eq. 23-24), and its input gradient is scale.
    scale, _ = ref.inference_affine(np64(rm), np64(rv), np64(w), np64(b), EPS)
    dx = torch.autograd.grad(y.sum(), x)[0]
    shape = [1] * x.ndim
    shape[s.axis] = -1
    want = np.broadcast_to(scale.reshape(shape), x.shape)
    np.testing.assert_allclose(
        np64(dx), want, rtol={torch.float64: 1e-12}.get(s.dtype, 1e-2), atol=0
    )


@pytest.mark.parametrize("s", ALL, ids=str)
def test_matches_torch_builtin(s: Sample):
    """Outputs, gradients and running statistics as torch.nn.functional.batch_norm.

    In float64 they agree to rounding; in lower precision ours is never further from the
    float64 reference than the builtin is (up to one unit of the output's rounding).
    """
    x, w, b, rm, rv = s.make(requires_grad=True)
    x_t = x.detach().clone().requires_grad_(True)
    w_t = None if w is None else w.detach().clone().requires_grad_(True)
    b_t = None if b is None else b.detach().clone().requires_grad_(True)
    rm_t = None if rm is None else rm.clone()
    rv_t = None if rv is None else rv.clone()
    nbt = torch.tensor(3)
    y = run_ours(s, x, w, b, rm, rv, nbt=nbt)
    y_t = TF.batch_norm(
        to_axis1(x_t, s.axis), rm_t, rv_t, w_t, b_t, True, momentum_for_torch(s, 4), EPS
    )
    y_t = y_t.movedim(1, s.axis)
    dy = torch.randn(y.shape, generator=torch.Generator().manual_seed(2)).to(y.dtype)
    ours = torch.autograd.grad(y, [t for t in (x, w, b) if t is not None], dy)
    theirs = torch.autograd.grad(y_t, [t for t in (x_t, w_t, b_t) if t is not None], dy)
    if s.dtype == torch.float64:
        torch.testing.assert_close(y, y_t, atol=1e-12, rtol=1e-12)
        for a, c in zip(ours, theirs):
            torch.testing.assert_close(a, c, atol=1e-10, rtol=1e-10)
        if s.track:
            torch.testing.assert_close(rm, rm_t, atol=1e-13, rtol=1e-13)
            torch.testing.assert_close(rv, rv_t, atol=1e-13, rtol=1e-13)
        return
    y_ref, _ = ref.batch_norm_forward(np64(x), np64(w), np64(b), EPS, axis=s.axis)
    ulp = torch.finfo(s.dtype).eps * np.abs(y_ref).max()
    err_ours = np.abs(np64(y) - y_ref).max()
    err_torch = np.abs(np64(y_t) - y_ref).max()
    assert err_ours <= err_torch + ulp, (err_ours, err_torch)
    if s.track:
        torch.testing.assert_close(rm, rm_t, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(rv, rv_t, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("s", [s for s in F64 if np.prod(s.shape) <= 200], ids=str)
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_gradcheck_and_double_backward(s: Sample, training: bool):
    if not training and not s.track:
        pytest.skip("evaluation needs running statistics")
    x, w, b, rm, rv = s.make(requires_grad=True)
    inputs = tuple(t for t in (x, w, b) if t is not None)

    def f(*args):
        xx, ww, bb = (
            args[0],
            (args[1] if w is not None else None),
            (args[2] if b is not None else None),
        )
        return F.batch_norm(
            xx,
            None if training else rm,
            None if training else rv,
            ww,
            bb,
            training,
            eps=EPS,
            axis=s.axis,
        )

    assert torch.autograd.gradcheck(f, inputs)
    assert torch.autograd.gradgradcheck(f, inputs)


# ---------------------------------------------------------------- numerics


def test_large_mean_small_std_matches_float64():
    g = torch.Generator().manual_seed(0)
    x = (1e4 + 1e-2 * torch.randn(64, 3, 8, 8, generator=g, dtype=torch.float64)).float()
    w, b = torch.tensor([1.0, 2.0, 0.5]), torch.tensor([0.1, -0.2, 0.3])
    y = F.batch_norm(x, None, None, w, b, True)
    y64 = F.batch_norm(x.double(), None, None, w.double(), b.double(), True)
    err = (y.double() - y64).abs().max().item()
    assert err < 1e-3
    # Same in evaluation with float64-exact running statistics of the data.
    rm, rv = x.double().mean((0, 2, 3)), x.double().var((0, 2, 3))
    ye = F.batch_norm(x, rm.float(), rv.float(), w, b, False)
    ye64 = F.batch_norm(
        x.double(), rm.float().double(), rv.float().double(), w.double(), b.double(), False
    )
    assert (ye.double() - ye64).abs().max().item() < 1e-3


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("training", [True, False])
def test_constant_channel_gives_exactly_beta(dtype, training):
    x = torch.full((16, 2, 5), 1e4, dtype=dtype)
    x[:, 1] = 3.75
    b = torch.tensor([0.25, -1.5])
    rm = x[0, :, 0].float()  # the channel's value as the dtype holds it (bf16 has no 1e4)
    rv = torch.ones(2)
    y = F.batch_norm(
        x, None if training else rm, None if training else rv, torch.tensor([2.0, 3.0]), b, training
    )
    assert torch.equal(y[:, 0], torch.full_like(y[:, 0], 0.25))
    assert torch.equal(y[:, 1], torch.full_like(y[:, 1], -1.5))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_inputs_accumulate_statistics_in_float32(dtype):
    g = torch.Generator().manual_seed(0)
    x = (torch.randn(256, 4, 16, generator=g) * 0.5 + 3).to(dtype)
    mean, var = F.batch_stats(x, 1)
    assert mean.dtype == torch.float64 and var.dtype == torch.float32
    x64 = x.double()
    torch.testing.assert_close(mean, x64.mean((0, 2)), atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(var.double(), x64.var((0, 2), unbiased=False), atol=1e-5, rtol=1e-5)


def test_no_e_x2_cancellation_in_variance():
    # E[x^2] - E[x]^2 in float32 would return noise of order 10 (or a negative number) here.
    g = torch.Generator().manual_seed(0)
    x = (1e4 + 1e-2 * torch.randn(4096, 2, generator=g, dtype=torch.float64)).float()
    _, var = F.batch_stats(x, 1)
    want = x.double().var(0, unbiased=False)
    torch.testing.assert_close(var.double(), want, rtol=1e-4, atol=0)


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize("shape", [(1, 4), (1, 4, 1, 1), (1, 3, 1)])
def test_one_value_per_channel_in_training_raises(shape):
    x = torch.randn(shape)
    rm, rv = torch.zeros(shape[1]), torch.ones(shape[1])
    with pytest.raises(ValueError, match=r"more than one value per channel.*model\.eval\(\)") as e:
        F.batch_norm(x, rm, rv, training=True)
    assert str(tuple(shape)) in str(e.value)
    assert torch.equal(rm, torch.zeros(shape[1])) and torch.equal(rv, torch.ones(shape[1]))


def test_batch_of_one_with_spatial_positions_is_fine():
    y = F.batch_norm(torch.randn(1, 3, 4, 4), None, None, training=True)
    assert torch.isfinite(y).all()


@pytest.mark.parametrize("eps", [0.0, -1e-5, float("nan")])
def test_bad_eps(eps):
    with pytest.raises(ValueError, match="eps must be > 0"):
        F.batch_norm(torch.randn(4, 3), None, None, training=True, eps=eps)


@pytest.mark.parametrize("momentum", [-0.1, 1.5])
def test_bad_momentum(momentum):
    with pytest.raises(ValueError, match="momentum must be in"):
        F.batch_norm(
            torch.randn(4, 3), torch.zeros(3), torch.ones(3), training=True, momentum=momentum
        )


def test_wrong_channel_count_names_the_tensor():
    with pytest.raises(ValueError, match=r"weight has 4 entries.*3 channels along axis 1"):
        F.batch_norm(torch.randn(4, 3, 2), None, None, torch.ones(4), training=True)
    with pytest.raises(ValueError, match=r"running_mean has 5 entries"):
        F.batch_norm(torch.randn(4, 3), torch.zeros(5), torch.ones(5))


def test_rank_axis_dtype_device_and_missing_stats():
    with pytest.raises(ValueError, match="rank >= 2"):
        F.batch_norm(torch.randn(5), None, None, training=True)
    with pytest.raises(ValueError, match="axis 3 is out of range"):
        F.batch_norm(torch.randn(4, 3), None, None, training=True, axis=3)
    with pytest.raises(TypeError, match="floating-point input.*x.float"):
        F.batch_norm(torch.ones(4, 3, dtype=torch.long), None, None, training=True)
    with pytest.raises(ValueError, match="is on meta but the input is on cpu"):
        F.batch_norm(torch.randn(4, 3), None, None, torch.ones(3, device="meta"), training=True)
    with pytest.raises(ValueError, match="evaluation mode.*needs running_mean"):
        F.batch_norm(torch.randn(4, 3), None, None, training=False)
    with pytest.raises(ValueError, match="given together"):
        F.batch_norm(torch.randn(4, 3), torch.zeros(3), None, training=True)
    with pytest.raises(ValueError, match="needs num_batches_tracked"):
        F.batch_norm(torch.randn(4, 3), torch.zeros(3), torch.ones(3), training=True, momentum=None)


def test_non_finite_batch_never_reaches_running_stats():
    rm, rv = torch.zeros(3), torch.ones(3)
    nbt, skipped = torch.tensor(0), torch.tensor(0)
    x = torch.randn(8, 3)
    x[2, 1] = float("nan")
    y = F.batch_norm(x, rm, rv, training=True, num_batches_tracked=nbt, skipped_updates=skipped)
    assert torch.isnan(y[:, 1]).all()  # the data's NaN stays visible in the output ...
    assert torch.equal(rm, torch.zeros(3)) and torch.equal(
        rv, torch.ones(3)
    )  # ... not in the state
    assert int(skipped) == 1 and int(nbt) == 0
    x[2, 1] = float("inf")
    F.batch_norm(x, rm, rv, training=True, num_batches_tracked=nbt, skipped_updates=skipped)
    assert int(skipped) == 2 and torch.equal(rv, torch.ones(3))
    F.batch_norm(
        torch.randn(8, 3), rm, rv, training=True, num_batches_tracked=nbt, skipped_updates=skipped
    )
    assert int(skipped) == 2 and int(nbt) == 1 and not torch.equal(rm, torch.zeros(3))


def test_store_biased_variance_keras_flax_convention():
    x = torch.randn(10, 3, dtype=torch.float64)
    rm, rv = torch.zeros(3, dtype=torch.float64), torch.zeros(3, dtype=torch.float64)
    F.batch_norm(x, rm, rv, training=True, momentum=1.0, store_unbiased=False)
    torch.testing.assert_close(rv, x.var(0, unbiased=False))
    F.batch_norm(x, rm, rv, training=True, momentum=1.0)
    torch.testing.assert_close(rv, x.var(0, unbiased=True))


def test_empty_batch_is_a_no_op_for_statistics():
    rm, rv = torch.zeros(3), torch.ones(3)
    x = torch.randn(0, 3, requires_grad=True)
    y = F.batch_norm(x, rm, rv, torch.ones(3), torch.zeros(3), training=True)
    assert y.shape == (0, 3)
    assert torch.equal(rm, torch.zeros(3)) and torch.equal(rv, torch.ones(3))


# ---------------------------------------------------------------- TF-style pieces


def test_moments_and_batch_normalization_as_tensorflow():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(8, 4, 4, 3, generator=g, dtype=torch.float64) * 2 + 1  # NHWC
    mean, var = F.moments(x, axes=[0, 1, 2])
    m_ref, v_ref = ref.moments(x.numpy(), axis=-1)
    np.testing.assert_allclose(mean.numpy(), m_ref, atol=1e-12)
    np.testing.assert_allclose(var.numpy(), v_ref, atol=1e-12)
    mk, vk = F.moments(x, axes=[0, 1, 2], keepdims=True)
    assert mk.shape == (1, 1, 1, 3)
    gamma, beta = torch.rand(3, dtype=torch.float64) + 0.5, torch.randn(3, dtype=torch.float64)
    y = F.batch_normalization(x, mean, var, beta, gamma, 1e-3)
    y_ref, _ = ref.batch_norm_forward(x.numpy(), gamma.numpy(), beta.numpy(), 1e-3, axis=-1)
    np.testing.assert_allclose(y.numpy(), y_ref, atol=1e-12)
    with pytest.raises(ValueError, match="variance_epsilon"):
        F.batch_normalization(x, mean, var, None, None, 0.0)
    with pytest.raises(TypeError):
        F.moments(torch.ones(3, dtype=torch.long), axes=[0])


@pytest.mark.parametrize("training", [True, False])
def test_forward_without_grad_gives_the_bits_of_the_autograd_path(training: bool):
    """The no-grad shortcut (forward alone, no autograd.Function) changes nothing but speed:
    the same output and the same running statistics as the path that records a graph."""
    g = torch.Generator().manual_seed(11)
    x = torch.randn(6, 5, 4, 3, generator=g)
    w, b = torch.rand(5, generator=g) + 0.5, torch.randn(5, generator=g)
    outs = []
    for grad in (True, False):
        rm, rv = torch.zeros(5), torch.ones(5)
        xi = x.clone().requires_grad_(grad)
        with torch.set_grad_enabled(grad):
            y = F.batch_norm(xi, rm, rv, w, b, training)
        assert y.requires_grad == grad
        outs.append((y.detach(), rm, rv))
    for a, c in zip(*outs, strict=True):
        assert torch.equal(a, c)


def test_eval_graph_survives_a_train_forward_before_its_backward():
    """An eval forward, then a train forward that moves the running statistics in place, then
    the first output's backward (a teacher/student pattern): allowed, as in torch.nn, and the
    gradient is that of the statistics the eval forward used. (torch.nn 2.13 re-reads the
    moved running_var in its backward: its x gradient is off by about 4% here.)"""
    g = torch.Generator().manual_seed(12)
    x = torch.randn(4, 3, generator=g, dtype=torch.float64)
    other = torch.randn(4, 3, generator=g, dtype=torch.float64)
    upstream = torch.arange(12.0, dtype=torch.float64).reshape(4, 3)
    grads = []
    for train_forward_between in (False, True):
        bn = batchnorm.BatchNorm1d(3).double()
        with torch.no_grad():
            bn.running_mean.copy_(torch.tensor([0.5, -1.0, 2.0]))
            bn.running_var.copy_(torch.tensor([2.0, 0.5, 1.5]))
        bn.eval()
        xi = x.clone().requires_grad_()
        y = bn(xi)
        if train_forward_between:
            bn.train()
            bn(other)
            assert not torch.equal(
                bn.running_var, torch.tensor([2.0, 0.5, 1.5], dtype=torch.float64)
            )
        (y * upstream).sum().backward()
        grads.append((xi.grad, bn.weight.grad, bn.bias.grad))
    for a, c in zip(*grads, strict=True):
        torch.testing.assert_close(a, c, rtol=1e-12, atol=1e-12)
