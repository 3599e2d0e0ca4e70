"""Figures, drawn from run files alone (matplotlib, Agg backend; imported lazily).

Groups of runs (one group = one variant, several seeds) are drawn as the seed mean with a
band from the lowest to the highest seed.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

__all__ = [
    "plot_run",
    "plot_curves",
    "plot_figure1",
    "plot_bars",
    "plot_batch_size",
    "plot_inference",
    "plot_rates",
    "plot_depth",
    "run_title",
]

COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f"]


def _save(fig, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _series(
    runs: Sequence[dict[str, Any]], key: str, x: str = "step"
) -> tuple[np.ndarray, np.ndarray]:
    """Common x values and a (seeds, points) array of ``key`` (NaN where missing)."""
    xs = sorted({row[x] for r in runs for row in r["metrics"]})
    ys = np.full((len(runs), len(xs)), np.nan)
    pos = {v: i for i, v in enumerate(xs)}
    for s, r in enumerate(runs):
        for row in r["metrics"]:
            v = row.get(key)
            if v is not None:
                ys[s, pos[row[x]]] = v
    return np.asarray(xs, float), ys


def _band(ax, xs, ys, color, label, scale=1.0, ls="-") -> None:
    ys = ys * scale
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns of diverged runs
        ok = ~np.all(np.isnan(ys), axis=0)
        mean = np.nanmean(ys[:, ok], axis=0)
        lo, hi = np.nanmin(ys[:, ok], axis=0), np.nanmax(ys[:, ok], axis=0)
    n = len(ys)
    ax.plot(
        xs[ok],
        mean,
        color=color,
        label=f"{label}" + (f" (mean of {n})" if n > 1 else ""),
        lw=1.6,
        ls=ls,
        marker="o" if ok.sum() <= 3 else None,  # a line of one or two points is invisible
        ms=4,
    )
    if n > 1:
        ax.fill_between(xs[ok], lo, hi, color=color, alpha=0.2, lw=0)


def _note_seeds(fig, n: int, what: str | None = "band") -> None:
    """The footnote every multi-run figure carries: n and what the band/whiskers are
    (``what=None``: the figure shows no spread)."""
    if n <= 1:
        spread = " (one run: no spread shown)"
    elif what is None:
        spread = " (no spread shown)"
    else:
        spread = f", {what} = min-max over the seeds"
    text = f"n = {'up to ' if n > 1 else ''}{n} seed{'s' if n > 1 else ''} per group; line/bar = mean{spread}"
    fig.text(0.005, 0.005, text, fontsize=7, color="#555", ha="left", va="bottom")


def _n_seeds(groups) -> int:
    return max((len(runs) for runs in groups), default=1)


def run_title(cfg, path: Path, summary: dict[str, Any]) -> str:
    """A title that tells configs apart: network, norm, data, optimization, seed."""
    net = (
        f"MLP {'-'.join(str(w) for w in cfg.widths)} {cfg.activation}"
        if cfg.model == "mlp"
        else f"{cfg.model} {cfg.activation}"
    )
    data = (
        f"{cfg.train_samples:,} training images" if cfg.train_samples > 0 else "all training images"
    )
    extras = [
        "augmentation" if cfg.augment else "no augmentation",
        f"dropout {cfg.dropout:g}" if cfg.dropout > 0 else "no dropout",
    ]
    if cfg.init == "normal":
        extras.append(f"init N(0, {cfg.init_std:g}²)")
    return (
        f"{net}, norm {cfg.norm}; {data}, {', '.join(extras)}; {cfg.optimizer} lr {cfg.lr:g}, "
        f"batch {cfg.batch_size}, {summary['steps']} steps, seed {cfg.seed}\n"
        f"{path.name}: {summary['train_time_s']:.0f} s training on {summary.get('threads', '?')} "
        "thread(s)" + (" - DIVERGED" if summary.get("diverged") else "")
    )


def _plot_finite(ax, xs, ys, **kw) -> bool:
    """Plot the finite points of ys (markers when there are few); False if there are none."""
    ok = np.isfinite(ys)
    if not ok.any():
        return False
    ax.plot(xs[ok], ys[ok], marker="o" if ok.sum() <= 3 else None, ms=4, **kw)
    return True


def plot_run(path: str | Path, cfg, summary: dict[str, Any]) -> Path:
    """The run's own figure ``curves.png``: test/train accuracy and loss against steps, and
    (when watched) the percentiles of a unit's input to its activation."""
    path = Path(path)
    rows = [
        json.loads(line)
        for line in (path / "metrics.jsonl").read_text().splitlines()
        if line.strip()
    ]
    run = {"metrics": rows}
    watch = any("unit_percentiles" in r for r in rows)
    fig, axes = plt.subplots(1, 3 if watch else 2, figsize=(12 if watch else 9, 3.9))
    n_eval = cfg.eval_samples or "all"
    xs, acc = _series([run], "test_acc")
    _, tacc = _series([run], "train_eval_acc")
    _, bacc = _series([run], "train_acc")
    _plot_finite(
        axes[0],
        xs,
        100 * acc[0],
        label=f"test ({n_eval} images" + (", the last on all)" if cfg.eval_samples else ")"),
    )
    _plot_finite(axes[0], xs, 100 * tacc[0], label="train (eval mode, <= 5000 images)", ls="--")
    _plot_finite(
        axes[0], xs, 100 * bacc[0], label="train (the batches since the last point)", ls=":"
    )
    axes[0].set(xlabel="step", ylabel="accuracy (%)", title="accuracy")
    finite = 100 * acc[0][np.isfinite(acc[0])]
    axes[0].set_ylim(
        max(0.0, float(finite[len(finite) // 4 :].min()) - 5) if len(finite) > 1 else 0, 100
    )
    axes[0].legend(fontsize=7)
    _, loss = _series([run], "test_loss")
    _, tloss = _series([run], "train_loss")
    drawn = _plot_finite(axes[1], xs, loss[0], label="test")
    drawn |= _plot_finite(axes[1], xs, tloss[0], label="train (batches)", ls="--")
    axes[1].set(xlabel="step", ylabel="cross-entropy", title="loss")
    if drawn:
        axes[1].set_yscale("log")
        axes[1].legend(fontsize=7)
    if watch:
        p = np.array([r.get("unit_percentiles", [np.nan] * 3) for r in rows])
        for j, q in enumerate((15, 50, 85)):
            axes[2].plot(
                xs,
                p[:, j],
                label=f"{q}th percentile",
                color=COLORS[0],
                ls=_PCT_STYLE[j],
                lw=_PCT_LW[j],
            )
        axes[2].set(
            xlabel="step",
            ylabel="input to the activation",
            title=f"unit {cfg.watch_unit} of the last hidden layer",
        )
        axes[2].legend(fontsize=7)
    fig.suptitle(run_title(cfg, path, summary), fontsize=8)
    return _save(fig, path / "curves.png")


# The 15th, 50th and 85th percentiles: three distinct line styles (and widths).
_PCT_STYLE = (":", "-", "--")
_PCT_LW = (1.2, 1.8, 1.2)


def plot_curves(
    groups: dict[str, list[dict]],
    path: Path,
    *,
    title: str,
    x: str = "epoch",
    keys: Sequence[tuple[str, str]] = (
        ("train_acc", "training accuracy (batches, %)"),
        ("test_acc", "test accuracy (%)"),
    ),
) -> Path:
    """One panel per metric key, one band per group, against ``x`` (epoch or step)."""
    fig, axes = plt.subplots(1, len(keys), figsize=(5.2 * len(keys), 4.0), squeeze=False)
    for ax, (key, ylabel) in zip(axes[0], keys):
        lows = []
        for i, (label, runs) in enumerate(groups.items()):
            xs, ys = _series(runs, key, x)
            scale = 100.0 if key.endswith("acc") else 1.0
            _band(ax, xs, ys, COLORS[i % len(COLORS)], label, scale)
            with warnings.catch_warnings(), np.errstate(all="ignore"):
                warnings.simplefilter("ignore", RuntimeWarning)
                tail = np.nanmean(ys, 0)[len(xs) // 4 :] * scale
            if np.isfinite(tail).any():
                lows.append(np.nanmin(tail))
        if key.endswith("acc") and lows:
            lo = max(0.0, min(lows) - 3)
            ax.set_ylim(lo, 100.2)
            if lo > 0:
                ylabel += f" (axis from {lo:.0f})"
        ax.set(xlabel=x, ylabel=ylabel)
        if x == "epoch":  # whole epochs only (a 2-epoch run would get ticks at 0.2, 0.4, ...)
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    # One x range for every panel: training accuracy has no epoch-0 point, and its panel
    # would otherwise start at 1 beside a test panel that starts at 0.
    lims = [ax.get_xlim() for ax in axes[0]]
    for ax in axes[0]:
        ax.set_xlim(min(a for a, _ in lims), max(b for _, b in lims))
    fig.suptitle(title, fontsize=10)
    _note_seeds(fig, _n_seeds(groups.values()))
    return _save(fig, path)


def plot_figure1(
    groups: dict[str, list[dict]], path: Path, *, title: str, typical: Any = None
) -> Path:
    """The paper's Figure 1: (a) test accuracy vs steps, (b, c) 15/50/85th percentiles of a
    typical last-hidden-layer unit's input to the sigmoid, without and with BN (first seed).

    ``typical(run) -> unit`` picks the unit shown (default: the watched unit). The step-0
    evaluation is left out of (b, c): before the first step a BN network's running
    statistics are still their initial 0 and 1, so its eval-mode input is not yet a
    distribution the network trains with.
    """
    fig, axes = plt.subplots(1, 1 + len(groups), figsize=(4.4 * (1 + len(groups)), 3.9))
    for i, (label, runs) in enumerate(groups.items()):
        xs, ys = _series(runs, "test_acc")
        _band(axes[0], xs, ys, COLORS[i], label, 100.0)
    n_eval = next(iter(groups.values()))[0]["config"].eval_samples or 10000
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)
        tails = [
            np.nanmin(np.nanmean(_series(r, "test_acc")[1], 0)[1:][len(r[0]["metrics"]) // 10 :])
            for r in groups.values()
        ]
    lo = min([t for t in tails if np.isfinite(t)] or [0.0]) * 100
    lo = max(0.0, min(90.0, lo - 2))
    axes[0].set_ylim(lo, 100)
    axes[0].set(
        xlabel="training step",
        ylabel=f"test accuracy (%, {n_eval:,} images" + (f"; axis from {lo:.0f})" if lo else ")"),
        title="(a) test accuracy",
    )
    axes[0].grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    span = []
    for i, (label, runs) in enumerate(groups.items()):
        ax = axes[1 + i]
        run = runs[0]
        rows = [r for r in run["metrics"] if "unit_percentiles" in r and r["step"] > 0]
        xs = np.array([r["step"] for r in rows])
        if typical is not None and all("layer_percentiles" in r for r in rows):
            unit = typical(run)
            p = np.array([[q[unit] for q in r["layer_percentiles"]] for r in rows])
        else:
            unit = run["config"].watch_unit
            p = np.array([r["unit_percentiles"] for r in rows])
        for j, q in enumerate((15, 50, 85)):
            ax.plot(
                xs,
                p[:, j],
                color=COLORS[i],
                lw=_PCT_LW[j],
                ls=_PCT_STYLE[j],
                label=f"{q}th percentile",
            )
        span += [np.nanmin(p), np.nanmax(p)]
        ax.set(
            xlabel="training step",
            ylabel="input to the sigmoid",
            title=f"({'bc'[i] if i < 2 else i}) {label}: unit {unit} (seed {run['config'].seed})",
        )
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    if span:
        lo, hi = min(span), max(span)
        for ax in axes[1:]:
            ax.set_ylim(lo - 0.1 * (hi - lo), hi + 0.1 * (hi - lo))
    fig.suptitle(
        title + "\n(b, c): percentiles over the test images of the unit of median drift, from the "
        "first step on (step 0 left out)",
        fontsize=9,
    )
    _note_seeds(fig, _n_seeds(groups.values()))
    return _save(fig, path)


def _final_acc(run: dict, mode: str = "running") -> float:
    v = run["summary"]["final"].get(mode, {}).get("test_acc")
    return np.nan if v is None else 100.0 * v


def plot_bars(
    table: dict[str, dict[str, list[dict]]],
    path: Path,
    *,
    title: str,
    xlabel: str,
    mode: str = "running",
    ylim: tuple[float, float] | None = None,
    ylabel: str = "final test accuracy (%, 10,000 images)",
) -> Path:
    """Grouped bars: ``table[x_label][series_label] = runs``; bar = seed mean, whiskers = min..max,
    dots = seeds. Bars start at 0 unless the label says where the axis starts."""
    xs = list(table)
    series = list(dict.fromkeys(s for row in table.values() for s in row))
    width = 0.8 / max(1, len(series))
    fig, ax = plt.subplots(figsize=(max(6.0, 1.4 * len(xs) * len(series) * 0.6 + 2), 4.0))
    allv = []
    for j, s in enumerate(series):
        for i, xl in enumerate(xs):
            runs = table[xl].get(s, [])
            if not runs:
                continue
            v = np.array([_final_acc(r, mode) for r in runs])
            v = np.where(np.isnan(v), 0.0, v)
            allv += list(v)
            pos = i + (j - (len(series) - 1) / 2) * width
            ax.bar(
                pos,
                v.mean(),
                width * 0.9,
                color=COLORS[j % len(COLORS)],
                label=s if i == 0 else None,
                alpha=0.85,
            )
            if len(v) > 1:
                ax.errorbar(
                    pos,
                    v.mean(),
                    yerr=[[v.mean() - v.min()], [v.max() - v.mean()]],
                    color="k",
                    capsize=3,
                    lw=1,
                )
                ax.plot([pos] * len(v), v, "k.", ms=3)
            # Vertical, a few points above the whisker's cap: labels of neighbouring bars never
            # overlap, and none sits on its own whisker.
            ax.annotate(
                f"{v.mean():.1f}",
                (pos, v.max()),
                xytext=(0, 4),
                textcoords="offset points",
                ha="center",
                va="bottom",
                fontsize=7,
                rotation=90,
            )
    ax.set_xticks(range(len(xs)), xs)
    if ylim:
        lo, hi = ylim
    else:
        lo, hi = (max(0.0, min(allv) - 5), 100.0) if allv else (0.0, 100.0)
    ax.set_ylim(lo, hi + (hi - lo) * 0.12)  # room for the value labels
    # Where the axis starts goes on a line of its own: on one line with the label it ran past
    # the top of a 4-inch figure (lr_lenet.png).
    ax.set(xlabel=xlabel, ylabel=ylabel + (f"\n(axis from {lo:.0f}, not 0)" if lo > 0 else ""))
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=8, loc="lower right")
    ax.set_title(title, fontsize=10)
    _note_seeds(fig, _n_seeds([r for row in table.values() for r in row.values()]), "whiskers")
    return _save(fig, path)


def _plain_log2_ticks(ax, values) -> None:
    ax.set_xscale("log", base=2)
    ax.set_xticks(list(values), [f"{v:g}" for v in values])
    ax.minorticks_off()


def plot_batch_size(
    groups: dict[str, dict[int, list[dict]]],
    path: Path,
    *,
    title: str,
    mode: str = "population",
    undertrained: dict[int, int] | None = None,
) -> Path:
    """Final test accuracy against batch size (log scale), one line per normalization.

    ``undertrained`` maps a batch size to its (small) number of steps: those points are
    marked as decided by too few steps."""
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    all_bs: set[int] = set()
    for i, (label, by_bs) in enumerate(groups.items()):
        bss = sorted(by_bs)
        all_bs |= set(bss)
        v = [np.array([_final_acc(r, mode) for r in by_bs[b]]) for b in bss]
        mean = np.array([x.mean() for x in v])
        ax.plot(bss, mean, "o-", color=COLORS[i], label=label)
        if max(len(x) for x in v) > 1:
            ax.fill_between(
                bss, [x.min() for x in v], [x.max() for x in v], color=COLORS[i], alpha=0.2, lw=0
            )
    _plain_log2_ticks(ax, sorted(all_bs))
    for b, steps in (undertrained or {}).items():
        ax.axvspan(b / 1.25, b * 1.25, color="#bbb", alpha=0.3, lw=0)
        ax.annotate(
            f"only {steps} steps:\nundertrained",
            (b, ax.get_ylim()[0]),
            fontsize=7,
            ha="center",
            va="bottom",
            color="#444",
        )
    ax.set(
        xlabel="batch size (same number of training samples)",
        ylabel="final test accuracy (%, 10,000 images)",
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(title, fontsize=10)
    _note_seeds(fig, _n_seeds([r for row in groups.values() for r in row.values()]))
    return _save(fig, path)


def plot_rates(
    table: dict[str, dict[float, list[dict]]],
    path: Path,
    *,
    title: str,
    xlabel: str,
    threshold: float,
) -> Path:
    """Final test accuracy against the learning rate (log scale), one line per series, the
    "still trains" threshold as a dashed line."""
    fig, ax = plt.subplots(figsize=(7.0, 4.2))
    rates: set[float] = set()
    for i, (label, by_rate) in enumerate(table.items()):
        ks = sorted(by_rate)
        rates |= set(ks)
        v = [np.array([_final_acc(r) for r in by_rate[k]]) for k in ks]
        mean = np.array([np.nanmean(x) for x in v])
        ls = "-" if "with BN" in label else "--"
        ax.plot(ks, mean, marker="o", color=COLORS[(i // 2) * 2 + (i % 2)], ls=ls, label=label)
        if max(len(x) for x in v) > 1:
            ax.fill_between(
                ks,
                [np.nanmin(x) for x in v],
                [np.nanmax(x) for x in v],
                color=COLORS[(i // 2) * 2 + (i % 2)],
                alpha=0.15,
                lw=0,
            )
    ax.axhline(threshold, color="k", lw=0.8, ls=":")
    ax.text(min(rates), threshold - 1.5, f"trains: >= {threshold:.0f}%", fontsize=7, va="top")
    ax.set_xscale("log")
    ax.set_xticks(sorted(rates), [f"x{k:g}" for k in sorted(rates)])
    ax.minorticks_off()
    ax.set_ylim(0, 101)
    ax.set(xlabel=xlabel, ylabel="final test accuracy (%, 10,000 images)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    ax.set_title(title, fontsize=10)
    _note_seeds(fig, _n_seeds([r for row in table.values() for r in row.values()]))
    return _save(fig, path)


def plot_depth(
    table: dict[str, dict[int, list[dict]]],
    path: Path,
    *,
    title: str,
    steps_to: Any,
    reach: float,
) -> Path:
    """(a) final test accuracy and (b) steps to ``reach`` test accuracy against depth."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    depths: set[int] = set()
    cap = 0
    for i, (label, by_d) in enumerate(table.items()):
        ds = sorted(by_d)
        depths |= set(ds)
        color = COLORS[(i // 2) * 2 + (i % 2)]
        ls = "-" if "with BN" in label else "--"
        acc = [np.array([_final_acc(r) for r in by_d[d]]) for d in ds]
        axes[0].errorbar(
            ds,
            [a.mean() for a in acc],
            yerr=[[a.mean() - a.min() for a in acc], [a.max() - a.mean() for a in acc]],
            marker="o",
            color=color,
            ls=ls,
            capsize=3,
            label=label,
        )
        cap = max(cap, max(r["summary"]["planned_steps"] for d in ds for r in by_d[d]))
        reached = [[steps_to(r) for r in by_d[d]] for d in ds]
        mean = [
            np.mean([x for x in rs if x is not None]) if any(x is not None for x in rs) else np.nan
            for rs in reached
        ]
        axes[1].plot(ds, mean, marker="o", color=color, ls=ls, label=label)
        for d, rs in zip(ds, reached):
            if all(x is None for x in rs):
                axes[1].plot([d], [cap * 1.05], marker="x", color=color, ms=7)
    for ax in axes:
        ax.set_xticks(sorted(depths), [str(d) for d in sorted(depths)])
        ax.set_xlabel("depth (weight layers; hidden width 100)")
        ax.grid(alpha=0.3)
    axes[0].set(
        ylabel="final test accuracy (%, 10,000 images)", title="(a) final accuracy", ylim=(0, 101)
    )
    axes[1].set(
        ylabel=f"steps to {100 * reach:.0f}% test accuracy",
        title=f"(b) steps to {100 * reach:.0f}% (x: not reached in {cap} steps)",
        ylim=(0, cap * 1.12),
    )
    axes[0].legend(fontsize=7, loc="best")
    fig.suptitle(title, fontsize=10)
    _note_seeds(fig, _n_seeds([r for row in table.values() for r in row.values()]), "whiskers")
    return _save(fig, path)


def plot_inference(
    groups: dict[str, list[dict]], modes: Sequence[tuple[str, str]], path: Path, *, title: str
) -> Path:
    """Bars: test accuracy of each trained network under each evaluation statistic."""
    table: dict[str, dict[str, np.ndarray]] = {lab: {} for _, lab in modes}
    fig, ax = plt.subplots(figsize=(11, 3.8))
    width = 0.8 / max(1, len(groups))
    for j, (label, runs) in enumerate(groups.items()):
        for i, (mode, mlabel) in enumerate(modes):
            v = np.array([_final_acc(r, mode) for r in runs])
            table[mlabel][label] = v
            if np.all(np.isnan(v)):
                ax.text(
                    i + (j - (len(groups) - 1) / 2) * width,
                    2,
                    "refused",
                    rotation=90,
                    ha="center",
                    fontsize=7,
                )
                continue
            pos = i + (j - (len(groups) - 1) / 2) * width
            ax.bar(
                pos,
                np.nanmean(v),
                width * 0.9,
                color=COLORS[j],
                label=label if i == 0 else None,
                alpha=0.85,
            )
            ax.text(
                pos,
                np.nanmean(v),
                f" {np.nanmean(v):.1f}",
                ha="center",
                va="bottom",
                fontsize=7,
                rotation=90,
            )
    ax.set_xticks(range(len(modes)), [m for _, m in modes], fontsize=8)
    ax.set(ylabel="test accuracy (%; images per column in its label)")
    ax.set_ylim(0, 112)
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.set_title(title, fontsize=10)
    _note_seeds(fig, _n_seeds(groups.values()), None)
    return _save(fig, path)
