"""FrozenBatchNorm, freeze/unfreeze, the per-layer statistics policy and the frozen-params warning."""

from __future__ import annotations

import copy
import warnings

import numpy as np
import pytest
import torch
from torch import nn

import batchnorm
from batchnorm import (
    FrozenBatchNorm,
    FrozenBatchNorm1d,
    FrozenBatchNorm2d,
    FrozenBatchNorm3d,
    FrozenStatisticsWarning,
    check_frozen,
    freeze,
    set_stats_mode,
    unfreeze,
)
from batchnorm import reference as R


def trained(bn: nn.Module, shape: tuple[int, ...], steps: int = 3, seed: int = 0) -> nn.Module:
    """A BN layer with statistics and affine parameters away from their defaults."""
    gen = torch.Generator().manual_seed(seed)
    bn.train()
    with torch.no_grad():
        for _ in range(steps):
            bn(torch.randn(shape, generator=gen).to(bn.running_mean.dtype) * 3 + 1)
        if bn.weight is not None:
            bn.weight.copy_(torch.randn(bn.num_features, generator=gen))
            bn.bias.copy_(torch.randn(bn.num_features, generator=gen))
    return bn


def small_net(bn_cls=nn.BatchNorm2d) -> nn.Sequential:
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 4, 3),
        bn_cls(4),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(4 * 4 * 4, 5),
        nn.BatchNorm1d(5),
    )
    net.train()
    with torch.no_grad():
        for _ in range(3):
            net(torch.randn(8, 3, 6, 6))
    return net


@pytest.mark.parametrize(
    ("bn", "frozen_cls", "shape"),
    [
        (nn.BatchNorm1d(4), FrozenBatchNorm1d, (6, 4)),
        (nn.BatchNorm1d(4), FrozenBatchNorm1d, (6, 4, 3)),
        (batchnorm.BatchNorm2d(4), FrozenBatchNorm2d, (6, 4, 3, 2)),
        (nn.BatchNorm3d(4), FrozenBatchNorm3d, (3, 4, 2, 2, 2)),
        (batchnorm.BatchNorm(4, axis=-1), FrozenBatchNorm, (5, 3, 4)),
        (nn.BatchNorm2d(4, affine=False), FrozenBatchNorm2d, (6, 4, 3, 2)),
    ],
)
def test_frozen_matches_eval_bn_and_reference(bn, frozen_cls, shape):
    bn = trained(bn.double(), shape)
    frozen = FrozenBatchNorm.from_bn(bn)
    assert type(frozen) is frozen_cls
    assert list(frozen.parameters()) == []
    x = torch.randn(shape, dtype=torch.float64)
    axis = getattr(bn, "axis", 1)
    g = None if bn.weight is None else bn.weight.detach().numpy()
    b = None if bn.bias is None else bn.bias.detach().numpy()
    want = R.batch_norm_inference(
        x.numpy(), bn.running_mean.numpy(), bn.running_var.numpy(), g, b, bn.eps, axis
    )
    frozen.train()  # train() changes nothing
    np.testing.assert_allclose(frozen(x).numpy(), want, rtol=1e-12, atol=1e-12)
    bn.eval()
    torch.testing.assert_close(frozen(x), bn(x).detach())


def test_frozen_load_state_dict_from_torch_and_ours():
    src = trained(nn.BatchNorm2d(3), (4, 3, 2, 2))
    frozen = FrozenBatchNorm2d(3)
    frozen.load_state_dict(src.state_dict())  # num_batches_tracked ignored, strict load passes
    for k in ("weight", "bias", "running_mean", "running_var"):
        assert torch.equal(getattr(frozen, k), getattr(src, k))
    ours = trained(batchnorm.BatchNorm2d(3), (4, 3, 2, 2), seed=1)
    frozen.load_state_dict(ours.state_dict())
    assert torch.equal(frozen.running_var, ours.running_var)
    plain = trained(nn.BatchNorm2d(3, affine=False), (4, 3, 2, 2))
    frozen.load_state_dict(plain.state_dict())
    assert torch.equal(frozen.weight, torch.ones(3)) and torch.equal(frozen.bias, torch.zeros(3))
    assert set(frozen.state_dict()) == {"weight", "bias", "running_mean", "running_var"}


def test_frozen_model_stays_frozen_through_train_and_passes_gradients():
    net = small_net().eval()
    x = torch.randn(4, 3, 6, 6)
    with torch.no_grad():
        want = net(x)
    frozen = freeze(net)
    assert (
        frozen is net
        and isinstance(net[1], FrozenBatchNorm2d)
        and isinstance(net[5], FrozenBatchNorm1d)
    )
    net.train()
    state = {k: v.clone() for k, v in net.state_dict().items()}
    xg = x.clone().requires_grad_(True)
    y = net(xg)
    torch.testing.assert_close(y, want, rtol=1e-5, atol=1e-5)
    assert all(torch.equal(v, net.state_dict()[k]) for k, v in state.items())
    # Only the Conv and Linear are trainable; the input gets the gradient of the fixed map.
    assert len(list(net.parameters())) == 4
    y.square().sum().backward()
    assert xg.grad is not None and xg.grad.abs().sum() > 0
    ref = small_net().eval()
    xr = x.clone().requires_grad_(True)
    ref(xr).square().sum().backward()
    torch.testing.assert_close(xg.grad, xr.grad, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("to", ["batchnorm", "torch"])
def test_unfreeze_round_trip(to):
    net = small_net().eval()
    x = torch.randn(4, 3, 6, 6)
    with torch.no_grad():
        want = net(x)
    net = unfreeze(freeze(net), to=to, momentum=0.2)
    cls = (
        (batchnorm.BatchNorm2d, batchnorm.BatchNorm1d)
        if to == "batchnorm"
        else (nn.BatchNorm2d, nn.BatchNorm1d)
    )
    assert type(net[1]) is cls[0] and type(net[5]) is cls[1]
    assert net[1].momentum == 0.2 and net[1].weight.requires_grad and not net.training
    with torch.no_grad():
        torch.testing.assert_close(net(x), want, rtol=1e-5, atol=1e-5)


def test_freeze_unfreeze_edges():
    bn = trained(batchnorm.BatchNorm(3, axis=-1), (4, 3))
    frozen = freeze(bn)
    assert type(frozen) is FrozenBatchNorm and frozen.axis == -1
    with pytest.raises(ValueError, match="rank-free"):
        unfreeze(frozen, to="torch")
    back = unfreeze(frozen)
    assert type(back) is batchnorm.BatchNorm and back.axis == -1
    with pytest.raises(ValueError, match="no running statistics"):
        freeze(nn.Sequential(nn.BatchNorm1d(3, track_running_stats=False)))
    with pytest.raises(ValueError, match="to must be"):
        unfreeze(bn, to="keras")
    with pytest.raises(ValueError, match="expects 4D"):
        FrozenBatchNorm2d(3)(torch.randn(2, 3))


# --------------------------------------------------------------------------- statistics policy


def test_stats_mode_running_survives_train_and_trains_affine():
    bn = trained(batchnorm.BatchNorm2d(3), (8, 3, 2, 2))
    x = torch.randn(8, 3, 2, 2)
    bn.eval()
    with torch.no_grad():
        want = bn(x)
    set_stats_mode(bn, "running")
    bn.train()
    stats = bn.running_mean.clone(), bn.running_var.clone(), bn.num_batches_tracked.clone()
    y = bn(x)
    torch.testing.assert_close(y, want)
    assert torch.equal(bn.running_mean, stats[0]) and torch.equal(bn.running_var, stats[1])
    assert torch.equal(bn.num_batches_tracked, stats[2])
    y.sum().backward()
    assert bn.weight.grad is not None and bn.bias.grad is not None
    assert "stats_mode='running'" in repr(bn)


def test_stats_mode_batch_in_eval():
    bn = trained(batchnorm.BatchNorm1d(3), (8, 3))
    x = torch.randn(8, 3, dtype=torch.float32)
    set_stats_mode(bn, "batch")
    bn.eval()
    stats = bn.running_mean.clone()
    with torch.no_grad():
        y = bn(x)
    assert torch.equal(bn.running_mean, stats)  # eval: batch statistics, no update
    out = R.batch_norm_forward(
        x.double().numpy(),
        bn.weight.detach().double().numpy(),
        bn.bias.detach().double().numpy(),
        bn.eps,
    )
    want = out[0] if isinstance(out, tuple) else out
    np.testing.assert_allclose(y.numpy(), want, rtol=1e-5, atol=1e-5)
    bn.train()
    with torch.no_grad():
        bn(x)
    assert not torch.equal(bn.running_mean, stats)  # train: updated


def test_stats_mode_frozen_and_back():
    net = batchnorm.convert(small_net(), to="batchnorm")
    set_stats_mode(net, "frozen")
    net.train()
    bns = [m for m in net.modules() if isinstance(m, batchnorm.BatchNorm)]
    assert len(bns) == 2 and all(not p.requires_grad for m in bns for p in m.parameters())
    stats = [m.running_mean.clone() for m in bns]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # frozen on purpose: no FrozenStatisticsWarning
        net(torch.randn(4, 3, 6, 6)).sum().backward()
    assert all(torch.equal(m.running_mean, s) for m, s in zip(bns, stats, strict=True))
    assert check_frozen(net) == []
    set_stats_mode(net, None)
    assert all(p.requires_grad for m in bns for p in m.parameters())
    assert all(m.stats_mode is None for m in bns)


def test_stats_mode_errors():
    with pytest.raises(ValueError, match="mode must be one of"):
        set_stats_mode(batchnorm.BatchNorm1d(2), "eval")
    with pytest.raises(TypeError, match="convert them first"):
        set_stats_mode(nn.Sequential(nn.BatchNorm1d(2)), "running")


# --------------------------------------------------------------------------- the fine-tuning bug


def test_warns_when_frozen_params_meet_updating_statistics():
    bn = trained(batchnorm.BatchNorm1d(3), (4, 3))
    bn.requires_grad_(False)
    bn.train()
    x = torch.randn(4, 3, requires_grad=True)
    with pytest.warns(FrozenStatisticsWarning, match="running statistics still update"):
        bn(x)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        bn(x)  # once per layer
        other = trained(batchnorm.BatchNorm1d(3), (4, 3))
        other.requires_grad_(False)
        with torch.no_grad():
            other(x)  # no_grad: recomputing statistics on purpose, not fine-tuning


def test_check_frozen_finds_torch_layers():
    net = small_net()
    net[1].requires_grad_(False)
    with pytest.warns(FrozenStatisticsWarning):
        assert check_frozen(net) == ["1"]
    assert check_frozen(net.eval(), warn=False) == []
    assert check_frozen(freeze(net.train()), warn=False) == []


def test_variants_with_their_own_forward():
    # Ghost / renorm / fused-activation layers override forward: no policy, a clear error.
    with pytest.raises(TypeError, match="override BatchNorm.forward"):
        set_stats_mode(nn.Sequential(batchnorm.GhostBatchNorm2d(3, ghost_size=2)), "running")
    set_stats_mode(
        nn.Sequential(batchnorm.GhostBatchNorm2d(3, ghost_size=2)), None
    )  # resetting is fine
    # Freezing a BN with a fused activation would drop the activation.
    with pytest.raises(ValueError, match="activation"):
        freeze(nn.Sequential(batchnorm.BatchNormAct2d(3, activation="relu")))
    # Renorm and ghost layers are plain BN in eval: they freeze to the same map.
    bn = trained(batchnorm.BatchRenorm2d(3), (8, 3, 2, 2)).eval()
    x = torch.randn(4, 3, 2, 2)
    torch.testing.assert_close(freeze(copy.deepcopy(bn))(x), bn(x).detach())


def test_doctor_does_not_flag_a_frozen_policy():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), batchnorm.BatchNorm2d(4), nn.ReLU())
    model[1].requires_grad_(False)
    x = torch.randn(4, 3, 8, 8)
    assert [f.code for f in batchnorm.diagnose(model.train(), x) if f.code == "frozen-bn-updating"]
    set_stats_mode(model, "frozen")
    assert not [
        f.code for f in batchnorm.diagnose(model.train(), x) if f.code == "frozen-bn-updating"
    ]
