"""Keras BatchNormalization <-> batchnorm, against a real Keras 3 layer on its torch backend."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from torch import nn

import batchnorm
from batchnorm.tools.keras import KerasBatchNorm, from_keras, load_keras_weights, to_keras

# The backend is read once, when keras is first imported: set it before, in this process.
os.environ["KERAS_BACKEND"] = "torch"
keras = pytest.importorskip("keras")
h5py = pytest.importorskip("h5py")
if keras.backend.backend() != "torch":  # keras was imported earlier with another backend
    pytest.skip("these tests need keras on its torch backend", allow_module_level=True)

# Keras 3's torch backend turns variables into NumPy arrays with np.array(variable) when it
# saves weights; NumPy 2 warns that the variable's __array__ takes no copy= keyword. It is
# Keras's internal conversion, not ours: ignore exactly that warning in the tests that save.
KERAS_SAVE_WARNING = (
    "ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning"
)


def np_(t) -> np.ndarray:
    return t.detach().cpu().numpy() if isinstance(t, torch.Tensor) else np.asarray(t)


def keras_state(layer) -> dict[str, np.ndarray]:
    return {v.name: np_(v.value) for v in layer.weights}


def keras_layer(shape, seed=0, **kw):
    """A built Keras BN layer with random gamma, beta and moving statistics."""
    layer = keras.layers.BatchNormalization(**kw)
    layer.build(shape)
    rng = np.random.default_rng(seed)
    c = layer.moving_mean.shape[0]
    values = {
        "gamma": rng.normal(size=c),
        "beta": rng.normal(size=c),
        "moving_mean": rng.normal(size=c),
        "moving_variance": rng.uniform(0.5, 2.0, size=c),
    }
    for v in layer.weights:
        v.assign(values[v.name].astype(np.float32))
    return layer


CASES = {
    "nhwc": dict(shape=(8, 5, 5, 3), kw=dict(momentum=0.9)),
    "dense": dict(shape=(16, 6), kw=dict(momentum=0.8, epsilon=1e-2)),
    "center-off": dict(shape=(8, 4, 3), kw=dict(center=False, momentum=0.5)),
    "scale-off-axis1": dict(shape=(8, 3, 4, 4), kw=dict(scale=False, axis=1, momentum=0.7)),
}


@pytest.mark.parametrize("case", list(CASES))
def test_from_keras_training_and_inference(case):
    shape, kw = CASES[case]["shape"], CASES[case]["kw"]
    layer = keras_layer((None, *shape[1:]), **kw)
    ours = from_keras(layer)
    assert isinstance(ours, batchnorm.BatchNorm) and not ours.store_unbiased
    assert ours.momentum == pytest.approx(1 - layer.momentum) and ours.eps == layer.epsilon
    rng = np.random.default_rng(1)
    ours.train()
    for step in range(4):
        x = (rng.normal(size=shape) * 2 + 0.5).astype(np.float32)
        y_keras = np_(layer(x, training=True))
        y_ours = ours(torch.from_numpy(x)).detach().numpy()
        np.testing.assert_allclose(y_ours, y_keras, rtol=1e-4, atol=1e-5, err_msg=f"step {step}")
        state = keras_state(layer)
        np.testing.assert_allclose(
            np_(ours.running_mean), state["moving_mean"], rtol=1e-5, atol=1e-6
        )
        np.testing.assert_allclose(
            np_(ours.running_var), state["moving_variance"], rtol=1e-5, atol=1e-6
        )
    x = rng.normal(size=shape).astype(np.float32)
    ours.eval()
    np.testing.assert_allclose(
        ours(torch.from_numpy(x)).detach().numpy(),
        np_(layer(x, training=False)),
        rtol=1e-4,
        atol=1e-5,
    )


def test_to_keras_training_and_inference():
    # Ours, Keras conventions inside (channels-last, biased variance), trained a few steps.
    torch.manual_seed(0)
    ours = batchnorm.BatchNorm(3, eps=1e-3, momentum=0.05, axis=-1, store_unbiased=False)
    for _ in range(3):
        ours(torch.randn(8, 4, 4, 3) * 3 + 1)
    with torch.no_grad():
        ours.weight.normal_()
        ours.bias.normal_()
    kb = to_keras(ours)
    assert kb.momentum == pytest.approx(0.95) and kb.epsilon == 1e-3 and kb.axis == -1
    layer = kb.to_layer((None, 4, 4, 3))
    gen = torch.Generator().manual_seed(1)
    for _ in range(3):
        x = torch.randn(8, 4, 4, 3, generator=gen) * 2
        y_ours = ours(x).detach().numpy()
        np.testing.assert_allclose(
            np_(layer(x.numpy(), training=True)), y_ours, rtol=1e-4, atol=1e-5
        )
    state = keras_state(layer)
    np.testing.assert_allclose(state["moving_mean"], np_(ours.running_mean), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(
        state["moving_variance"], np_(ours.running_var), rtol=1e-5, atol=1e-6
    )
    x = torch.randn(5, 4, 4, 3, generator=gen)
    np.testing.assert_allclose(
        np_(layer(x.numpy(), training=False)), ours.eval()(x).detach().numpy(), rtol=1e-4, atol=1e-5
    )


def test_torch_layer_to_keras_and_back_nchw():
    torch.manual_seed(2)
    bn = nn.BatchNorm2d(3, momentum=0.2)
    for _ in range(3):
        bn(torch.randn(4, 3, 5, 5) + 2)
    bn.eval()
    kb = to_keras(bn)  # axis 1: the Keras layer takes the same NCHW data
    assert kb.axis == 1 and kb.momentum == pytest.approx(0.8) and kb.epsilon == 1e-5
    np.testing.assert_array_equal(
        kb.moving_variance, bn.running_var.numpy()
    )  # verbatim: inference exact
    layer = kb.to_layer((None, 3, 5, 5))
    x = torch.randn(6, 3, 5, 5)
    np.testing.assert_allclose(
        np_(layer(x.numpy(), training=False)), bn(x).detach().numpy(), rtol=1e-5, atol=1e-5
    )
    # And back, as a torch layer: the same layer again.
    back = from_keras(layer, nn.BatchNorm2d).eval()
    for k in ("weight", "bias", "running_mean", "running_var"):
        torch.testing.assert_close(getattr(back, k), getattr(bn, k))
    assert back.momentum == pytest.approx(0.2)
    # batch_count translates the variance convention: unbiased = biased * n / (n - 1).
    n = 4 * 5 * 5
    kb_biased = to_keras(bn, batch_count=n)
    np.testing.assert_allclose(
        kb_biased.moving_variance, bn.running_var.numpy() * (n - 1) / n, rtol=1e-6
    )
    again = from_keras(kb_biased, nn.BatchNorm2d, batch_count=n)
    torch.testing.assert_close(again.running_var, bn.running_var)


def test_keras_trainable_false_is_frozen():
    layer = keras_layer((None, 4), momentum=0.9)
    layer.trainable = False
    ours = from_keras(layer)
    assert ours.stats_mode == "frozen" and not ours.weight.requires_grad
    x = np.random.default_rng(3).normal(size=(8, 4)).astype(np.float32)
    before = keras_state(layer)["moving_mean"]
    y_keras = np_(layer(x, training=True))  # Keras: moving statistics, no update
    np.testing.assert_array_equal(keras_state(layer)["moving_mean"], before)
    ours.train()
    np.testing.assert_allclose(
        ours(torch.from_numpy(x)).detach().numpy(), y_keras, rtol=1e-5, atol=1e-5
    )
    assert not to_keras(ours).trainable


@pytest.mark.filterwarnings(KERAS_SAVE_WARNING)
def test_weights_h5_round_trip(tmp_path):
    model = keras.Sequential(
        [
            keras.Input((4, 4, 3)),
            keras.layers.Conv2D(5, 3),
            keras.layers.BatchNormalization(name="bn_a", momentum=0.9),
            keras.layers.BatchNormalization(name="bn_b", center=False),
        ]
    )
    x = np.random.default_rng(4).normal(size=(6, 4, 4, 3)).astype(np.float32)
    for _ in range(3):
        model(x, training=True)
    path = tmp_path / "model.weights.h5"
    model.save_weights(path)

    with pytest.raises(ValueError, match="pass layer_name"):
        load_keras_weights(path)
    with pytest.raises(ValueError, match="ambiguous"):
        load_keras_weights(path, "bn_b")
    ours = from_keras(path, layer_name="bn_a", momentum=0.9).eval()
    bn_a = model.get_layer("bn_a")
    h = np_(model.layers[0](x))
    np.testing.assert_allclose(
        ours(torch.from_numpy(h)).detach().numpy(),
        np_(bn_a(h, training=False)),
        rtol=1e-5,
        atol=1e-5,
    )
    kb_b = load_keras_weights(path, "bn_b", center=False)
    assert kb_b.beta is None
    for got, want in zip(
        kb_b.weights, [np_(v.value) for v in model.get_layer("bn_b").weights], strict=True
    ):
        np.testing.assert_array_equal(got, want)

    # Back out: our layer's weights into a fresh Keras model, saved and read again.
    fresh = keras.models.clone_model(model)
    fresh.build((None, 4, 4, 3))
    kb = to_keras(ours)
    for var, value in zip(fresh.get_layer("bn_a").weights, kb.weights, strict=True):
        var.assign(value)
    path2 = tmp_path / "again.weights.h5"
    fresh.save_weights(path2)
    kb2 = load_keras_weights(path2, "bn_a")
    for a, b in zip(kb2.weights, [np_(v.value) for v in bn_a.weights], strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-7)


def test_keras2_h5_layout(tmp_path):
    # tf.keras 2 names datasets gamma:0, beta:0, ... under a group named after the layer.
    path = tmp_path / "legacy.h5"
    rng = np.random.default_rng(5)
    arrays = {
        k: rng.uniform(0.5, 1.5, size=3).astype(np.float32)
        for k in ("gamma", "beta", "moving_mean", "moving_variance")
    }
    with h5py.File(path, "w") as f:
        g = f.create_group("model_weights/bn1/bn1")
        for k, v in arrays.items():
            g.create_dataset(f"{k}:0", data=v)
    kb = load_keras_weights(path, epsilon=1e-3)
    for k, v in arrays.items():
        np.testing.assert_array_equal(getattr(kb, k), v)
    bn = from_keras(path)
    np.testing.assert_array_equal(bn.running_var.numpy(), arrays["moving_variance"])


def test_arrays_and_errors():
    w = [np.ones(3), np.zeros(3), np.zeros(3), np.ones(3)]
    bn = from_keras(w, momentum=0.99, epsilon=1e-3, axis=-1)
    assert bn.momentum == pytest.approx(0.01) and bn.axis == -1
    assert from_keras(w[2:]).weight is None
    with pytest.raises(ValueError, match="ambiguous"):
        from_keras(w[1:])
    assert from_keras(w[1:], scale=False).bias is not None
    with pytest.raises(ValueError, match="expected \\[gamma"):
        from_keras(w[:1])
    with pytest.raises(ValueError, match="batch_count"):
        from_keras(w, batch_count=1)
    with pytest.raises(TypeError, match="to must be"):
        from_keras(w, to="keras")
    with pytest.raises(ValueError, match="only one"):
        from_keras(w[1:], nn.BatchNorm1d, scale=False)
    with pytest.raises(ValueError, match="momentum=None"):
        to_keras(nn.BatchNorm1d(3, momentum=None))
    assert to_keras(nn.BatchNorm1d(3, momentum=None), momentum=0.01).momentum == pytest.approx(0.99)
    with pytest.raises(ValueError, match="no running statistics"):
        to_keras(nn.BatchNorm1d(3, track_running_stats=False))
    assert isinstance(to_keras(batchnorm.FrozenBatchNorm1d(3), momentum=0.1), KerasBatchNorm)
    with pytest.raises(TypeError, match="BatchNormalization"):
        from_keras(keras.layers.Dense(3))
