"""The eager front (``Kernels.front``, csrc/front.cpp): the plain call of ``batch_norm`` in one
native call. It must give the bits, the gradients, the buffers and the graph of the core's own
path, and decline (return None, never raise) wherever anything differs from the plain case, so
that the core takes the call and, for bad input, raises its own error."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import batchnorm
import batchnorm.functional as F
from batchnorm.core import kernels
from batchnorm.core.kernels import _cpu

FRONT = kernels.front()
pytestmark = pytest.mark.skipif(
    FRONT is None, reason=f"fast CPU kernels unavailable: {_cpu.info()['reason']}"
)

LAYOUTS = {
    "nchw": ((6, 5, 7, 3), 1, None),
    "cl": ((6, 5, 7, 3), 1, torch.channels_last),
    "2d": ((9, 5), 1, None),
    "ncl": ((4, 5, 11), 1, None),
    "nhwc-axis": ((4, 3, 2, 5), -1, None),
}
DTYPES = (torch.float32, torch.float64, torch.bfloat16)


def _case(layout: str, dtype: torch.dtype, seed: int = 0):
    shape, axis, fmt = LAYOUTS[layout]
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(shape, generator=g, dtype=torch.float64) * 3 + 2).to(dtype)
    if fmt is not None:
        x = x.contiguous(memory_format=fmt)
    C = shape[axis]
    w = torch.rand(C, generator=g, dtype=torch.float64).add(0.5).to(dtype)
    b = torch.randn(C, generator=g, dtype=torch.float64).to(dtype)
    bdt = torch.float64 if dtype == torch.float64 else torch.float32
    rm = torch.randn(C, generator=g, dtype=torch.float64).to(bdt)
    rv = torch.rand(C, generator=g, dtype=torch.float64).add(0.5).to(bdt)
    return x, axis, w, b, rm, rv


def _run(use_front: bool, monkeypatch, x, axis, w, b, rm, rv, training, momentum, affine, track):
    """One forward and backward through batch_norm, with or without the front; everything it
    produced and changed."""
    with monkeypatch.context() as m:
        if not use_front:
            m.setattr(kernels, "front", lambda: None)
        x = x.detach().clone().requires_grad_(True)
        w_ = w.detach().clone().requires_grad_(True) if affine else None
        b_ = b.detach().clone().requires_grad_(True) if affine else None
        rm_, rv_ = (rm.clone(), rv.clone()) if track or not training else (None, None)
        nbt = torch.tensor(3, dtype=torch.long) if rm_ is not None else None
        skipped = torch.tensor(0, dtype=torch.long) if rm_ is not None else None
        y = F.batch_norm(
            x, rm_, rv_, w_, b_, training, momentum, 1e-5, axis=axis,
            num_batches_tracked=nbt, skipped_updates=skipped,
        )  # fmt: skip
        dy = torch.linspace(-1, 1, y.numel(), dtype=torch.float64).reshape(y.shape).to(y.dtype)
        y.backward(dy)
        grads = [t.grad if t is not None else None for t in (x, w_, b_)]
        return {
            "y": y.detach(),
            "grads": grads,
            "buffers": [rm_, rv_, nbt, skipped],
            "grad_fn": type(y.grad_fn).__name__,
            "stride": y.stride(),
        }


def _same(a, b):
    if a is None or b is None:
        assert a is None and b is None
        return
    assert a.dtype == b.dtype and a.shape == b.shape
    assert torch.equal(a, b), (a - b).abs().max()


@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize(
    "training,momentum,affine,track",
    [
        (True, 0.1, True, True),
        (True, None, True, True),
        (True, 0.3, False, True),
        (True, 0.1, True, False),
        (False, 0.1, True, True),
        (False, 0.1, False, True),
    ],
)
def test_front_gives_the_bits_of_the_core_path(
    monkeypatch, layout, dtype, training, momentum, affine, track
):
    x, axis, w, b, rm, rv = _case(layout, dtype)
    args = (x, axis, w, b, rm, rv, training, momentum, affine, track)
    fast = _run(True, monkeypatch, *args)
    core = _run(False, monkeypatch, *args)
    _same(fast["y"], core["y"])
    assert fast["stride"] == core["stride"]
    for a, c in zip(fast["grads"], core["grads"]):
        _same(a, c)
    for a, c in zip(fast["buffers"], core["buffers"]):
        _same(a, c)
    if training:
        assert fast["grad_fn"] == core["grad_fn"]


def _plain(training=True):
    x, axis, w, b, rm, rv = _case("nchw", torch.float32)
    nbt = torch.tensor(0, dtype=torch.long)
    return [x, rm, rv, w, b, training, 0.1, 1e-5, axis, nbt, True, None]


def test_front_takes_the_plain_call_in_training_and_evaluation():
    for training in (True, False):
        args = _plain(training)
        rm0 = args[1].clone()
        y = FRONT(*args)
        assert isinstance(y, torch.Tensor) and y.shape == args[0].shape
        assert torch.equal(args[1], rm0) != training  # trained: the running mean moved
    # no gradient can flow in evaluation: taken under no_grad too, with a graph-less output
    args = _plain(False)
    args[0].requires_grad_(True)
    assert FRONT(*args) is None  # the core records the backward of the fixed map
    with torch.no_grad():
        y = FRONT(*args)
    assert y is not None and not y.requires_grad


class _Sub(torch.Tensor):
    pass


DECLINED = {
    "not a tensor": (0, np.ones((6, 5, 7, 3), np.float32)),
    "integer input": (0, torch.ones(6, 5, 7, 3, dtype=torch.int64)),
    "float16 input": (0, torch.ones(6, 5, 7, 3, dtype=torch.float16)),
    "rank 1": (0, torch.ones(5)),
    "empty": (0, torch.ones(0, 5, 7, 3)),
    "a transposed layout": (0, torch.randn(6, 5, 3, 7).transpose(2, 3)),
    "a subclass": (0, torch.randn(6, 5, 7, 3).as_subclass(_Sub)),
    "running_var alone": (1, None),
    "a running mean of the wrong size": (1, torch.zeros(4)),
    "integer running stats": (1, torch.zeros(5, dtype=torch.long)),
    "a weight of the wrong size": (3, torch.ones(4)),
    "a non-tensor weight": (3, [1.0] * 5),
    "training not a bool": (5, 1),
    "momentum out of range": (6, 1.5),
    "a NaN momentum": (6, float("nan")),
    "a bool momentum": (6, True),
    "a NumPy momentum": (6, np.float64(0.1)),
    "a tensor momentum": (6, torch.tensor(0.1)),
    "eps zero": (7, 0.0),
    "a NaN eps": (7, float("nan")),
    "axis out of range": (8, 4),
    "a float axis": (8, 1.0),
    "an int32 counter": (9, torch.tensor(0, dtype=torch.int32)),
    "momentum None without a counter": ((6, 9), (None, None)),
    "one value per channel": (0, torch.randn(1, 5, 1, 1)),
    "float16 running stats": (1, torch.zeros(5, dtype=torch.float16)),
}


@pytest.mark.parametrize("what", list(DECLINED))
def test_front_declines_what_is_not_the_plain_case(what):
    where, value = DECLINED[what]
    args = _plain()
    if what == "float16 running stats":
        args[2] = torch.ones(5, dtype=torch.float16)
    for i, v in zip(*((where, value) if isinstance(where, tuple) else ((where,), (value,)))):
        args[i] = v
    assert FRONT(*args) is None


@pytest.mark.filterwarnings("ignore:`torch.jit.*deprecated:DeprecationWarning")
def test_front_declines_under_a_tracer_a_transform_or_a_mode():
    args = _plain()
    seen = []

    def traced(x):
        seen.append(FRONT(x, *args[1:]))
        return x * 2

    torch.jit.trace(traced, (args[0],), check_trace=False)
    assert seen == [None]

    def vmapped(x):
        seen.append(FRONT(x, None, None, *args[3:9], None, True, None))
        return x

    torch.func.vmap(vmapped)(args[0].unsqueeze(0).expand(2, *args[0].shape).contiguous())
    assert seen[-1] is None

    from torch.utils._python_dispatch import TorchDispatchMode

    class Mode(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, a=(), kw=None):
            return func(*a, **(kw or {}))

    with Mode():
        assert FRONT(*args) is None
    with torch.overrides.TorchFunctionMode():
        assert FRONT(*args) is None


def test_bad_input_still_gets_the_core_error():
    """The front declines; the message is the core's (the fix named)."""
    x = torch.randn(6, 5, 7, 3)
    with pytest.raises(ValueError, match="eps"):
        F.batch_norm(x, None, None, training=True, eps=0.0)
    with pytest.raises(RuntimeError, match="4 entries"):
        F.batch_norm(x, None, None, torch.ones(4), training=True)
    with pytest.raises(ValueError, match="one value per channel|more than one value"):
        F.batch_norm(torch.randn(1, 5), None, None, training=True)


def test_front_is_off_with_the_fast_kernels():
    previous = kernels.set_enabled(False)
    try:
        assert kernels.front() is None
    finally:
        kernels.set_enabled(previous)
    assert kernels.front() is FRONT


def test_modules_train_and_evaluate_through_the_front(monkeypatch):
    """A module's step: the same bits and buffers with and without the front."""
    torch.manual_seed(0)
    out = []
    for use in (True, False):
        with monkeypatch.context() as m:
            if not use:
                m.setattr(kernels, "front", lambda: None)
            torch.manual_seed(0)
            net = torch.nn.Sequential(torch.nn.Linear(8, 6), batchnorm.BatchNorm1d(6))
            x = torch.randn(10, 8)
            y = net(x)
            y.square().sum().backward()
            net.eval()
            with torch.no_grad():
                z = net(x)
            out.append((y.detach(), z, net[0].weight.grad, *net[1].state_dict().values()))
    for a, b in zip(*out):
        _same(a, b)
