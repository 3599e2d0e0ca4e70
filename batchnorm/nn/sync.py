"""Synchronized batch norm over ``torch.distributed``, on CPU (gloo) and GPU (NCCL).

:class:`SyncBatchNorm` normalizes each rank's share of a global batch with the statistics of
the *whole* global batch, so that ``W`` processes with ``B / W`` samples each compute what one
process computes with ``B``. The math is the core's (``functional.batch_norm`` with a
``process_group``): per rank the four kernel primitives, between them two collectives per
layer and step (``batchnorm._sync``):

- forward, one ``all_gather`` of each rank's per-channel ``(count, mean, M2)``, merged on every
  rank with Chan's formula in float64 (docs/math.md eq. 22);
- backward, one ``all_reduce`` of ``(sum(dy), sum(dy * (x - mean)))``.

Unlike ``torch.nn.SyncBatchNorm`` it runs on CPU tensors (gloo), accepts any rank and channel
axis, unequal batches and ranks with zero samples.

:func:`batchnorm.convert_sync_batchnorm` and :func:`batchnorm.revert_sync_batchnorm`
(``batchnorm.tools.sync``) swap the layers of a model, sharing their parameters and buffers.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from ..core.collectives import DEFAULT_TIMEOUT, SyncGroup, active_group, check_agreement
from .batchnorm import BatchNorm
from .renorm import BatchRenorm

__all__ = ["SyncBatchNorm", "SyncBatchRenorm"]


class _Synchronized:
    """What both synchronized layers share: the group, its timeout, and the agreement check.

    The first training call on a group checks, in one small collective, that every rank runs
    this layer with the same width, dtype, input rank and channel axis
    (``core.collectives.check_agreement``), and raises the same clear error on every rank if
    not; afterwards the answer is cached. Every collective waits at most ``timeout`` (the
    check at most a minute), then raises naming the layer and, on gloo, the ranks that did
    not answer.
    """

    process_group: Any
    timeout: timedelta
    label: str = ""
    _agreed_on: Any = None

    def _init_sync(self, process_group: Any, timeout: float | timedelta | None) -> None:
        self.process_group = process_group
        if timeout is None:
            timeout = DEFAULT_TIMEOUT
        elif not isinstance(timeout, timedelta):
            timeout = timedelta(seconds=float(timeout))
        if timeout.total_seconds() <= 0:
            raise ValueError(f"timeout must be positive, got {timeout}")
        self.timeout = timeout

    def _sync_group(self) -> SyncGroup | None:
        group = active_group(self.process_group)
        if group is None:
            return None
        label = self.label or f"{type(self).__name__}({getattr(self, 'num_features', '?')})"
        return SyncGroup(group, self.timeout, label)

    def forward(self, input: Tensor, mask: Tensor | None = None) -> Tensor:
        if getattr(self, "training", False):
            sync = self._sync_group()
            if sync is not None and self._agreed_on is not sync.group:
                axis = getattr(self, "axis", 1) % max(input.ndim, 1)
                check_agreement(sync, input, axis)
                self._agreed_on = sync.group
        return super().forward(input, mask)  # type: ignore[misc]


class SyncBatchNorm(_Synchronized, BatchNorm):
    """:class:`~batchnorm.BatchNorm` whose training statistics span every process of a group.

    In training, over the union ``U`` of the batches of all ranks of ``process_group``::

        y = (x - mean_U) / sqrt(var_U + eps) * weight + bias           (var_U biased)
        running = (1 - momentum) * running + momentum * batch_stat     (on every rank alike)

    with ``running_var`` storing ``var_U * N / (N - 1)``, ``N`` the global number of values
    per channel. Ranks may hold different batch sizes, or none (an empty input still joins
    the collectives and returns an empty output). The input gradient is the gradient of the
    sum of every rank's loss; the weight and bias gradients are this rank's share, which
    DDP's gradient all-reduce (or an explicit ``all_reduce``) turns into the global ones.

    It behaves exactly as :class:`~batchnorm.BatchNorm` (no collective, so no hang) in
    evaluation, when ``torch.distributed`` is not available or not initialized, or when the
    group has a single process. Every rank must call the layer in the same order, and take
    the backward through it if any rank does. Double backward is not supported while
    synchronizing. A ``ValueError`` (on every rank) if the ranks hold one value per channel
    in all.

    Args:
        num_features, eps, momentum, affine, track_running_stats, device, dtype: as
            :class:`~batchnorm.BatchNorm` (and ``torch.nn.SyncBatchNorm``).
        process_group: the group to synchronize over; None means the default (world) group.
        axis, center, scale, store_unbiased, small_batch: keyword-only, as
            :class:`~batchnorm.BatchNorm`; ``small_batch`` applies to the global count.
        timeout: keyword-only, seconds (or a ``timedelta``) that one collective waits for the
            other ranks before raising a ``BatchNormError`` that names the layer (default 5
            minutes; the first call's agreement check waits at most 1 minute). The attribute
            ``label`` (set by ``convert_sync_batchnorm`` to the layer's name) names it.

    Example:
        >>> # in each process started by torchrun, after dist.init_process_group("gloo")
        >>> model = convert_sync_batchnorm(model)
        >>> model = torch.nn.parallel.DistributedDataParallel(model)
    """

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
        process_group: dist.ProcessGroup | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        *,
        axis: int = 1,
        center: bool | None = None,
        scale: bool | None = None,
        store_unbiased: bool = True,
        small_batch: str = "raise",
        timeout: float | timedelta | None = None,
    ) -> None:
        super().__init__(
            num_features,
            eps,
            momentum,
            affine,
            track_running_stats,
            device,
            dtype,
            axis=axis,
            center=center,
            scale=scale,
            store_unbiased=store_unbiased,
            small_batch=small_batch,
        )
        self._init_sync(process_group, timeout)


class SyncBatchRenorm(_Synchronized, BatchRenorm):
    """Batch Renormalization (:class:`batchnorm.BatchRenorm`) with synchronized statistics.

    In training the batch statistics, and so r and d, are those of the global batch over
    ``process_group`` (the same collectives as :class:`SyncBatchNorm`); every rank applies the
    same correction and keeps the same running statistics. Evaluation is local.

    Args:
        num_features, eps, momentum, affine, device, dtype, r_max, d_max: as
            :class:`batchnorm.BatchRenorm` (keyword arguments of BatchNorm pass through).
        process_group: keyword-only, the group to synchronize over; None means the world.
        timeout: keyword-only, as :class:`SyncBatchNorm`.
    """

    def __init__(
        self,
        *args: Any,
        process_group: dist.ProcessGroup | None = None,
        timeout: float | timedelta | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self._init_sync(process_group, timeout)
