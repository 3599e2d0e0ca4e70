"""The two collectives of synchronized batch norm: one for the statistics, one for the gradients.

Used by the core (``autograd.train_forward``) when it is given a process group; the module
around it is :class:`batchnorm.SyncBatchNorm`. :func:`active_group` is the one test of
"is there anything to synchronize with" that the layers and tools share. Equation numbers refer to
``docs/math.md``.

Statistics (forward): each rank packs its per-channel ``(count, mean, M2)`` into one float64
vector and the ranks exchange them in **one** ``all_gather``; every rank then merges the
``W`` triples with Chan's formula (eq. 22) in float64, in the same order, so every rank gets
bit-identical global statistics::

    N  = sum_k n_k
    mu = sum_k n_k mu_k / N                  (two-pass: re-centred on a first estimate)
    M2 = sum_k M2_k + sum_k n_k (mu_k - mu)^2
    var = M2 / N                             (biased)

A gather of ``W * (2C + 1)`` numbers rather than an all-reduce of ``2C + 1``: the only
single all-reduce of sums is ``sum n x`` and ``sum n x^2`` (or M2 about a common shift the ranks
would first have to agree on), and ``E[x^2] - E[x]^2`` cancels catastrophically when
``|mean| >> std`` even in float64 (mean 1e4, std 1e-2 loses 12 of 16 digits). The per-rank
means are float64 (``kernels.stats``), so the global mean stays float64 too. ``W`` is the
number of processes and ``C`` the channels of one layer: a few kilobytes.

Gradients (backward): ``sum(dy)`` and ``sum(dy * (x - mean))`` are plain sums once every rank
uses the global mean, so they travel in **one** ``all_reduce`` of a packed ``(2, C)`` tensor.

A rank with no samples contributes ``n = 0`` and zero sums, and still joins both collectives.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from .stats import merge_moments

__all__ = [
    "active_group",
    "all_gather_moments",
    "all_gather_stats",
    "all_reduce_sums",
    "is_distributed",
]


def is_distributed(process_group: Any = None) -> bool:
    """Whether ``torch.distributed`` is initialized and ``process_group`` (default: the world)
    has more than one process: the only case in which anything is synchronized."""
    return active_group(process_group) is not None


def active_group(process_group: Any = None) -> Any:
    """The group to synchronize over, or None (local) when there is nothing to sync with.

    None when torch.distributed is not available or not initialized, or the group has one
    process, so a synchronized layer or tool then runs as a local one and never waits on a
    collective.
    """
    if not (dist.is_available() and dist.is_initialized()):
        return None
    group = process_group if process_group is not None else dist.group.WORLD
    if dist.get_world_size(group) <= 1:
        return None
    return group


def _all_gather(out: Tensor, inp: Tensor, group: Any) -> None:
    # torch >= 2.10 renamed all_gather_into_tensor (the old name warns).
    gather = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
    gather(out, inp, group=group)


def all_gather_stats(
    mean: Tensor, var: Tensor, count: int, group: Any
) -> tuple[Tensor, Tensor, int]:
    """Merge per-rank statistics into the statistics of the union of every rank's batch.

    Args:
        mean: this rank's per-channel mean, float64, shape (C,) (ignored when ``count == 0``).
        var: this rank's biased per-channel variance, shape (C,), in the accumulation dtype.
        count: this rank's number of values per channel (may be 0).
        group: the process group (every rank of it must call this, in the same order).

    Returns:
        ``(mean, var, N)``: the global float64 mean, the global biased variance in ``var``'s
        dtype, and the global count as a Python int (one host synchronisation, needed for the
        "more than one value" check and the unbiased running variance).
    """
    channels = mean.numel()
    n = torch.full((1,), float(count), dtype=torch.float64, device=mean.device)
    if count > 0:
        local = torch.cat([n, mean.to(torch.float64), var.to(torch.float64) * count])  # (1 + 2C,)
    else:
        local = torch.cat([n, mean.new_zeros(2 * channels, dtype=torch.float64)])
    world = dist.get_world_size(group)
    gathered = local.new_empty(world * local.numel())
    _all_gather(gathered, local, group)
    gathered = gathered.view(world, 1 + 2 * channels)  # (W, 1 + 2C)
    counts = gathered[:, :1]  # (W, 1)
    means, m2s = gathered[:, 1 : 1 + channels], gathered[:, 1 + channels :]  # (W, C) each
    mu, m2, total = merge_moments(counts, means, m2s)  # (eq. 22), the same bits on every rank
    if total == 0:
        return mu, var.new_full((channels,), float("nan")), 0
    return mu, (m2 / total).to(var.dtype), int(total)


def all_reduce_sums(sum_dy: Tensor, sum_dy_xmu: Tensor, group: Any) -> tuple[Tensor, Tensor]:
    """Sum ``sum(dy)`` and ``sum(dy * (x - mean))`` over the ranks, in one packed collective."""
    packed = torch.stack([sum_dy, sum_dy_xmu])  # (2, C)
    dist.all_reduce(packed, op=dist.ReduceOp.SUM, group=group)
    return packed[0], packed[1]


def all_gather_moments(
    parts: list[tuple[float, Tensor, Tensor]], group: Any, *, sums: list[Tensor] | None = None
) -> tuple[list[tuple[float, Tensor, Tensor]], list[Tensor]]:
    """Merge per-process ``(count, mean, M2)`` of several layers at once: one ``all_gather``.

    Every process passes its parts in the same order (one per layer, count 0 for a layer it
    never reached); each gets the merged ``(count, mean, M2)`` per layer (Chan, eq. 22), the
    same bits everywhere, and the sums over processes of the optional per-layer ``sums``
    vectors. Used by population statistics.
    """
    sums = sums or []
    device = parts[0][1].device
    if dist.get_backend(group) == "nccl":
        device = torch.device("cuda", torch.cuda.current_device())
    sizes = [mean.numel() for _, mean, _ in parts]
    pieces = [torch.tensor([c for c, _, _ in parts], dtype=torch.float64)]
    pieces += [t.double().cpu() for _, mean, m2 in parts for t in (mean, m2)]
    pieces += [t.double().cpu() for t in sums]
    local = torch.cat(pieces).to(device)  # (L + 2 sum C + sum S,)
    world = dist.get_world_size(group)
    gathered = local.new_empty(world * local.numel())
    _all_gather(gathered, local, group)
    table = gathered.view(world, -1).cpu()  # (W, L + 2 sum C + sum S)
    merged, offset = [], len(parts)
    for i, c in enumerate(sizes):
        means = table[:, offset : offset + c]
        m2s = table[:, offset + c : offset + 2 * c]
        offset += 2 * c
        mu, m2, total = merge_moments(table[:, i : i + 1], means, m2s)
        merged.append((total, mu, m2))
    summed = []
    for t in sums:
        summed.append(table[:, offset : offset + t.numel()].sum(0))
        offset += t.numel()
    return merged, summed
