"""``batchnorm demo``: a sigmoid MLP trained with and without BN on data the demo makes.

A minute-long look at the paper's claim before the MNIST experiments: with inputs whose
features have wildly different scales and a sigmoid network, plain SGD saturates and
crawls while the batch-normalized network trains.
"""

from __future__ import annotations

import argparse
import time

import torch
from torch import nn

from ..nn.batchnorm import BatchNorm1d


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--steps", type=int, default=600, help="SGD steps per network (default 600)")
    p.add_argument("--lr", type=float, default=0.5, help="learning rate (default 0.5)")
    p.add_argument("--batch-size", type=int, default=64, help="batch size (default 64)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")


def make_data(n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Ten Gaussian classes in 32-D, then each feature scaled by 10^U(-2, 2) and shifted."""
    dim, classes = 32, 10
    # The distribution (centres, scales) first, so a generator with the same seed gives the
    # same distribution whatever n is; then the samples.
    centers = torch.randn(classes, dim, generator=generator) * 2.0
    scale = 10.0 ** (torch.rand(dim, generator=generator) * 4 - 2)
    y = torch.randint(0, classes, (n,), generator=generator)
    x = centers[y] + torch.randn(n, dim, generator=generator)
    return x * scale + 3.0 * scale, y


def mlp(batch_norm: bool, widths=(32, 64, 64, 10)) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(widths[:-1], widths[1:])):
        last = i == len(widths) - 2
        layers.append(nn.Linear(a, b, bias=last or not batch_norm))
        if not last:
            if batch_norm:
                layers.append(BatchNorm1d(b))
            layers.append(nn.Sigmoid())
    return nn.Sequential(*layers)


def train(model: nn.Module, x, y, xt, yt, steps: int, lr: float, bs: int, g: torch.Generator):
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    curve = []
    for step in range(1, steps + 1):
        idx = torch.randint(0, len(x), (bs,), generator=g)
        loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % max(1, steps // 6) == 0 or step == steps:
            model.eval()
            with torch.no_grad():
                acc = (model(xt).argmax(1) == yt).float().mean().item()
            model.train()
            curve.append((step, loss.item(), acc))
    return curve


def run(args: argparse.Namespace) -> int:
    x, y = make_data(8192, torch.Generator().manual_seed(args.seed))
    xt, yt = make_data(2048, torch.Generator().manual_seed(args.seed))  # same distribution
    g = torch.Generator().manual_seed(args.seed + 1)
    print("Sigmoid MLP 32-64-64-10 on 10 Gaussian classes with feature scales 1e-2..1e2")
    print(f"{args.steps} SGD steps, lr {args.lr}, batch {args.batch_size}\n")
    results = {}
    for name, use_bn in (("without BN", False), ("with BN", True)):
        torch.manual_seed(args.seed)
        t0 = time.perf_counter()
        curve = train(mlp(use_bn), x, y, xt, yt, args.steps, args.lr, args.batch_size, g)
        results[name] = curve
        print(
            f"{name:>10}: "
            + "  ".join(f"step {s}: acc {a:.3f}" for s, _, a in curve)
            + f"   ({time.perf_counter() - t0:.1f} s)"
        )
    a0, a1 = results["without BN"][-1][2], results["with BN"][-1][2]
    print(f"\nFinal test accuracy: {a0:.3f} without BN, {a1:.3f} with BN.")
    print("The MNIST experiments of the articles: `batchnorm reproduce` (see README).")
    return 0
