"""Modules as drop-in replacements for torch.nn.BatchNorm*d."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

import batchnorm
from batchnorm import BatchNorm, BatchNorm1d, BatchNorm2d, BatchNorm3d

PAIRS = [
    (BatchNorm1d, nn.BatchNorm1d),
    (BatchNorm2d, nn.BatchNorm2d),
    (BatchNorm3d, nn.BatchNorm3d),
]


def swap_bn(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with every torch.nn BatchNorm*d replaced by ours, same state."""
    new = copy.deepcopy(model)
    ours = {nn.BatchNorm1d: BatchNorm1d, nn.BatchNorm2d: BatchNorm2d, nn.BatchNorm3d: BatchNorm3d}
    for _, m in list(new.named_modules()):
        for cname, child in list(m.named_children()):
            if type(child) in ours:
                rep = ours[type(child)](
                    child.num_features,
                    child.eps,
                    child.momentum,
                    child.affine,
                    child.track_running_stats,
                    dtype=child.running_mean.dtype,
                )
                rep.load_state_dict(child.state_dict())
                rep.train(child.training)
                setattr(m, cname, rep)
    return new


def lenet(bn=nn.BatchNorm2d, bn1=nn.BatchNorm1d) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 6, 3, bias=False),
        bn(6),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(6, 16, 3, bias=False),
        bn(16),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(16 * 5 * 5, 120, bias=False),
        bn1(120),
        nn.ReLU(),
        nn.Linear(120, 84, bias=False),
        bn1(84, momentum=None),
        nn.ReLU(),
        nn.Linear(84, 10),
    )


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("channels_last", [False, True])
def test_swapped_model_trains_identically(dtype, channels_last):
    torch.manual_seed(0)
    ref = lenet().to(dtype)
    ours = swap_bn(ref)
    assert sum(isinstance(m, BatchNorm) for m in ours.modules()) == 4
    opt_r = torch.optim.SGD(ref.parameters(), lr=0.1, momentum=0.9)
    opt_o = torch.optim.SGD(ours.parameters(), lr=0.1, momentum=0.9)
    g = torch.Generator().manual_seed(1)
    tol = dict(atol=1e-10, rtol=1e-10) if dtype == torch.float64 else dict(atol=2e-4, rtol=2e-4)
    for _ in range(4):
        x = torch.randn(16, 1, 28, 28, generator=g, dtype=dtype)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        t = torch.randint(0, 10, (16,), generator=g)
        outs = []
        for model, opt in ((ref, opt_r), (ours, opt_o)):
            opt.zero_grad()
            out = model(x)
            nn.functional.cross_entropy(out, t).backward()
            outs.append(out)
        torch.testing.assert_close(outs[1], outs[0], **tol)
        for (n, p_r), p_o in zip(ref.named_parameters(), ours.parameters()):
            torch.testing.assert_close(p_o.grad, p_r.grad, **tol, msg=n)
        opt_r.step()
        opt_o.step()
    ours_buffers = dict(ours.named_buffers())
    for n, b_r in ref.named_buffers():
        torch.testing.assert_close(ours_buffers[n], b_r, **tol, msg=n)
    ref.eval()
    ours.eval()
    x = torch.randn(8, 1, 28, 28, generator=g, dtype=dtype)
    torch.testing.assert_close(ours(x), ref(x), **tol)


@pytest.mark.parametrize("ours_cls,torch_cls", PAIRS)
def test_state_dict_loads_both_ways(ours_cls, torch_cls):
    t = torch_cls(5)
    with torch.no_grad():
        t.weight.uniform_()
        t.bias.uniform_()
        t.running_mean.uniform_()
        t.running_var.uniform_(0.5, 2)
        t.num_batches_tracked.fill_(7)
    o = ours_cls(5)
    assert list(o.state_dict()) == list(t.state_dict())
    o.load_state_dict(t.state_dict())
    for k, v in t.state_dict().items():
        assert torch.equal(o.state_dict()[k], v), k
    t2 = torch_cls(5)
    t2.load_state_dict(o.state_dict())
    assert int(t2.num_batches_tracked) == 7


def test_old_state_dict_without_num_batches_tracked_loads():
    sd = nn.BatchNorm2d(3).state_dict()
    del sd["num_batches_tracked"]
    m = BatchNorm2d(3)
    m.load_state_dict(sd, strict=False)
    assert int(m.num_batches_tracked) == 0


def test_constructor_arguments_and_isinstance():
    m = BatchNorm2d(
        4, eps=1e-3, momentum=0.01, affine=False, track_running_stats=False, dtype=torch.float64
    )
    t = nn.BatchNorm2d(4, eps=1e-3, momentum=0.01, affine=False, track_running_stats=False)
    assert isinstance(m, _BatchNorm)
    assert m.weight is None and m.running_mean is None and m.num_batches_tracked is None
    assert repr(m) == repr(t)
    assert "skipped_updates" not in m.state_dict()
    x = torch.randn(4, 4, 3, 3, dtype=torch.float64)
    m.eval()
    t.eval()
    torch.testing.assert_close(m(x), t.double()(x))  # batch statistics in eval without buffers


def test_train_eval_and_cumulative_average_match_torch():
    torch.manual_seed(0)
    for momentum in (0.1, None, 1.0):
        o, t = (
            BatchNorm1d(3, momentum=momentum).double(),
            nn.BatchNorm1d(3, momentum=momentum).double(),
        )
        for _ in range(3):
            x = torch.randn(6, 3, 4, dtype=torch.float64)
            torch.testing.assert_close(o(x), t(x))
        torch.testing.assert_close(o.running_mean, t.running_mean)
        torch.testing.assert_close(o.running_var, t.running_var)
        assert int(o.num_batches_tracked) == int(t.num_batches_tracked) == 3
        o.eval()
        t.eval()
        x = torch.randn(2, 3, dtype=torch.float64)
        torch.testing.assert_close(o(x), t(x))


def test_general_batchnorm_axis_minus_one_equals_nchw():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 3, 5, 6, generator=g, dtype=torch.float64)
    nchw = BatchNorm2d(3).double()
    nhwc = BatchNorm(3, axis=-1).double()
    y1 = nchw(x)
    y2 = nhwc(x.permute(0, 2, 3, 1))
    torch.testing.assert_close(y2, y1.permute(0, 2, 3, 1))
    torch.testing.assert_close(nhwc.running_var, nchw.running_var)
    assert "axis=-1" in repr(nhwc)


def test_center_and_scale_toggles():
    m = BatchNorm(3, axis=-1, center=False)
    assert m.weight is not None and m.bias is None
    assert set(m.state_dict()) == {"weight", "running_mean", "running_var", "num_batches_tracked"}
    m = BatchNorm(3, scale=False)
    assert m.weight is None and m.bias is not None
    y = m(torch.randn(5, 3, 2))
    assert y.shape == (5, 3, 2)
    assert "center=True, scale=False" in repr(m)


def test_channels_last_memory_format_is_kept():
    x = torch.randn(4, 3, 5, 5).contiguous(memory_format=torch.channels_last)
    y = BatchNorm2d(3)(x)
    assert y.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize(
    "cls,bad_shape,msg",
    [
        (BatchNorm1d, (4, 3, 2, 2), r"BatchNorm1d expects 2D or 3D input"),
        (BatchNorm2d, (4, 3, 2), r"BatchNorm2d expects 4D input"),
        (BatchNorm3d, (4, 3, 2, 2), r"BatchNorm3d expects 5D input"),
    ],
)
def test_wrong_rank(cls, bad_shape, msg):
    with pytest.raises(ValueError, match=msg):
        cls(3)(torch.randn(bad_shape))


def test_constructor_errors():
    with pytest.raises(ValueError, match="eps must be > 0"):
        BatchNorm2d(3, eps=0)
    with pytest.raises(ValueError, match="num_features must be a positive int"):
        BatchNorm2d(0)
    with pytest.raises(ValueError, match="Keras.s momentum m is 1 - m here"):
        BatchNorm2d(3, momentum=1.5)


def test_wrong_channels_and_batch_of_one_leave_state_untouched():
    m = BatchNorm1d(4)
    before = copy.deepcopy(m.state_dict())
    with pytest.raises(ValueError, match="4 entries.*3 channels"):
        m(torch.randn(8, 3))
    with pytest.raises(ValueError, match="more than one value per channel"):
        m(torch.randn(1, 4))
    for k, v in before.items():
        assert torch.equal(m.state_dict()[k], v), k


def test_nan_batch_is_skipped_and_counted():
    m = BatchNorm1d(2)
    m(torch.randn(4, 2))
    good = copy.deepcopy(m.state_dict())
    m(torch.tensor([[1.0, float("nan")], [2.0, 3.0]]))
    for k in ("running_mean", "running_var", "num_batches_tracked"):
        assert torch.equal(m.state_dict()[k], good[k])
    assert int(m.skipped_updates) == 1


def test_public_api_is_explicit():
    for name in batchnorm.__all__:
        assert hasattr(batchnorm, name), name
