"""Folding BN into neighbouring Linear / Conv / ConvTranspose layers, one pair and model-wide."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import batchnorm
from batchnorm import reference as R
from batchnorm.nn.frozen import FrozenBatchNorm2d
from batchnorm.tools.fold import fold, fold_bn_layer, fold_layer_bn


def randomize(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give every BN non-trivial statistics and affine parameters, and put the model in eval."""
    gen = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, (nn.modules.batchnorm._BatchNorm, batchnorm.FrozenBatchNorm)):
            c = m.num_features
            with torch.no_grad():
                if m.running_mean is not None:
                    m.running_mean.copy_(torch.randn(c, generator=gen) * 2)
                    m.running_var.copy_(torch.rand(c, generator=gen) * 3 + 0.2)
                if m.weight is not None:
                    m.weight.copy_(torch.randn(c, generator=gen))
                if m.bias is not None:
                    m.bias.copy_(torch.randn(c, generator=gen))
    return model.eval()


def bn_reference(z: torch.Tensor, bn: nn.Module, axis: int = 1) -> np.ndarray:
    """The float64 NumPy oracle of eval BN applied to ``z`` (eq. 23-24)."""
    zn = z.detach().double().numpy()
    mean, var = bn.running_mean.double().numpy(), bn.running_var.double().numpy()
    g = None if bn.weight is None else bn.weight.detach().double().numpy()
    b = None if bn.bias is None else bn.bias.detach().double().numpy()
    if bn.eps > 0:
        return R.batch_norm_inference(zn, mean, var, g, b, bn.eps, axis)
    # reference.inference_affine demands eps > 0; torch.nn allows 0: apply eq. 24 directly.
    shape = [1] * zn.ndim
    shape[axis] = -1
    y = (zn - mean.reshape(shape)) / np.sqrt(var.reshape(shape))
    return y * (1 if g is None else g.reshape(shape)) + (0 if b is None else b.reshape(shape))


LAYERS = {
    "linear": (lambda: nn.Linear(6, 8), (5, 6)),
    "linear-nobias": (lambda: nn.Linear(6, 8, bias=False), (5, 6)),
    "conv1d": (lambda: nn.Conv1d(4, 8, 3, stride=2, padding=1, dilation=2, groups=2), (3, 4, 11)),
    "conv2d": (
        lambda: nn.Conv2d(6, 8, 3, stride=(1, 2), padding=2, dilation=(2, 1), groups=2, bias=False),
        (3, 6, 9, 9),
    ),
    "conv2d-depthwise": (lambda: nn.Conv2d(8, 8, 3, padding=1, groups=8), (3, 8, 7, 7)),
    "conv3d": (lambda: nn.Conv3d(4, 8, 2, stride=1, padding=1, groups=4), (2, 4, 4, 5, 3)),
    "convT1d": (
        lambda: nn.ConvTranspose1d(4, 8, 3, stride=2, padding=1, output_padding=1, groups=2),
        (3, 4, 6),
    ),
    "convT2d": (
        lambda: nn.ConvTranspose2d(6, 8, 3, stride=2, dilation=2, groups=2, bias=False),
        (2, 6, 5, 4),
    ),
    "convT2d-g1": (lambda: nn.ConvTranspose2d(3, 8, (2, 3), stride=(2, 1)), (2, 3, 4, 4)),
    "convT3d": (lambda: nn.ConvTranspose3d(4, 8, 2, stride=2, groups=4), (2, 4, 3, 2, 3)),
}
BNS = {
    "torch": lambda c: nn.BatchNorm1d(c),
    "ours": lambda c: batchnorm.BatchNorm(c),
    "affine-off": lambda c: nn.BatchNorm1d(c, affine=False),
    "eps0": lambda c: nn.BatchNorm1d(c, eps=0.0),
    "frozen": lambda c: batchnorm.FrozenBatchNorm(c),
}


@pytest.mark.parametrize("bn_kind", list(BNS))
@pytest.mark.parametrize("layer_kind", list(LAYERS))
def test_fold_layer_bn_matches_oracle(layer_kind, bn_kind):
    torch.manual_seed(0)
    make, shape = LAYERS[layer_kind]
    layer = make().double()
    bn = randomize(BNS[bn_kind](8)).double()
    x = torch.randn(shape, dtype=torch.float64)
    before = {k: v.clone() for k, v in layer.state_dict().items()}
    folded = fold_layer_bn(layer, bn)
    # Pure: the inputs are untouched.
    assert all(torch.equal(v, layer.state_dict()[k]) for k, v in before.items())
    want = bn_reference(layer(x), bn)
    got = folded(x).detach().numpy()
    np.testing.assert_allclose(got, want, rtol=1e-11, atol=1e-11)
    assert folded.bias is not None and folded.weight.dtype == torch.float64


@pytest.mark.parametrize("layer_kind", ["linear", "conv2d", "convT2d", "conv3d"])
def test_fold_layer_bn_float32_matches_torch_eval(layer_kind):
    torch.manual_seed(1)
    make, shape = LAYERS[layer_kind]
    layer, bn = make(), randomize(nn.BatchNorm1d(8))
    x = torch.randn(shape)
    with torch.no_grad():
        want = torch.nn.functional.batch_norm(
            layer(x), bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.0, bn.eps
        )
        got = fold_layer_bn(layer, bn)(x)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


BEFORE = {
    "linear": (lambda: nn.Linear(8, 5), (4, 8)),
    "conv1d-valid": (lambda: nn.Conv1d(8, 6, 3, stride=2, dilation=2, groups=2), (3, 8, 12)),
    "conv2d-reflect": (
        lambda: nn.Conv2d(8, 4, 3, padding=1, padding_mode="reflect", groups=4),
        (2, 8, 6, 6),
    ),
    "conv2d-circular": (
        lambda: nn.Conv2d(8, 4, 3, padding=2, padding_mode="circular", bias=False),
        (2, 8, 6, 6),
    ),
    "conv3d-replicate": (
        lambda: nn.Conv3d(8, 2, 2, padding=1, padding_mode="replicate"),
        (2, 8, 3, 3, 3),
    ),
    "conv2d-1x1-same": (lambda: nn.Conv2d(8, 4, 1, padding="same"), (2, 8, 5, 5)),
}


@pytest.mark.parametrize("layer_kind", list(BEFORE))
def test_fold_bn_layer_exact_cases(layer_kind):
    torch.manual_seed(2)
    make, shape = BEFORE[layer_kind]
    layer, bn = make().double(), randomize(nn.BatchNorm1d(8)).double()
    x = torch.randn(shape, dtype=torch.float64)
    with torch.no_grad():
        want = layer(torch.from_numpy(bn_reference(x, bn)))
        got = fold_bn_layer(bn, layer)(x)
    torch.testing.assert_close(got, want, rtol=1e-11, atol=1e-11)


def test_fold_bn_layer_refuses_inexact():
    bn = randomize(nn.BatchNorm2d(4))
    with pytest.raises(ValueError, match="zero padding"):
        fold_bn_layer(bn, nn.Conv2d(4, 4, 3, padding=1))
    with pytest.raises(ValueError, match="zero padding"):
        fold_bn_layer(bn, nn.Conv2d(4, 4, 3, padding="same"))
    with pytest.raises(ValueError, match="not exact"):
        fold_bn_layer(bn, nn.ConvTranspose2d(4, 4, 3))
    # ...and the refusal is right: the same fold with zero padding differs at the border.
    conv = nn.Conv2d(4, 4, 3, padding=1)
    would_be = fold_bn_layer(bn, nn.Conv2d(4, 4, 3))
    would_be.load_state_dict(fold_bn_layer(bn, _unpadded(conv)).state_dict())
    would_be.padding = (1, 1)
    x = torch.randn(2, 4, 5, 5)
    with torch.no_grad():
        diff = (would_be(x) - conv(bn(x))).abs()
    assert diff[..., 1:-1, 1:-1].max() < 1e-5 and diff.max() > 1e-3


def _unpadded(conv: nn.Conv2d) -> nn.Conv2d:
    new = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size)
    new.load_state_dict(conv.state_dict())
    return new


def test_pure_fold_errors():
    with pytest.raises(ValueError, match="no running statistics"):
        fold_layer_bn(nn.Linear(3, 4), nn.BatchNorm1d(4, track_running_stats=False))
    with pytest.raises(ValueError, match="channels"):
        fold_layer_bn(nn.Linear(3, 4), nn.BatchNorm1d(5))
    with pytest.raises(TypeError, match="fold batch norm only into"):
        fold_layer_bn(nn.ReLU(), nn.BatchNorm1d(5))
    with pytest.raises(ValueError, match="axis"):
        fold_layer_bn(nn.Conv2d(3, 4, 1), batchnorm.BatchNorm(4, axis=-1))
    bn = nn.BatchNorm1d(2, eps=0.0).eval()
    bn.running_var[0] = 0.0
    with pytest.raises(ValueError, match="var \\+ eps must be finite and > 0"):
        fold_layer_bn(nn.Linear(3, 2), bn)


# --------------------------------------------------------------------------- model-wide


def lenet(bn=nn.BatchNorm2d, bn1=nn.BatchNorm1d) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(1, 6, 5, padding=2),
        bn(6),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(6, 16, 5),
        bn(16),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(400, 120),
        bn1(120),
        nn.ReLU(),
        nn.Linear(120, 84),
        bn1(84),
        nn.ReLU(),
        nn.Linear(84, 10),
    )


@pytest.mark.parametrize("ours", [False, True])
def test_fold_lenet(ours):
    torch.manual_seed(3)
    model = randomize(lenet(batchnorm.BatchNorm2d, batchnorm.BatchNorm1d) if ours else lenet())
    x = torch.randn(16, 1, 28, 28)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    folded, report = fold(model, x)
    assert [p[2] for p in report.folded] == ["layer->bn"] * 4
    assert report.skipped == []
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in folded.modules())
    with torch.no_grad():
        torch.testing.assert_close(folded(x), model(x), rtol=1e-5, atol=1e-5)
    assert report.max_abs_error is not None and report.max_abs_error < 1e-4
    # The original is untouched.
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())
    assert isinstance(model[1], nn.modules.batchnorm._BatchNorm)


class ResBlock(nn.Module):
    """conv-bn-relu-conv-bn + skip: a plain forward, so only torch.fx can find the pairs."""

    def __init__(self, c: int = 8) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c)
        self.conv2 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn2 = batchnorm.BatchNorm2d(c)

    def forward(self, x):
        y = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(x + self.bn2(self.conv2(y)))


def test_fold_resnet_block_via_fx():
    torch.manual_seed(4)
    model = randomize(ResBlock())
    x = torch.randn(4, 8, 10, 10)
    folded, report = fold(model, x)
    assert sorted(report.folded) == [("conv1", "bn1", "layer->bn"), ("conv2", "bn2", "layer->bn")]
    assert type(folded) is ResBlock and isinstance(folded.bn1, nn.Identity)
    with torch.no_grad():
        torch.testing.assert_close(folded(x), model(x), rtol=1e-5, atol=1e-5)
    assert report.max_abs_error < 1e-4


class Branchy(nn.Module):
    """Untraceable (data-dependent branch) around traceable pieces; a shared conv; a BN fed twice."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU())
        self.shared = nn.Conv2d(4, 4, 1)
        self.bn_shared = nn.BatchNorm2d(4)
        self.conv = nn.Conv2d(4, 4, 1)
        self.bn_two_users = nn.BatchNorm2d(4)

    def forward(self, x):
        x = self.stem(x)
        if x.sum() > 0:  # fx cannot trace this
            x = self.shared(self.shared(x))
        x = self.bn_shared(x)
        z = self.conv(x)
        return self.bn_two_users(z) + z


def test_fold_untraceable_falls_back_to_children():
    torch.manual_seed(5)
    model = randomize(Branchy())
    x = torch.randn(2, 3, 6, 6)
    folded, report = fold(model, x)
    assert report.folded == [("stem.0", "stem.1", "layer->bn")]
    assert {n for n, _ in report.skipped} == {"bn_shared", "bn_two_users"}
    assert any("not traceable" in n for n in report.notes)
    with torch.no_grad():
        torch.testing.assert_close(folded(x), model(x), rtol=1e-5, atol=1e-5)


def test_fold_shared_layer_and_two_users_skipped_when_traceable():
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.bn, self.bn2 = nn.Conv2d(2, 2, 1), nn.BatchNorm2d(2), nn.BatchNorm2d(2)
            self.conv2 = nn.Conv2d(2, 2, 1)

        def forward(self, x):
            z = self.conv(x)
            w = self.conv2(x)
            return self.bn(self.conv(z)) + self.bn2(w) + w

    model = randomize(M())
    folded, report = fold(model, torch.randn(2, 2, 3, 3))
    assert report.folded == []
    reasons = dict(report.skipped)
    assert "'conv' is called more than once" in reasons["bn"]
    assert "also used elsewhere" in reasons["bn2"]
    assert report.max_abs_error == 0.0


def test_fold_before_linear_and_composition():
    torch.manual_seed(6)
    model = randomize(
        nn.Sequential(
            nn.BatchNorm1d(5),
            nn.Linear(5, 3),
            nn.BatchNorm1d(3),
            nn.ReLU(),
            nn.BatchNorm1d(3),
            nn.Linear(3, 2),
        )
    )
    x = torch.randn(7, 5)
    folded, report = fold(model, x)
    assert sorted(report.folded) == [
        ("0", "1", "bn->layer"),
        ("1", "2", "layer->bn"),
        ("4", "5", "bn->layer"),
    ]
    with torch.no_grad():
        torch.testing.assert_close(folded(x), model(x), rtol=1e-5, atol=1e-5)
    folded, report = fold(model, x, before=False)
    assert len(report.folded) == 1 and {n for n, _ in report.skipped} == {"0", "4"}


def test_fold_bn_before_linear_on_wrong_axis_is_skipped():
    # BN1d over (N, C, L) then Linear over L = C: channels are not the Linear's inputs.
    model = randomize(nn.Sequential(nn.BatchNorm1d(4), nn.Linear(4, 2)))
    x = torch.randn(3, 4, 4)
    folded, report = fold(model, x)
    assert report.folded == [] and "rank-3" in report.skipped[0][1]
    # Without a probe the rank is unknown: no BN -> Linear fold (the random (4, 4, 16) probe fails).
    model = randomize(
        nn.Sequential(nn.Conv1d(4, 4, 1), nn.Flatten(), nn.BatchNorm1d(16), nn.Linear(16, 2))
    )
    _, report = fold(model)
    assert report.probe.startswith("no probe batch") and report.max_abs_error is None
    assert report.folded == [] and "rank is unknown" in report.skipped[0][1]


def test_fold_random_probe_and_report_text():
    model = randomize(nn.Sequential(nn.Conv2d(3, 4, 3), FrozenBatchNorm2d(4), nn.ReLU()))
    folded, report = fold(model)
    assert report.probe == "random input of shape (4, 3, 16, 16)"
    assert report.max_abs_error < 1e-5
    text = str(report)
    assert "folded  0 -> 1  (layer->bn)" in text and "max abs error" in text


def test_fold_errors():
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    with pytest.raises(ValueError, match="eval mode"):
        fold(model)
    model.eval()
    model[1].train()
    with pytest.raises(ValueError, match="'1' is in training mode"):
        fold(model)
    with pytest.raises(ValueError, match="no running statistics"):
        fold(nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4, track_running_stats=False)).eval())
    # eps = 0 with a zero variance: skipped with the reason, the model still runs.
    model = nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2, eps=0.0)).eval()
    model[1].running_var[0] = 0.0
    _, report = fold(model, torch.randn(2, 3))
    assert report.folded == [] and "var + eps" in report.skipped[0][1]
    # A user-given probe that fails is the user's error, raised as is.
    with pytest.raises(RuntimeError):
        fold(nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2)).eval(), torch.randn(2, 5))


# --------------------------------------------------------------------------- property


@settings(max_examples=30, deadline=None)
@given(
    groups=st.integers(1, 3),
    cin_g=st.integers(1, 3),
    cout_g=st.integers(1, 3),
    kernel=st.integers(1, 3),
    stride=st.integers(1, 2),
    dilation=st.integers(1, 2),
    padding=st.integers(0, 2),
    transposed=st.booleans(),
    dims=st.integers(1, 3),
    bias=st.booleans(),
)
def test_property_eval_bn_equals_its_fold(
    groups, cin_g, cout_g, kernel, stride, dilation, padding, transposed, dims, bias
):
    torch.manual_seed(7)
    cin, cout = groups * cin_g, groups * cout_g
    if transposed:
        cls = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)[dims - 1]
        layer = cls(
            cin, cout, kernel, stride=stride, padding=0, dilation=dilation, groups=groups, bias=bias
        )
    else:
        cls = (nn.Conv1d, nn.Conv2d, nn.Conv3d)[dims - 1]
        layer = cls(
            cin,
            cout,
            kernel,
            stride=stride,
            padding=padding,
            dilation=dilation,
            groups=groups,
            bias=bias,
        )
    layer = layer.double()
    bn = randomize(nn.BatchNorm1d(cout)).double()
    x = torch.randn(2, cin, *([5] * dims), dtype=torch.float64)
    with torch.no_grad():
        got = fold_layer_bn(layer, bn)(x).numpy()
    np.testing.assert_allclose(got, bn_reference(layer(x), bn), rtol=1e-10, atol=1e-10)


def test_fold_skips_fused_activation_and_folds_eval_variants():
    torch.manual_seed(8)
    model = randomize(
        nn.Sequential(
            nn.Conv2d(3, 4, 3),
            batchnorm.BatchNormAct2d(4, activation="relu"),
            nn.Conv2d(4, 4, 1),
            batchnorm.BatchRenorm2d(4),
            nn.Conv2d(4, 4, 1),
            batchnorm.GhostBatchNorm2d(4, ghost_size=2),
        )
    )
    x = torch.randn(4, 3, 6, 6)
    folded, report = fold(model, x)
    assert [p[:2] for p in report.folded] == [("2", "3"), ("4", "5")]
    assert report.skipped[0][0] == "1" and "activation" in report.skipped[0][1]
    assert isinstance(folded[1], batchnorm.BatchNormAct2d)
    with torch.no_grad():
        torch.testing.assert_close(folded(x), model(x), rtol=1e-5, atol=1e-5)
