"""Data-parallel training of the experiments' LeNet with DDP and :class:`SyncBatchNorm`.

Launched by torchrun, one process per worker::

    torchrun --standalone --nproc_per_node=2 -m batchnorm.experiments.distributed_demo --out runs/ddp2
    python -m batchnorm.experiments.distributed_demo --out runs/single          # the same, one process
    python -m batchnorm.experiments.distributed_demo --compare runs/ddp2 runs/single

Every process draws the same shuffled order of the training set (same seed), cuts it into
global batches of ``--batch-size B`` and takes its own slice of each (``B / N`` samples; the
first ``B mod N`` processes take one more). Its BN layers normalize with the statistics of
the whole global batch (SyncBatchNorm), its loss is its summed loss times ``N / B``, and DDP
averages the gradients over the ``N`` processes: together they compute the gradient of the
mean loss over the global batch, so N processes with ``B / N`` follow the trajectory of one
process with ``B`` (up to the order of floating-point sums; exactly in float64).

CPU with gloo by default; ``--device cuda`` uses NCCL with one GPU per process
(``LOCAL_RANK``). Writes ``config.json``, ``metrics.csv`` (step, epoch, global mean training
loss) and ``summary.json`` (test accuracy and loss, time) into ``--out`` from rank 0.
Needs the ``batchnorm.experiments`` package (the LeNet and the MNIST loader).
"""

from __future__ import annotations

import argparse
import csv
import datetime
import json
import os
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as TF
from torch import nn

from ..tools.sync import convert_sync_batchnorm


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--batch-size", type=int, default=128, help="global batch B, split over the processes (128)"
    )
    p.add_argument(
        "--epochs",
        type=float,
        default=1.0,
        help="passes over the training set (1; fractions allowed)",
    )
    p.add_argument("--lr", type=float, default=0.05, help="SGD learning rate (0.05)")
    p.add_argument("--momentum", type=float, default=0.9, help="SGD momentum (0.9)")
    p.add_argument(
        "--train-samples", type=int, default=0, help="use the first N training images (0 = all)"
    )
    p.add_argument(
        "--dataset", default="mnist", help="mnist | fashion-mnist | idx | synthetic (mnist)"
    )
    p.add_argument(
        "--data-dir", default="", help="folder of IDX files (dataset idx, or an MNIST copy)"
    )
    p.add_argument(
        "--seed", type=int, default=0, help="seed of the initialization and the data order (0)"
    )
    p.add_argument(
        "--dtype",
        choices=("float32", "float64"),
        default="float32",
        help="parameters and inputs (float32)",
    )
    p.add_argument(
        "--device", choices=("cpu", "cuda"), default="cpu", help="cpu: gloo; cuda: NCCL (cpu)"
    )
    p.add_argument(
        "--threads", type=int, default=0, help="torch threads per process (0: cores / processes)"
    )
    p.add_argument("--log-every", type=int, default=50, help="print the loss every N steps (50)")
    p.add_argument("--out", default="", help="folder for config.json, metrics.csv, summary.json")
    p.add_argument(
        "--compare", nargs=2, metavar=("RUN_A", "RUN_B"), help="compare two runs' outputs and exit"
    )


# --------------------------------------------------------------------------- processes


def _init_distributed(device: str) -> tuple[int, int, int]:
    """``(rank, world, local_rank)`` from torchrun's environment; (0, 1, 0) without it."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    if world > 1:
        if device == "cuda":
            torch.cuda.set_device(local_rank)  # NCCL: one GPU per process
        backend = "nccl" if device == "cuda" else "gloo"
        dist.init_process_group(backend, timeout=datetime.timedelta(seconds=120))
    return rank, world, local_rank


def _global_batches(n: int, batch: int, epoch: int, seed: int) -> list[torch.Tensor]:
    """The same shuffled global batches on every process (the last, incomplete one dropped)."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    order = torch.randperm(n, generator=g)
    return list(order[: n - n % batch].split(batch))


def _evaluate(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, chunk: int = 1000
) -> tuple[float, float]:
    """Mean cross-entropy and accuracy with the running statistics (eval mode, no collective)."""
    model.eval()
    loss, correct = 0.0, 0
    with torch.no_grad():
        for i in range(0, len(x), chunk):
            out = model(x[i : i + chunk])
            loss += TF.cross_entropy(out, y[i : i + chunk], reduction="sum").item()
            correct += (out.argmax(1) == y[i : i + chunk]).sum().item()
    model.train()
    return loss / len(x), correct / len(x)


# --------------------------------------------------------------------------- training


def train(args: argparse.Namespace) -> dict:
    """Train with ``WORLD_SIZE`` processes (1 without torchrun); return rank 0's summary."""
    from .config import Config
    from .data import load_dataset
    from .models import build_model

    rank, world, local_rank = _init_distributed(args.device)
    torch.set_num_threads(args.threads or max(1, (os.cpu_count() or 1) // world))
    device = torch.device("cuda", local_rank) if args.device == "cuda" else torch.device("cpu")
    dtype = getattr(torch, args.dtype)
    try:
        data = load_dataset(args.dataset, args.data_dir or None)
        n = args.train_samples or len(data.train_x)
        train_x = data.train_x[:n].to(device, dtype)  # (n, 1, 28, 28)
        train_y = data.train_y[:n].to(device)
        test_x, test_y = data.test_x.to(device, dtype), data.test_y.to(device)

        torch.manual_seed(args.seed)  # the same initial weights everywhere (DDP checks it)
        cfg = Config(model="lenet", norm="ours", dataset=args.dataset, batch_size=args.batch_size)
        c, h, w = train_x.shape[1:]
        model: nn.Module = build_model(cfg, in_shape=(c, h, w), classes=data.num_classes)
        # Without a process group SyncBatchNorm is local BN: one code path for N = 1 too.
        model = convert_sync_batchnorm(model).to(device, dtype)
        net = nn.parallel.DistributedDataParallel(model) if world > 1 else model
        opt = torch.optim.SGD(net.parameters(), lr=args.lr, momentum=args.momentum)

        steps_per_epoch = n // args.batch_size
        if steps_per_epoch == 0:
            raise ValueError(
                f"--batch-size {args.batch_size} is larger than the {n} training images; "
                "use a smaller batch or more --train-samples"
            )
        total_steps = max(1, round(args.epochs * steps_per_epoch))
        curve: list[tuple[int, int, float]] = []
        t0, step = time.perf_counter(), 0
        while step < total_steps:
            epoch = step // steps_per_epoch
            for idx in _global_batches(n, args.batch_size, epoch, args.seed):
                if step >= total_steps:
                    break
                mine = idx.tensor_split(world)[rank]  # (B / N,) this process's share
                out = net(train_x[mine])
                loss_sum = TF.cross_entropy(out, train_y[mine], reduction="sum")
                # DDP averages gradients over the N processes: scale so the average is the
                # gradient of the mean loss over the global batch.
                opt.zero_grad(set_to_none=True)
                (loss_sum * (world / args.batch_size)).backward()
                opt.step()
                global_loss = loss_sum.detach().to(torch.float64).reshape(1)
                if world > 1:
                    dist.all_reduce(global_loss)
                step += 1
                curve.append((step, epoch, global_loss.item() / args.batch_size))
                if rank == 0 and (step % args.log_every == 0 or step == total_steps):
                    print(f"step {step:5d}  epoch {epoch}  loss {curve[-1][2]:.5f}", flush=True)
        train_time = time.perf_counter() - t0
        summary = {
            "world_size": world,
            "per_process_batch": [
                len(c) for c in torch.arange(args.batch_size).tensor_split(world)
            ],
        }
        if rank == 0:
            test_loss, test_acc = _evaluate(model, test_x, test_y)
            summary.update(
                steps=total_steps,
                final_train_loss=curve[-1][2],
                test_loss=test_loss,
                test_accuracy=test_acc,
                train_seconds=round(train_time, 2),
                backend=dist.get_backend() if world > 1 else "none",
                dtype=args.dtype,
                threads_per_process=torch.get_num_threads(),
            )
            print(f"test accuracy {test_acc:.4f}  test loss {test_loss:.4f}  ({train_time:.1f} s)")
            if args.out:
                _write(Path(args.out), vars(args), curve, summary)
        if world > 1:
            dist.barrier()
        return summary
    finally:
        if world > 1:
            dist.destroy_process_group()


def _write(out: Path, config: dict, curve: list[tuple[int, int, float]], summary: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(
        json.dumps({k: v for k, v in config.items() if k != "func"}, indent=2) + "\n"
    )
    with open(out / "metrics.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["step", "epoch", "train_loss"])
        w.writerows((s, e, repr(v)) for s, e, v in curve)  # every digit: the runs are compared
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")


# --------------------------------------------------------------------------- comparison


def compare(run_a: str, run_b: str, checkpoints: int = 8) -> str:
    """A table of two runs' loss curves side by side, their largest gap and final accuracies."""
    curves, summaries, epochs = [], [], {}
    for run in (run_a, run_b):
        with open(Path(run) / "metrics.csv") as f:
            rows = list(csv.DictReader(f))
        curves.append({int(r["step"]): float(r["train_loss"]) for r in rows})
        epochs.update({int(r["step"]): int(r["epoch"]) for r in rows})
        summaries.append(json.loads((Path(run) / "summary.json").read_text()))
    steps = sorted(set(curves[0]) & set(curves[1]))
    if not steps:
        raise ValueError(
            f"{run_a} and {run_b} have no step in common; compare runs of one configuration"
        )
    names = [
        f"{Path(r).name} (N={s['world_size']})"
        for r, s in zip((run_a, run_b), summaries, strict=True)
    ]
    lines = [f"| step | {names[0]} | {names[1]} | difference |", "|---:|---:|---:|---:|"]
    picks = sorted(
        {steps[round(i * (len(steps) - 1) / (checkpoints - 1))] for i in range(checkpoints)}
    )
    for s in picks:
        a, b = curves[0][s], curves[1][s]
        lines.append(f"| {s} | {a:.6f} | {b:.6f} | {a - b:+.1e} |")
    gap = max(abs(curves[0][s] - curves[1][s]) for s in steps)
    # Per-epoch means: float32 runs drift apart step by step (rounding, amplified by
    # training), their averages do not.
    for e in sorted({epochs[s] for s in steps}):
        in_e = [s for s in steps if epochs[s] == e]
        a = sum(curves[0][s] for s in in_e) / len(in_e)
        b = sum(curves[1][s] for s in in_e) / len(in_e)
        lines.append(f"| epoch {e} mean | {a:.6f} | {b:.6f} | {a - b:+.1e} |")
    lines.append("")
    lines.append(f"largest |difference| of the training loss over {len(steps)} steps: {gap:.3e}")
    for name, s in zip(names, summaries, strict=True):
        lines.append(
            f"{name}: per-process batch {s['per_process_batch']}, test accuracy {s['test_accuracy']:.4f}, "
            f"test loss {s['test_loss']:.4f}, {s['train_seconds']} s"
        )
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    if args.compare:
        print(compare(*args.compare))
        return 0
    if args.batch_size < int(os.environ.get("WORLD_SIZE", "1")):
        raise ValueError(f"--batch-size {args.batch_size} is smaller than the number of processes")
    train(args)
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m batchnorm.experiments.distributed_demo",
        description="Data-parallel training of the experiments' LeNet with DDP and SyncBatchNorm.",
    )
    add_arguments(p)
    return run(p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
