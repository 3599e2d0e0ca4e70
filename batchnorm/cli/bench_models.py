"""``batchnorm bench --models``: whole training steps with our BN against torch.nn's.

The networks the experiments train, where a layer's per-call cost matters as much as its
kernels: the paper's Figure-1 MLP (784-100-100-100-10, sigmoid, BN before each
non-linearity, batch 60) and the LeNet of article 001 (batch 128), each one SGD step
(forward, cross-entropy, backward, update) on fixed data. Ours and torch.nn's run
interleaved (one step each, alternating which goes first) after a warm-up; the ratio is
median(ours) / median(torch) over ``--model-steps`` steps (<= 1.0: ours no slower). A
4x64x2x2 training forward (the smallest layer, per-call cost alone) is timed the same way.

Contention: the MLP step alone, then in each of 3 processes of 2 threads at once (on a
2-core machine: 6 threads on 2 cores). ``degradation = contended / alone`` for each BN;
ours should degrade no more than torch.nn's (a kernel that splits tiny tensors across
threads, or spins, would).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

import torch
from torch import nn


def mlp(bn: Callable[[int], nn.Module]) -> nn.Sequential:
    """784-100-100-100-10 with BN before each sigmoid (the paper's Figure 1)."""
    torch.manual_seed(0)
    layers: list[nn.Module] = []
    d = 784
    for h in (100, 100, 100):
        layers += [nn.Linear(d, h), bn(h), nn.Sigmoid()]
        d = h
    layers.append(nn.Linear(d, 10))
    return nn.Sequential(*layers)


def lenet(bn2: Callable[[int], nn.Module], bn1: Callable[[int], nn.Module]) -> nn.Sequential:
    """conv 6 -> BN -> relu -> pool -> conv 16 -> BN -> relu -> pool -> fc 120 -> BN -> fc 84
    -> BN -> fc 10 (article 001), on 28x28 inputs."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 6, 5, padding=2), bn2(6), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(6, 16, 5), bn2(16), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
        nn.Linear(400, 120), bn1(120), nn.ReLU(), nn.Linear(120, 84), bn1(84), nn.ReLU(),
        nn.Linear(84, 10),
    )  # fmt: skip


def _stepper(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> Callable[[], None]:
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    loss_fn = nn.CrossEntropyLoss()

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        loss_fn(model(x), y).backward()
        opt.step()

    return step


def _pair(name: str) -> tuple[Callable[[], None], Callable[[], None]]:
    """(ours, torch.nn) step functions of one case."""
    import batchnorm

    g = torch.Generator().manual_seed(0)
    if name == "mlp":
        x, y = torch.rand(60, 784, generator=g), torch.randint(0, 10, (60,), generator=g)
        return (
            _stepper(mlp(batchnorm.BatchNorm1d), x, y),
            _stepper(mlp(nn.BatchNorm1d), x, y),
        )
    if name == "lenet":
        x = torch.rand(128, 1, 28, 28, generator=g)
        y = torch.randint(0, 10, (128,), generator=g)
        return (
            _stepper(lenet(batchnorm.BatchNorm2d, batchnorm.BatchNorm1d), x, y),
            _stepper(lenet(nn.BatchNorm2d, nn.BatchNorm1d), x, y),
        )
    x = torch.randn(4, 64, 2, 2, generator=g)
    bn_ours, bn_torch = batchnorm.BatchNorm2d(64), nn.BatchNorm2d(64)

    def ours() -> None:
        bn_ours(x)

    def theirs() -> None:
        bn_torch(x)

    return ours, theirs


def interleaved(
    ours: Callable[[], None], theirs: Callable[[], None], steps: int, warmup: int = 20
) -> tuple[float, float]:
    """Medians (seconds) of ``steps`` alternating runs of each, the order flipped every step."""
    for _ in range(warmup):
        ours()
        theirs()
    a: list[float] = []
    b: list[float] = []
    for i in range(steps):
        first, second, ta, tb = (ours, theirs, a, b) if i % 2 else (theirs, ours, b, a)
        t0 = time.perf_counter()
        first()
        t1 = time.perf_counter()
        second()
        t2 = time.perf_counter()
        ta.append(t1 - t0)
        tb.append(t2 - t1)
    return statistics.median(a), statistics.median(b)


CASES = {
    "mlp": "Figure-1 MLP step (784-100-100-100-10, batch 60)",
    "lenet": "LeNet step (batch 128)",
    "small": "4x64x2x2 training forward",
}
TARGETS = {"mlp": 1.0, "lenet": 1.0, "small": 1.5}


def run_models(steps: int) -> list[dict]:
    """One row per case: medians of ours and torch.nn and the ratio ours / torch."""
    rows = []
    for name, label in CASES.items():
        n = steps if name != "lenet" else max(50, steps // 5)  # a LeNet step is ~10x longer
        n = n if name != "small" else steps * 4
        ours, theirs = interleaved(*_pair(name), n)
        rows.append(
            {
                "case": name,
                "label": label,
                "steps": n,
                "ours_us": ours * 1e6,
                "torch_us": theirs * 1e6,
                "ours_over_torch": ours / theirs,
                "target": TARGETS[name],
            }
        )
    return rows


_WORKER = "import sys; from batchnorm.cli import bench_models as b; b._worker(int(sys.argv[1]))"


def _worker(steps: int) -> None:
    torch.set_num_threads(2)
    ours, theirs = interleaved(*_pair("mlp"), steps)
    print(json.dumps({"ours": ours, "torch": theirs}))


def contention(steps: int, procs: int = 3) -> dict:
    """The MLP step alone (this process, 2 threads) and in ``procs`` processes of 2 threads."""
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        alone_ours, alone_torch = interleaved(*_pair("mlp"), steps)
    finally:
        torch.set_num_threads(before)
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS",)}
    children = [
        subprocess.Popen(
            [sys.executable, "-c", _WORKER, str(steps)],
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        for _ in range(procs)
    ]
    results = []
    for c in children:
        out, _ = c.communicate(timeout=1800)
        results.append(json.loads(out.strip().splitlines()[-1]))
    ours = statistics.median(r["ours"] for r in results)
    theirs = statistics.median(r["torch"] for r in results)
    return {
        "processes": procs,
        "threads_each": 2,
        "alone_ours_us": alone_ours * 1e6,
        "alone_torch_us": alone_torch * 1e6,
        "contended_ours_us": ours * 1e6,
        "contended_torch_us": theirs * 1e6,
        "degradation_ours": ours / alone_ours,
        "degradation_torch": theirs / alone_torch,
    }


def report(rows: list[dict], cont: dict | None) -> list[str]:
    """The printed lines of the --models section."""
    lines = [
        "models: training steps with our BN vs torch.nn's, interleaved; ratio = ours / torch "
        "(median over steps; <= target is met)",
        f"{'case':<52} {'ours us':>9} {'torch us':>9} {'ours/torch':>10} {'target':>7}",
    ]
    for r in rows:
        met = "met" if r["ours_over_torch"] <= r["target"] else "MISSED"
        label = f"{r['label']} ({r['steps']} runs)"
        lines.append(
            f"{label:<52} {r['ours_us']:>9.0f} {r['torch_us']:>9.0f} "
            f"{r['ours_over_torch']:>9.3f}x {r['target']:>6.1f}x {met}"
        )
    if cont is not None:
        ok = cont["degradation_ours"] <= cont["degradation_torch"]
        lines.append(
            f"contention: MLP step alone ours {cont['alone_ours_us']:.0f} us / torch "
            f"{cont['alone_torch_us']:.0f} us; in {cont['processes']} processes x 2 threads "
            f"ours {cont['contended_ours_us']:.0f} us / torch {cont['contended_torch_us']:.0f} us; "
            f"degradation ours {cont['degradation_ours']:.2f}x, torch "
            f"{cont['degradation_torch']:.2f}x, ratio "
            f"{cont['degradation_ours'] / cont['degradation_torch']:.3f} "
            f"({'met' if ok else 'MISSED'}: ours degrades no more than torch.nn's)"
        )
    return lines
