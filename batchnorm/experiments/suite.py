"""The experiments of the articles, each a preset with a claim, a rule and a plot.

An :class:`Experiment` maps a size (``quick`` or full) to groups of configs
(``{label: [Config per seed]}``); :mod:`.report` turns the finished runs into a verdict
with :attr:`Experiment.verdict` and a figure with :attr:`Experiment.plot`, from the run
files alone. A group label ``"series|x"`` puts the group at position ``x`` of series
``series`` in a grouped plot.

Full protocols: article 001 (LeNet, 20 epochs of 50k images, batch 128, augmentation, 3
seeds) and the paper's Figure 1 (sigmoid MLP, 50k steps of batch 60, 3 seeds) as
published; the other experiments are shortened (stated in each ``protocol`` note) so that
the whole suite runs in about an hour and a half on two cores.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .config import Config

__all__ = ["Experiment", "EXPERIMENTS", "get_experiments"]

Runs = list[dict[str, Any]]

# The two networks of the articles, as presets.
LENET_ARTICLE = Config(
    name="LeNet",
    model="lenet",
    activation="relu",
    optimizer="adam",
    lr=1e-3,
    batch_size=128,
    epochs=20,
    augment=True,
)
MLP_FIGURE1 = Config(
    name="MLP",
    model="mlp",
    widths=(100, 100, 100),
    activation="sigmoid",
    optimizer="sgd",
    lr=0.1,
    batch_size=60,
    epochs=0,
    steps=50000,
    init="normal",
    init_std=0.1,
    eval_every=1000,
    watch_unit=0,
)


@dataclass
class Experiment:
    """One claim, the runs that test it, the rule that decides it and the figure that shows it."""

    id: str
    title: str
    source: str
    claim: str
    measured: str
    rule: str
    groups: Callable[[bool], dict[str, list[Config]]]
    verdict: Callable[[dict[str, Runs]], tuple[bool | None, list[str]]]
    plot: Callable[[dict[str, Runs], Path, Experiment], Path]
    protocol: dict[bool, str] = field(default_factory=dict)  # quick -> note


def _seeds(cfg: Config, seeds) -> list[Config]:
    return [cfg.replace(seed=s) for s in seeds]


def _acc(run: dict, mode: str = "running") -> float:
    v = run["summary"]["final"].get(mode, {}).get("test_acc")
    return float("nan") if v is None else 100.0 * v


def _stats(values) -> tuple[float, float, int]:
    v = np.asarray(values, float)
    return float(np.nanmean(v)), float(np.nanstd(v)), len(v)


def _fmt(values) -> str:
    m, s, n = _stats(values)
    return f"{m:.2f}%" + (f" ± {s:.2f} (n={n})" if n > 1 else "")


def _metric_at(run: dict, key: str, epoch: float) -> float:
    """``key`` at the evaluation nearest to ``epoch`` (NaN if missing)."""
    row = min(run["metrics"], key=lambda r: abs(r["epoch"] - epoch))
    v = row.get(key)
    return float("nan") if v is None else v


# --------------------------------------------------------------------------- 1. article 001


def _article_groups(quick: bool) -> dict[str, list[Config]]:
    base = LENET_ARTICLE.replace(train_samples=10000, epochs=2) if quick else LENET_ARTICLE
    return {
        "without BN": _seeds(base.replace(norm="none"), range(3)),
        "with BN": _seeds(base.replace(norm="ours"), range(3)),
    }


def _article_verdict(g: dict[str, Runs]) -> tuple[bool | None, list[str]]:
    no = g["without BN"]
    e1 = {k: [100 * _metric_at(r, "test_acc", 1.0) for r in runs] for k, runs in g.items()}
    fin = {k: [_acc(r) for r in runs] for k, runs in g.items()}
    loss = {
        k: [r["summary"]["final"]["running"]["test_loss"] or float("nan") for r in runs]
        for k, runs in g.items()
    }
    t = {k: [r["summary"]["train_time_s"] for r in runs] for k, runs in g.items()}
    quick = no[0]["config"].epochs < 20
    floor = 98.5
    faster = _stats(e1["with BN"])[0] > _stats(e1["without BN"])[0]
    # A shortened run cannot test where 20 epochs end up: only the "ahead early" part.
    both_high = quick or min(_stats(fin["without BN"])[0], _stats(fin["with BN"])[0]) >= floor
    lines = [
        f"test accuracy after epoch 1: without BN {_fmt(e1['without BN'])}, with BN {_fmt(e1['with BN'])}",
        f"final test accuracy: without BN {_fmt(fin['without BN'])}, with BN {_fmt(fin['with BN'])} "
        "(article 001: 99.08% without, 98.75% with BN)",
        f"final test loss: without BN {np.nanmean(loss['without BN']):.4f}, with BN {np.nanmean(loss['with BN']):.4f} "
        "(article: 0.0307 without, 0.0365 with BN)",
        f"training time per run: without BN {np.mean(t['without BN']):.0f} s, with BN {np.mean(t['with BN']):.0f} s "
        f"(x{np.mean(t['with BN']) / np.mean(t['without BN']):.2f}; article: 15:43 vs 20:57, x1.33)",
        f"rule: BN ahead after epoch 1 -> {faster}; "
        + (
            "final accuracies not tested (shortened protocol)"
            if quick
            else f"both final accuracies >= {floor}% -> {both_high}"
        ),
    ]
    return faster and both_high, lines


def _article_plot(g: dict[str, Runs], path: Path, exp: Experiment) -> Path:
    from .plots import plot_curves

    return plot_curves(g, path, title=exp.title, x="epoch")


# --------------------------------------------------------------------------- 2. Figure 1


def _figure1_groups(quick: bool) -> dict[str, list[Config]]:
    base = MLP_FIGURE1.replace(steps=2000, eval_every=100) if quick else MLP_FIGURE1
    seeds = range(1) if quick else range(3)
    return {
        "without BN": _seeds(base.replace(norm="none"), seeds),
        "with BN": _seeds(base.replace(norm="ours"), seeds),
    }


def _median_drift(run: dict) -> float:
    """Std over training of the unit's median input, after the first tenth of the steps."""
    rows = [r for r in run["metrics"] if "unit_percentiles" in r]
    last = rows[-1]["step"]
    med = [r["unit_percentiles"][1] for r in rows if r["step"] >= 0.1 * last]
    return float(np.std(med))


def _figure1_verdict(g: dict[str, Runs]) -> tuple[bool | None, list[str]]:
    fin = {k: [_acc(r) for r in runs] for k, runs in g.items()}
    steps = g["with BN"][0]["summary"]["planned_steps"]
    early = {
        k: [
            100
            * r["metrics"][min(len(r["metrics"]) - 1, max(1, len(r["metrics"]) // 10))]["test_acc"]
            for r in runs
        ]
        for k, runs in g.items()
    }
    drift = {k: [_median_drift(r) for r in runs] for k, runs in g.items()}
    higher = _stats(fin["with BN"])[0] > _stats(fin["without BN"])[0]
    faster = _stats(early["with BN"])[0] > _stats(early["without BN"])[0]
    stable = np.mean(drift["with BN"]) < np.mean(drift["without BN"])
    lines = [
        f"test accuracy after {steps} steps: without BN {_fmt(fin['without BN'])}, with BN {_fmt(fin['with BN'])}",
        f"test accuracy after about a tenth of the steps: without BN {_fmt(early['without BN'])}, "
        f"with BN {_fmt(early['with BN'])}",
        f"std over training of the unit's median input (stability): without BN "
        f"{np.mean(drift['without BN']):.3f}, with BN {np.mean(drift['with BN']):.3f}",
        f"rule: BN higher at the end -> {higher}; BN ahead early -> {faster}; BN's input distribution "
        f"more stable -> {stable}",
    ]
    return higher and faster and stable, lines


def _figure1_plot(g: dict[str, Runs], path: Path, exp: Experiment) -> Path:
    from .plots import plot_figure1

    return plot_figure1(g, path, title=exp.title)


# --------------------------------------------------------------------------- 3. learning rates


RATES = (1, 5, 30)


def _rate_groups(base: Config, seeds: range) -> dict[str, list[Config]]:
    """``base`` without and with BN at each multiple of its learning rate in RATES."""
    out = {}
    for norm, lab in (("none", "without BN"), ("ours", "with BN")):
        for k in RATES:
            out[f"{lab}|x{k}"] = _seeds(base.replace(norm=norm, lr=base.lr * k), seeds)
    return out


def _lr_groups_mlp(quick: bool) -> dict[str, list[Config]]:
    base = MLP_FIGURE1.replace(
        lr=0.1, steps=1000 if quick else 10000, eval_every=100 if quick else 500, watch_unit=-1
    )
    return _rate_groups(base, range(1) if quick else range(3))


def _lr_groups_lenet(quick: bool) -> dict[str, list[Config]]:
    base = LENET_ARTICLE.replace(optimizer="sgd", lr=0.01, epochs=2, augment=False)
    if quick:
        base = base.replace(train_samples=10000, epochs=1)
    return _rate_groups(base, range(1) if quick else range(3))


def _lr_verdict(g: dict[str, Runs]) -> tuple[bool | None, list[str]]:
    acc = {k: _stats([_acc(r) for r in runs])[0] for k, runs in g.items()}
    div = {k: sum(r["summary"]["diverged"] for r in runs) for k, runs in g.items()}
    lines = ["final test accuracy (mean over seeds; diverged runs count as their last accuracy):"]
    for lab in ("without BN", "with BN"):
        lines.append(
            f"{lab}: "
            + ", ".join(
                f"x{k} {acc[f'{lab}|x{k}']:.2f}%"
                + (f" ({div[f'{lab}|x{k}']} diverged)" if div[f"{lab}|x{k}"] else "")
                for k in RATES
            )
        )
    bn_best = max(acc[f"with BN|x{k}"] for k in RATES)
    stable = acc["with BN|x30"] >= bn_best - 1.0
    beats = acc["with BN|x30"] > acc["without BN|x30"] + 1.0
    best_bn_rate = max(RATES, key=lambda k: acc[f"with BN|x{k}"])
    lines.append(
        f"rule: with BN, x30 within 1 point of its best rate -> {stable}; with BN beats without BN "
        f"at x30 by > 1 point -> {beats} (BN's best rate: x{best_bn_rate})"
    )
    return stable and beats, lines


def _grouped(g: dict[str, Runs]) -> dict[str, dict[str, Runs]]:
    table: dict[str, dict[str, Runs]] = {}
    for label, runs in g.items():
        series, x = label.split("|")
        table.setdefault(x, {})[series] = runs
    return table


def _lr_plot(g: dict[str, Runs], path: Path, exp: Experiment) -> Path:
    from .plots import plot_bars

    return plot_bars(
        _grouped(g), path, title=exp.title, xlabel="learning rate (multiple of the base rate)"
    )


# --------------------------------------------------------------------------- 4. initialization

INITS = (("default", 0.0), ("normal", 0.1), ("normal", 1.0), ("normal", 3.0))


def _init_label(init: str, std: float) -> str:
    return "PyTorch default" if init == "default" else f"N(0, {std:g}²)"


def _init_groups(quick: bool) -> dict[str, list[Config]]:
    base = MLP_FIGURE1.replace(
        steps=1000 if quick else 5000, eval_every=100 if quick else 250, watch_unit=-1
    )
    seeds = range(1) if quick else range(3)
    inits = INITS[::2] + INITS[-1:] if quick else INITS
    out = {}
    for norm, lab in (("none", "without BN"), ("ours", "with BN")):
        for init, std in inits:
            cfg = base.replace(norm=norm, init=init, init_std=std if init == "normal" else 0.01)
            out[f"{lab}|{_init_label(init, std)}"] = _seeds(cfg, seeds)
    return out


def _init_verdict(g: dict[str, Runs]) -> tuple[bool | None, list[str]]:
    t = _grouped(g)
    acc = {
        x: {s: _stats([_acc(r) for r in runs])[0] for s, runs in row.items()}
        for x, row in t.items()
    }
    rng = {
        s: max(a[s] for a in acc.values()) - min(a[s] for a in acc.values())
        for s in ("without BN", "with BN")
    }
    largest = list(t)[-1]
    lines = [
        f"{x}: without BN {a['without BN']:.2f}%, with BN {a['with BN']:.2f}%"
        for x, a in acc.items()
    ]
    less = rng["with BN"] < rng["without BN"]
    large = acc[largest]["with BN"] > acc[largest]["without BN"] + 5
    lines.append(
        f"range of final accuracy across initializations: without BN {rng['without BN']:.2f} points, "
        f"with BN {rng['with BN']:.2f}"
    )
    lines.append(
        f"rule: BN's range smaller -> {less}; BN ahead by > 5 points at {largest} -> {large}"
    )
    return less and large, lines


def _init_plot(g: dict[str, Runs], path: Path, exp: Experiment) -> Path:
    from .plots import plot_bars

    return plot_bars(
        _grouped(g), path, title=exp.title, xlabel="weight initialization", ylim=(0, 100)
    )


# --------------------------------------------------------------------------- 5. dropout


def _dropout_groups(quick: bool) -> dict[str, list[Config]]:
    base = LENET_ARTICLE.replace(
        augment=False, train_samples=2000 if quick else 10000, epochs=5 if quick else 15
    )
    out = {}
    for norm, lab in (("none", "without BN"), ("ours", "with BN")):
        for p in (0.0, 0.5):
            out[f"{lab}|{'dropout 0.5' if p else 'no dropout'}"] = _seeds(
                base.replace(norm=norm, dropout=p), range(3)
            )
    return out


def _dropout_verdict(g: dict[str, Runs]) -> tuple[bool | None, list[str]]:
    acc = {k: [_acc(r) for r in runs] for k, runs in g.items()}
    gap = {
        k: [100 * (r["metrics"][-1]["train_eval_acc"] - r["metrics"][-1]["test_acc"]) for r in runs]
        for k, runs in g.items()
    }
    lines = [
        f"{k.replace('|', ', ')}: test {_fmt(acc[k])}, train-test gap {np.mean(gap[k]):.2f} points"
        for k in g
    ]
    bn, no_drop = _stats(acc["with BN|no dropout"]), _stats(acc["without BN|dropout 0.5"])
    tol = max(bn[1], no_drop[1])
    held = bn[0] >= no_drop[0] - tol
    lines.append(
        f"rule: BN without dropout ({bn[0]:.2f}%) >= no BN with dropout ({no_drop[0]:.2f}%) minus the "
        f"larger seed std ({tol:.2f}) -> {held}"
    )
    return held, lines


def _dropout_plot(g: dict[str, Runs], path: Path, exp: Experiment) -> Path:
    from .plots import plot_bars

    return plot_bars(_grouped(g), path, title=exp.title, xlabel="")


# --------------------------------------------------------------------------- 6. batch size

NORM_LABELS = {"ours": "BatchNorm (ours)", "groupnorm": "GroupNorm", "layernorm": "LayerNorm"}


def _bs_groups(quick: bool) -> dict[str, list[Config]]:
    sizes = (2, 8, 32, 128) if quick else (2, 4, 8, 16, 32, 64, 128)
    budget = 2048 if quick else 25600
    base = LENET_ARTICLE.replace(
        augment=False, eval_stats="population", population_samples=2000 if quick else 10000
    )
    seeds = range(1) if quick else range(3)
    out = {}
    for norm, lab in NORM_LABELS.items():
        for b in sizes:
            cfg = base.replace(
                norm=norm, batch_size=b, epochs=0, steps=budget // b, eval_every=budget // b
            )
            out[f"{lab}|{b}"] = _seeds(cfg, seeds)
    return out


def _bs_table(g: dict[str, Runs]) -> dict[str, dict[int, Runs]]:
    t: dict[str, dict[int, Runs]] = {}
    for label, runs in g.items():
        series, b = label.split("|")
        t.setdefault(series, {})[int(b)] = runs
    return t


def _bs_verdict(g: dict[str, Runs]) -> tuple[bool | None, list[str]]:
    t = _bs_table(g)
    acc = {
        s: {b: _stats([_acc(r, "population") for r in runs])[0] for b, runs in row.items()}
        for s, row in t.items()
    }
    bn = acc["BatchNorm (ours)"]
    others = [s for s in acc if s != "BatchNorm (ours)"]
    small, large = min(bn), max(bn)
    best_small = max(acc[s][small] for s in others)
    best_large = max(acc[s][large] for s in others)
    lines = [
        f"{s}: " + ", ".join(f"b{b} {a:.2f}%" for b, a in sorted(row.items()))
        for s, row in acc.items()
    ]
    hurt = bn[small] < best_small
    fine = bn[large] >= best_large - 0.5
    lines.append(
        f"rule: at batch {small} BN below the best batch-independent norm ({bn[small]:.2f}% vs "
        f"{best_small:.2f}%) -> {hurt}; at batch {large} BN within 0.5 points of it or above "
        f"({bn[large]:.2f}% vs {best_large:.2f}%) -> {fine}"
    )
    return hurt and fine, lines


def _bs_plot(g: dict[str, Runs], path: Path, exp: Experiment) -> Path:
    from .plots import plot_batch_size

    return plot_batch_size(_bs_table(g), path, title=exp.title)


# --------------------------------------------------------------------------- 7. train vs inference

INFERENCE_MODES = (
    ("running", "running\n(EMA)"),
    ("population", "population\n(recomputed)"),
    ("batch", "batch stats\n(train batch)"),
    ("batch32", "batch stats\nbatch 32"),
    ("batch8", "batch stats\nbatch 8"),
    ("batch2", "batch stats\nbatch 2"),
    ("batch1", "batch stats\nbatch 1"),
)


def _inference_groups(quick: bool) -> dict[str, list[Config]]:
    # The same configs as other experiments: their finished runs are reused, not retrained.
    bs = _bs_groups(quick)
    return {
        "LeNet, article protocol": _article_groups(quick)["with BN"],
        "MLP, Figure 1": _figure1_groups(quick)["with BN"],
        "LeNet, trained at batch 2": bs["BatchNorm (ours)|2"],
        "LeNet, trained at batch 8": bs["BatchNorm (ours)|8"],
    }


def _inference_verdict(g: dict[str, Runs]) -> tuple[bool | None, list[str]]:
    lines, pop_ok, single_ok, one_refused, small_worse = [], True, True, True, True
    for label, runs in g.items():
        f = [r["summary"]["final"] for r in runs]
        run_acc, pop_acc = (
            _stats([_acc(r) for r in runs])[0],
            _stats([_acc(r, "population") for r in runs])[0],
        )
        b2 = _stats([_acc(r, "batch2") for r in runs])[0]
        diffs = [x["single"]["max_abs_diff_vs_batched"] for x in f]
        diff = max(float("inf") if d is None else d for d in diffs)  # None: a NaN/inf output
        same = all(x["single"]["same_predictions"] for x in f)
        refused = all(x["batch1"]["error"] for x in f)
        one = (
            "refused (" + f[0]["batch1"]["error"].split(", but")[0] + ")"
            if refused
            else f"{_stats([_acc(r, 'batch1') for r in runs])[0]:.2f}%"
        )
        lines.append(
            f"{label}: running {run_acc:.2f}%, population {pop_acc:.2f}%, batch-2 statistics {b2:.2f}%, "
            f"batch of 1: {one}; single images vs batched: max |logit diff| {diff:.1e}, same "
            f"predictions {same}"
        )
        pop_ok &= pop_acc >= run_acc - 0.2
        single_ok &= same and diff < 1e-3
        one_refused &= refused
        small_worse &= b2 < max(run_acc, pop_acc)
    lines.append(
        f"rule: population >= running - 0.2 points everywhere -> {pop_ok}; eval mode gives every image "
        f"the same output alone as in a batch -> {single_ok}; batch statistics refused for a batch of 1 "
        f"-> {one_refused}; batch-2 statistics worse than fixed statistics -> {small_worse}"
    )
    return pop_ok and single_ok and one_refused and small_worse, lines


def _inference_plot(g: dict[str, Runs], path: Path, exp: Experiment) -> Path:
    from .plots import plot_inference

    return plot_inference(g, INFERENCE_MODES, path, title=exp.title)


# --------------------------------------------------------------------------- the list

EXPERIMENTS: list[Experiment] = [
    Experiment(
        "article001",
        "LeNet on MNIST with vs without BN (article 001)",
        "article 001 (LeNet, Keras)",
        "Batch normalization accelerates training: the BN network is ahead early; after 20 epochs both "
        "reach about 99% (article: 99.08% without, 98.75% with BN; BN takes 1.33x longer per run).",
        "training-batch and test accuracy per epoch, final test loss/accuracy, training time (3 seeds).",
        "held if the mean test accuracy after epoch 1 is higher with BN and both final means are >= 98.5% "
        "(with --quick, 2 epochs, only the first part is tested).",
        _article_groups,
        _article_verdict,
        _article_plot,
        {
            False: "article protocol: 50k training images, 20 epochs, batch 128, Adam 1e-3, random rotation "
            "(±10°), shear (±10°), zoom (±10%) and shift (±8%)",
            True: "reduced: 10k training images, 2 epochs",
        },
    ),
    Experiment(
        "figure1",
        "Sigmoid MLP 784-100-100-100-10, batch 60 (paper, Figure 1)",
        "the paper, section 4.1",
        "With BN the sigmoid network trains faster and reaches a higher test accuracy, and the input "
        "distribution of a sigmoid unit is much more stable over training.",
        "test accuracy every 1000 steps; 15th/50th/85th percentiles over the test set of unit 0 of the "
        "last hidden layer's input to its sigmoid.",
        "held if with BN the final mean accuracy is higher, the accuracy at a tenth of the steps is higher, "
        "and the std over training of the unit's median input is smaller.",
        _figure1_groups,
        _figure1_verdict,
        _figure1_plot,
        {
            False: "paper protocol: 50k steps of batch 60, plain SGD lr 0.1, weights N(0, 0.1²), 3 seeds",
            True: "reduced: 2000 steps, 1 seed",
        },
    ),
    Experiment(
        "lr_mlp",
        "Higher learning rates: sigmoid MLP at 1x, 5x, 30x the base rate",
        "the paper, section 3.3",
        "BN enables higher learning rates: with BN the network still trains well at 30x the base rate; "
        "without BN it does markedly worse there.",
        "final test accuracy after the same number of SGD steps at rates 0.1, 0.5 and 3.0.",
        "held if with BN the x30 accuracy is within 1 point of BN's best rate and more than 1 point above "
        "the network without BN at x30.",
        _lr_groups_mlp,
        _lr_verdict,
        _lr_plot,
        {False: "shortened: 10k steps (not 50k), 3 seeds", True: "reduced: 1000 steps, 1 seed"},
    ),
    Experiment(
        "lr_lenet",
        "Higher learning rates: LeNet with plain SGD at 1x, 5x, 30x",
        "the paper, section 3.3",
        "BN enables higher learning rates (LeNet, SGD rates 0.01, 0.05, 0.3).",
        "final test accuracy after 2 epochs at each rate.",
        "held if with BN the x30 accuracy is within 1 point of BN's best rate and more than 1 point above "
        "the network without BN at x30.",
        _lr_groups_lenet,
        _lr_verdict,
        _lr_plot,
        {
            False: "shortened: 2 epochs without augmentation, 3 seeds",
            True: "reduced: 10k training images, 1 epoch, 1 seed",
        },
    ),
    Experiment(
        "init",
        "Less care for initialization: large-std weights",
        "the paper, sections 3.3 and 4.1",
        "With BN the result hardly depends on the weight scale (BN(aWu) = BN(Wu)); without BN large "
        "initial weights saturate the sigmoids and training stalls.",
        "final test accuracy of the sigmoid MLP for PyTorch's default init and N(0, s²) with s = 0.1, 1, 3.",
        "held if BN's range of final accuracy across initializations is smaller than without BN's, and BN "
        "is more than 5 points ahead at the largest std.",
        _init_groups,
        _init_verdict,
        _init_plot,
        {
            False: "shortened: 5k steps, 3 seeds",
            True: "reduced: 1000 steps, 1 seed, 3 initializations",
        },
    ),
    Experiment(
        "dropout",
        "Regularization: dropout on/off, with vs without BN",
        "the paper, section 3.4; article 004",
        "BN regularizes the model, reducing the need for dropout: BN without dropout is at least as good "
        "as the plain network with dropout.",
        "final test accuracy and train-test gap of LeNet without augmentation on a 10k-image subset, "
        "dropout 0.5 after the hidden fully connected layers or none (3 seeds).",
        "held if BN without dropout >= no BN with dropout minus the larger seed std.",
        _dropout_groups,
        _dropout_verdict,
        _dropout_plot,
        {
            False: "10k training images, 15 epochs, no augmentation, 3 seeds",
            True: "reduced: 2000 training images, 5 epochs, 3 seeds",
        },
    ),
    Experiment(
        "batch_size",
        "Batch size: BN vs GroupNorm/LayerNorm, same number of samples",
        "articles 000 and 004",
        "BN needs batches: at very small batches it falls behind batch-independent normalizations, while at "
        "usual batch sizes it is as good or better.",
        "final test accuracy (BN evaluated with recomputed population statistics) of LeNet trained with "
        "Adam on the same number of samples at each batch size.",
        "held if BN is below the best of GroupNorm/LayerNorm at the smallest batch and within 0.5 points of "
        "it (or above) at the largest.",
        _bs_groups,
        _bs_verdict,
        _bs_plot,
        {
            False: "25,600 training samples per run (about half an epoch), batches 2..128, 3 seeds",
            True: "reduced: 2048 samples, batches 2, 8, 32, 128, 1 seed",
        },
    ),
    Experiment(
        "inference",
        "Train vs inference statistics; a batch of one",
        "the paper, Algorithm 2; articles 000-004",
        "At inference BN must use fixed statistics: then an image's output does not depend on its batch and "
        "a single image can be classified; recomputed population statistics are at least as good as the "
        "running averages; normalizing with the test batch's own statistics degrades as the batch shrinks "
        "and is impossible for a batch of one.",
        "test accuracy of trained BN networks (reused from the experiments above) with running, recomputed "
        "population and test-batch statistics; single-image vs batched outputs.",
        "held if population >= running - 0.2 points for every network, single-image outputs equal the "
        "batched ones (same predictions, max |diff| < 1e-3), batch statistics of a batch of 1 are refused "
        "and batch-2 statistics are worse than fixed statistics.",
        _inference_groups,
        _inference_verdict,
        _inference_plot,
        {
            False: "reuses the runs of article001, figure1 and batch_size",
            True: "reuses the --quick runs",
        },
    ),
]


def get_experiments(only: str | None = None) -> list[Experiment]:
    """All experiments, or those whose ids are listed (comma-separated) in ``only``."""
    if not only:
        return list(EXPERIMENTS)
    ids = [s.strip() for s in only.split(",") if s.strip()]
    known = {e.id: e for e in EXPERIMENTS}
    bad = [i for i in ids if i not in known]
    if bad:
        raise ValueError(f"unknown experiment(s) {', '.join(bad)}; choose from {', '.join(known)}")
    return [known[i] for i in ids]
