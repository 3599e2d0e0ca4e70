"""Experiment networks, config and augmentation: shapes, BN placement, no redundant bias."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from torch import nn

import batchnorm
from batchnorm.experiments.augment import random_affine
from batchnorm.experiments.config import Config, add_config_arguments, config_from_args, load_preset
from batchnorm.experiments.models import ACTIVATIONS, NORMS, build_model

NORM_TYPES = {
    "ours": (batchnorm.BatchNorm1d, batchnorm.BatchNorm2d),
    "torch": (nn.BatchNorm1d, nn.BatchNorm2d),
    "groupnorm": (nn.GroupNorm,),
    "layernorm": (nn.GroupNorm, nn.LayerNorm),
}
NORM_CLASSES = (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm)


@pytest.mark.parametrize("model", ["lenet", "lenet5", "mlp"])
@pytest.mark.parametrize("norm", NORMS)
def test_shapes_and_norm_placement(model, norm):
    torch.manual_seed(0)
    cfg = Config(
        model=model, norm=norm, activation="sigmoid" if model == "mlp" else "relu", dropout=0.5
    )
    net = build_model(cfg)
    out = net(torch.rand(4, 1, 28, 28))
    assert out.shape == (4, 10)
    mods = list(net)
    norms = [i for i, m in enumerate(mods) if isinstance(m, NORM_CLASSES)]
    weighted = [m for m in mods if isinstance(m, (nn.Linear, nn.Conv2d))]
    expected_norms = {"lenet": 4, "lenet5": 4, "mlp": 3}[model]
    assert len(norms) == (0 if norm == "none" else expected_norms)
    for i in norms:
        assert isinstance(mods[i], NORM_TYPES[norm])
        # BN sits between the linear map and the non-linearity; that map has no bias.
        assert isinstance(mods[i - 1], (nn.Linear, nn.Conv2d)) and mods[i - 1].bias is None
        assert isinstance(mods[i + 1], tuple(ACTIVATIONS.values()))
    if norm == "none":
        assert all(m.bias is not None for m in weighted)
    assert weighted[-1].bias is not None and weighted[-1].out_features == 10  # logits layer


def test_lenet_layer_sizes_follow_article():
    net = build_model(Config(model="lenet", norm="ours"))
    shapes = []
    x = torch.rand(2, 1, 28, 28)
    for m in net:
        x = m(x)
        shapes.append(tuple(x.shape[1:]))
    assert (6, 26, 26) in shapes and (6, 13, 13) in shapes and (16, 11, 11) in shapes
    assert (16, 5, 5) in shapes and (120,) in shapes and (84,) in shapes
    net5 = build_model(Config(model="lenet5", norm="none"))
    assert sum(p.numel() for p in net5.parameters()) == 61706  # classic LeNet-5 (6-16-120-84-10)


def test_mlp_widths_and_init_std():
    torch.manual_seed(0)
    net = build_model(
        Config(model="mlp", widths=(50, 20), norm="none", init="normal", init_std=0.5)
    )
    lins = [m for m in net if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in lins] == [(784, 50), (50, 20), (20, 10)]
    assert abs(lins[0].weight.std().item() - 0.5) < 0.02
    assert all(float(m.bias.detach().abs().max()) == 0 for m in lins)


def test_groupnorm_groups_divide_channels():
    net = build_model(Config(model="lenet", norm="groupnorm", norm_groups=4))
    gns = [m for m in net if isinstance(m, nn.GroupNorm)]
    assert [g.num_groups for g in gns] == [2, 4, 4, 4]  # gcd(4, C) for C = 6, 16, 120, 84


def test_config_cli_preset_precedence(tmp_path):
    import argparse

    p = argparse.ArgumentParser()
    add_config_arguments(p)
    preset = tmp_path / "p.toml"
    preset.write_text('model = "mlp"\nlr = 0.5\nwidths = [10, 20]\naugment = true\nsteps = 7\n')
    args = p.parse_args(["--lr", "0.25", "--no-augment", "--widths", "30,40", "--batch-size", "60"])
    cfg = config_from_args(args, load_preset(preset))
    assert (cfg.model, cfg.lr, cfg.widths, cfg.augment, cfg.steps, cfg.batch_size) == (
        "mlp",
        0.25,
        (30, 40),
        False,
        7,
        60,
    )
    j = tmp_path / "p.json"
    j.write_text(json.dumps(cfg.to_dict()))
    assert Config.from_dict(load_preset(j)) == cfg


def test_config_key_and_validation():
    a = Config()
    assert a.key() == Config().key() == a.replace(threads=7, name="x").key()
    assert a.key() != a.replace(lr=0.5).key()
    assert a.run_name().startswith("lenet-ours-")
    for bad, msg in (
        ({"norm": "bn"}, "norm"),
        ({"batch_size": 0}, "batch_size"),
        ({"epochs": 0, "steps": 0}, "epochs > 0"),
        ({"dropout": 1.0}, "dropout"),
    ):
        with pytest.raises(ValueError, match=msg):
            Config(**bad)
    with pytest.raises(ValueError, match="unknown config field"):
        Config.from_dict({"learning_rate": 1})
    with pytest.raises(ValueError, match="true or false"):
        Config.from_dict({"augment": "maybe"})


def test_augment_identity_and_randomness():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(5, 1, 28, 28)
    same = random_affine(x, g, rotation=0, shear=0, zoom=0, shift=0)
    torch.testing.assert_close(same, x, atol=1e-5, rtol=0)
    y = random_affine(x, g)
    assert y.shape == x.shape and not torch.allclose(y, x)
    # The identity map is exact for any image (bilinear sampling at pixel centres).
    img = torch.zeros(1, 1, 28, 28)
    img[0, 0, 13:15, 13:15] = 1.0
    z = random_affine(img, torch.Generator().manual_seed(0), rotation=0, shear=0, zoom=0, shift=0)
    torch.testing.assert_close(z, img, atol=1e-5, rtol=0)


def test_cli_does_not_import_matplotlib():
    import subprocess
    import sys

    code = (
        "import sys, batchnorm, batchnorm.cli as c; c.build_parser(); "
        "import batchnorm.experiments.reproduce, batchnorm.experiments.train; "
        "print('matplotlib' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_top_level_help_does_not_import_torch():
    import subprocess
    import sys

    code = (
        "import sys\nfrom batchnorm.cli import main\ntry:\n    main(['--help'])\n"
        "except SystemExit:\n    pass\nprint('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "reproduce" in out.stdout and out.stdout.strip().endswith("False")


@pytest.mark.parametrize(
    "optimizer, weight_decay", [("sgd", 0.0), ("sgd", 1e-3), ("adam", 0.0), ("adam", 1e-3)]
)
def test_run_optimizers_match_torch_optim_bit_for_bit(optimizer, weight_decay):
    """The experiments' optimizers (PlainSGD; Adam's foreach implementation) take the steps of
    torch.optim's per-tensor loop exactly: the run files stay the same."""
    from batchnorm.experiments.train import _optimizer

    cfg = Config(model="lenet", norm="ours", optimizer=optimizer, lr=0.05 if optimizer == "sgd"
                 else 1e-3, weight_decay=weight_decay)  # fmt: skip
    torch.manual_seed(0)
    ours = build_model(cfg, (1, 28, 28), 10)
    ref = copy.deepcopy(ours)
    opt = _optimizer(cfg, ours.parameters())
    ref_opt = (
        torch.optim.SGD(ref.parameters(), lr=cfg.lr, weight_decay=weight_decay, foreach=False)
        if optimizer == "sgd"
        else torch.optim.Adam(ref.parameters(), lr=cfg.lr, weight_decay=weight_decay,
                              foreach=False)
    )  # fmt: skip
    g = torch.Generator().manual_seed(1)
    for _ in range(5):
        x, y = torch.randn(16, 1, 28, 28, generator=g), torch.randint(0, 10, (16,), generator=g)
        for model, o in ((ours, opt), (ref, ref_opt)):
            o.zero_grad(set_to_none=True)
            nn.functional.cross_entropy(model(x), y).backward()
            o.step()
    for (name, a), b in zip(ours.state_dict().items(), ref.state_dict().values()):
        assert torch.equal(a, b), name
    assert any(p.grad is not None for p in ours.parameters())
    opt.zero_grad()
    assert all(p.grad is None for p in ours.parameters())
