"""The two collectives of synchronized batch norm: one for the statistics, one for the gradients.

Used by the core (``functional._BatchNormTrain``) when it is given a process group; the module
around it is :class:`batchnorm.distributed.SyncBatchNorm`. Equation numbers refer to
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

import torch
import torch.distributed as dist
from torch import Tensor


def _all_gather(out: Tensor, inp: Tensor, group) -> None:
    # torch >= 2.10 renamed all_gather_into_tensor (the old name warns).
    gather = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
    gather(out, inp, group=group)


def all_gather_stats(mean: Tensor, var: Tensor, count: int, group) -> tuple[Tensor, Tensor, int]:
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
    total = int(counts.sum().item())
    if total == 0:
        return (
            mean.new_zeros(channels, dtype=torch.float64),
            var.new_full((channels,), float("nan")),
            0,
        )
    # (eq. 22) Two-pass weighted mean: the correction sum(n (mu_k - ref)) / N subtracts means
    # of similar size only.
    ref = (counts * means).sum(0) / total
    mu = ref + (counts * (means - ref)).sum(0) / total
    m2 = m2s.sum(0) + (counts * (means - mu) ** 2).sum(0)
    return mu, (m2 / total).to(var.dtype), total


def all_reduce_sums(sum_dy: Tensor, sum_dy_xmu: Tensor, group) -> tuple[Tensor, Tensor]:
    """Sum ``sum(dy)`` and ``sum(dy * (x - mean))`` over the ranks, in one packed collective."""
    packed = torch.stack([sum_dy, sum_dy_xmu])  # (2, C)
    dist.all_reduce(packed, op=dist.ReduceOp.SUM, group=group)
    return packed[0], packed[1]
