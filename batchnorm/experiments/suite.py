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

__all__ = ["Experiment", "EXPERIMENTS", "get_experiments", "parse_ids"]

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
    in_main_job: bool = True  # False: only with --only (too long for the main job)


def _seeds(cfg: Config, seeds) -> list[Config]:
    return [cfg.replace(seed=s) for s in seeds]


def _acc(run: dict, mode: str = "running") -> float:
    v = run["summary"]["final"].get(mode, {}).get("test_acc")
    return float("nan") if v is None else 100.0 * v


def _n_test(g: dict[str, Runs]) -> int:
    """The number of test images of the final evaluations (10,000 for MNIST)."""
    return int(next(iter(g.values()))[0]["summary"].get("test_images", 10000))


def _n_seeds(g: dict[str, Runs]) -> str:
    """``n=3``, or ``n=1-3 per group`` where the groups hold different numbers of runs (a
    partial report), never the first group's count for all."""
    counts = sorted({len(runs) for runs in g.values()})
    return f"n={counts[0]}" if len(counts) == 1 else f"n={counts[0]}-{counts[-1]} per group"


def _stats(values) -> tuple[float, float, int]:
    v = np.asarray(values, float)
    return float(np.nanmean(v)), float(np.nanstd(v)), len(v)


def _fmt(values) -> str:
    m, s, n = _stats(values)
    return f"{m:.2f}%" + (f" ± {s:.2f} (n={n})" if n > 1 else "")


def _metric_near_step(run: dict, step: float) -> tuple[int, float]:
    """(step, test accuracy) of the evaluation nearest to ``step`` (after step 0)."""
    rows = [r for r in run["metrics"] if r["step"] > 0] or run["metrics"]
    row = min(rows, key=lambda r: abs(r["step"] - step))
    v = row.get("test_acc")
    return row["step"], float("nan") if v is None else v


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
    threads = {r["summary"].get("threads") for runs in g.values() for r in runs}
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
        (
            f"training time per run ({threads.pop()} thread(s) each; mean ± std over the seeds; runs "
            f"trained in parallel share the machine): without BN {np.mean(t['without BN']):.0f} ± "
            f"{np.std(t['without BN']):.0f} s, with BN {np.mean(t['with BN']):.0f} ± "
            f"{np.std(t['with BN']):.0f} s (x{np.mean(t['with BN']) / np.mean(t['without BN']):.2f}; "
            "article: 15:43 vs 20:57, x1.33)"
            if len(threads) == 1
            else f"training times not compared: the runs used different thread counts {sorted(threads)}"
        ),
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
    base = MLP_FIGURE1.replace(watch_layer=True)
    base = base.replace(steps=2000, eval_every=100) if quick else base
    seeds = range(1) if quick else range(3)
    return {
        "without BN": _seeds(base.replace(norm="none"), seeds),
        "with BN": _seeds(base.replace(norm="ours"), seeds),
    }


#: The drift of a percentile is measured after this share of the steps (the first 1% is the
#: initial transient, when every network's distributions move).
SETTLE = 0.01


def unit_drifts(run: dict) -> np.ndarray:
    """(units,) drift of each last-hidden unit's sigmoid input over training.

    A unit's drift is the std over the evaluations after the first 1% of the steps of each
    of its 15th, 50th and 85th percentiles (over the evaluated test images), averaged over
    the three percentiles. The step-0 evaluation is left out with the rest of the first 1%.
    """
    rows = [r for r in run["metrics"] if "layer_percentiles" in r]
    total = run["summary"]["planned_steps"]
    p = np.array([r["layer_percentiles"] for r in rows if r["step"] > SETTLE * total])
    # p: (evaluations, 3 percentiles, units)
    return p.std(axis=0).mean(axis=0)


def typical_unit(run: dict) -> int:
    """The unit whose drift is the median of its layer's: "a typical sigmoid" of Figure 1."""
    d = unit_drifts(run)
    return int(np.argsort(d)[len(d) // 2])


def _figure1_verdict(g: dict[str, Runs]) -> tuple[bool | None, list[str]]:
    fin = {k: [_acc(r) for r in runs] for k, runs in g.items()}
    steps = g["with BN"][0]["summary"]["planned_steps"]
    n_eval = g["with BN"][0]["config"].eval_samples or 10000
    tenth = {k: _metric_near_step(runs[0], steps / 10)[0] for k, runs in g.items()}
    early = {k: [100 * _metric_near_step(r, steps / 10)[1] for r in runs] for k, runs in g.items()}
    typical = {k: [float(unit_drifts(r)[typical_unit(r)]) for r in runs] for k, runs in g.items()}
    layer = {k: [float(unit_drifts(r).mean()) for r in runs] for k, runs in g.items()}
    higher = _stats(fin["with BN"])[0] > _stats(fin["without BN"])[0]
    faster = _stats(early["with BN"])[0] > _stats(early["without BN"])[0]
    stable_one = np.mean(typical["with BN"]) < np.mean(typical["without BN"])
    stable_all = np.mean(layer["with BN"]) < np.mean(layer["without BN"])
    lines = [
        f"test accuracy after {steps} steps ({_n_test(g):,} test images): without BN "
        f"{_fmt(fin['without BN'])}, with BN {_fmt(fin['with BN'])}",
        f"test accuracy after {tenth['with BN']} steps (a tenth; {n_eval:,} test images): without "
        f"BN {_fmt(early['without BN'])}, with BN {_fmt(early['with BN'])}",
        "stability of the sigmoid inputs of the last hidden layer (std over the evaluations after "
        "the first 1% of the steps of the 15th/50th/85th percentiles, averaged over the three; "
        "lower is steadier):",
        f"(1) a typical unit (the unit of median drift, as the paper's Figure 1 shows one): without "
        f"BN {np.mean(typical['without BN']):.3f}, with BN {np.mean(typical['with BN']):.3f} -> BN "
        f"steadier: {stable_one}",
        f"(2) the mean over all 100 units: without BN {np.mean(layer['without BN']):.3f}, with BN "
        f"{np.mean(layer['with BN']):.3f} -> BN steadier: {stable_all}",
        "both measures are in the input's own units: BN's inputs are gamma * x_hat + beta, the "
        "plain network's are W u; neither measure is rescaled",
        f"rule: BN higher at the end -> {higher}; BN ahead at a tenth of the steps -> {faster}; BN's "
        f"input distribution steadier by both measures -> {stable_one and stable_all}",
    ]
    return higher and faster and stable_one and stable_all, lines


def _figure1_plot(g: dict[str, Runs], path: Path, exp: Experiment) -> Path:
    from .plots import plot_figure1

    return plot_figure1(g, path, title=exp.title, typical=typical_unit)


# --------------------------------------------------------------------------- 3. learning rates


RATES = (1, 5, 30)  # LeNet
MLP_RATES = (1, 5, 30, 100, 300)  # the MLP: until the plain network fails
#: A network "still trains" at a rate if its mean final test accuracy is at least this (%).
TRAINS = 90.0


def _rate_groups(
    base: Config, seeds: range, rates: tuple[int, ...] = RATES, prefix: str = ""
) -> dict[str, list[Config]]:
    """``base`` without and with BN at each multiple of its learning rate in ``rates``."""
    out = {}
    for norm, lab in (("none", "without BN"), ("ours", "with BN")):
        for k in rates:
            out[f"{prefix}{lab}|x{k}"] = _seeds(base.replace(norm=norm, lr=base.lr * k), seeds)
    return out


def _lr_groups_mlp(quick: bool) -> dict[str, list[Config]]:
    base = MLP_FIGURE1.replace(
        lr=0.1, steps=1000 if quick else 10000, eval_every=100 if quick else 500, watch_unit=-1
    )
    seeds = range(1) if quick else range(3)
    rates = (1, 30, 300) if quick else MLP_RATES
    out = {}
    for act in ("sigmoid", "relu"):
        out.update(_rate_groups(base.replace(activation=act), seeds, rates, f"{act}, "))
    return out


def _lr_groups_lenet(quick: bool) -> dict[str, list[Config]]:
    # Only the final accuracy is read: one evaluation, at the end, with the running statistics.
    base = LENET_ARTICLE.replace(
        optimizer="sgd", lr=0.01, epochs=2, augment=False, eval_first=False, final_eval="running"
    )
    if quick:
        base = base.replace(train_samples=10000, epochs=1)
    n = base.train_samples or 50000
    base = base.replace(eval_every=base.epochs * (n // base.batch_size))
    return _rate_groups(base, range(1) if quick else range(3))


def _largest_training_rate(acc: dict[int, float]) -> int | None:
    """The largest rate multiple whose mean final accuracy is >= TRAINS (None: none does)."""
    ok = [k for k, a in acc.items() if a >= TRAINS]
    return max(ok) if ok else None


def _lr_mlp_verdict(g: dict[str, Runs]) -> tuple[bool | None, list[str]]:
    t = _grouped(g)  # x -> series -> runs
    rates = sorted(int(x[1:]) for x in t)
    series = list(dict.fromkeys(s for row in t.values() for s in row))
    base = g[f"{series[0]}|x{rates[0]}"][0]["config"].lr / rates[0]
    lines = [
        f"final test accuracy ({_n_test(g):,} test images; mean over seeds, {_n_seeds(g)}; a "
        f"diverged run counts with the accuracy of its last weights) at multiples of the base rate "
        f"{base:g}:"
    ]
    largest = {}
    for s in series:
        acc = {k: _stats([_acc(r) for r in t[f"x{k}"][s]])[0] for k in rates}
        div = {k: sum(r["summary"]["diverged"] for r in t[f"x{k}"][s]) for k in rates}
        largest[s] = _largest_training_rate(acc)
        lines.append(
            f"{s}: "
            + ", ".join(
                f"x{k} {acc[k]:.2f}%" + (f" ({div[k]} diverged)" if div[k] else "") for k in rates
            )
            + f"; largest rate that still trains (>= {TRAINS:.0f}%): "
            + (f"x{largest[s]}" if largest[s] else "none")
        )
    held = True
    parts = []
    for act in dict.fromkeys(s.split(", ")[0] for s in series):
        bn, no = largest.get(f"{act}, with BN"), largest.get(f"{act}, without BN")
        beats = (bn or 0) > (no or 0)
        held &= beats
        parts.append(
            f"{act}: with BN x{bn or 0} vs without x{no or 0} -> BN trains at a higher rate: {beats}"
        )
    top = max(rates)
    if any(largest[s] == top for s in series if "without" in s):
        parts.append(f"(a plain network still trains at x{top}, the largest rate tried)")
    lines.append("rule: " + "; ".join(parts))
    return held, lines


def _lr_verdict(g: dict[str, Runs]) -> tuple[bool | None, list[str]]:
    acc = {k: _stats([_acc(r) for r in runs])[0] for k, runs in g.items()}
    div = {k: sum(r["summary"]["diverged"] for r in runs) for k, runs in g.items()}
    lines = [
        f"final test accuracy ({_n_test(g):,} test images; mean over seeds, {_n_seeds(g)}; a diverged run counts "
        "with the accuracy of its last weights):"
    ]
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


def _base_rate(g: dict[str, Runs]) -> float:
    label, runs = next(iter(g.items()))
    return runs[0]["config"].lr / int(label.split("|x")[1])


def _lr_plot(g: dict[str, Runs], path: Path, exp: Experiment) -> Path:
    from .plots import plot_bars

    return plot_bars(
        _grouped(g),
        path,
        title=exp.title,
        xlabel=f"learning rate (multiple of the base rate {_base_rate(g):g})",
    )


def _lr_mlp_plot(g: dict[str, Runs], path: Path, exp: Experiment) -> Path:
    from .plots import plot_rates

    table: dict[str, dict[float, Runs]] = {}
    for label, runs in g.items():
        series, x = label.split("|x")
        table.setdefault(series, {})[float(x)] = runs
    return plot_rates(
        table,
        path,
        title=exp.title,
        xlabel=f"learning rate (multiple of the base rate {_base_rate(g):g})",
        threshold=TRAINS,
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
    n, epochs = (2000, 5) if quick else (10000, 15)
    # The rule reads the final accuracy and the last evaluation's train-test gap: one
    # evaluation at the end.
    base = LENET_ARTICLE.replace(
        augment=False,
        train_samples=n,
        epochs=epochs,
        eval_every=epochs * (n // LENET_ARTICLE.batch_size),
        eval_first=False,
        final_eval="running",
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
        augment=False,
        eval_stats="population",
        population_samples=2000 if quick else 10000,
        eval_first=False,  # the rule reads the final results only
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

    steps = {
        int(label.split("|")[1]): runs[0]["summary"]["planned_steps"] for label, runs in g.items()
    }
    few = {b: n for b, n in steps.items() if n < 50}  # too few steps to decide anything
    return plot_batch_size(_bs_table(g), path, title=exp.title, undertrained=few)


# --------------------------------------------------------------------------- 7. train vs inference

INFERENCE_MODES = (
    ("running", "running\n(EMA)\n10k images"),
    ("population", "population\n(recomputed)\n10k images"),
    ("batch", "batch stats\n(train batch)\n10k images"),
    ("batch32", "batch stats\nbatch 32\n1k images"),
    ("batch8", "batch stats\nbatch 8\n1k images"),
    ("batch2", "batch stats\nbatch 2\n1k images"),
    ("batch1", "batch stats\nbatch 1\n200 images"),
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
    lines = [
        f"running and population statistics on all {_n_test(g):,} test images, batch-2 statistics on the "
        "first 1,000, a batch of 1 and single images on the first 200:"
    ]
    failed: list[str] = []
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
            f"{label} (n={len(runs)}): running {run_acc:.2f}%, population {pop_acc:.2f}%, batch-2 "
            f"statistics {b2:.2f}%, batch of 1: {one}; single images vs batched: max |logit diff| "
            f"{diff:.1e}, same predictions {same}"
        )
        if not pop_acc >= run_acc - 0.2:
            failed.append(
                f"{label}: population {pop_acc:.2f}% < running {run_acc:.2f}% - 0.2 points"
            )
        if not (same and diff < 1e-3):
            failed.append(
                f"{label}: single-image outputs differ (max |diff| {diff:.1e}, same {same})"
            )
        if not refused:
            failed.append(f"{label}: batch statistics of a batch of 1 were not refused")
        if not b2 < max(run_acc, pop_acc):
            failed.append(
                f"{label}: batch-2 statistics {b2:.2f}% not below the fixed statistics' "
                f"{max(run_acc, pop_acc):.2f}%"
            )
    lines.append(
        "rule: population >= running - 0.2 points, single-image outputs equal the batched ones, a "
        "batch of 1 refused and batch-2 statistics below fixed statistics, for every network -> "
        + ("True" if not failed else "False; failed: " + "; ".join(failed))
    )
    return not failed, lines


def _inference_plot(g: dict[str, Runs], path: Path, exp: Experiment) -> Path:
    from .plots import plot_inference

    return plot_inference(g, INFERENCE_MODES, path, title=exp.title)


# --------------------------------------------------------------------------- 8. depth

DEPTHS = (2, 5, 10, 20)  # weight layers: depth d has d - 1 hidden layers of width 100
REACH = 0.90  # "steps to 90%": the first evaluation at or above 90% test accuracy


def _depth_groups(quick: bool) -> dict[str, list[Config]]:
    base = Config(
        name="deep MLP",
        model="mlp",
        optimizer="sgd",
        lr=0.1,
        batch_size=60,
        epochs=0,
        steps=500 if quick else 3000,
        init="default",
        eval_every=50 if quick else 100,
        eval_samples=2000,
        final_eval="running",
    )
    seeds = range(1) if quick else range(2)
    out = {}
    for act in ("sigmoid", "relu"):
        for norm, lab in (("none", "without BN"), ("ours", "with BN")):
            for d in DEPTHS:
                cfg = base.replace(activation=act, norm=norm, widths=(100,) * (d - 1))
                out[f"{act}, {lab}|{d}"] = _seeds(cfg, seeds)
    return out


def steps_to(run: dict, level: float = REACH) -> int | None:
    """The first evaluated step with test accuracy >= ``level`` (None: never reached)."""
    for r in run["metrics"]:
        if r["step"] > 0 and (r.get("test_acc") or 0.0) >= level:
            return int(r["step"])
    return None


def _depth_table(g: dict[str, Runs]) -> dict[str, dict[int, Runs]]:
    t: dict[str, dict[int, Runs]] = {}
    for label, runs in g.items():
        series, d = label.split("|")
        t.setdefault(series, {})[int(d)] = runs
    return t


def _depth_verdict(g: dict[str, Runs]) -> tuple[bool | None, list[str]]:
    t = _depth_table(g)
    first = next(iter(g.values()))[0]
    steps, n_eval = first["summary"]["planned_steps"], first["config"].eval_samples
    lines = [
        f"final test accuracy ({_n_test(g):,} test images) and steps to {100 * REACH:.0f}% (evaluated every "
        f"{first['config'].eval_every} steps on {n_eval:,} test images; '-' = not within {steps} "
        f"steps), mean over seeds, {_n_seeds(g)}:"
    ]
    acc = {
        s: {d: _stats([_acc(r) for r in runs])[0] for d, runs in row.items()}
        for s, row in t.items()
    }
    for s, row in t.items():
        cells = []
        for d, runs in sorted(row.items()):
            reach = [steps_to(r) for r in runs]
            hit = [x for x in reach if x is not None]
            when = (
                f"{np.mean(hit):.0f} steps"
                + (f" ({len(hit)} of {len(reach)} seeds)" if len(hit) < len(reach) else "")
                if hit
                else "-"
            )
            cells.append(f"depth {d}: {acc[s][d]:.2f}%, {when}")
        lines.append(f"{s}: " + "; ".join(cells))
    held, parts = True, []
    for act in dict.fromkeys(s.split(", ")[0] for s in t):
        bn, no = acc[f"{act}, with BN"], acc[f"{act}, without BN"]
        lo, hi = min(bn), max(bn)
        gap_lo, gap_hi = bn[lo] - no[lo], bn[hi] - no[hi]
        grows = gap_hi > gap_lo
        held &= grows
        parts.append(
            f"{act}: BN's lead {gap_lo:+.1f} points at depth {lo}, {gap_hi:+.1f} at depth {hi} -> "
            f"grows with depth: {grows}"
        )
    lines.append("rule: " + "; ".join(parts))
    return held, lines


def _depth_plot(g: dict[str, Runs], path: Path, exp: Experiment) -> Path:
    from .plots import plot_depth

    return plot_depth(_depth_table(g), path, title=exp.title, steps_to=steps_to, reach=REACH)


# --------------------------------------------------------------------------- the list

EXPERIMENTS: list[Experiment] = [
    Experiment(
        "article001",
        "LeNet on MNIST with vs without BN (article 001)",
        "article 001 (LeNet, Keras)",
        "Batch normalization accelerates training: the BN network is ahead early; after 20 epochs both "
        "reach about 99% (article: 99.08% without, 98.75% with BN; BN takes 1.33x longer per run).",
        "training-batch and test accuracy per epoch, final test loss/accuracy, training time.",
        "held if the mean test accuracy after epoch 1 is higher with BN and both final means are >= 98.5% "
        "(with --quick, 2 epochs, only the first part is tested).",
        _article_groups,
        _article_verdict,
        _article_plot,
        {
            False: "article protocol: 50k training images, 20 epochs, batch 128, Adam 1e-3, random rotation "
            "(±10°), shear (±10°), zoom (±10%) and shift (±8%)",
            True: "reduced: 10k training images, 2 epochs, 3 seeds; evaluated every epoch on 2000 test "
            "images (the last on all), BN statistics recomputed on 2000 training images",
        },
    ),
    Experiment(
        "figure1",
        "Sigmoid MLP 784-100-100-100-10, batch 60 (paper, Figure 1)",
        "the paper, section 4.1",
        "With BN the sigmoid network trains faster and reaches a higher test accuracy, and the input "
        "distribution of a sigmoid unit is much more stable over training.",
        "test accuracy during training; the 15th/50th/85th percentiles over the test images of the "
        "input to its sigmoid of every unit of the last hidden layer, at every evaluation.",
        "held if with BN the final mean accuracy is higher, the accuracy at a tenth of the steps is "
        "higher, and the input distribution is steadier by both measures: (1) a typical unit's drift "
        "and (2) the mean drift over all units, a drift being the std over the evaluations after the "
        "first 1% of the steps of a percentile, averaged over the three percentiles.",
        _figure1_groups,
        _figure1_verdict,
        _figure1_plot,
        {
            False: "paper protocol: 50k steps of batch 60, plain SGD lr 0.1, weights N(0, 0.1²), 3 seeds; "
            "evaluated every 1000 steps on all test images",
            True: "reduced: 2000 steps, 1 seed; evaluated every 100 steps on 2000 test images (the "
            "last on all)",
        },
    ),
    Experiment(
        "lr_mlp",
        "Higher learning rates: the MLP (sigmoid and ReLU) from 1x to 300x the base rate",
        "the paper, section 3.3",
        "BN enables higher learning rates: with BN a network still trains at rates where the plain "
        "network fails.",
        "final test accuracy of the MLP 784-100-100-100-10 (sigmoid, and ReLU) after the same number of "
        "plain SGD steps (batch 60, weights N(0, 0.1²)) at multiples of the base rate 0.1, without and "
        "with BN; the largest rate at which each still trains (mean final accuracy >= 90%; the rates "
        "are in the protocol).",
        "held if, for both activations, the largest rate at which the network with BN still trains is "
        "higher than the plain network's.",
        _lr_groups_mlp,
        _lr_mlp_verdict,
        _lr_mlp_plot,
        {
            False: "shortened: 10k steps (not 50k), rates x1, x5, x30, x100, x300, 3 seeds",
            True: "reduced: 1000 steps, rates x1, x30, x300, 1 seed",
        },
    ),
    Experiment(
        "lr_lenet",
        "Higher learning rates: LeNet with plain SGD at 1x, 5x, 30x",
        "the paper, section 3.3",
        "BN enables higher learning rates (LeNet, SGD rates 0.01, 0.05, 0.3).",
        "final test accuracy of article 001's LeNet, plain SGD at batch 128 without augmentation, "
        "after the same number of epochs at each rate (evaluated once, at the end).",
        "held if with BN the x30 accuracy is within 1 point of BN's best rate and more than 1 point above "
        "the network without BN at x30.",
        _lr_groups_lenet,
        _lr_verdict,
        _lr_plot,
        {
            False: "shortened: 2 epochs of 50k images without augmentation, 3 seeds",
            True: "reduced: 10k training images, 1 epoch, 1 seed",
        },
    ),
    Experiment(
        "init",
        "Less care for initialization: large-std weights",
        "the paper, sections 3.3 and 4.1",
        "With BN the result hardly depends on the weight scale (BN(aWu) = BN(Wu)); without BN large "
        "initial weights saturate the sigmoids and training stalls.",
        "final test accuracy of the sigmoid MLP (plain SGD 0.1, batch 60) for PyTorch's default init and "
        "normal weights N(0, s²) of growing std s (the ones run are in the protocol).",
        "held if BN's range of final accuracy across initializations is smaller than without BN's, and BN "
        "is more than 5 points ahead at the largest std.",
        _init_groups,
        _init_verdict,
        _init_plot,
        {
            False: "shortened: 5k steps, 3 seeds; PyTorch default, s = 0.1, 1, 3",
            True: "reduced: 1000 steps, 1 seed; PyTorch default, s = 1, 3",
        },
    ),
    Experiment(
        "dropout",
        "Regularization: dropout on/off, with vs without BN",
        "the paper, section 3.4; article 004",
        "BN regularizes the model, reducing the need for dropout: BN without dropout is at least as good "
        "as the plain network with dropout.",
        "final test accuracy and train-test gap (training accuracy in eval mode on up to 5,000 training "
        "images minus test accuracy, at the one evaluation, at the end) of LeNet without augmentation on "
        "a subset of the training images, dropout 0.5 after the hidden fully connected layers or none.",
        "held if BN without dropout >= no BN with dropout minus the larger seed std.",
        _dropout_groups,
        _dropout_verdict,
        _dropout_plot,
        {
            False: "shortened: 10k training images, 15 epochs, no augmentation, 3 seeds",
            True: "reduced: 2000 training images, 5 epochs, 3 seeds",
        },
    ),
    Experiment(
        "batch_size",
        "Batch size: BN vs GroupNorm/LayerNorm, same number of samples",
        "articles 000 and 004",
        "BN needs batches: at very small batches it falls behind batch-independent normalizations, while at "
        "usual batch sizes it is as good or better.",
        "final test accuracy (all test images; BN evaluated with population statistics recomputed on "
        "training images) of LeNet trained with Adam on the same number of samples at each batch size.",
        "held if BN is below the best of GroupNorm/LayerNorm at the smallest batch and within 0.5 points of "
        "it (or above) at the largest.",
        _bs_groups,
        _bs_verdict,
        _bs_plot,
        {
            False: "25,600 training samples per run (about half an epoch), batches 2..128, 3 seeds; BN "
            "statistics recomputed on 10,000 training images",
            True: "reduced: 2048 samples, batches 2, 8, 32, 128 (batch 128: only 16 steps, "
            "undertrained), 1 seed; BN statistics recomputed on 2000 training images",
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
        "population and test-batch statistics (all test images; test batches of 32, 8 and 2 on the first "
        "1,000, a batch of 1 on the first 200); single-image vs batched outputs (the first 200).",
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


EXPERIMENTS.append(
    Experiment(
        "depth",
        "Depth: plain MLPs of 2 to 20 layers with vs without BN",
        "none of the articles (they assert it; this measures it)",
        "BN's benefit grows with depth: a deep plain network trains slowly or not at all at a rate and "
        "initialization where the same network with BN trains.",
        "final test accuracy and steps to 90% test accuracy of MLPs with 1, 4, 9 and 19 hidden layers of "
        "100 units (depth 2, 5, 10, 20 weight layers), sigmoid and ReLU, without and with BN, all at "
        "plain SGD rate 0.1, batch 60, PyTorch's default initialization.",
        "held if, for both activations, BN's lead in final accuracy at the largest depth exceeds its "
        "lead at the smallest.",
        _depth_groups,
        _depth_verdict,
        _depth_plot,
        {
            False: "3000 steps of batch 60 (3.6 epochs), evaluated every 100 steps on 2000 test images "
            "(the last on all), 2 seeds",
            True: "reduced: 500 steps, evaluated every 50 steps, 1 seed",
        },
        in_main_job=False,
    )
)


def parse_ids(only: str | None) -> list[str]:
    """The experiment ids of a comma-separated ``--only`` value, in its order, blanks dropped."""
    return [s.strip() for s in (only or "").split(",") if s.strip()]


def get_experiments(only: str | None = None) -> list[Experiment]:
    """The main job's experiments, or those whose ids are listed (comma-separated) in ``only``
    (``all``: every experiment, also those kept out of the main job, such as ``depth``)."""
    if only == "all":
        return list(EXPERIMENTS)
    if not only:
        return [e for e in EXPERIMENTS if e.in_main_job]
    ids = parse_ids(only)
    known = {e.id: e for e in EXPERIMENTS}
    bad = [i for i in ids if i not in known]
    if bad:
        raise ValueError(f"unknown experiment(s) {', '.join(bad)}; choose from {', '.join(known)}")
    return [known[i] for i in ids]
