"""batchnorm.func: pure BN under torch.func transforms; per-sample gradients."""

from __future__ import annotations

import pytest
import torch
from torch.func import grad, jacrev, vmap

import batchnorm as bn
from batchnorm import func

D = torch.float64


def test_pure_batch_norm_equals_core_and_leaves_inputs_alone():
    torch.manual_seed(0)
    x = torch.randn(8, 3, 4, dtype=D) * 2 + 5
    w, b = torch.rand(3, dtype=D) + 0.5, torch.randn(3, dtype=D)
    rm, rv = torch.randn(3, dtype=D), torch.rand(3, dtype=D) + 0.5
    rm0, rv0 = rm.clone(), rv.clone()
    y, nm, nv = func.batch_norm(x, rm, rv, w, b, True, 0.2, 1e-5, axis=1)
    assert torch.equal(rm, rm0) and torch.equal(rv, rv0)
    rm1, rv1 = rm.clone(), rv.clone()
    y1 = bn.batch_norm(x, rm1, rv1, w, b, True, 0.2, 1e-5)
    torch.testing.assert_close(y, y1, rtol=1e-12, atol=1e-12)
    # func uses the differentiable native kernels, the core the fast CPU ones: equal to rounding.
    torch.testing.assert_close((nm, nv), (rm1, rv1), rtol=1e-12, atol=1e-12)
    ye, em, ev = func.batch_norm(x, rm, rv, w, b, False)
    assert em is rm and ev is rv
    torch.testing.assert_close(ye, bn.batch_norm(x, rm, rv, w, b, False), rtol=1e-12, atol=1e-12)


def test_jacrev_and_grad_match_torch():
    torch.manual_seed(1)
    x = torch.randn(6, 3, dtype=D)
    w = torch.rand(3, dtype=D) + 0.5
    ours = jacrev(lambda x, w: func.batch_norm(x, None, None, w, None, True)[0], argnums=(0, 1))(
        x, w
    )
    theirs = jacrev(
        lambda x, w: torch.nn.functional.batch_norm(x, None, None, w, None, True), argnums=(0, 1)
    )(x, w)
    for a, c in zip(ours, theirs, strict=True):
        torch.testing.assert_close(a, c, rtol=1e-10, atol=1e-12)
    g = grad(lambda x: func.batch_norm(x, None, None, w, None, True)[0].pow(3).sum())(x)
    xr = x.clone().requires_grad_()
    torch.nn.functional.batch_norm(xr, None, None, w, None, True).pow(3).sum().backward()
    torch.testing.assert_close(g, xr.grad, rtol=1e-10, atol=1e-12)
    # vmap over independent groups of samples, each a batch with its own statistics.
    xs = torch.randn(5, 6, 3, dtype=D)
    ys = vmap(lambda x: func.batch_norm(x, None, None, w, None, True)[0])(xs)
    for i in range(5):
        torch.testing.assert_close(ys[i], bn.batch_norm(xs[i], None, None, w, None, True))


def _model():
    torch.manual_seed(2)
    return torch.nn.Sequential(
        torch.nn.Conv2d(1, 4, 3, bias=False),
        bn.BatchNorm2d(4),
        torch.nn.ReLU(),
        torch.nn.Flatten(),
        torch.nn.Linear(4 * 4 * 4, 3),
        torch.nn.BatchNorm1d(3),
    ).double()


def test_per_sample_gradients_with_bn_in_eval_mode():
    model = _model()
    xs, ts = torch.randn(6, 1, 6, 6, dtype=D), torch.randint(0, 3, (6,))
    model(xs)  # move the running statistics off their initial values
    model.eval()
    params = {k: v.detach() for k, v in model.named_parameters()}
    buffers = dict(model.named_buffers())

    def loss(p, b, x, t):
        out, _ = func.functional_call(model, {**p, **b}, (x[None],))
        return torch.nn.functional.cross_entropy(out, t[None])

    per_sample = vmap(grad(loss), in_dims=(None, None, 0, 0))(params, buffers, xs, ts)
    for i in range(6):
        model.zero_grad()
        torch.nn.functional.cross_entropy(model(xs[i : i + 1]), ts[i : i + 1]).backward()
        for k, p in model.named_parameters():
            torch.testing.assert_close(per_sample[k][i], p.grad, rtol=1e-10, atol=1e-12)


def test_per_sample_gradients_with_batch_statistics_held_fixed():
    """The other pattern: statistics of the whole batch, computed outside vmap, as constants."""
    model = _model()[:3]
    xs = torch.randn(6, 1, 6, 6, dtype=D)
    with torch.no_grad():
        h = model[0](xs)
    mean, var = bn.functional.batch_stats(h)
    model.eval()
    params = {k: v.detach() for k, v in model.named_parameters()}
    buffers = {
        "1.running_mean": mean.to(D),
        "1.running_var": var,
        "1.num_batches_tracked": torch.tensor(0),
    }

    def loss(p, x):
        out, _ = func.functional_call(model, {**p, **buffers}, (x[None],))
        return out.square().sum()

    per_sample = vmap(grad(loss), in_dims=(None, 0))(params, xs)
    # Oracle: the training-mode batch loss with the statistics detached has these gradients, summed.
    w = params["1.weight"].clone().requires_grad_()
    hh = torch.nn.functional.conv2d(xs, params["0.weight"])
    out = torch.relu(
        ((hh - mean.to(D)[None, :, None, None]) / torch.sqrt(var + 1e-5)[None, :, None, None])
        * w[None, :, None, None]
        + params["1.bias"][None, :, None, None]
    )
    out.square().sum().backward()
    torch.testing.assert_close(per_sample["1.weight"].sum(0), w.grad, rtol=1e-10, atol=1e-12)


def test_functional_call_returns_new_buffers_and_restores_model():
    model = _model()
    xs = torch.randn(6, 1, 6, 6, dtype=D)
    params_buffers = {
        **dict(model.named_parameters()),
        **{k: v.clone() for k, v in model.named_buffers()},
    }
    out, new = func.functional_call(model, params_buffers, (xs,))
    assert sorted(new) == sorted(
        f"{i}.{k}" for i in (1, 5) for k in ("running_mean", "running_var", "num_batches_tracked")
    )
    assert "forward" not in vars(model[1]) and int(model[1].num_batches_tracked) == 0
    ref_out = model(xs)  # the module API, which updates in place
    torch.testing.assert_close(out, ref_out, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(new["1.running_var"], model[1].running_var, rtol=1e-12, atol=0)
    assert int(new["5.num_batches_tracked"]) == 1


def test_errors():
    with pytest.raises(ValueError, match="float momentum"):
        func.batch_norm(torch.randn(4, 3), torch.zeros(3), torch.ones(3), None, None, True, None)
    with pytest.raises(ValueError, match="more than one value per channel"):
        func.batch_norm(torch.randn(1, 3), None, None, None, None, True)
    with pytest.raises(TypeError, match="plain BN"):
        func.functional_call(torch.nn.Sequential(bn.GhostBatchNorm1d(3)), {}, (torch.randn(4, 3),))
    model = torch.nn.Sequential(bn.BatchNorm1d(3, momentum=None))
    with pytest.raises(ValueError, match="momentum=None"):
        func.functional_call(model, dict(model.named_buffers()), (torch.randn(4, 3),))
    assert "forward" not in vars(model[0])
