"""Train one config into its run folder: ``config.json``, ``metrics.jsonl``, ``summary.json``, figures.

A run folder is ``<root>/runs/<model>-<norm>-<hash>`` (:meth:`Config.run_name`). A folder
whose ``summary.json`` exists is finished and is reused as it is; anything else in the
folder is an interrupted run and is recomputed from scratch. ``summary.json`` is written
last, atomically.

The loop keeps the whole dataset as tensors in memory and draws batches by indexing
(no per-sample Python); augmentation is batched (:mod:`.augment`). Training time counts
the optimization steps only; evaluations are timed separately.

Evaluation statistics (``eval_stats``) for networks with batch norm:

- ``running``: ``model.eval()``, the running (EMA) statistics;
- ``population``: a copy whose BN statistics are recomputed over ``population_samples``
  training images (:func:`batchnorm.population.recompute_statistics`, Algorithm 2 with the
  exact pooled estimator, ``mode="eval"``: every layer gets the statistics of what it sees
  at inference);
- ``batch``: a copy that normalizes every test batch of ``batch_size`` by its own statistics.

At the end every BN network is also evaluated in all three ways, with batch statistics of
test batches of 2, 8 and 32 (first 1000 test images), and one image at a time in eval mode (which must give the
batched predictions: inference BN is a fixed affine map per channel); ``final_eval="running"``
keeps only the running-statistics evaluation (for experiments whose rule reads nothing else).

Progress is counted in work units, about one millisecond of one core each (:func:`planned_work`,
a cost model measured on a 2-core VM): training steps and evaluations both count, so the bar
moves while a run evaluates and reaches its total when the run ends.
"""

from __future__ import annotations

import copy
import json
import math
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, Protocol, cast

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from ..tools.population import recompute_statistics
from .augment import random_affine
from .config import Config
from .data import Dataset, load_dataset
from .models import ACTIVATIONS, build_model

__all__ = [
    "train_run",
    "run_dir",
    "is_finished",
    "read_run",
    "get_dataset",
    "evaluate",
    "planned_steps",
    "planned_work",
]

SMALL_EVAL_BATCHES = (2, 8, 32)
SMALL_BATCH_SAMPLES = 1000
SINGLE_IMAGE_SAMPLES = 200

_DATA_CACHE: dict[tuple[str, str], Dataset] = {}


class WorkCounter(Protocol):
    """What a run reports its progress to: :class:`~batchnorm.tools.progress.Progress`, or a
    worker's proxy that forwards to the parent's bar."""

    def add(self, work: float) -> None: ...


def get_dataset(cfg: Config, refresh: bool = False) -> Dataset:
    """The config's dataset, loaded once per process (``refresh``: rebuild the data cache)."""
    key = (cfg.dataset, cfg.data_dir)
    if key not in _DATA_CACHE or refresh:
        _DATA_CACHE[key] = load_dataset(cfg.dataset, cfg.data_dir or None, refresh=refresh)
    return _DATA_CACHE[key]


def run_dir(cfg: Config, root: str | Path) -> Path:
    return Path(root) / "runs" / cfg.run_name()


def is_finished(path: str | Path) -> bool:
    return (Path(path) / "summary.json").is_file()


def read_run(path: str | Path) -> dict[str, Any]:
    """``{"config": Config, "metrics": [dict, ...], "summary": dict, "path": Path}`` of a run folder."""
    path = Path(path)
    cfg = Config.from_dict(json.loads((path / "config.json").read_text()))
    metrics = [
        json.loads(line)
        for line in (path / "metrics.jsonl").read_text().splitlines()
        if line.strip()
    ]
    summary = json.loads((path / "summary.json").read_text())
    return {"config": cfg, "metrics": metrics, "summary": summary, "path": path}


# --------------------------------------------------------------------------- cost model

# Milliseconds on one core (a 2-core VM, torch 2.13 CPU, measured 2026-12-02, load 1.5-3): a
# step of the sigmoid MLP 784-100-100-100-10 at batch 60 took 0.8-1.2 ms without BN and
# 1.7-2.0 ms with ours, the 20-layer ReLU MLP with BN 7.9 ms; article 001's LeNet at batch 128
# 11.5 ms without BN and 16.2 ms with it (13.1-13.7 and 19.4 ms with augmentation), at batch 2
# with BN 2.5 ms; a LeNet forward pass 0.05 ms per image (0.5 s for the 10k test images),
# recomputing its BN statistics 0.17 ms per image. Only the progress bar's ETA depends on them.


def _is_bn(cfg: Config) -> bool:
    return cfg.norm in ("ours", "torch")


def step_work(cfg: Config) -> float:
    """Estimated cost of one training step, in work units (about 1 ms of one core)."""
    if cfg.model == "mlp":
        return 0.2 + len(cfg.widths) * (0.25 + (0.3 if cfg.norm != "none" else 0.0))
    b = cfg.batch_size
    aug = 0.02 * b if cfg.augment else 0.0
    return 1.0 + 0.08 * b + aug + ((0.8 + 0.045 * b) if cfg.norm != "none" else 0.0)


def _forward_work(cfg: Config, images: int, batch: int) -> float:
    per_image, per_call = (0.004, 0.1) if cfg.model == "mlp" else (0.05, 0.7)
    return images * per_image + per_call * math.ceil(images / max(1, batch))


def _population_work(cfg: Config, n_train: int) -> float:
    n = n_train if cfg.population_samples <= 0 else min(cfg.population_samples, n_train)
    return n * (0.012 if cfg.model == "mlp" else 0.17)


def _schedule(cfg: Config, n_train: int) -> tuple[int, int, int]:
    """(steps per epoch, planned steps, steps between evaluations) of ``cfg``."""
    n = min(n_train, cfg.train_samples) if cfg.train_samples > 0 else n_train
    steps_per_epoch = n // cfg.batch_size
    total = cfg.steps if cfg.steps > 0 else cfg.epochs * steps_per_epoch
    every = cfg.eval_every or (steps_per_epoch if cfg.steps <= 0 else max(1, total // 50))
    return steps_per_epoch, total, every


def planned_steps(cfg: Config, n_train: int) -> int:
    """The training steps ``cfg`` plans on a training set of ``n_train`` images."""
    return _schedule(cfg, n_train)[1]


def _eval_checkpoints(cfg: Config, total: int, every: int) -> list[int]:
    """The steps after which the loop evaluates (a diverged run stops earlier)."""
    steps = list(range(every, total + 1, every))
    if total and (not steps or steps[-1] != total):
        steps.append(total)
    return ([0] if cfg.eval_first else []) + steps


def _log_work(cfg: Config, n_train: int, n_test: int) -> float:
    """One evaluation during training (test subset + up to 5000 training images)."""
    n_eval = n_test if cfg.eval_samples <= 0 else min(cfg.eval_samples, n_test)
    bs = cfg.batch_size if cfg.eval_stats == "batch" else cfg.eval_batch_size
    n_tr = min(n_eval, n_train if cfg.train_samples <= 0 else min(cfg.train_samples, n_train), 5000)
    w = _forward_work(cfg, n_eval + n_tr, bs)
    if cfg.eval_stats == "population" and _is_bn(cfg):
        w += _population_work(cfg, n_train)
    return w


def _final_work(cfg: Config, n_train: int, n_test: int) -> float:
    w = _forward_work(cfg, n_test, cfg.eval_batch_size)
    if not _is_bn(cfg) or cfg.final_eval == "running":
        return w
    w += _population_work(cfg, n_train) + _forward_work(cfg, n_test, cfg.eval_batch_size)
    w += _forward_work(cfg, n_test, cfg.batch_size)
    w += sum(_forward_work(cfg, SMALL_BATCH_SAMPLES, b) for b in SMALL_EVAL_BATCHES)
    return w + 2 * _forward_work(cfg, SINGLE_IMAGE_SAMPLES, 1)


def planned_work(cfg: Config, n_train: int, n_test: int) -> float:
    """Estimated cost of the whole run (steps, evaluations, final evaluation), in work units."""
    _, total, every = _schedule(cfg, n_train)
    n_logs = len(_eval_checkpoints(cfg, total, every))
    return (
        total * step_work(cfg)
        + n_logs * _log_work(cfg, n_train, n_test)
        + _final_work(cfg, n_train, n_test)
    )


# --------------------------------------------------------------------------- helpers


def _finite(v: float) -> float | None:
    """JSON has no NaN: a diverged value is written as null."""
    return v if isinstance(v, (int, float)) and math.isfinite(v) else None


def _write_json_atomic(path: Path, obj: Any) -> None:
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(obj, f, indent=1, allow_nan=False)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def has_batch_norm(model: nn.Module) -> bool:
    return any(isinstance(m, _BatchNorm) for m in model.modules())


class PlainSGD:
    """Plain SGD, ``p -= lr * (grad + weight_decay * p)``, as ``torch.optim.SGD`` without
    momentum computes it, bit for bit (tested), in one foreach call per step.

    ``torch.optim.SGD.step`` spends about 100 us in Python per call whatever the tensors'
    size: a seventh of a whole training step of the paper's Figure-1 MLP on one core, and the
    main job takes about a million such steps. This update takes about 40 us.
    """

    def __init__(self, params: Iterable[nn.Parameter], lr: float, weight_decay: float = 0.0):
        self.params = [p for p in params if p.requires_grad]
        self.lr, self.weight_decay = lr, weight_decay

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in self.params:
            if set_to_none or p.grad is None:
                p.grad = None
            else:
                p.grad.zero_()

    @torch.no_grad()
    def step(self) -> None:
        params: list[Tensor] = [p for p in self.params if p.grad is not None]
        grads: list[Tensor] = [cast(Tensor, p.grad) for p in params]
        if self.weight_decay != 0:
            grads = list(torch._foreach_add(grads, params, alpha=self.weight_decay))
        torch._foreach_add_(params, grads, alpha=-self.lr)


def _optimizer(cfg: Config, params: Iterable[nn.Parameter]) -> torch.optim.Optimizer | PlainSGD:
    """The run's optimizer. Plain SGD is :class:`PlainSGD`; Adam runs torch's foreach
    implementation (the same bits as its per-tensor loop, tested, with less Python a step)."""
    if cfg.optimizer == "sgd":
        return PlainSGD(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "momentum":
        return torch.optim.SGD(
            params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay
        )
    return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay, foreach=True)


def _batches(x: Tensor, batch_size: int) -> Iterator[Tensor]:
    for i in range(0, len(x), batch_size):
        yield x[i : i + batch_size]


@torch.no_grad()
def evaluate(model: nn.Module, x: Tensor, y: Tensor, batch_size: int) -> tuple[float, float]:
    """Mean cross-entropy and accuracy of ``model`` (in whatever mode it is) over (x, y)."""
    loss_sum, correct = 0.0, 0
    for i in range(0, len(x), batch_size):
        logits = model(x[i : i + batch_size])  # (B, classes)
        loss_sum += nn.functional.cross_entropy(
            logits, y[i : i + batch_size], reduction="sum"
        ).item()
        correct += (logits.argmax(1) == y[i : i + batch_size]).sum().item()
    return loss_sum / len(x), correct / len(x)


def population_copy(
    model: nn.Module, train_x: Tensor, cfg: Config, g: torch.Generator
) -> nn.Module:
    """A copy of ``model`` in eval mode with BN statistics recomputed on training images."""
    m = copy.deepcopy(model)
    n = len(train_x) if cfg.population_samples <= 0 else min(cfg.population_samples, len(train_x))
    idx = torch.randperm(len(train_x), generator=g)[:n]
    # Training-size batches of the training data, unaugmented (Algorithm 2, step 9).
    xs = train_x[idx]
    # mode="eval": each layer gets the exact (pooled) statistics of the inputs it sees at
    # inference, whatever the batching, so large batches are used for speed.
    batches = [b for b in _batches(xs, max(cfg.batch_size, cfg.eval_batch_size)) if len(b) > 1]
    recompute_statistics(m, batches, mode="eval", estimator="pooled")
    return m.eval()


def batch_stats_copy(model: nn.Module) -> nn.Module:
    """A copy in eval mode (dropout off) whose BN layers normalize by each batch's statistics."""
    m = copy.deepcopy(model).eval()
    for bn in m.modules():
        if isinstance(bn, _BatchNorm):
            # No running statistics -> batch statistics in eval too (torch.nn's rule).
            bn.track_running_stats = False
            bn.running_mean = None
            bn.running_var = None
    return m


def _eval_model(
    model: nn.Module, mode: str, train_x: Tensor, cfg: Config, g: torch.Generator
) -> nn.Module:
    if mode == "running" or not has_batch_norm(model):
        return model.eval()
    if mode == "population":
        return population_copy(model, train_x, cfg, g)
    return batch_stats_copy(model)


class _Watch:
    """Records the input of the last hidden activation (forward hook): one unit, or all."""

    def __init__(self, model: nn.Module, unit: int, layer: bool = False) -> None:
        acts = [m for m in model.modules() if isinstance(m, tuple(ACTIVATIONS.values()))]
        self.values: list[Tensor] = []
        self.unit, self.layer = unit, layer
        self.handle = acts[-1].register_forward_hook(self._hook)

    def _hook(self, module, inputs, output) -> None:
        x = inputs[0].detach()  # (B, units)
        self.values.append(x.clone() if self.layer else x[:, self.unit].clone())

    def percentiles(self) -> list[float]:
        """The 15th, 50th and 85th percentiles of the watched unit over everything seen."""
        v = torch.cat(self.values).double()
        v = v[:, self.unit] if self.layer else v
        return [float(torch.quantile(v, q)) for q in (0.15, 0.50, 0.85)]

    def layer_percentiles(self) -> list[list[float]]:
        """[15th, 50th, 85th][unit]: the same percentiles for every unit of the layer."""
        v = torch.cat(self.values).double()  # (N, units)
        q = torch.quantile(v, torch.tensor([0.15, 0.50, 0.85], dtype=torch.float64), dim=0)
        return [[round(float(a), 6) for a in row] for row in q]  # (3, units)

    def close(self) -> None:
        self.handle.remove()


# --------------------------------------------------------------------------- final evaluation


def final_evaluation(
    model: nn.Module,
    data: Dataset,
    train_x: Tensor,
    cfg: Config,
    running: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Test loss/accuracy under every evaluation statistic, small test batches, single images.

    ``running``: the running-statistics result on all test images, when the last evaluation
    during training computed it already (the same weights, batches and mode: the same numbers).
    """
    g = torch.Generator().manual_seed(cfg.seed + 12345)
    tx, ty = data.test_x, data.test_y
    out: dict[str, Any] = {}
    bn = has_batch_norm(model)
    modes = ("running", "population", "batch") if bn and cfg.final_eval == "all" else ("running",)
    for mode in modes:
        if mode == "running" and running is not None:
            out[mode] = dict(running)
            continue
        m = _eval_model(model, mode, train_x, cfg, g)
        bs = cfg.batch_size if mode == "batch" else cfg.eval_batch_size
        loss, acc = evaluate(m, tx, ty, bs)
        out[mode] = {"test_loss": _finite(loss), "test_acc": acc}
    if not bn:
        out["population"] = out["batch"] = out["running"]
        return out  # no batch dependence: the small-batch and single-image checks are moot
    if cfg.final_eval == "running":
        return out  # the experiment reads nothing else
    # Batch statistics of small test batches (the first SMALL_BATCH_SAMPLES test images).
    bm = batch_stats_copy(model)
    sx, sy = tx[:SMALL_BATCH_SAMPLES], ty[:SMALL_BATCH_SAMPLES]
    for b in SMALL_EVAL_BATCHES:
        loss, acc = evaluate(bm, sx, sy, b)
        out[f"batch{b}"] = {"test_loss": _finite(loss), "test_acc": acc}
    try:
        loss, acc = evaluate(bm, tx[:SINGLE_IMAGE_SAMPLES], ty[:SINGLE_IMAGE_SAMPLES], 1)
        out["batch1"] = {"test_loss": _finite(loss), "test_acc": acc, "error": None}
    except ValueError as e:  # BN refuses a batch of one in training normalization
        out["batch1"] = {"test_loss": None, "test_acc": None, "error": str(e).split(";")[0]}
    # One image at a time with the running statistics equals the batched evaluation.
    model.eval()
    with torch.no_grad():
        xs = tx[:SINGLE_IMAGE_SAMPLES]
        batched = model(xs)
        single = torch.cat([model(xs[i : i + 1]) for i in range(len(xs))])
    out["single"] = {
        "test_acc": (single.argmax(1) == ty[:SINGLE_IMAGE_SAMPLES]).float().mean().item(),
        "max_abs_diff_vs_batched": _finite((single - batched).abs().max().item()),
        "same_predictions": bool((single.argmax(1) == batched.argmax(1)).all()),
    }
    return out


# --------------------------------------------------------------------------- training


def train_run(
    cfg: Config,
    root: str | Path,
    *,
    data: Dataset | None = None,
    progress: WorkCounter | None = None,
    force: bool = False,
    figures: bool = True,
) -> dict[str, Any]:
    """Train ``cfg`` into ``run_dir(cfg, root)`` unless that run is finished; return its files.

    Args:
        cfg: the run's config.
        root: output root; the run goes to ``root/runs/<run_name>``.
        data: the dataset (default: :func:`get_dataset`), e.g. a tiny one in tests.
        progress: a shared progress bar (or a worker's proxy), advanced by the work done
            (:func:`planned_work` in all).
        force: recompute even if a finished run exists.
        figures: draw the run's own figure (needs matplotlib; skipped without it).

    Returns:
        :func:`read_run` of the folder, plus ``"reused": bool``.
    """
    path = run_dir(cfg, root)
    if is_finished(path) and not force:
        run = read_run(path)
        run["reused"] = True
        if progress is not None:
            d = get_dataset(cfg) if data is None else data
            progress.add(planned_work(cfg, len(d.train_x), len(d.test_x)))
        return run
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps(cfg.to_dict(), indent=1) + "\n")
    wall0 = time.perf_counter()

    threads_before = torch.get_num_threads()
    torch.set_num_threads(cfg.threads if cfg.threads > 0 else (os.cpu_count() or 1))
    try:
        return _train(cfg, path, data, progress, figures, wall0)
    finally:
        torch.set_num_threads(threads_before)  # the caller's setting, as it was


def _train(
    cfg: Config,
    path: Path,
    data: Dataset | None,
    progress: WorkCounter | None,
    figures: bool,
    wall0: float,
) -> dict[str, Any]:
    """The body of :func:`train_run`: train, evaluate, write the files."""
    torch.manual_seed(cfg.seed)
    g = torch.Generator().manual_seed(cfg.seed)  # shuffling and augmentation
    g_eval = torch.Generator().manual_seed(cfg.seed + 1)  # population subsets: never perturbs g
    data = get_dataset(cfg) if data is None else data
    dev = torch.device(cfg.device)
    train_x, train_y = data.train_x, data.train_y
    n_train_all = len(train_x)  # for the cost model (it applies train_samples itself)
    if cfg.train_samples > 0:
        train_x, train_y = train_x[: cfg.train_samples], train_y[: cfg.train_samples]
    train_x, train_y = train_x.to(dev), train_y.to(dev)
    test_x, test_y = data.test_x.to(dev), data.test_y.to(dev)
    data = Dataset(data.name, train_x, train_y, test_x, test_y, data.num_classes)
    n = len(train_x)
    # Drop the last partial batch of an epoch: BN needs >= 2 samples.
    steps_per_epoch, total, every = _schedule(cfg, n_train_all)
    if steps_per_epoch < 1:
        raise ValueError(f"batch_size {cfg.batch_size} exceeds the {n} training images; lower it")
    planned = planned_work(cfg, n_train_all, len(data.test_x))
    log_w = _log_work(cfg, n_train_all, len(data.test_x))
    step_w = step_work(cfg)
    reported = 0.0  # work units handed to the progress bar so far

    def report(work: float) -> None:
        nonlocal reported
        if progress is not None:
            progress.add(work)
        reported += work

    in_shape = cast(tuple[int, int, int], tuple(train_x.shape[1:]))  # (C, H, W)
    model = build_model(cfg, in_shape, data.num_classes).to(dev)
    opt = _optimizer(cfg, model.parameters())
    n_eval = len(test_x) if cfg.eval_samples <= 0 else min(cfg.eval_samples, len(test_x))
    train_eval = min(n_eval, n, 5000)
    metrics_f = (path / "metrics.jsonl").open("w")
    train_time = eval_time = 0.0
    seen_loss = seen_correct = seen_count = 0.0
    diverged = False
    order = torch.randperm(n, generator=g) if cfg.shuffle else torch.arange(n)

    last_running: dict[str, Any] = {}  # the last evaluation, when it is the final "running" one

    def log(step: int) -> None:
        nonlocal eval_time, seen_loss, seen_correct, seen_count
        report(log_w)
        t0 = time.perf_counter()
        m = _eval_model(model, cfg.eval_stats, train_x, cfg, g_eval)
        watch = _Watch(m, cfg.watch_unit, cfg.watch_layer) if cfg.watch_unit >= 0 else None
        try:
            bs = cfg.batch_size if cfg.eval_stats == "batch" else cfg.eval_batch_size
            # The last evaluation uses every test image, so a curve ends on the final number.
            n_t = len(test_x) if step == total else n_eval
            test_loss, test_acc = evaluate(m, test_x[:n_t], test_y[:n_t], bs)
        finally:
            if watch is not None:
                watch.close()
        if step == total and cfg.eval_stats == "running":
            last_running.update(test_loss=_finite(test_loss), test_acc=test_acc)
        _, train_acc = evaluate(m, train_x[:train_eval], train_y[:train_eval], bs)
        row: dict[str, Any] = {
            "step": step,
            "epoch": step / steps_per_epoch,
            "time_s": round(train_time, 3),
            "test_loss": _finite(test_loss),
            "test_acc": test_acc,
            "train_eval_acc": train_acc,
            "train_loss": _finite(seen_loss / seen_count) if seen_count else None,
            "train_acc": seen_correct / seen_count if seen_count else None,
        }
        if watch is not None:
            row["unit_percentiles"] = watch.percentiles()  # 15th, 50th, 85th
            if cfg.watch_layer:
                row["layer_percentiles"] = watch.layer_percentiles()  # (3, units)
        model.train()
        metrics_f.write(json.dumps(row, allow_nan=False) + "\n")
        metrics_f.flush()
        seen_loss = seen_correct = seen_count = 0.0
        eval_time += time.perf_counter() - t0

    model.train()
    if cfg.eval_first:
        log(0)
    elif cfg.eval_stats == "population" and _is_bn(cfg):
        # The step-0 evaluation would draw one population subset from g_eval: draw it anyway,
        # so every later evaluation sees the same subsets as with eval_first=True.
        torch.randperm(len(train_x), generator=g_eval)
    step = 0
    try:
        while step < total and not diverged:
            epoch, pos = divmod(step, steps_per_epoch)
            if pos == 0 and step > 0 and cfg.shuffle:
                order = torch.randperm(n, generator=g)
            idx = order[pos * cfg.batch_size : (pos + 1) * cfg.batch_size]
            t0 = time.perf_counter()
            xb, yb = train_x[idx], train_y[idx]  # (B, C, H, W), (B,)
            if cfg.augment:
                xb = random_affine(
                    xb,
                    g,
                    rotation=cfg.aug_rotation,
                    shear=cfg.aug_shear,
                    zoom=cfg.aug_zoom,
                    shift=cfg.aug_shift,
                )
            logits = model(xb)
            loss = nn.functional.cross_entropy(logits, yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            lv = loss.item()
            train_time += time.perf_counter() - t0
            step += 1
            if not math.isfinite(lv):
                diverged = True
            else:
                seen_loss += lv * len(yb)
                seen_correct += (logits.argmax(1) == yb).sum().item()
                seen_count += len(yb)
            report(step_w)
            if step % every == 0 or step == total or diverged:
                log(step)
        t0 = time.perf_counter()
        final = final_evaluation(model, data, train_x, cfg, running=last_running or None)
        eval_time += time.perf_counter() - t0
        report(planned - reported)  # the final evaluation, and what a diverged run skipped
    finally:
        metrics_f.close()
    summary = {
        "run": path.name,
        "label": cfg.label(),
        "planned_steps": total,
        "steps": step,
        "steps_per_epoch": steps_per_epoch,
        "diverged": diverged,
        "train_time_s": round(train_time, 3),
        "eval_time_s": round(eval_time, 3),
        "wall_s": round(time.perf_counter() - wall0, 3),
        "threads": torch.get_num_threads(),
        "test_images": len(test_x),  # of the final evaluation (small-batch/single checks: fewer)
        "torch": torch.__version__,
        "final": final,
    }
    if figures:
        try:
            from .plots import plot_run

            plot_run(path, cfg, summary)
        except ImportError as e:
            print(f"[train] no run figure ({e}); install the [experiments] extra", file=sys.stderr)
    _write_json_atomic(path / "summary.json", summary)
    run = read_run(path)
    run["reused"] = False
    return run
