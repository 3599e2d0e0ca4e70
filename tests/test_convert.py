"""convert(): torch.nn BN <-> batchnorm BN, keeping state, dtype, flags; identical outputs."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import batchnorm
from batchnorm.tools.convert import convert


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm1d(4, momentum=None)
        self.bn2 = nn.BatchNorm2d(4, eps=1e-3, momentum=0.3)
        self.bn3 = nn.BatchNorm3d(4, affine=False)
        self.inner = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4, track_running_stats=False))

    def forward(self, x):  # x: (N, 4, 2, 2, 2)
        z = self.bn3(x)
        z = self.bn2(z.mean(-1))
        z = self.bn1(z.mean(-1))
        return self.inner(z.mean(-1))


def make_net(dtype=torch.float64) -> Net:
    torch.manual_seed(0)
    net = Net().to(dtype)
    with torch.no_grad():
        for _ in range(2):
            net(torch.randn(6, 4, 2, 2, 2, dtype=dtype) * 2 + 1)
        net.bn2.weight.normal_()
        net.bn2.bias.normal_()
    net.bn2.weight.requires_grad_(False)
    return net


def kinds(net: nn.Module) -> list[type]:
    return [type(m) for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


@pytest.mark.parametrize("training", [True, False])
def test_round_trip_identical(training):
    net = make_net().train(training)
    net.bn1.train()  # a mixed training flag is kept per layer
    ref = copy.deepcopy(net)
    x = torch.randn(8, 4, 2, 2, 2, dtype=torch.float64)

    ours = convert(copy.deepcopy(net), to="batchnorm")
    assert kinds(ours) == [
        batchnorm.BatchNorm1d,
        batchnorm.BatchNorm2d,
        batchnorm.BatchNorm3d,
        batchnorm.BatchNorm1d,
    ]
    assert [m.training for m in ours.modules()] == [m.training for m in net.modules()]
    assert ours.bn2.eps == 1e-3 and ours.bn2.momentum == 0.3 and ours.bn1.momentum is None
    assert not ours.bn2.weight.requires_grad and ours.bn2.bias.requires_grad
    assert ours.bn3.weight is None and ours.inner[1].running_mean is None
    assert ours.bn2.running_mean.dtype == torch.float64
    for k, v in net.state_dict().items():
        assert torch.equal(ours.state_dict()[k], v), k

    # The same step in both: outputs and updated statistics agree to float64 rounding.
    y_ours, y_ref = ours(x), ref(x)
    torch.testing.assert_close(y_ours, y_ref, rtol=1e-12, atol=1e-12)
    for k, v in ref.state_dict().items():
        torch.testing.assert_close(ours.state_dict()[k], v, rtol=1e-12, atol=1e-12)

    back = convert(ours, to="torch")
    assert kinds(back) == kinds(net)
    for k, v in ours.state_dict().items():
        assert torch.equal(back.state_dict()[k], v), k
    # torch -> ours -> torch is the original model: bit-identical outputs.
    net(x)
    twice = convert(convert(copy.deepcopy(net), to="batchnorm"), to="torch")
    assert torch.equal(twice(x), copy.deepcopy(net)(x))


def test_float32_outputs_match_torch():
    net = make_net(torch.float32).eval()
    x = torch.randn(8, 4, 2, 2, 2)
    want = net(x)
    got = convert(copy.deepcopy(net), to="batchnorm")(x)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_model_that_is_a_bn_and_already_converted():
    bn = nn.BatchNorm2d(3).eval()
    new = convert(bn, to="batchnorm")
    assert new is not bn and type(new) is batchnorm.BatchNorm2d and not new.training
    assert convert(new, to="batchnorm") is new
    assert convert(bn, to="torch") is bn
    seq = nn.Sequential(nn.LazyBatchNorm1d())
    assert type(convert(seq, to="batchnorm")[0]) is nn.LazyBatchNorm1d


def test_sync_batchnorm_single_process():
    sync = nn.SyncBatchNorm(3, momentum=0.2)
    with torch.no_grad():
        sync.running_mean.normal_()
    model = convert(nn.Sequential(sync), to="batchnorm")
    assert type(model[0]) is batchnorm.BatchNorm and model[0].axis == 1 and model[0].momentum == 0.2
    assert torch.equal(model[0].running_mean, sync.running_mean)
    x = torch.randn(4, 3, 5)
    ref = nn.BatchNorm1d(3, momentum=0.2)
    ref.load_state_dict(sync.state_dict())
    torch.testing.assert_close(model(x), ref(x), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="no torch.nn equivalent"):
        convert(model, to="torch")


def test_errors():
    with pytest.raises(ValueError, match="to must be"):
        convert(nn.BatchNorm1d(2), to="keras")
    with pytest.raises(ValueError, match="eps must be > 0"):
        convert(nn.Sequential(nn.BatchNorm1d(2, eps=0.0)), to="batchnorm")
    with pytest.raises(ValueError, match="axis=-1"):
        convert(nn.Sequential(batchnorm.BatchNorm(2, axis=-1)), to="torch")
    bn = batchnorm.BatchNorm1d(2)
    batchnorm.set_stats_mode(bn, "running")
    with pytest.raises(ValueError, match="stats_mode='running'"):
        convert(bn, to="torch")
    bn = batchnorm.BatchNorm1d(2)
    bn.store_unbiased = False
    with pytest.raises(ValueError, match="biased variance"):
        convert(bn, to="torch")
    with pytest.raises(ValueError, match="no torch.nn equivalent"):
        convert(batchnorm.BatchNorm(2, center=False), to="torch")
    bn = batchnorm.BatchNorm1d(2)
    bn.register_parameter("weight", None)  # center without scale, as BatchNorm(scale=False)
    with pytest.raises(ValueError, match="beta without gamma"):
        convert(bn, to="torch")
    # gamma without beta is torch.nn's bias=False (torch >= 2.13): converted, state kept.
    bn = batchnorm.BatchNorm1d(2, bias=False)
    with torch.no_grad():
        bn.weight.fill_(3.0)
    theirs = convert(bn, to="torch")
    assert type(theirs) is nn.BatchNorm1d and theirs.bias is None
    assert torch.equal(theirs.weight, bn.weight)


def test_failed_conversion_leaves_the_model_unchanged():
    model = nn.Sequential(batchnorm.BatchNorm1d(2), batchnorm.BatchNorm(2, axis=-1))
    with pytest.raises(ValueError, match="no torch.nn equivalent"):
        convert(model, to="torch")
    assert type(model[0]) is batchnorm.BatchNorm1d
