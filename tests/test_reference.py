"""Tests of the NumPy float64 reference (batchnorm/reference.py) against independent oracles:
hand-computed numbers, NumPy's own reductions, and central finite differences."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

REF_PATH = Path(__file__).resolve().parents[1] / "batchnorm" / "reference.py"


def _load_reference() -> ModuleType:
    """Import batchnorm.reference; load it from its file if the package import fails.

    The reference has no dependency on the rest of the package, so a broken or missing
    ``batchnorm/__init__.py`` must not hide its tests.
    """
    try:
        from batchnorm import reference

        return reference
    except Exception:  # the package __init__ may be absent or in flux; the file is standalone
        spec = importlib.util.spec_from_file_location("_batchnorm_reference", REF_PATH)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module


ref = _load_reference()

# (shape, channel axis): ranks 2..5, channels first (NCHW-like) and last (NHWC-like).
LAYOUTS = [
    ((8, 3), 1),
    ((8, 3), -1),
    ((4, 3, 5), 1),
    ((4, 5, 3), -1),
    ((2, 3, 4, 5), 1),
    ((2, 4, 5, 3), -1),
    ((2, 3, 2, 3, 4), 1),
    ((2, 2, 3, 4, 3), -1),
]
# Small layouts for element-wise finite differences.
FD_LAYOUTS = [((5, 3), 1), ((2, 3, 2, 2), 1), ((2, 2, 3), -1), ((3, 2, 1, 2, 2), 1)]


def _ids(layouts):
    return [f"{shape}-axis{axis}" for shape, axis in layouts]


def _channel_view(a: np.ndarray, axis: int) -> np.ndarray:
    """Move the channel axis last and flatten the rest: (m, C)."""
    a = np.moveaxis(a, axis, -1)
    return a.reshape(-1, a.shape[-1])


def _sample(shape, axis, seed=0):
    rng = np.random.default_rng(seed)
    c = shape[axis]
    # Per-channel offsets and spreads, so channels really differ.
    x = rng.normal(size=shape)
    shape_c = [1] * len(shape)
    shape_c[axis] = c
    x = x * rng.uniform(0.5, 3.0, size=c).reshape(shape_c) + rng.normal(0, 5, size=c).reshape(
        shape_c
    )
    gamma = rng.uniform(0.5, 2.0, size=c) * rng.choice([-1.0, 1.0], size=c)
    beta = rng.normal(size=c)
    return x, gamma, beta


# ----------------------------------------------------------------------------------------
# Forward (Algorithm 1)
# ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("shape", "axis"), LAYOUTS, ids=_ids(LAYOUTS))
def test_moments_match_numpy(shape, axis):
    x, _, _ = _sample(shape, axis)
    mean, var = ref.moments(x, axis)
    flat = _channel_view(x, axis)  # (m, C)
    np.testing.assert_allclose(mean, flat.mean(axis=0), rtol=1e-13, atol=1e-13)
    np.testing.assert_allclose(var, flat.var(axis=0), rtol=1e-12, atol=0)


@pytest.mark.parametrize(("shape", "axis"), LAYOUTS, ids=_ids(LAYOUTS))
def test_forward_gives_zero_mean_unit_variance(shape, axis):
    x, _, _ = _sample(shape, axis)
    y, cache = ref.batch_norm_forward(x, eps=0.0, axis=axis)
    assert y.shape == x.shape and y.dtype == np.float64
    flat = _channel_view(y, axis)  # (m, C)
    np.testing.assert_allclose(flat.mean(axis=0), 0.0, atol=1e-12)
    np.testing.assert_allclose(flat.var(axis=0), 1.0, rtol=1e-12)
    assert set(cache) == {"x", "x_hat", "mean", "var", "inv_std", "gamma", "eps", "axis", "m"}
    assert cache["m"] == x.size // x.shape[axis]
    assert cache["axis"] == axis % x.ndim
    np.testing.assert_array_equal(cache["gamma"], np.ones(x.shape[axis]))


@pytest.mark.parametrize(("shape", "axis"), LAYOUTS, ids=_ids(LAYOUTS))
def test_forward_with_eps_and_affine(shape, axis):
    x, gamma, beta = _sample(shape, axis)
    eps = 0.5  # large, so that its effect on the variance is visible
    y, cache = ref.batch_norm_forward(x, gamma, beta, eps=eps, axis=axis)
    flat_x, flat_y = _channel_view(x, axis), _channel_view(y, axis)  # (m, C)
    var = flat_x.var(axis=0)
    # Hand formula (eqs. 1-4) written independently of the reference.
    expected = (flat_x - flat_x.mean(axis=0)) / np.sqrt(var + eps) * gamma + beta
    np.testing.assert_allclose(flat_y, expected, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(flat_y.mean(axis=0), beta, atol=1e-12)
    np.testing.assert_allclose(flat_y.var(axis=0), gamma**2 * var / (var + eps), rtol=1e-12)
    np.testing.assert_allclose(cache["inv_std"], 1 / np.sqrt(var + eps), rtol=1e-14)


def test_forward_is_invariant_to_positive_affine_input():
    # BN(a * x + c) = BN(x) for a > 0 and per-channel c (exact with eps = 0; docs section 8).
    x, gamma, beta = _sample((6, 4, 3), 1)
    c = np.array([1.0, -7.0, 100.0, 0.5]).reshape(1, 4, 1)
    y, _ = ref.batch_norm_forward(x, gamma, beta, eps=0.0)
    y2, _ = ref.batch_norm_forward(3.7 * x + c, gamma, beta, eps=0.0)
    np.testing.assert_allclose(y2, y, rtol=1e-10, atol=1e-10)


def test_constant_channel_gives_exactly_beta():
    x = np.full((4, 2, 3), 1e4)
    beta = np.array([0.25, -3.0])
    y, _ = ref.batch_norm_forward(x, np.array([2.0, 5.0]), beta)
    np.testing.assert_array_equal(y, np.broadcast_to(beta.reshape(1, 2, 1), x.shape))


def test_large_mean_small_std_is_normalized_accurately():
    # mean 1e4, std 1e-2: E[x^2] - E[x]^2 would lose ~12 digits; two-pass keeps them.
    rng = np.random.default_rng(1)
    x = 1e4 + 1e-2 * rng.normal(size=(256, 2))
    y, cache = ref.batch_norm_forward(x, eps=0.0)
    np.testing.assert_allclose(np.sqrt(cache["var"]), x.std(axis=0), rtol=1e-9)
    np.testing.assert_allclose(y.mean(axis=0), 0.0, atol=1e-9)
    np.testing.assert_allclose(y.var(axis=0), 1.0, rtol=1e-9)


# ----------------------------------------------------------------------------------------
# Backward
# ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("shape", "axis"), LAYOUTS, ids=_ids(LAYOUTS))
@pytest.mark.parametrize("affine", [True, False], ids=["affine", "plain"])
def test_backward_chain_equals_three_term_form(shape, axis, affine):
    x, gamma, beta = _sample(shape, axis)
    if not affine:
        gamma = beta = None
    dy = np.random.default_rng(2).normal(size=shape)
    _, cache = ref.batch_norm_forward(x, gamma, beta, axis=axis)
    dx_chain, dgamma_chain, dbeta_chain = ref.batch_norm_backward_chain(dy, cache)
    dx, dgamma, dbeta = ref.batch_norm_backward(dy, cache)
    np.testing.assert_allclose(dx_chain, dx, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(dgamma_chain, dgamma, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(dbeta_chain, dbeta, rtol=1e-12, atol=1e-12)
    # The gradient sums to 0 over each channel (docs, section 3).
    np.testing.assert_allclose(_channel_view(dx, axis).sum(axis=0), 0.0, atol=1e-10)


def _finite_differences(x, gamma, beta, w, eps, axis, h=1e-6):
    """Central differences of loss = sum(w * y) with respect to x, gamma and beta."""

    def loss(x_, gamma_, beta_):
        y, _ = ref.batch_norm_forward(x_, gamma_, beta_, eps=eps, axis=axis)
        return float(np.sum(w * y))

    grads = []
    for which, arr in enumerate((x, gamma, beta)):
        g = np.zeros_like(arr)
        for idx in np.ndindex(arr.shape):
            args_p = [x.copy(), gamma.copy(), beta.copy()]
            args_m = [x.copy(), gamma.copy(), beta.copy()]
            args_p[which][idx] += h
            args_m[which][idx] -= h
            g[idx] = (loss(*args_p) - loss(*args_m)) / (2 * h)
        grads.append(g)
    return grads


@pytest.mark.parametrize(("shape", "axis"), FD_LAYOUTS, ids=_ids(FD_LAYOUTS))
@pytest.mark.parametrize("backward", ["batch_norm_backward", "batch_norm_backward_chain"])
def test_backward_matches_finite_differences(shape, axis, backward):
    x, gamma, beta = _sample(shape, axis, seed=3)
    w = np.random.default_rng(4).normal(size=shape)
    eps = 1e-3  # non-negligible against the variances, so its role in the gradient is tested
    _, cache = ref.batch_norm_forward(x, gamma, beta, eps=eps, axis=axis)
    dx, dgamma, dbeta = getattr(ref, backward)(w, cache)  # d sum(w * y) / dy = w
    fd_dx, fd_dgamma, fd_dbeta = _finite_differences(x, gamma, beta, w, eps, axis)
    np.testing.assert_allclose(dx, fd_dx, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(dgamma, fd_dgamma, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(dbeta, fd_dbeta, rtol=1e-6, atol=1e-7)


def test_backward_compact_kernel_form():
    # docs eq. 12: dx = k * (dy - mean(dy) - (x - mean) * inv_std^2 * mean(dy * (x - mean))).
    x, gamma, beta = _sample((6, 3, 4), 1, seed=5)
    dy = np.random.default_rng(6).normal(size=x.shape)
    _, cache = ref.batch_norm_forward(x, gamma, beta, eps=1e-2)
    dx, _, _ = ref.batch_norm_backward(dy, cache)
    flat_x, flat_dy = _channel_view(x, 1), _channel_view(dy, 1)  # (m, C)
    xc = flat_x - cache["mean"]
    k = gamma * cache["inv_std"]
    expected = k * (
        flat_dy - flat_dy.mean(axis=0) - xc * cache["inv_std"] ** 2 * (flat_dy * xc).mean(axis=0)
    )
    np.testing.assert_allclose(_channel_view(dx, 1), expected, rtol=1e-11, atol=1e-12)


# ----------------------------------------------------------------------------------------
# Running and population statistics
# ----------------------------------------------------------------------------------------


def test_running_update_torch_and_keras_by_hand():
    running = np.array([1.0, 2.0])
    batch = np.array([3.0, 6.0])
    np.testing.assert_allclose(ref.running_update(running, batch, 0.1), [1.2, 2.4], rtol=1e-15)
    np.testing.assert_allclose(
        ref.running_update(running, batch, 0.99, convention="keras"), [1.02, 2.04], rtol=1e-15
    )
    # Keras momentum 0.9 is PyTorch momentum 0.1.
    np.testing.assert_allclose(
        ref.running_update(running, batch, 0.9, convention="keras"),
        ref.running_update(running, batch, 0.1, convention="torch"),
        rtol=1e-15,
    )
    np.testing.assert_array_equal(running, [1.0, 2.0])  # inputs untouched
    np.testing.assert_array_equal(ref.running_update(running, batch, 1.0), batch)
    np.testing.assert_array_equal(ref.running_update(running, batch, 0.0), running)


def test_cumulative_update_is_plain_mean():
    rng = np.random.default_rng(7)
    batches = rng.normal(size=(9, 4))  # (num_batches, C)
    running = np.array([123.0, -5.0, 0.0, 1.0])  # whatever it was: n = 1 replaces it
    for n, b in enumerate(batches, start=1):
        running = ref.cumulative_update(running, b, n)
        np.testing.assert_allclose(running, batches[:n].mean(axis=0), rtol=1e-13, atol=1e-15)


def test_unbiased():
    np.testing.assert_allclose(ref.unbiased(np.array([2.0, 3.0]), 4), [8 / 3, 4.0], rtol=1e-15)
    x = np.random.default_rng(8).normal(size=(10, 3))
    np.testing.assert_allclose(ref.unbiased(x.var(axis=0), 10), x.var(axis=0, ddof=1))


def test_population_statistics_algorithm_2():
    rng = np.random.default_rng(9)
    m = 6
    batches = rng.normal(2.0, 3.0, size=(5, m, 3))  # (num_batches, m, C)
    batch_means = batches.mean(axis=1)  # (num_batches, C)
    batch_vars = batches.var(axis=1)  # biased, (num_batches, C)
    mean, var = ref.population_statistics(batch_means, batch_vars, m)
    np.testing.assert_allclose(mean, batch_means.sum(axis=0) / 5, rtol=1e-14)
    np.testing.assert_allclose(var, m / (m - 1) * batch_vars.sum(axis=0) / 5, rtol=1e-14)
    np.testing.assert_allclose(var, ref.unbiased(batch_vars.mean(axis=0), m), rtol=1e-15)
    # Equal sizes: the mean is exactly the mean of the concatenation.
    np.testing.assert_allclose(mean, batches.reshape(-1, 3).mean(axis=0), rtol=1e-13)


def test_pooled_statistics_equal_concatenation():
    rng = np.random.default_rng(10)
    sizes = [1, 7, 0, 23, 2, 64]  # unequal, with a batch of one and an empty batch
    batches = [rng.normal(rng.normal(0, 10), rng.uniform(0.1, 4), size=(n, 3)) for n in sizes]
    means = np.stack([b.mean(axis=0) if len(b) else np.zeros(3) for b in batches])
    vars_ = np.stack([b.var(axis=0) if len(b) else np.zeros(3) for b in batches])
    mean, var_b, var_u = ref.pooled_statistics(np.array(sizes), means, vars_)
    full = np.concatenate(batches)  # (sum(sizes), C)
    ref_mean, ref_var = ref.moments(full, axis=1)
    np.testing.assert_allclose(mean, ref_mean, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(var_b, ref_var, rtol=1e-12)
    np.testing.assert_allclose(var_u, full.var(axis=0, ddof=1), rtol=1e-12)


def test_pooled_statistics_is_stable_for_large_mean():
    rng = np.random.default_rng(11)
    batches = [1e4 + 1e-2 * rng.normal(size=(n, 2)) for n in (3, 50, 11)]
    means = np.stack([b.mean(axis=0) for b in batches])
    vars_ = np.stack([b.var(axis=0) for b in batches])
    _, var_b, _ = ref.pooled_statistics([3, 50, 11], means, vars_)
    np.testing.assert_allclose(var_b, np.concatenate(batches).var(axis=0), rtol=1e-9)


# ----------------------------------------------------------------------------------------
# Inference and the training step
# ----------------------------------------------------------------------------------------


def test_inference_affine_by_hand():
    scale, shift = ref.inference_affine(
        np.array([1.0, -2.0]), np.array([3.0, 0.0]), np.array([2.0, 1.0]), np.array([0.5, 0.0]), 1.0
    )
    np.testing.assert_allclose(scale, [1.0, 1.0], rtol=1e-15)  # 2 / sqrt(4), 1 / sqrt(1)
    np.testing.assert_allclose(shift, [-0.5, 2.0], rtol=1e-15)  # beta - mean * scale


@pytest.mark.parametrize(("shape", "axis"), LAYOUTS, ids=_ids(LAYOUTS))
def test_inference_with_batch_statistics_equals_forward(shape, axis):
    x, gamma, beta = _sample(shape, axis)
    y_train, cache = ref.batch_norm_forward(x, gamma, beta, eps=1e-3, axis=axis)
    y_infer = ref.batch_norm_inference(
        x, cache["mean"], cache["var"], gamma, beta, eps=1e-3, axis=axis
    )
    np.testing.assert_allclose(y_infer, y_train, rtol=1e-12, atol=1e-12)
    # The same map written as x * scale + shift (eq. 24, left-hand side).
    scale, shift = ref.inference_affine(cache["mean"], cache["var"], gamma, beta, eps=1e-3)
    c_shape = [1] * x.ndim
    c_shape[axis] = x.shape[axis]
    np.testing.assert_allclose(
        x * scale.reshape(c_shape) + shift.reshape(c_shape), y_train, rtol=1e-10, atol=1e-10
    )


def test_inference_allows_a_single_sample():
    y = ref.batch_norm_inference(np.array([[3.0, 4.0]]), [1.0, 0.0], [4.0, 1.0], eps=0.0)
    np.testing.assert_allclose(y, [[1.0, 4.0]], rtol=1e-15)


@pytest.mark.parametrize(
    ("convention", "momentum", "store_unbiased"),
    [("torch", 0.1, True), ("keras", 0.99, False), ("keras", 0.9, True)],
)
def test_train_step_composes(convention, momentum, store_unbiased):
    x, gamma, beta = _sample((5, 2, 3), -1, seed=12)
    running_mean = np.array([0.5, -1.0, 2.0])
    running_var = np.array([1.0, 2.0, 0.5])
    y, new_mean, new_var = ref.batch_norm_train_step(
        x, gamma, beta, running_mean, running_var, momentum, 1e-3, -1, convention, store_unbiased
    )
    y_ref, _ = ref.batch_norm_forward(x, gamma, beta, eps=1e-3, axis=-1)
    np.testing.assert_array_equal(y, y_ref)
    flat = _channel_view(x, -1)  # (m, C), m = 10
    stored = flat.var(axis=0, ddof=1 if store_unbiased else 0)
    w_new = momentum if convention == "torch" else 1 - momentum  # weight of the new batch
    np.testing.assert_allclose(
        new_mean, (1 - w_new) * running_mean + w_new * flat.mean(axis=0), rtol=1e-13
    )
    np.testing.assert_allclose(new_var, (1 - w_new) * running_var + w_new * stored, rtol=1e-13)
    np.testing.assert_array_equal(running_mean, [0.5, -1.0, 2.0])  # inputs untouched


# ----------------------------------------------------------------------------------------
# Errors
# ----------------------------------------------------------------------------------------


def test_errors_for_one_value_per_channel():
    with pytest.raises(ValueError, match=r"m >= 2 values per channel, got m=1"):
        ref.batch_norm_forward(np.ones((1, 3)))
    with pytest.raises(ValueError, match=r"got m=1"):
        ref.batch_norm_train_step(np.ones((1, 3)), None, None, np.zeros(3), np.ones(3))
    with pytest.raises(ValueError, match=r"m must be >= 2.*got m=1"):
        ref.unbiased(np.ones(3), 1)
    with pytest.raises(ValueError, match=r"got m=1"):
        ref.population_statistics(np.zeros((2, 3)), np.ones((2, 3)), 1)
    with pytest.raises(ValueError, match=r"sum\(counts\)=1"):
        ref.pooled_statistics([1, 0], np.zeros((2, 3)), np.zeros((2, 3)))


def test_errors_for_bad_convention_and_momentum():
    with pytest.raises(ValueError, match=r"convention must be one of.*'flax'"):
        ref.running_update(np.zeros(2), np.ones(2), 0.1, convention="flax")
    with pytest.raises(ValueError, match=r"convention must be one of.*'TORCH'"):
        ref.batch_norm_train_step(
            np.ones((4, 2)), None, None, np.zeros(2), np.ones(2), convention="TORCH"
        )
    with pytest.raises(ValueError, match=r"momentum=None.*cumulative_update"):
        ref.batch_norm_train_step(np.ones((4, 2)), None, None, np.zeros(2), np.ones(2), None)
    with pytest.raises(ValueError, match=r"momentum must be in \[0, 1\], got 1.5"):
        ref.running_update(np.zeros(2), np.ones(2), 1.5)
    with pytest.raises(ValueError, match=r"n must be >= 1.*got n=0"):
        ref.cumulative_update(np.zeros(2), np.ones(2), 0)


def test_errors_for_bad_shapes_and_arguments():
    x = np.zeros((4, 3))
    with pytest.raises(ValueError, match=r"axis=2 is out of range"):
        ref.batch_norm_forward(x, axis=2)
    with pytest.raises(ValueError, match=r"gamma must have shape \(3,\).*got shape \(2,\)"):
        ref.batch_norm_forward(x, gamma=np.ones(2))
    with pytest.raises(ValueError, match=r"eps must be"):
        ref.batch_norm_forward(x, eps=-1.0)
    _, cache = ref.batch_norm_forward(np.arange(12.0).reshape(4, 3))
    with pytest.raises(ValueError, match=r"dy must have the shape of x"):
        ref.batch_norm_backward(np.zeros((3, 4)), cache)
    with pytest.raises(ValueError, match=r"dy must have the shape of x"):
        ref.batch_norm_backward_chain(np.zeros((3, 4)), cache)
    with pytest.raises(ValueError, match=r"var \+ eps must be > 0"):
        ref.inference_affine(np.zeros(2), np.array([1.0, -1.0]), eps=1e-5)
    with pytest.raises(ValueError, match=r"mean is required"):
        ref.batch_norm_inference(x, None, np.ones(3))
    with pytest.raises(ValueError, match=r"counts must be non-negative integers"):
        ref.pooled_statistics([2, -1], np.zeros((2, 3)), np.zeros((2, 3)))
    with pytest.raises(TypeError, match=r"axis must be an int"):
        ref.moments(x, axis=1.0)


# ----------------------------------------------------------------------------------------
# Independence from torch
# ----------------------------------------------------------------------------------------


def test_reference_does_not_import_torch():
    # Load the file directly: batchnorm/__init__.py imports torch, the reference must not.
    code = (
        "import importlib.util, sys\n"
        f"spec = importlib.util.spec_from_file_location('_ref', {str(REF_PATH)!r})\n"
        "module = importlib.util.module_from_spec(spec)\n"
        "spec.loader.exec_module(module)\n"
        "module.batch_norm_forward([[1.0, 2.0], [3.0, 5.0]])\n"
        "assert 'torch' not in sys.modules, 'reference.py imported torch'\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
