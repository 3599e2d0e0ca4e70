"""``batchnorm train``: train one config (a preset file and/or command-line fields).

Examples::

    batchnorm train --model mlp --activation sigmoid --norm ours --optimizer sgd --lr 0.5 \\
        --batch-size 60 --steps 50000 --init normal --init-std 0.1
    batchnorm train --preset my_run.toml --dataset fashion-mnist --seeds 0,1,2
    batchnorm train --preset reports/full/runs/<name>/config.json   # rerun a run elsewhere

Every field of :class:`batchnorm.experiments.config.Config` is an option; a preset file
(JSON or TOML) sets any of them, and options given on the command line override it.
"""

from __future__ import annotations

import argparse
import json
import sys

__all__ = ["add_arguments", "run"]


def add_arguments(p: argparse.ArgumentParser) -> None:
    from .config import add_config_arguments

    p.add_argument(
        "--preset", default=None, metavar="FILE", help="JSON or TOML file of config fields"
    )
    p.add_argument(
        "--out", default="runs", help="output root; the run goes to OUT/runs/<name> (default runs)"
    )
    p.add_argument(
        "--seeds", default=None, metavar="S,S,...", help="train once per seed (overrides --seed)"
    )
    p.add_argument(
        "--force", action="store_true", help="retrain even if this config has finished in OUT"
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    p.add_argument(
        "--refresh",
        action="store_true",
        help="fetch MNIST again and rebuild its cache (mnist.npz and its SHA-256) first",
    )
    p.add_argument(
        "--print-config", action="store_true", help="print the resolved config as JSON and exit"
    )
    add_config_arguments(p)


def run(args: argparse.Namespace) -> int:
    from ..tools.progress import Progress
    from .config import config_from_args, load_preset
    from .data import DataError
    from .train import get_dataset, planned_work, train_run

    try:
        base = load_preset(args.preset) if args.preset else {}
        cfg = config_from_args(args, base)
        if args.print_config:
            print(json.dumps(cfg.to_dict(), indent=1))
            return 0
        seeds = [int(s) for s in args.seeds.split(",")] if args.seeds else [cfg.seed]
        data = get_dataset(cfg, refresh=args.refresh)
        for seed in seeds:
            c = cfg.replace(seed=seed)
            # The bar counts estimated work (training steps and evaluations, by their cost).
            total = planned_work(c, len(data.train_x), len(data.test_x))
            bar = Progress(total, unit="work", show_count=False, enabled=not args.no_progress)
            bar.set_note(f"{c.label()} seed {seed}")
            r = train_run(c, args.out, data=data, progress=bar, force=args.force)
            bar.close()
            s = r["summary"]
            f = s["final"]
            print(
                f"{r['path']}{' (reused)' if r['reused'] else ''}: test accuracy "
                f"{100 * f['running']['test_acc']:.2f}% (running stats), "
                + (
                    f"{100 * f['population']['test_acc']:.2f}% (population), "
                    if "population" in f
                    else ""
                )
                + "loss "
                f"{f['running']['test_loss']}, {s['steps']} steps in {s['train_time_s']:.1f} s"
                f"{', DIVERGED' if s['diverged'] else ''}"
            )
    except (DataError, ValueError) as e:
        print(f"batchnorm train: error: {e}", file=sys.stderr)
        return 2
    return 0
