"""The doctor: each finding on a model that has the mistake and on one that does not."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import batchnorm as bn
from batchnorm.tools.doctor import diagnose

X = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(0))


class ConvBN(nn.Module):
    """conv -> BN -> relu, configurable to contain one mistake at a time."""

    def __init__(self, bias=False, after_act=False, dropout=False, momentum=0.1, eps=1e-5):
        super().__init__()
        self.after_act, self.dropout = after_act, dropout
        self.conv = nn.Conv2d(1, 4, 3, bias=bias)
        self.drop = nn.Dropout(0.2)
        self.act = nn.ReLU()
        self.bn = bn.BatchNorm2d(4, momentum=momentum, eps=eps)
        self.head = nn.Sequential(
            nn.Flatten(), nn.Linear(4 * 6 * 6, 5, bias=False), nn.BatchNorm1d(5)
        )

    def forward(self, x):
        h = self.conv(x)
        if self.dropout:
            h = self.drop(h)
        h = self.bn(self.act(h)) if self.after_act else self.act(self.bn(h))
        return self.head(h)


def codes(findings):
    return sorted({f.code for f in findings})


def test_clean_model_has_no_findings():
    assert diagnose(ConvBN(), X) == []
    assert diagnose(ConvBN().eval(), X, inference=True, weights_from="torch") == []


def test_bias_before_bn_points_at_the_conv_definition():
    (f,) = diagnose(ConvBN(bias=True), X)
    assert f.code == "bias-before-bn" and f.module == "conv" and "bias=False" in f.fix
    file, line = f.location.rsplit(":", 1)
    assert Path(file).name == "test_doctor.py"
    assert "self.conv = nn.Conv2d" in Path(file).read_text().splitlines()[int(line) - 1]
    linear = nn.Sequential(nn.Linear(3, 4), bn.BatchNorm1d(4))
    assert codes(diagnose(linear, torch.randn(4, 3))) == ["bias-before-bn"]
    assert (
        diagnose(nn.Sequential(nn.Linear(3, 4, bias=False), bn.BatchNorm1d(4)), torch.randn(4, 3))
        == []
    )


def test_bn_after_activation():
    (f,) = diagnose(ConvBN(after_act=True), X)
    assert f.code == "bn-after-activation" and f.module == "bn"
    assert (
        "self.bn = bn.BatchNorm2d"
        in Path(f.location.rsplit(":", 1)[0])
        .read_text()
        .splitlines()[int(f.location.rsplit(":", 1)[1]) - 1]
    )


def test_dropout_before_bn_seen_through_a_view():
    assert codes(diagnose(ConvBN(dropout=True), X)) == ["dropout-before-bn"]
    seq = nn.Sequential(nn.Linear(3, 4, bias=False), nn.Dropout(), bn.BatchNorm1d(4))
    assert codes(diagnose(seq, torch.randn(4, 3))) == ["dropout-before-bn"]
    assert codes(diagnose(seq.eval(), torch.randn(4, 3))) == ["dropout-before-bn"]  # structural


@pytest.mark.parametrize(
    "momentum,found", [(0.9, True), (0.99, True), (0.1, False), (0.01, False), (None, False)]
)
def test_momentum_convention(momentum, found):
    got = codes(diagnose(ConvBN(momentum=momentum), X))
    assert got == (["momentum-convention"] if found else [])


def test_eps_origin():
    assert codes(diagnose(ConvBN(eps=1e-3), X, weights_from="torch")) == ["eps-origin"]
    assert diagnose(ConvBN(eps=1e-3), X, weights_from="keras")[0].module == "head.2"  # the 1e-5 one
    mixed = diagnose(ConvBN(eps=1e-3), X)
    assert [(f.code, f.severity) for f in mixed] == [
        ("eps-origin", "info")
    ] and "Heuristic" in mixed[0].message
    with pytest.raises(ValueError, match="weights_from"):
        diagnose(ConvBN(), X, weights_from="jax")


def test_train_mode_for_inference_and_frozen_bn():
    model = ConvBN().eval()
    model.bn.train()  # a submodule's .train() after model.eval()
    (f,) = diagnose(model, X)
    assert (f.code, f.module, f.severity) == ("train-mode-inference", "bn", "error")
    assert codes(diagnose(ConvBN(), X, inference=True)) == ["train-mode-inference"]
    frozen = ConvBN()
    for p in frozen.bn.parameters():
        p.requires_grad_(False)
    assert codes(diagnose(frozen, X)) == ["frozen-bn-updating"]
    frozen.bn.eval()
    assert diagnose(frozen, X) == []


@pytest.mark.parametrize(
    "value,severity",
    [(0.0, "error"), (float("nan"), "error"), (-1.0, "error"), (1e-8, "warning"), (1.0, None)],
)
def test_running_var(value, severity):
    model = ConvBN().eval()
    with torch.no_grad():
        model.bn.running_var[2] = value
    found = diagnose(model, X)
    if severity is None:
        assert found == []
    else:
        assert [(f.code, f.severity, f.module) for f in found] == [("running-var", severity, "bn")]


def test_batch_of_one():
    x1 = X[:1]
    found = diagnose(ConvBN(), x1)
    assert [(f.code, f.severity, f.module) for f in found] == [
        ("batch-of-one", "warning", "bn"),  # 36 positions of one sample
        ("batch-of-one", "error", "head.2"),  # one value per channel: the forward would raise
    ]
    assert diagnose(ConvBN().eval(), x1) == []
    assert diagnose(ConvBN(), X) == []


def test_model_is_not_modified():
    model = ConvBN()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    diagnose(model, X)
    diagnose(model, X[:1])
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert model.training and not model._forward_hooks and not model.bn._forward_pre_hooks


@pytest.mark.slow  # two subprocesses, each importing torch
def test_cli(tmp_path):
    (tmp_path / "netdefs.py").write_text(
        "import torch.nn as nn\n"
        "def bad():\n    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4, momentum=0.99), nn.ReLU())\n"
        "def good():\n    return nn.Sequential(nn.Conv2d(1, 4, 3, bias=False), nn.BatchNorm2d(4), nn.ReLU())\n"
    )
    root = Path(__file__).resolve().parents[1]
    env = {"PYTHONPATH": f"{root}:{tmp_path}", "PATH": "/usr/bin:/bin"}

    def cli(*args):
        return subprocess.run(
            [sys.executable, "-m", "batchnorm", "doctor", *args],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )

    bad = cli("netdefs:bad", "--input-shape", "2,1,28,28")
    assert (
        bad.returncode == 1
        and "bias-before-bn" in bad.stdout
        and "momentum-convention" in bad.stdout
    )
    good = cli("netdefs:good", "--input-shape", "2,1,28,28")
    assert good.returncode == 0 and "no batch-norm problems" in good.stdout
    # Argument errors, in process (a subprocess costs a torch import).
    from batchnorm.cli import build_parser
    from batchnorm.cli import doctor as doctor_cli

    parser = build_parser()
    assert doctor_cli.run(parser.parse_args(["doctor", "netdefs", "--input-shape", "2,1"])) == 2
    assert (
        doctor_cli.run(parser.parse_args(["doctor", "netdefs:good", "--input-shape", "2,x"])) == 2
    )
    assert (
        doctor_cli.run(parser.parse_args(["doctor", "no_such_module:f", "--input-shape", "2,1"]))
        == 2
    )


def test_bias_on_another_axis_is_not_reported():
    class TokensBN(nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = nn.Linear(3, 5)  # bias per feature (5) ...
            self.bn = bn.BatchNorm1d(7)  # ... but BN normalizes the 7 positions

        def forward(self, x):  # (N, 7, 3)
            return self.bn(self.proj(x))

    assert diagnose(TokensBN(), torch.randn(4, 7, 3)) == []
