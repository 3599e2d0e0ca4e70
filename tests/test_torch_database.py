"""PyTorch's own test database, run on our layers and our functional batch norm.

``torch.testing._internal.common_modules`` describes ``torch.nn.BatchNorm1d/2d/3d`` by a
``ModuleInfo``: the constructor arguments and inputs every generic module test uses, the error
inputs, and whether training and evaluation differ. ``common_methods_invocations`` describes
``torch.nn.functional.batch_norm`` by an ``OpInfo`` with its sample inputs. Here each module
input and each sample goes through our layer (or ``batchnorm.functional.batch_norm``) and
torch's side by side, through the generic checks a module must pass (forward, dtype methods,
factory kwargs, repr, save/load, non-contiguous inputs, gradcheck and gradgradcheck, memory
format, train vs eval, ``to``/``to_empty``). When a future torch release adds or changes an
input, these tests pick it up. The deliberate differences (README, "Drop-in") are asserted as
such, by name.
"""

from __future__ import annotations

import copy
import io

import pytest
import torch
from torch import nn

import batchnorm

common_modules = pytest.importorskip(
    "torch.testing._internal.common_modules", reason="needs expecttest (the [dev] extra)"
)
from torch.testing._internal.common_methods_invocations import op_db  # noqa: E402

OURS = {
    nn.BatchNorm1d: batchnorm.BatchNorm1d,
    nn.BatchNorm2d: batchnorm.BatchNorm2d,
    nn.BatchNorm3d: batchnorm.BatchNorm3d,
}
INFOS = [m for m in common_modules.module_db if m.module_cls in OURS]
DTYPES = (torch.float32, torch.float64)


def _cases():
    out = []
    for info in INFOS:
        for training in (True, False):
            for dtype in DTYPES:
                inputs = info.module_inputs_func(
                    info, device="cpu", dtype=dtype, requires_grad=False, training=training
                )
                for i, mi in enumerate(inputs):
                    tag = f"{info.name}-{mi.desc or i}-{'train' if training else 'eval'}-{dtype}"
                    out.append(pytest.param(info, training, dtype, i, id=tag.replace("torch.", "")))
    return out


CASES = _cases()


def _input(info, training, dtype, index, requires_grad=False):
    return info.module_inputs_func(
        info, device="cpu", dtype=dtype, requires_grad=requires_grad, training=training
    )[index]


def _both(info, mi, dtype, training):
    """Our layer and torch's, built from the same constructor input, with the same state."""
    args, kwargs = mi.constructor_input.args, mi.constructor_input.kwargs
    theirs = info.module_cls(*args, **kwargs).to(dtype).train(training)
    ours = OURS[info.module_cls](*args, **kwargs).to(dtype).train(training)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():  # non-trivial parameters and statistics, identical in both
        for a, b in zip(ours.parameters(), theirs.parameters(), strict=True):
            b.copy_(torch.rand(b.shape, generator=g, dtype=torch.float64) + 0.5)
            a.copy_(b)
        if theirs.running_mean is not None:
            theirs.running_mean.copy_(torch.randn(theirs.num_features, generator=g))
            theirs.running_var.copy_(torch.rand(theirs.num_features, generator=g) + 0.5)
            ours.running_mean.copy_(theirs.running_mean)
            ours.running_var.copy_(theirs.running_var)
    return ours, theirs


def _tol(dtype):
    return (
        {"rtol": 1e-10, "atol": 1e-10} if dtype == torch.float64 else {"rtol": 1e-4, "atol": 1e-5}
    )


def _empty_training_batch(mi, training):
    return training and mi.forward_input.args[0].numel() == 0


@pytest.mark.parametrize("info, training, dtype, index", CASES)
def test_forward_matches_torch(info, training, dtype, index):
    mi = _input(info, training, dtype, index)
    ours, theirs = _both(info, mi, dtype, training)
    x = mi.forward_input.args[0]
    torch.testing.assert_close(ours(x), theirs(x), **_tol(dtype))
    for name in ("running_mean", "running_var"):
        a, b = getattr(ours, name), getattr(theirs, name)
        assert (a is None) == (b is None)
        if a is not None:
            torch.testing.assert_close(a, b, **_tol(dtype))
    if ours.num_batches_tracked is not None:
        expected = int(theirs.num_batches_tracked)
        if _empty_training_batch(mi, training):
            expected -= 1  # deliberate: an empty batch is not counted (test_dropin.py)
        assert int(ours.num_batches_tracked) == expected
    # The dtype methods keep every floating parameter and buffer in that dtype.
    for method, target in (("float", torch.float32), ("double", torch.float64)):
        m = getattr(ours, method)()
        m(x.to(target))
        for _, t in (*m.named_parameters(), *m.named_buffers()):
            assert not t.is_floating_point() or t.dtype == target


@pytest.mark.parametrize("info, training, dtype, index", CASES)
def test_factory_kwargs_repr_and_save_load(info, training, dtype, index):
    mi = _input(info, training, dtype, index)
    args, kwargs = mi.constructor_input.args, mi.constructor_input.kwargs
    m = OURS[info.module_cls](*args, **kwargs, device="cpu", dtype=dtype).train(training)
    for _, t in (*m.named_parameters(), *m.named_buffers()):
        assert t.device.type == "cpu" and (not t.is_floating_point() or t.dtype == dtype)
    assert type(m).__name__ in repr(m) and str(m)
    x = mi.forward_input.args[0]
    state = copy.deepcopy(m.state_dict())
    out = m(x)
    buf = io.BytesIO()
    torch.save(m, buf)
    buf.seek(0)
    again = torch.load(buf, weights_only=False)
    torch.testing.assert_close(again(x), out)
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=True)
    assert loaded.keys() == state.keys()
    for k in state:
        torch.testing.assert_close(loaded[k], state[k])


def _non_contiguous(t):
    """The same values with a stride along the last axis (torch's own construction idea)."""
    out = torch.repeat_interleave(t.detach(), 2, dim=-1)[..., ::2]
    assert not out.is_contiguous() or out.numel() <= 1 or out.shape[-1] <= 1
    return out.requires_grad_(t.requires_grad)


@pytest.mark.parametrize("info, training, dtype, index", CASES)
def test_non_contiguous_inputs(info, training, dtype, index):
    mi = _input(info, training, dtype, index, requires_grad=True)
    x = mi.forward_input.args[0]
    results = []
    for inp in (x, _non_contiguous(x)):
        m, _ = _both(info, mi, dtype, training)
        inp = inp.detach().requires_grad_(True)
        y = m(inp)
        g = torch.linspace(-1, 1, y.numel(), dtype=dtype).reshape(y.shape)
        y.backward(g)
        results.append((y.detach(), inp.grad, [p.grad for p in m.parameters()]))
    (y0, gx0, gp0), (y1, gx1, gp1) = results
    torch.testing.assert_close(y1, y0, **_tol(dtype))
    if gx0 is not None:
        torch.testing.assert_close(gx1, gx0, **_tol(dtype))
    for a, b in zip(gp1, gp0, strict=True):
        if b is not None:
            torch.testing.assert_close(a, b, **_tol(dtype))


GRAD_CASES = [c for c in CASES if c.values[2] == torch.float64]


@pytest.mark.parametrize("info, training, dtype, index", GRAD_CASES)
def test_gradcheck_and_gradgradcheck(info, training, dtype, index):
    mi = _input(info, training, dtype, index, requires_grad=True)
    x = mi.forward_input.args[0]
    if x.numel() == 0:
        pytest.skip("no value to differentiate")
    m, _ = _both(info, mi, dtype, training)
    params = tuple(m.parameters())

    def f(x, *ps):
        # Buffers are restored each call: gradcheck calls f many times in training mode.
        with torch.no_grad():
            for name, value in saved.items():
                getattr(m, name).copy_(value)
        names = [n for n, _ in m.named_parameters()]
        return torch.func.functional_call(m, dict(zip(names, ps, strict=True)), (x,))

    saved = {n: b.clone() for n, b in m.named_buffers()}
    inputs = (x, *params)
    # fast_mode as torch's own module tests default to (random projections of the Jacobian).
    assert torch.autograd.gradcheck(f, inputs, fast_mode=True)
    assert torch.autograd.gradgradcheck(f, inputs, fast_mode=True)


@pytest.mark.parametrize(
    "info, training, dtype, index",
    [c for c in CASES if c.values[0].module_cls is not nn.BatchNorm1d],
)
def test_memory_format_as_torch(info, training, dtype, index):
    """The output's memory format follows torch's rule: channels-last in, channels-last out."""
    mi = _input(info, training, dtype, index)
    x = mi.forward_input.args[0]
    fmt = torch.channels_last if x.dim() == 4 else torch.channels_last_3d
    ours, theirs = _both(info, mi, dtype, training)
    xc = x.contiguous(memory_format=fmt)
    y, y_t = ours(xc), theirs(xc)
    torch.testing.assert_close(y, y_t, **_tol(dtype))
    for f in (torch.contiguous_format, fmt):
        assert y.is_contiguous(memory_format=f) == y_t.is_contiguous(memory_format=f), f


@pytest.mark.parametrize("info", INFOS, ids=lambda i: i.name)
def test_train_and_eval_differ(info):
    assert info.train_and_eval_differ
    mi = _input(info, True, torch.float64, 0)
    m, _ = _both(info, mi, torch.float64, True)
    x = mi.forward_input.args[0]
    train = m(x)
    m.eval()
    assert not torch.allclose(train, m(x))


@pytest.mark.parametrize("info", INFOS, ids=lambda i: i.name)
def test_to_and_to_empty(info):
    mi = _input(info, True, torch.float32, 0)
    m, _ = _both(info, mi, torch.float32, True)
    m.to(torch.float64)
    assert all(p.dtype == torch.float64 for p in m.parameters())
    meta = copy.deepcopy(m).to_empty(device="meta")
    assert all(t.device.type == "meta" for t in (*meta.parameters(), *meta.buffers()))
    assert meta.skipped_updates.device.type == "meta"


@pytest.mark.parametrize("info", INFOS, ids=lambda i: i.name)
def test_error_inputs(info):
    """torch raises on ``eps <= 0`` in the forward; ours raises in the constructor already, a
    ValueError as torch's, with a message that says what to use instead (deliberate)."""
    errors = info.module_error_inputs_func(
        info, device="cpu", dtype=torch.float32, requires_grad=False, training=True
    )
    assert errors
    for err in errors:
        mi = err.module_error_input
        args, kwargs = mi.constructor_input.args, mi.constructor_input.kwargs
        theirs = info.module_cls(*args, **kwargs)
        with pytest.raises(err.error_type, match=err.error_regex):
            theirs(*mi.forward_input.args)
        with pytest.raises(err.error_type, match="eps must be > 0"):
            OURS[info.module_cls](*args, **kwargs)


# --------------------------------------------------------------------------- the OpInfo

OPS = [o for o in op_db if o.name == "nn.functional.batch_norm"]


def _samples():
    out = []
    for op in OPS:
        for dtype in (torch.float32, torch.float64, torch.bfloat16):
            for i, _ in enumerate(op.sample_inputs("cpu", dtype, requires_grad=False)):
                tag = f"{op.variant_test_name or 'default'}-{dtype}-{i}".replace("torch.", "")
                out.append(pytest.param(op, dtype, i, id=tag))
    return out


def _deliberate(sample) -> str | None:
    """Why ours refuses a sample on purpose, or None (README, "Drop-in")."""
    x, kwargs = sample.input, sample.kwargs
    if x.dim() < 2:
        return "rank"  # torch accepts a rank-1 empty input; ours asks for (N, C, ...)
    momentum = kwargs.get("momentum", 0.1)
    if kwargs.get("training", False) and not 0 <= momentum <= 1:
        return "momentum"  # a negative momentum in training would extrapolate the statistics
    return None


@pytest.mark.parametrize("op, dtype, index", _samples())
def test_opinfo_samples(op, dtype, index):
    sample = list(op.sample_inputs("cpu", dtype, requires_grad=dtype != torch.bfloat16))[index]
    args = list(sample.args)
    why = _deliberate(sample)
    if why is not None:
        with pytest.raises(ValueError, match="rank >= 2" if why == "rank" else "momentum must be"):
            batchnorm.functional.batch_norm(sample.input, *args, **sample.kwargs)
        return

    def clone(v):
        return (
            v.detach().clone().requires_grad_(v.requires_grad) if isinstance(v, torch.Tensor) else v
        )

    mine = [clone(v) for v in (sample.input, *args)]
    ref = [clone(v) for v in (sample.input, *args)]
    y = batchnorm.functional.batch_norm(*mine, **sample.kwargs)
    y_ref = torch.nn.functional.batch_norm(*ref, **sample.kwargs)
    tol = {"rtol": 2e-2, "atol": 2e-2} if dtype == torch.bfloat16 else _tol(dtype)
    torch.testing.assert_close(y, y_ref, **tol)
    for a, b in zip(mine[1:3], ref[1:3], strict=True):  # the running statistics, updated
        if a is not None:
            torch.testing.assert_close(a, b, **tol)
    if y.requires_grad and y.numel():
        g = torch.linspace(-1, 1, y.numel(), dtype=dtype).reshape(y.shape)
        got = torch.autograd.grad(
            y, [t for t in mine if isinstance(t, torch.Tensor) and t.requires_grad], g
        )
        want = torch.autograd.grad(
            y_ref, [t for t in ref if isinstance(t, torch.Tensor) and t.requires_grad], g
        )
        for a, b in zip(got, want, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-4)
