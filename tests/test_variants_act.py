"""BatchNormAct: plain BN + activation, and the output-only memory-saving mode."""

from __future__ import annotations

import pytest
import torch

import batchnorm as bn
from batchnorm.nn.act import _BatchNormActTrain

D = torch.float64


def _saved_bytes(fn, *args):
    """Bytes of the distinct tensors autograd saves for the backward of fn(*args)."""
    seen, total = set(), [0]

    def pack(t):
        key = (t.untyped_storage().data_ptr(), t.dtype)
        if key not in seen:
            seen.add(key)
            total[0] += t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn(*args)
    return total[0]


@pytest.mark.parametrize(
    "activation,param",
    [
        ("relu", None),
        ("leaky_relu", 0.2),
        ("elu", 1.0),
        ("identity", None),
        ("sigmoid", None),
        ("tanh", None),
        ("gelu", None),
        ("silu", None),
    ],
)
def test_equals_bn_then_activation(activation, param):
    torch.manual_seed(0)
    x = torch.randn(4, 3, 5, 5, dtype=D)
    m = bn.BatchNormAct2d(3, activation=activation, activation_param=param).double()
    plain = bn.BatchNorm2d(3).double()
    assert set(m.state_dict()) == set(torch.nn.BatchNorm2d(3).state_dict())
    act = {
        "relu": torch.relu,
        "identity": lambda t: t,
        "sigmoid": torch.sigmoid,
        "tanh": torch.tanh,
        "gelu": torch.nn.functional.gelu,
        "silu": torch.nn.functional.silu,
        "leaky_relu": lambda t: torch.nn.functional.leaky_relu(t, 0.2),
        "elu": lambda t: torch.nn.functional.elu(t, 1.0),
    }[activation]
    assert torch.equal(m(x), act(plain(x)))
    m.eval(), plain.eval()
    assert torch.equal(m(x), act(plain(x)))


@pytest.mark.parametrize(
    "activation,param", [("identity", 0.0), ("leaky_relu", 0.1), ("elu", 1.0), ("elu", 0.5)]
)
def test_memory_efficient_matches_unfused_and_gradcheck(activation, param):
    torch.manual_seed(1)
    x = torch.randn(4, 3, 3, 3, dtype=D, requires_grad=True)
    a = bn.BatchNormAct2d(3, activation=activation, activation_param=param).double()
    f = bn.BatchNormAct2d(
        3, activation=activation, activation_param=param, memory_efficient=True
    ).double()
    with torch.no_grad():
        a.weight.copy_(torch.tensor([0.5, -1.5, 2.0]))
        a.bias.copy_(torch.tensor([0.1, 0.0, -0.3]))
    f.load_state_dict(a.state_dict())
    ya, yf = a(x), f(x)
    torch.testing.assert_close(yf, ya, rtol=0, atol=0)
    dy = torch.randn_like(ya)
    ga = torch.autograd.grad(ya, [x, a.weight, a.bias], dy)
    gf = torch.autograd.grad(yf, [x, f.weight, f.bias], dy)
    for p, q in zip(ga, gf, strict=True):
        torch.testing.assert_close(q, p, rtol=1e-10, atol=1e-12)
    assert torch.equal(a.running_var, f.running_var) and torch.equal(a.running_mean, f.running_mean)
    w, b = a.weight.detach().clone().requires_grad_(), a.bias.detach().clone().requires_grad_()
    fn = lambda x, w, b: _BatchNormActTrain.apply(x, w, b, 1e-5, 1, activation, param)[0]  # noqa: E731
    assert torch.autograd.gradcheck(fn, (x, w, b))


def test_memory_efficient_saves_one_activation_instead_of_two():
    torch.manual_seed(2)
    x = torch.randn(16, 32, 28, 28, requires_grad=True)  # 1.53 MiB... float32: 1,605,632 bytes
    plain = bn.BatchNormAct2d(32, activation="leaky_relu")
    fused = bn.BatchNormAct2d(32, activation="leaky_relu", memory_efficient=True)
    b_plain, b_fused = _saved_bytes(plain, x), _saved_bytes(fused, x)
    size = x.numel() * x.element_size()
    assert 2 * size <= b_plain < 2 * size + 4096  # x (for BN) and BN's output (for the activation)
    assert size <= b_fused < size + 4096  # the output alone (+ per-channel vectors)


def test_errors():
    with pytest.raises(ValueError, match="invertible"):
        bn.BatchNormAct2d(3, activation="relu", memory_efficient=True)
    with pytest.raises(ValueError, match="invertible"):
        bn.BatchNormAct2d(3, activation="leaky_relu", activation_param=0.0, memory_efficient=True)
    with pytest.raises(ValueError, match="activation must be one of"):
        bn.BatchNormAct2d(3, activation="swish")
    m = bn.BatchNormAct1d(3, activation="elu", memory_efficient=True)
    with torch.no_grad():
        m.weight[1] = 0
    with pytest.raises(ValueError, match="weight 0"):
        m(torch.randn(4, 3, requires_grad=True))
