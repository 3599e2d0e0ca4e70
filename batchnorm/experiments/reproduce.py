"""``batchnorm reproduce``: run every experiment of :mod:`.suite`, then write the report.

Finished runs (same config hash) are reused, so an interrupted reproduction resumes where
it stopped and ``--quick`` and full runs can share a folder's runs. The report is
rebuilt from the run files (``--report-only`` does only that, training nothing).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import sys
import time
from pathlib import Path

__all__ = ["add_arguments", "run", "reproduce"]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--quick",
        action="store_true",
        help="reduced protocols: a few minutes in all (for CI and a first look)",
    )
    p.add_argument(
        "--out",
        default=None,
        help="output folder (default reports/full, reports/quick with --quick; with --only "
        "reports/full-IDS, e.g. reports/full-depth, so the main job's report stays)",
    )
    p.add_argument(
        "--only",
        default=None,
        metavar="IDS",
        help="comma-separated experiment ids: article001, figure1, lr_mlp, lr_lenet, init, "
        "dropout, batch_size, inference (the main job), depth (not in the main job: 32 runs, "
        "5.9 one-core minutes), or all",
    )
    p.add_argument(
        "--dataset", default="mnist", help="mnist (default), fashion-mnist, idx or synthetic"
    )
    p.add_argument("--data-dir", default="", help="folder of IDX files (for --dataset idx)")
    p.add_argument(
        "--workers",
        type=int,
        default=0,
        metavar="N",
        help="runs trained in parallel, each in its own process (default 0 = one per core)",
    )
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        metavar="T",
        help="torch threads per run (default 1: these small networks gain nothing from more, "
        "and lose much under load; 0 = all cores)",
    )
    p.add_argument("--force", action="store_true", help="retrain runs even if finished")
    p.add_argument(
        "--refresh",
        action="store_true",
        help="fetch MNIST again and rebuild its cache (mnist.npz and its SHA-256) first",
    )
    p.add_argument(
        "--report-only",
        action="store_true",
        help="train nothing: rebuild the report from the finished run files (with --only: the "
        "planned runs of those experiments; unfinished ones are marked partial)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    p.add_argument(
        "--steps-cap",
        type=int,
        default=0,
        metavar="N",
        help="cap every run at N steps (smoke tests; results are meaningless)",
    )


def check_plotting() -> None:
    """Raise ValueError now, before any training, if matplotlib (the report's plots) is missing."""
    try:
        import matplotlib  # noqa: F401
    except ImportError as e:
        raise ValueError(
            f"the report's plots need matplotlib ({e}); install it with "
            "`pip install 'batchnorm[experiments]'` (bash run.sh reproduce does)"
        ) from e


def reproduce(
    out: str | Path,
    *,
    quick: bool = False,
    only: str | None = None,
    dataset: str = "mnist",
    data_dir: str = "",
    threads: int = 1,
    workers: int = 0,
    force: bool = False,
    refresh: bool = False,
    progress: bool = True,
    steps_cap: int = 0,
    command: str = "batchnorm reproduce",
    train: bool = True,
) -> tuple[Path, Path]:
    """Train what is missing, write ``manifest.json``, then ``report.md`` and ``report.html``.

    With ``train=False`` nothing is trained: the manifest lists the planned runs, the report
    uses those that have finished (an experiment with unfinished runs is marked partial).

    ``workers`` runs train at a time, each in its own process with ``threads`` torch threads
    (:mod:`.workers`; 0 workers = one per core); the results do not depend on either.

    Returns:
        The paths of report.md and report.html.

    Raises:
        ValueError: matplotlib is missing (checked before anything is trained), or a bad option.
    """
    import torch

    from ..tools.progress import Progress
    from .config import Config
    from .data import Dataset
    from .report import write_report
    from .suite import get_experiments
    from .train import get_dataset, is_finished, planned_steps, planned_work, run_dir
    from .workers import default_workers, run_configs

    check_plotting()
    if workers < 0 or threads < 0:
        raise ValueError(f"workers and threads must be >= 0, got {workers} and {threads}")
    workers = workers or default_workers()

    exps = get_experiments(only)  # an unknown id fails here, before anything is written
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    plan: dict[str, dict[str, list[Config]]] = {}
    for e in exps:
        groups = e.groups(quick)
        if groups:
            plan[e.id] = groups
    data: Dataset | None = None
    unique: dict[str, Config] = {}
    for groups in plan.values():
        for label, cfgs in groups.items():
            new = []
            for c in cfgs:
                c = c.replace(dataset=dataset, data_dir=data_dir, threads=threads)
                if quick:  # evaluations during training on 2000 test images (the last on
                    # all), BN statistics recomputed on 2000 training images
                    c = c.replace(
                        eval_samples=c.eval_samples or 2000,
                        population_samples=min(c.population_samples or 2000, 2000),
                    )
                if data is None:
                    data = get_dataset(c, refresh=refresh)
                if steps_cap > 0:
                    cap = min(steps_cap, planned_steps(c, len(data.train_x)))
                    c = c.replace(steps=cap, eval_every=max(1, cap // 4))
                new.append(c)
                unique[c.run_name()] = c
            groups[label] = new
    manifest = {
        "command": command,
        "quick": quick,
        "steps_cap": steps_cap,
        "dataset": dataset,
        "machine": f"{platform.node()} ({platform.machine()}, {os.cpu_count()} CPUs)",
        "torch": torch.__version__,
        "threads": threads or os.cpu_count(),
        "workers": workers,
        "started": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "experiments": {
            eid: {"groups": {lab: [c.run_name() for c in cfgs] for lab, cfgs in groups.items()}}
            for eid, groups in plan.items()
        },
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    todo = [c for name, c in unique.items() if force or not is_finished(run_dir(c, out))]
    n_train = len(data.train_x) if data is not None else 0
    n_test = len(data.test_x) if data is not None else 0
    work = {c.run_name(): planned_work(c, n_train, n_test) for c in todo}
    # Every variant's first seed first (an interrupted job is still useful), and within a
    # seed the longest runs first, so that the last to finish are short ones.
    todo.sort(key=lambda c: (c.seed, -work[c.run_name()]))
    workers = max(1, min(workers, len(todo)))
    print(
        f"[reproduce] {len(unique)} runs in {len(plan)} experiments; {len(unique) - len(todo)} finished "
        f"already, {len(todo)} to train"
        + (
            f" in {workers} worker process(es) of {threads or 'all'} thread(s)"
            if train
            else " (not trained: --report-only)"
        )
        + f"; output {out}",
        file=sys.stderr,
    )
    if not train:
        todo = []
    if todo and progress:
        print(
            "[reproduce] the bar shows the share of the estimated work done (training steps and "
            "evaluations, weighted by their measured cost) and the runs finished",
            file=sys.stderr,
        )
    bar = Progress(
        sum(work[c.run_name()] for c in todo),
        unit="work",
        show_count=False,
        enabled=progress and bool(todo),
    )
    n_todo = len(todo)
    try:
        if todo and data is not None:
            run_configs(
                todo,
                out,
                data,
                workers=workers,
                bar=bar,
                note=lambda done, running: (
                    f"runs {done}/{n_todo}" + (f", {running} running" if running > 1 else "")
                ),
                force=force,
            )
    except KeyboardInterrupt:  # say in the manifest how far this invocation got
        bar.close()
        finished = sum(is_finished(run_dir(c, out)) for c in todo)
        manifest.update(
            interrupted=True,
            wall_s=round(time.perf_counter() - t0, 1),
            trained=finished,
            reused=len(unique) - len(todo),
        )
        (out / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
        raise
    bar.close()
    done = [run_dir(c, out) / "summary.json" for c in unique.values()]
    summaries = [json.loads(p.read_text()) for p in done if p.is_file()]
    run_s = sum(x["wall_s"] for x in summaries)
    if summaries:  # the threads the runs actually used
        manifest["threads"] = ",".join(str(t) for t in sorted({x["threads"] for x in summaries}))
    manifest.update(
        {
            "runs_wall_s": round(run_s, 1),
            "finished": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "wall_s": round(time.perf_counter() - t0, 1),
            "trained": len(todo),
            "workers": workers,
            "report_only": not train,
            "reused": len(unique) - len(todo),
        }
    )
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    return write_report(out)


def default_out(*, quick: bool, only: str | None) -> str:
    """The folder a reproduction writes to without ``--out``.

    ``reports/full`` (``reports/quick``) for the main job; a selection gets its own folder
    (``reports/full-depth``, ``reports/quick-article001+figure1``), so that e.g. the depth
    experiment run after the main job does not replace the main job's report and manifest.
    """
    from .suite import parse_ids

    base = "reports/quick" if quick else "reports/full"
    ids = sorted(set(parse_ids(only)))
    return f"{base}-{'+'.join(ids)}" if ids else base


def run(args: argparse.Namespace) -> int:
    from .data import DataError
    from .report import write_report

    out = args.out or default_out(quick=args.quick, only=args.only)
    try:
        if args.report_only and args.only is None and (Path(out) / "manifest.json").is_file():
            md, html = write_report(out)  # the manifest of the last reproduction, as it was
        else:
            argv = sys.argv[1:] if sys.argv[1:2] == ["reproduce"] else ["reproduce"]
            cmd = "batchnorm " + " ".join(argv)
            md, html = reproduce(
                out,
                quick=args.quick,
                only=args.only,
                dataset=args.dataset,
                data_dir=args.data_dir,
                threads=args.threads,
                workers=args.workers,
                force=args.force,
                refresh=args.refresh,
                progress=not args.no_progress,
                steps_cap=args.steps_cap,
                command=cmd,
                train=not args.report_only,
            )
    except (DataError, ValueError) as e:
        print(f"batchnorm reproduce: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(
            f"\nbatchnorm reproduce: interrupted; the finished runs are kept in {out}/runs: run "
            "the same command again to train only the rest (and write the report)",
            file=sys.stderr,
        )
        return 130
    print(f"report: {md}\n        {html}")
    return 0
