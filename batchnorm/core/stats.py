"""Per-channel statistics: the count, the Bessel correction and the merge of partial moments.

One home for the arithmetic every other file needs: the number of values behind a channel's
statistics, the unbiased variance stored in ``running_var`` (eq. 16), and Chan's merge of
``(count, mean, M2)`` triples (eq. 19-22) that synchronized BN, population statistics and
the ghost batches use. Equation numbers refer to ``docs/math.md``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor

__all__ = ["BatchStats", "Moments", "bessel", "count_per_channel", "merge_moments"]


def count_per_channel(x: Tensor, axis: int) -> int:
    """``m``, the number of values behind each channel's statistics: every axis but ``axis``.

    0 for an empty input (a rank of a synchronized batch may hold no sample).
    """
    channels = x.shape[axis]
    return x.numel() // channels if channels else 0


def bessel(var: Tensor, count: int | float | Tensor) -> Tensor:
    """The unbiased variance ``var * m / (m - 1)`` of a biased ``var`` over ``m`` values (eq. 16).

    A count of 1 (or less) has no unbiased estimate; ``var`` is returned as it is there (the
    training check rejects such batches before their statistics are stored). ``count`` may be
    a tensor broadcasting against ``var`` (one count per ghost batch).
    """
    if isinstance(count, Tensor):
        c = count.to(torch.float64)
        # The factor in float64, then rounded once to var's dtype, as for a Python count.
        factor = torch.where(c > 1, c / (c - 1).clamp(min=1), torch.ones_like(c))
        return var * factor.to(var.dtype)
    return var * (count / (count - 1)) if count > 1 else var


class BatchStats(NamedTuple):
    """The statistics of one training batch, as the core's statistics step returns them.

    A named tuple (not a dataclass) so that ``torch.compile`` traces its construction.

    Attributes:
        mean: (C,) float64, ``sum(x) / m`` (eq. 1).
        var: (C,) biased ``sum((x - mean)^2) / m`` (eq. 2) in the accumulation dtype.
        num_values: ``m``, values per channel (over every process when synchronized).
    """

    mean: Tensor
    var: Tensor
    num_values: int


@dataclass(frozen=True)
class Moments:
    """Per-channel ``(count, mean, M2)`` with ``M2 = sum((x - mean)^2)``, in float64.

    The sufficient statistics that merge exactly (:func:`merge_moments`): the moments of a
    concatenation are a function of the parts' moments, whatever the split.
    """

    count: float
    mean: Tensor
    m2: Tensor

    @classmethod
    def of(cls, count: int | float, mean: Tensor, var: Tensor) -> Moments:
        """From a count, a mean and the *biased* variance ``M2 / count``."""
        return cls(float(count), mean.double(), var.double() * count)

    def var(self, unbiased: bool) -> Tensor:
        """``M2 / (n - 1)`` (eq. 21, unbiased) or ``M2 / n`` (biased)."""
        if unbiased and self.count > 1:
            return self.m2 / (self.count - 1)
        return self.m2 / self.count

    def merge(self, other: Moments) -> Moments:
        """The moments of the union of two disjoint sets of values (Chan, eq. 19-20)."""
        if other.count == 0:
            return self
        if self.count == 0:
            return other
        mean, m2, total = merge_moments(
            [self.count, other.count],
            torch.stack([self.mean, other.mean.to(self.mean.device)]),
            torch.stack([self.m2, other.m2.to(self.m2.device)]),
        )
        return Moments(total, mean, m2)


def merge_moments(
    counts: Tensor | Sequence[float], means: Tensor, m2s: Tensor
) -> tuple[Tensor, Tensor, float]:
    """Merge ``K`` partial moments into those of their union (Chan et al., eq. 22), in float64.

    ::

        N  = sum_k n_k
        mu = sum_k n_k mu_k / N           (two-pass: re-centred on a first estimate)
        M2 = sum_k M2_k + sum_k n_k (mu_k - mu)^2

    Every process that merges the same gathered triples in the same order gets the same bits.

    Args:
        counts: the values behind each part (0 for an empty part): K Python numbers, or a
            (K, 1) tensor (its sum is read on the host: one synchronisation on a GPU).
        means: (K, C) per-part means.
        m2s: (K, C) per-part sums of squared deviations about their own mean.

    Returns:
        ``(mean, M2, N)``: (C,) float64 each and the total count; for ``N == 0`` the mean and
        M2 are zeros.
    """
    means, m2s = means.double(), m2s.double()
    if isinstance(counts, Tensor):
        counts = counts.double().reshape(-1, 1)
        total = float(counts.sum())
    else:
        total = float(sum(counts))
        counts = torch.tensor(counts, dtype=torch.float64, device=means.device).reshape(-1, 1)
    if total == 0:
        zeros = means.new_zeros(means.shape[1])
        return zeros, zeros.clone(), 0.0
    # (eq. 22) The correction sum(n (mu_k - ref)) / N subtracts means of similar size only,
    # which keeps the digits a single weighted average of |mean| >> std would round away.
    ref = (counts * means).sum(0) / total
    mu = ref + (counts * (means - ref)).sum(0) / total
    m2 = m2s.sum(0) + (counts * (means - mu) ** 2).sum(0)
    return mu, m2, total
