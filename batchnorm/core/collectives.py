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

from datetime import timedelta
from typing import Any, NamedTuple

import torch
import torch.distributed as dist
from torch import Tensor

from .stats import merge_moments
from .validate import BatchNormError

__all__ = [
    "CHECK_TIMEOUT",
    "DEFAULT_TIMEOUT",
    "SyncGroup",
    "active_group",
    "all_gather_moments",
    "all_gather_stats",
    "all_reduce_sums",
    "check_agreement",
    "is_distributed",
]

#: How long a synchronized layer waits for the other ranks in one collective before it raises
#: (torch.distributed's own default is 30 minutes, which looks like a hang).
DEFAULT_TIMEOUT = timedelta(minutes=5)
#: The first synchronisation of a layer (the agreement check) waits at most this long.
CHECK_TIMEOUT = timedelta(seconds=60)
_DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)


class SyncGroup(NamedTuple):
    """A process group with what its errors should say: the layer and the timeout.

    What a synchronized layer passes as ``process_group``; a plain group works too (then the
    label is empty and the timeout :data:`DEFAULT_TIMEOUT`).
    """

    group: Any
    timeout: timedelta = DEFAULT_TIMEOUT
    label: str = ""


def _unpack(group: Any) -> SyncGroup:
    return group if isinstance(group, SyncGroup) else SyncGroup(group)


def _wait(work: Any, sync: SyncGroup, what: str, timeout: timedelta | None = None) -> None:
    """Wait for ``work`` at most the timeout; a rank that does not answer becomes a clear error
    naming the layer and, where the backend can tell (gloo), the ranks that did not answer."""
    timeout = sync.timeout if timeout is None else timeout
    try:
        work.wait(timeout=timeout)
    except RuntimeError as err:
        missing = ""
        if dist.get_backend(sync.group) == "gloo":
            try:  # names the ranks that did not answer (on rank 0; the others point there)
                dist.monitored_barrier(
                    sync.group, timeout=min(timeout, timedelta(seconds=10)), wait_all_ranks=True
                )
            except RuntimeError as found:
                missing = f" ({str(found).splitlines()[0]})"
        layer = f" {sync.label}" if sync.label else ""
        raise BatchNormError(
            f"synchronized batch norm{layer}: rank {dist.get_rank()} waited "
            f"{timeout.total_seconds():g} s for the other ranks' {what} and timed out{missing}. "
            "Every rank must run the same layers in the same order, in training mode, with the "
            "same process group; a rank that failed or skipped this layer leaves the others "
            "waiting. Raise the limit with SyncBatchNorm(timeout=...) if a step is slow"
        ) from err


def check_agreement(sync: Any, x: Tensor, axis: int) -> None:
    """Check, in one small collective, that every rank runs this layer with the same width,
    dtype, rank and channel axis; raise the same :class:`BatchNormError` on every rank if not.

    Made once per layer and group (the layer caches it): a mismatch would otherwise make
    gloo abort one process and reset the others' connections.
    """
    sync = _unpack(sync)
    code = _DTYPES.index(x.dtype) if x.dtype in _DTYPES else len(_DTYPES)
    local = torch.tensor([x.shape[axis], code, x.ndim, axis], dtype=torch.int64, device=x.device)
    world = dist.get_world_size(sync.group)
    gathered = local.new_empty(world * local.numel())
    work = _all_gather(gathered, local, sync.group)
    _wait(work, sync, "layer description", timeout=min(sync.timeout, CHECK_TIMEOUT))
    table = gathered.view(world, local.numel()).cpu().tolist()
    if all(row == table[0] for row in table):
        return

    def describe(row: list[int]) -> str:
        dtype = _DTYPES[row[1]] if row[1] < len(_DTYPES) else "another dtype"
        return f"{row[0]} channels, {dtype}, rank-{row[2]} input, channel axis {row[3]}"

    ranks = "; ".join(f"rank {r}: {describe(row)}" for r, row in enumerate(table))
    layer = f" {sync.label}" if sync.label else ""
    raise BatchNormError(
        f"synchronized batch norm{layer} differs across ranks ({ranks}); every rank must build "
        "the same model (same widths and dtypes) and call its layers in the same order"
    )


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
    if isinstance(process_group, SyncGroup):
        inner = active_group(process_group.group)
        return None if inner is None else process_group._replace(group=inner)
    group = process_group if process_group is not None else dist.group.WORLD
    if dist.get_world_size(group) <= 1:
        return None
    return group


def _all_gather(out: Tensor, inp: Tensor, group: Any) -> Any:
    """Start an all-gather of ``inp`` into ``out``; returns the work to wait on."""
    # torch >= 2.10 renamed all_gather_into_tensor (the old name warns).
    gather = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
    return gather(out, inp, group=group, async_op=True)


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
    sync = _unpack(group)
    world = dist.get_world_size(sync.group)
    gathered = local.new_empty(world * local.numel())
    _wait(_all_gather(gathered, local, sync.group), sync, "batch statistics")
    gathered = gathered.view(world, 1 + 2 * channels)  # (W, 1 + 2C)
    counts = gathered[:, :1]  # (W, 1)
    means, m2s = gathered[:, 1 : 1 + channels], gathered[:, 1 + channels :]  # (W, C) each
    mu, m2, total = merge_moments(counts, means, m2s)  # (eq. 22), the same bits on every rank
    if total == 0:
        return mu, var.new_full((channels,), float("nan")), 0
    return mu, (m2 / total).to(var.dtype), int(total)


def all_reduce_sums(sum_dy: Tensor, sum_dy_xmu: Tensor, group: Any) -> tuple[Tensor, Tensor]:
    """Sum ``sum(dy)`` and ``sum(dy * (x - mean))`` over the ranks, in one packed collective."""
    sync = _unpack(group)
    packed = torch.stack([sum_dy, sum_dy_xmu])  # (2, C)
    work = dist.all_reduce(packed, op=dist.ReduceOp.SUM, group=sync.group, async_op=True)
    _wait(work, sync, "gradient sums")
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
    if dist.get_backend(_unpack(group).group) == "nccl":
        device = torch.device("cuda", torch.cuda.current_device())
    sizes = [mean.numel() for _, mean, _ in parts]
    pieces = [torch.tensor([c for c, _, _ in parts], dtype=torch.float64)]
    pieces += [t.double().cpu() for _, mean, m2 in parts for t in (mean, m2)]
    pieces += [t.double().cpu() for t in sums]
    local = torch.cat(pieces).to(device)  # (L + 2 sum C + sum S,)
    sync = _unpack(group)
    world = dist.get_world_size(sync.group)
    gathered = local.new_empty(world * local.numel())
    _wait(_all_gather(gathered, local, sync.group), sync, "population statistics")
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
