"""Batch-norm modules: drop-in ``torch.nn.BatchNorm1d/2d/3d`` and a general ``BatchNorm``.

The modules hold parameters and buffers and choose between training and evaluation; the
math is :func:`batchnorm.functional.batch_norm`. They subclass
``torch.nn.modules.batchnorm._BatchNorm``, so ``isinstance`` checks written for torch's
layers (weight-decay exclusion, ``SyncBatchNorm.convert_sync_batchnorm``, DDP buffer
broadcast) accept them, and their ``state_dict`` keys are torch's: ``weight``, ``bias``,
``running_mean``, ``running_var``, ``num_batches_tracked``.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.nn.modules.batchnorm import _BatchNorm

from . import functional as F

__all__ = ["BatchNorm", "BatchNorm1d", "BatchNorm2d", "BatchNorm3d"]


class BatchNorm(_BatchNorm):
    """Batch normalization over any channel axis of an input of any rank >= 2.

    In training, each channel is normalized with the batch's statistics over every other
    axis (batch and spatial positions)::

        y = (x - mean_B) / sqrt(var_B + eps) * weight + bias          (var_B biased)

    and the running statistics are updated as
    ``running = (1 - momentum) * running + momentum * batch_stat`` (PyTorch convention;
    Keras's momentum 0.99 is 0.01 here), storing the unbiased variance ``var_B * m/(m-1)``
    unless ``store_unbiased=False``; ``momentum=None`` is a cumulative average. In
    evaluation (``model.eval()``) the running statistics are used, so BN is one fixed affine
    map per channel. With ``track_running_stats=False`` batch statistics are used in both.

    Running statistics are never overwritten with NaN or inf: such a batch is skipped and
    counted in the (non-persistent) buffer ``skipped_updates``.

    Args:
        num_features: number of channels C.
        eps: added to the variance inside the square root; > 0.
        momentum: weight of the new batch in the running average, or None (cumulative).
        affine: learn gamma (``weight``) and beta (``bias``), initialised to 1 and 0.
        track_running_stats: keep running statistics for evaluation.
        axis: keyword-only, the channel axis (1 for NCHW, -1 for channels-last/Keras).
        center: keyword-only, learn beta; defaults to ``affine`` (Keras's ``center``).
        scale: keyword-only, learn gamma; defaults to ``affine`` (Keras's ``scale``).
        store_unbiased: keyword-only, store the unbiased (PyTorch) or biased (Keras/Flax)
            variance in ``running_var``.
        small_batch: keyword-only, what a training call with one value per channel does:
            ``"raise"`` (ValueError, as torch), ``"running"`` (normalize with the running
            statistics, update nothing), ``"skip"`` (Algorithm 1 as written, ``y = beta``, no
            update). An attribute: change it at any time.

    Shape:
        Input: any rank >= 2 with ``C`` entries along ``axis``. Output: same as input.

    Raises:
        ValueError: eps <= 0, num_features < 1, or (at call time) see
            :func:`batchnorm.functional.batch_norm`.

    Example:
        >>> bn = BatchNorm(3, axis=-1)          # NHWC, as Keras
        >>> y = bn(torch.randn(8, 5, 5, 3))
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
        axis: int = 1,
        center: bool | None = None,
        scale: bool | None = None,
        store_unbiased: bool = True,
        small_batch: str = "raise",
    ) -> None:
        if not isinstance(num_features, int) or num_features < 1:
            raise ValueError(
                f"num_features must be a positive int (the number of channels), got {num_features!r}"
            )
        if not eps > 0:
            raise ValueError(f"eps must be > 0, got {eps}; PyTorch's default is 1e-5, Keras's 1e-3")
        if momentum is not None and not 0.0 <= momentum <= 1.0:
            raise ValueError(
                f"momentum must be in [0, 1] or None, got {momentum}; it weighs the new batch "
                "(PyTorch convention): a Keras momentum of 0.99 is 0.01 here"
            )
        center = affine if center is None else center
        scale = affine if scale is None else scale
        super().__init__(
            num_features, eps, momentum, center or scale, track_running_stats, device, dtype
        )
        self.axis = axis
        self.store_unbiased = store_unbiased
        if small_batch not in F.SMALL_BATCH_POLICIES:
            raise ValueError(
                f"small_batch must be one of {F.SMALL_BATCH_POLICIES}, got {small_batch!r}"
            )
        self.small_batch = small_batch
        if self.affine and not scale:
            self.register_parameter("weight", None)
        if self.affine and not center:
            self.register_parameter("bias", None)
        self.register_buffer(
            "skipped_updates", torch.zeros((), dtype=torch.long, device=device), persistent=False
        )

    def reset_parameters(self) -> None:
        self.reset_running_stats()
        with torch.no_grad():
            if getattr(self, "weight", None) is not None:
                self.weight.fill_(1.0)
            if getattr(self, "bias", None) is not None:
                self.bias.zero_()

    def _check_input_dim(self, input: Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(
                f"{type(self).__name__} expects an input of rank >= 2, got shape {tuple(input.shape)}"
            )

    # Statistics policy (batchnorm.freeze.set_stats_mode): None follows self.training as
    # torch.nn does; "batch" / "running" / "frozen" fix the choice through model.train().
    stats_mode: str | None = None

    def forward(self, input: Tensor, mask: Tensor | None = None) -> Tensor:
        """Normalize ``input``; ``mask`` (bool, True = valid) restricts the statistics."""
        self._check_input_dim(input)
        # As torch.nn: batch statistics in training, and in eval when there are no running
        # statistics; buffers are passed (and so updated) only when they are tracked.
        no_stats = self.running_mean is None and self.running_var is None
        if self.stats_mode is None:
            use_batch_stats = self.training or no_stats
            update = self.training and self.track_running_stats
            if update and torch.is_grad_enabled() and self.affine:
                _warn_if_params_frozen(self)
        else:
            use_batch_stats = self.stats_mode == "batch" or no_stats
            update = self.stats_mode == "batch" and self.training and self.track_running_stats
        pass_buffers = update or not use_batch_stats
        return F.batch_norm(
            input,
            self.running_mean if pass_buffers else None,
            self.running_var if pass_buffers else None,
            self.weight,
            self.bias,
            use_batch_stats,
            self.momentum,
            self.eps,
            axis=self.axis,
            num_batches_tracked=self.num_batches_tracked if update else None,
            store_unbiased=self.store_unbiased,
            skipped_updates=self.skipped_updates if update else None,
            mask=mask,
            small_batch=getattr(self, "small_batch", "raise"),
            # Synchronized statistics only in training, as torch.nn.SyncBatchNorm.
            process_group=self._sync_group() if use_batch_stats and self.training else None,
        )

    def _sync_group(self) -> object | None:
        """The ``torch.distributed`` group to synchronize the statistics over, or None (local).

        Local here; :class:`batchnorm.distributed.SyncBatchNorm` overrides it.
        """
        return None

    def extra_repr(self) -> str:
        s = super().extra_repr()
        if self.axis != 1:
            s += f", axis={self.axis}"
        if self.affine and (self.weight is None or self.bias is None):
            s += f", center={self.bias is not None}, scale={self.weight is not None}"
        if not self.store_unbiased:
            s += ", store_unbiased=False"
        if getattr(self, "small_batch", "raise") != "raise":
            s += f", small_batch={self.small_batch!r}"
        if self.stats_mode is not None:
            s += f", stats_mode={self.stats_mode!r}"
        return s


def _warn_if_params_frozen(bn: BatchNorm) -> None:
    """Warn once per layer: gamma/beta frozen while the running statistics still move."""
    params = [p for p in (bn.weight, bn.bias) if p is not None]
    if (
        params
        and not any(p.requires_grad for p in params)
        and not getattr(bn, "_warned_frozen", False)
    ):
        from .freeze import warn_frozen_params_updating  # lazy: freeze imports this module

        bn._warned_frozen = True
        warn_frozen_params_updating(bn)


class _FixedRank(BatchNorm):
    """A ``BatchNorm`` with channels on axis 1 and torch's rank check."""

    _ranks: tuple[int, ...] = ()
    _shape_hint = ""

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
        small_batch: str = "raise",
    ) -> None:
        super().__init__(
            num_features,
            eps,
            momentum,
            affine,
            track_running_stats,
            device,
            dtype,
            axis=1,
            small_batch=small_batch,
        )

    def _check_input_dim(self, input: Tensor) -> None:
        if input.dim() not in self._ranks:
            want = " or ".join(f"{r}D" for r in self._ranks)
            raise ValueError(
                f"{type(self).__name__} expects {want} input {self._shape_hint}, got {input.dim()}D "
                f"input of shape {tuple(input.shape)}; use the BatchNorm of the matching rank, or "
                "batchnorm.BatchNorm(num_features, axis=...) for any rank"
            )


class BatchNorm1d(_FixedRank):
    """:class:`BatchNorm` for (N, C) or (N, C, L) input, as ``torch.nn.BatchNorm1d``."""

    _ranks = (2, 3)
    _shape_hint = "(N, C) or (N, C, L)"


class BatchNorm2d(_FixedRank):
    """:class:`BatchNorm` for (N, C, H, W) input (any memory format), as ``torch.nn.BatchNorm2d``."""

    _ranks = (4,)
    _shape_hint = "(N, C, H, W)"


class BatchNorm3d(_FixedRank):
    """:class:`BatchNorm` for (N, C, D, H, W) input, as ``torch.nn.BatchNorm3d``."""

    _ranks = (5,)
    _shape_hint = "(N, C, D, H, W)"
