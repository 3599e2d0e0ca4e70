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

__all__ = [
    "plot_run",
    "plot_curves",
    "plot_figure1",
    "plot_bars",
    "plot_batch_size",
    "plot_inference",
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


def _band(ax, xs, ys, color, label, scale=1.0) -> None:
    ys = ys * scale
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns of diverged runs
        ok = ~np.all(np.isnan(ys), axis=0)
        mean = np.nanmean(ys[:, ok], axis=0)
        lo, hi = np.nanmin(ys[:, ok], axis=0), np.nanmax(ys[:, ok], axis=0)
    n = len(ys)
    ax.plot(
        xs[ok], mean, color=color, label=f"{label}" + (f" (mean of {n})" if n > 1 else ""), lw=1.6
    )
    if n > 1:
        ax.fill_between(xs[ok], lo, hi, color=color, alpha=0.2, lw=0)


def plot_run(path: str | Path, cfg, summary: dict[str, Any]) -> Path:
    """The run's own figure ``curves.png``: test/train accuracy and loss against steps."""
    path = Path(path)
    rows = [
        json.loads(line)
        for line in (path / "metrics.jsonl").read_text().splitlines()
        if line.strip()
    ]
    run = {"metrics": rows}
    watch = any("unit_percentiles" in r for r in rows)
    fig, axes = plt.subplots(1, 3 if watch else 2, figsize=(12 if watch else 9, 3.4))
    xs, acc = _series([run], "test_acc")
    _, tacc = _series([run], "train_eval_acc")
    axes[0].plot(xs, 100 * acc[0], label="test")
    axes[0].plot(xs, 100 * tacc[0], label="train (eval mode)", ls="--")
    axes[0].set(xlabel="step", ylabel="accuracy (%)", title="accuracy")
    axes[0].set_ylim(max(0, np.nanmin(100 * acc[0][1:]) - 5) if len(xs) > 1 else 0, 100)
    axes[0].legend()
    _, loss = _series([run], "test_loss")
    _, tloss = _series([run], "train_loss")
    axes[1].plot(xs, loss[0], label="test")
    axes[1].plot(xs, tloss[0], label="train (batches)", ls="--")
    axes[1].set(xlabel="step", ylabel="cross-entropy", title="loss", yscale="log")
    axes[1].legend()
    if watch:
        p = np.array([r.get("unit_percentiles", [np.nan] * 3) for r in rows])
        for j, q in enumerate((15, 50, 85)):
            axes[2].plot(xs, p[:, j], label=f"{q}th pct", color=COLORS[j])
        axes[2].set(xlabel="step", title=f"input to the activation, unit {cfg.watch_unit}")
        axes[2].legend()
    fig.suptitle(
        f"{cfg.label()}: norm {cfg.norm}, {cfg.activation}, {cfg.optimizer} lr {cfg.lr:g}, "
        f"batch {cfg.batch_size}, seed {cfg.seed}  ({path.name}; {summary['train_time_s']:.0f} s training)",
        fontsize=9,
    )
    return _save(fig, path / "curves.png")


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
    fig, axes = plt.subplots(1, len(keys), figsize=(5.2 * len(keys), 3.8), squeeze=False)
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
            ax.set_ylim(max(0.0, min(lows) - 3), 100.2)
        ax.set(xlabel=x, ylabel=ylabel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    return _save(fig, path)


def plot_figure1(groups: dict[str, list[dict]], path: Path, *, title: str) -> Path:
    """The paper's Figure 1: (a) test accuracy vs steps, (b, c) 15/50/85th percentiles of one
    last-hidden-layer unit's input to the sigmoid, without and with BN (first seed)."""
    fig, axes = plt.subplots(1, 1 + len(groups), figsize=(4.3 * (1 + len(groups)), 3.6))
    for i, (label, runs) in enumerate(groups.items()):
        xs, ys = _series(runs, "test_acc")
        _band(axes[0], xs, ys, COLORS[i], label, 100.0)
    axes[0].set(xlabel="training step", ylabel="test accuracy (%)", title="(a) test accuracy")
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)
        tails = [
            np.nanmin(np.nanmean(_series(r, "test_acc")[1], 0)[1:][len(r[0]["metrics"]) // 10 :])
            for r in groups.values()
        ]
    lo = min([t for t in tails if np.isfinite(t)] or [0.0]) * 100
    axes[0].set_ylim(max(0.0, min(90.0, lo - 2)), 100)
    axes[0].grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    span = []
    for i, (label, runs) in enumerate(groups.items()):
        ax = axes[1 + i]
        rows = runs[0]["metrics"]
        xs = np.array([r["step"] for r in rows if "unit_percentiles" in r])
        p = np.array([r["unit_percentiles"] for r in rows if "unit_percentiles" in r])
        for j, q in enumerate((15, 50, 85)):
            ax.plot(
                xs,
                p[:, j],
                color=COLORS[i],
                lw=(1.0, 1.8, 1.0)[j],
                ls=("--", "-", "--")[j],
                label=f"{q}th percentile",
            )
        span += [np.nanmin(p), np.nanmax(p)]
        ax.set(
            xlabel="training step", title=f"({'bc'[i] if i < 2 else i}) {label}: input to a sigmoid"
        )
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    if span:
        lo, hi = min(span), max(span)
        for ax in axes[1:]:
            ax.set_ylim(lo - 0.1 * (hi - lo), hi + 0.1 * (hi - lo))
    fig.suptitle(title, fontsize=10)
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
) -> Path:
    """Grouped bars: ``table[x_label][series_label] = runs``; bar = seed mean, whiskers = min..max,
    dots = seeds."""
    xs = list(table)
    series = list(dict.fromkeys(s for row in table.values() for s in row))
    width = 0.8 / max(1, len(series))
    fig, ax = plt.subplots(figsize=(max(5.5, 1.4 * len(xs) * len(series) * 0.6 + 2), 3.8))
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
            ax.text(
                pos, v.max(), f"{v.mean():.1f}", ha="center", va="bottom", fontsize=7
            )  # above the whisker
    ax.set_xticks(range(len(xs)), xs)
    ax.set(xlabel=xlabel, ylabel="final test accuracy (%)")
    if ylim:
        ax.set_ylim(*ylim)
    elif allv:
        ax.set_ylim(max(0, min(allv) - 5), 100)
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=8)
    ax.set_title(title, fontsize=10)
    return _save(fig, path)


def plot_batch_size(
    groups: dict[str, dict[int, list[dict]]], path: Path, *, title: str, mode: str = "population"
) -> Path:
    """Final test accuracy against batch size (log scale), one line per normalization."""
    fig, ax = plt.subplots(figsize=(6, 3.8))
    for i, (label, by_bs) in enumerate(groups.items()):
        bss = sorted(by_bs)
        v = [np.array([_final_acc(r, mode) for r in by_bs[b]]) for b in bss]
        mean = np.array([x.mean() for x in v])
        ax.plot(bss, mean, "o-", color=COLORS[i], label=label)
        if max(len(x) for x in v) > 1:
            ax.fill_between(
                bss, [x.min() for x in v], [x.max() for x in v], color=COLORS[i], alpha=0.2, lw=0
            )
    ax.set_xscale("log", base=2)
    ax.set(xlabel="batch size (same number of training samples)", ylabel="final test accuracy (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(title, fontsize=10)
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
                pos, np.nanmean(v), f"{np.nanmean(v):.1f}", ha="center", va="bottom", fontsize=7
            )
    ax.set_xticks(range(len(modes)), [m for _, m in modes], fontsize=8)
    ax.set(ylabel="test accuracy (%)")
    ax.set_ylim(0, 105)
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.set_title(title, fontsize=10)
    return _save(fig, path)
