"""Train many configs in parallel worker processes, one torch thread each, on one progress bar.

Why processes and not threads per op: the networks here are small (a step of the Figure-1
MLP is about 1 ms), so two threads per op gain nothing, and under load they lose a lot
(measured on the 2-core VM under a load of 3: the MLP step with BN took 2.0 ms with one
thread and 15 ms with two). Independent runs in separate single-threaded processes scale
with the cores instead.

The dataset is moved into shared memory once (``Tensor.share_memory_``) and handed to each
worker when it starts (torch.multiprocessing passes the storage's handle, not a copy).
Workers are started with ``spawn``: forking a process whose torch thread pools are running
can deadlock. Each worker sends the work it has done to the parent through a queue at most
every 0.25 s; the parent adds it to the one bar. Ctrl-C stops the parent, which terminates
the workers; their half-written run folders hold no ``summary.json`` and are retrained from
scratch by the next ``reproduce`` (finished runs are reused).
"""

from __future__ import annotations

import os
import queue as queue_mod
import signal
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from ..tools.progress import Progress
from .config import Config
from .data import Dataset

__all__ = ["default_workers", "run_configs"]

_STATE: dict[str, Any] = {}


def default_workers() -> int:
    """One worker per core (each with one thread)."""
    return max(1, os.cpu_count() or 1)


class _QueueProgress:
    """The worker's side of the bar: sums work and sends it to the parent now and then."""

    def __init__(self, q: Any, name: str) -> None:
        self.q, self.name = q, name
        self.weight = 1.0
        self.pending = 0.0
        self.last = time.perf_counter()

    def update(self, n: float = 1) -> None:
        self.add(n * self.weight)

    def add(self, work: float) -> None:
        self.pending += work
        now = time.perf_counter()
        if now - self.last >= 0.25:
            self.flush(now)

    def flush(self, now: float | None = None) -> None:
        if self.pending:
            self.q.put(("work", self.name, self.pending))
            self.pending = 0.0
        self.last = time.perf_counter() if now is None else now


def _init(data: Dataset | None, q: Any, root: str) -> None:
    # The parent handles Ctrl-C (and terminates the workers): a worker ignores SIGINT, so
    # one keypress does not print a traceback per process.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _STATE.update(data=data, q=q, root=root)


def _work(cfg: Config, force: bool) -> str:
    from .train import train_run

    q = _STATE["q"]
    name = cfg.run_name()
    q.put(("start", name, 0.0))
    prog = _QueueProgress(q, name)
    try:
        train_run(cfg, _STATE["root"], data=_STATE["data"], progress=prog, force=force)
    finally:
        prog.flush()
    return name


def _share(data: Dataset) -> Dataset | None:
    """``data`` with its tensors in shared memory, or None (then each worker loads it)."""
    try:
        for t in (data.train_x, data.train_y, data.test_x, data.test_y):
            t.share_memory_()
    except RuntimeError as e:  # e.g. a /dev/shm too small for the images
        print(
            f"[reproduce] dataset not in shared memory ({e}); each worker loads its own copy",
            file=sys.stderr,
        )
        return None
    return data


def run_configs(
    todo: Sequence[Config],
    root: str | Path,
    data: Dataset,
    *,
    workers: int,
    bar: Progress,
    note: Callable[[int, int], str],
    force: bool = False,
) -> None:
    """Train every config of ``todo`` into ``root``, ``workers`` at a time.

    With ``workers=1`` the runs are trained one after the other in this process. Each
    config's own ``threads`` sets its torch threads. ``note(done, running)`` is the bar's
    text; the bar counts the work each run reports.

    Raises:
        Whatever a run raised (the other runs are stopped first).
    """
    from .train import train_run

    if workers <= 1 or len(todo) <= 1:
        for i, c in enumerate(todo):
            bar.set_note(note(i, 1))
            train_run(c, root, data=data, progress=bar, force=force)
        bar.set_note(note(len(todo), 0))
        return
    ctx = torch.multiprocessing.get_context("spawn")
    q = ctx.Queue()
    shared = _share(data)
    pool = ctx.Pool(min(workers, len(todo)), initializer=_init, initargs=(shared, q, str(root)))
    done = started = 0
    try:
        results = [pool.apply_async(_work, (c, force)) for c in todo]
        pool.close()
        bar.set_note(note(0, 0))
        while done < len(results):
            try:
                kind, _, work = q.get(timeout=0.2)
                if kind == "work":
                    bar.add(work)
                else:
                    started += 1
                    bar.set_note(note(done, started - done))
            except queue_mod.Empty:
                pass
            finished = 0
            for r in results:
                if r.ready():
                    if not r.successful():
                        r.get()  # re-raises the run's error here
                    finished += 1
            if finished != done:
                done = finished
                bar.set_note(note(done, started - done))
        while True:  # the last messages of the last runs (a worker's queue feeder may lag)
            try:
                kind, _, work = q.get(timeout=0.5)
            except queue_mod.Empty:
                break
            if kind == "work":
                bar.add(work)
        bar.set_note(note(done, 0))
        pool.join()
    finally:
        pool.terminate()
