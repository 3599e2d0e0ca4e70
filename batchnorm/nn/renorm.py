"""Batch Renormalization (Ioffe 2017, arXiv:1702.03275): the core's normalize step with (r, d).

In training, with ``sigma_B = sqrt(var_B + eps)`` and ``sigma = sqrt(running_var + eps)``::

    r = clip(sigma_B / sigma, 1 / r_max, r_max)                 (stop-gradient)
    d = clip((mean_B - running_mean) / sigma, -d_max, d_max)    (stop-gradient)
    y = gamma * ((x - mean_B) / sigma_B * r + d) + beta

which is the core's normalize step with ``scale = gamma * inv_std * r`` and
``shift = beta + gamma * d``, and the core's backward with ``k = gamma * inv_std * r``
(docs/variants.md derives it). r and d use the running statistics *before* this batch's
update. The running statistics are then updated exactly as plain BN does (eq. 13, running
variance, not the paper's running std), and evaluation is plain BN: the state_dict is that
of ``torch.nn.BatchNorm*d``, and the schedule step is ``num_batches_tracked``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from ..core import functional as F
from .batchnorm import BatchNorm, Rank1d, Rank2d, Rank3d

__all__ = [
    "LinearSchedule",
    "batch_renorm",
    "BatchRenorm",
    "BatchRenorm1d",
    "BatchRenorm2d",
    "BatchRenorm3d",
]

Limit = float | Callable[[int], float]


@dataclass(frozen=True)
class LinearSchedule:
    """``start`` until step ``begin``, then linear to ``end`` at step ``stop``, then ``end``.

    The paper's ImageNet runs (Ioffe 2017, section 4.1) keep r_max = 1 and d_max = 0 for the
    first 5000 steps, then relax them to r_max = 3 at 40k steps and d_max = 5 at 25k steps:
    ``LinearSchedule(1, 3, 5000, 40000)`` and ``LinearSchedule(0, 5, 5000, 25000)``, the
    defaults of :class:`BatchRenorm`. Scale the step counts to your own training length.
    """

    start: float
    end: float
    begin: int
    stop: int

    def __post_init__(self) -> None:
        if not 0 <= self.begin <= self.stop:
            raise ValueError(f"need 0 <= begin <= stop, got begin={self.begin}, stop={self.stop}")

    def __call__(self, step: int) -> float:
        if step <= self.begin:
            return float(self.start)
        if step >= self.stop:
            return float(self.end)
        t = (step - self.begin) / (self.stop - self.begin)
        return float(self.start + t * (self.end - self.start))


PAPER_R_MAX = LinearSchedule(1.0, 3.0, 5000, 40000)
PAPER_D_MAX = LinearSchedule(0.0, 5.0, 5000, 25000)


def _check_limits(r_max: float, d_max: float) -> None:
    if not r_max >= 1.0:
        raise ValueError(
            f"r_max must be >= 1 (r is clipped to [1/r_max, r_max]), got {r_max}; 1 gives plain BN"
        )
    if not d_max >= 0.0:
        raise ValueError(
            f"d_max must be >= 0 (d is clipped to [-d_max, d_max]), got {d_max}; 0 gives plain BN"
        )


def batch_renorm(
    input: Tensor,
    running_mean: Tensor,
    running_var: Tensor,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    training: bool = False,
    momentum: float | None = 0.1,
    eps: float = 1e-5,
    *,
    r_max: float = 3.0,
    d_max: float = 5.0,
    axis: int = 1,
    num_batches_tracked: Tensor | None = None,
    store_unbiased: bool = True,
    skipped_updates: Tensor | None = None,
    mask: Tensor | None = None,
    small_batch: str = "raise",
    process_group: object | None = None,
) -> Tensor:
    """Batch Renormalization, functional form: :func:`batchnorm.functional.batch_norm` plus (r, d).

    Training output ``gamma * ((x - mean_B) / sigma_B * r + d) + beta`` with r, d as in the
    module docstring (clipped, stop-gradient, from the running statistics before the update);
    the running statistics are then updated as plain BN does (eq. 13). Evaluation is plain
    BN. ``r_max=1, d_max=0`` gives plain BN exactly (bit for bit).

    Args:
        input, running_mean, running_var, weight, bias, training, momentum, eps: as
            :func:`batchnorm.functional.batch_norm`; the running statistics are required.
        r_max: clip of r, >= 1 (a float: the schedule is the module's business).
        d_max: clip of d, >= 0.
        axis, num_batches_tracked, store_unbiased, skipped_updates, mask, small_batch,
            process_group: as batch_norm (with a process group, r and d come from the global
            batch statistics, so every rank applies the same correction).

    Returns:
        The normalized tensor.

    Raises:
        ValueError: r_max < 1, d_max < 0, missing running statistics, or as batch_norm.
    """
    _check_limits(r_max, d_max)
    if running_mean is None or running_var is None:
        raise ValueError(
            "batch_renorm needs running_mean and running_var (r and d compare the batch with them); "
            "use batchnorm.functional.batch_norm for batch statistics alone"
        )

    def correction(mean: Tensor, var: Tensor) -> tuple[Tensor, Tensor]:
        # (C,) each; computed from the running statistics before this batch's update.
        sigma = torch.sqrt(running_var.to(var.dtype) + eps)
        r = (torch.sqrt(var + eps) / sigma).clamp(1.0 / r_max, r_max)
        d = ((mean - running_mean.to(mean.dtype)) / sigma.to(mean.dtype)).clamp(-d_max, d_max)
        return r, d

    return F.batch_norm(
        input,
        running_mean,
        running_var,
        weight,
        bias,
        training,
        momentum,
        eps,
        axis=axis,
        num_batches_tracked=num_batches_tracked,
        store_unbiased=store_unbiased,
        skipped_updates=skipped_updates,
        mask=mask,
        correction=correction,
        small_batch=small_batch,
        process_group=process_group,
    )


class BatchRenorm(BatchNorm):
    """Batch Renormalization over any channel axis; a :class:`batchnorm.BatchNorm` in evaluation.

    ``r_max`` and ``d_max`` are floats or callables ``step -> float`` evaluated at
    ``step = num_batches_tracked`` (the number of training updates so far, a persistent
    buffer that torch's BatchNorm also has): defaults are the paper's schedule
    (:data:`PAPER_R_MAX`, :data:`PAPER_D_MAX`). The state_dict keys are exactly torch's, so a
    model converts both ways by ``load_state_dict``; the schedule is configuration, not state.
    Reading the step costs one host synchronisation per training call.

    Args:
        num_features, eps, momentum, affine, device, dtype: as :class:`BatchNorm`.
        r_max: float >= 1 or ``step -> float``.
        d_max: float >= 0 or ``step -> float``.
        axis, center, scale, store_unbiased, small_batch: keyword-only, as BatchNorm.

    Raises:
        ValueError: ``track_running_stats=False`` (r and d need running statistics).
    """

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        *,
        r_max: Limit = PAPER_R_MAX,
        d_max: Limit = PAPER_D_MAX,
        **kwargs,
    ) -> None:
        if not track_running_stats:
            raise ValueError(
                "BatchRenorm needs track_running_stats=True: r and d compare the batch statistics "
                "with the running ones; use BatchNorm(track_running_stats=False) for batch statistics"
            )
        super().__init__(num_features, eps, momentum, affine, True, device, dtype, **kwargs)
        self.r_max, self.d_max = r_max, d_max

    def limits(self, step: int | None = None) -> tuple[float, float]:
        """``(r_max, d_max)`` at ``step`` (default: the current ``num_batches_tracked``)."""
        if step is None:
            assert self.num_batches_tracked is not None  # track_running_stats=True (checked)
            step = int(self.num_batches_tracked)
        r = self.r_max(step) if callable(self.r_max) else self.r_max
        d = self.d_max(step) if callable(self.d_max) else self.d_max
        return float(r), float(d)

    def forward(self, input: Tensor, mask: Tensor | None = None) -> Tensor:
        if not self.training:
            return super().forward(input, mask)
        self._check_input_dim(input)
        r_max, d_max = self.limits()
        assert self.running_mean is not None and self.running_var is not None
        return batch_renorm(
            input,
            self.running_mean,
            self.running_var,
            self.weight,
            self.bias,
            True,
            self.momentum,
            self.eps,
            r_max=r_max,
            d_max=d_max,
            axis=self.axis,
            num_batches_tracked=self.num_batches_tracked,
            store_unbiased=self.store_unbiased,
            skipped_updates=self.skipped_updates,
            mask=mask,
            small_batch=self.small_batch,
            process_group=self._sync_group(),
        )

    def extra_repr(self) -> str:
        return super().extra_repr() + f", r_max={self.r_max}, d_max={self.d_max}"


class BatchRenorm1d(Rank1d, BatchRenorm):
    """:class:`BatchRenorm` for (N, C) or (N, C, L) input."""


class BatchRenorm2d(Rank2d, BatchRenorm):
    """:class:`BatchRenorm` for (N, C, H, W) input."""


class BatchRenorm3d(Rank3d, BatchRenorm):
    """:class:`BatchRenorm` for (N, C, D, H, W) input."""
