"""Ghost (virtual) batch normalization: the core's statistics step per virtual batch.

The batch (axis 0) is cut into consecutive ghost batches of ``ghost_size`` samples, and each
(ghost, channel) pair is normalized with its own statistics (Hoffer et al. 2017, "Train
longer, generalize better"). Vectorised, no loop over ghosts: the ``G`` full ghosts are viewed
as one batch of ``ghost_size`` samples with ``G * C`` channels, ``(G*g, ..., C, ...) ->
(g, ..., G*C, ...)`` (one copy), and go through the core op once with gamma and beta
repeated ``G`` times (their gradients sum over the ghosts). A last uneven chunk of ``r``
samples is its own ghost batch (a second call); if it would hold a single value per channel
it joins the last full ghost instead.

Running statistics (Algorithm 2 style, over the ghost batches of this step, weighted by their
sizes ``n_k``)::

    mean_step = sum_k n_k mean_k / N        (= the whole batch's mean)
    var_step  = sum_k n_k var_k' / N        var_k' = var_k * m_k / (m_k - 1) (unbiased), or
                                            var_k (biased) with store_unbiased=False
    running   = (1 - momentum) * running + momentum * step_stat                     (eq. 13)

so ``running_var`` estimates the variance *within* a ghost batch, which is what the training
forward divided by. Evaluation uses the running statistics and does not depend on
``ghost_size``; ``ghost_size >= N`` is plain BN exactly.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..core import functional as F
from ..core import validate
from ..core.autograd import TrainOptions, train_forward
from ..core.stats import bessel, count_per_channel
from .batchnorm import BatchNorm, Rank1d, Rank2d, Rank3d

__all__ = [
    "ghost_batch_norm",
    "GhostBatchNorm",
    "GhostBatchNorm1d",
    "GhostBatchNorm2d",
    "GhostBatchNorm3d",
]


def _ghost_split(n: int, ghost_size: int, per_sample: int) -> tuple[int, int]:
    """``(G, n_head)``: G full ghosts of ``ghost_size`` in the first ``n_head`` samples; the rest,
    if any, is one last ghost (a remainder with one value per channel joins the last full one)."""
    full = n // ghost_size
    rem = n - full * ghost_size
    if full == 0:
        return 0, 0  # one ghost: the whole batch
    if 0 < rem and rem * per_sample < 2:
        full -= 1  # the remainder alone would normalize to beta: merge it
    return full, full * ghost_size


def _ghost_train(
    x: Tensor, weight: Tensor | None, bias: Tensor | None, eps: float, axis: int, g: int, G: int
):
    """Core training step on G ghosts of g samples at once; returns y, means (G, C), vars (G, C)."""
    C = x.shape[axis]
    rest = x.shape[1:]
    xv = x.reshape(G, g, *rest).movedim(0, axis)  # (g, ..., G, C, ...) with G at `axis`
    xv = xv.reshape(*xv.shape[:axis], G * C, *xv.shape[axis + 2 :])  # (g, ..., G*C, ...)
    w = None if weight is None else weight.repeat(G)  # (G*C,) gamma of channel c at g*C + c
    b = None if bias is None else bias.repeat(G)
    yv, stats = train_forward(xv, w, b, TrainOptions(axis, eps))
    yv = yv.reshape(*yv.shape[:axis], G, C, *yv.shape[axis + 1 :]).movedim(axis, 0)  # (G, g, ...)
    return yv.reshape(G * g, *rest), stats.mean.reshape(G, C), stats.var.reshape(G, C)


def ghost_batch_norm(
    input: Tensor,
    running_mean: Tensor | None,
    running_var: Tensor | None,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    training: bool = False,
    momentum: float | None = 0.1,
    eps: float = 1e-5,
    *,
    ghost_size: int,
    axis: int = 1,
    num_batches_tracked: Tensor | None = None,
    store_unbiased: bool = True,
    skipped_updates: Tensor | None = None,
) -> Tensor:
    """Ghost batch normalization: Algorithm 1 per virtual batch of ``ghost_size`` samples.

    ``y = gamma * (x - mean_k) / sqrt(var_k + eps) + beta`` for a sample in ghost batch k,
    statistics per channel over that ghost's samples and positions (biased var_k); the running
    statistics move towards the size-weighted average of the ghosts' statistics (module
    docstring). In evaluation it is :func:`batchnorm.functional.batch_norm`.

    Args:
        input: (N, ...) with the batch on axis 0 and channels on ``axis`` (not 0).
        running_mean, running_var, weight, bias, training, momentum, eps: as batch_norm.
        ghost_size: samples per ghost batch, >= 1; ``>= N`` is plain BN.
        axis, num_batches_tracked, store_unbiased, skipped_updates: as batch_norm.

    Returns:
        The normalized tensor.

    Raises:
        ValueError: ghost_size < 1, a ghost with one value per channel, channels on axis 0,
            or as batch_norm.
    """
    validate.check_ghost_size(ghost_size)
    if not training:
        return F.batch_norm(
            input, running_mean, running_var, weight, bias, False, momentum, eps, axis=axis
        )
    axis = validate.check_inputs(
        input, running_mean, running_var, weight, bias, True, momentum, eps, axis
    )
    if axis == 0:
        raise ValueError(
            "ghost_batch_norm splits axis 0 (the batch) into ghosts, so channels cannot be on axis 0"
        )
    n = input.shape[0]
    per_sample = count_per_channel(input, axis) // max(n, 1)  # values per channel in one sample
    if ghost_size * per_sample < 2 and n > 1:
        raise ValueError(
            f"ghost_size={ghost_size} gives ghost batches with one value per channel for input of "
            f"shape {tuple(input.shape)}: each would normalize to beta; use ghost_size >= 2"
        )
    G, n_head = _ghost_split(n, ghost_size, per_sample)
    ys: list[Tensor] = []
    means: list[Tensor] = []
    variances: list[Tensor] = []
    sizes: list[int] = []
    if G > 0:
        y, mean, var = _ghost_train(input[:n_head], weight, bias, eps, axis, ghost_size, G)
        ys.append(y)
        means.append(mean)
        variances.append(var)
        sizes += [ghost_size] * G
    if n_head < n:
        y, stats = train_forward(input[n_head:], weight, bias, TrainOptions(axis, eps))
        ys.append(y)
        means.append(stats.mean[None])
        variances.append(stats.var[None])
        sizes.append(n - n_head)
    y = ys[0] if len(ys) == 1 else torch.cat(ys, 0)
    if running_mean is not None and running_var is not None and input.numel() > 0:
        mean = torch.cat(means)  # (K, C) float64
        var = torch.cat(variances)  # (K, C)
        w = torch.tensor([s / n for s in sizes], dtype=var.dtype, device=var.device)[:, None]
        if store_unbiased:
            # (eq. 16) per ghost, with m_k = n_k * per_sample values behind var_k.
            counts = torch.tensor([s * per_sample for s in sizes], device=var.device)[:, None]
            var = bessel(var, counts)
        F.update_running_stats(
            running_mean,
            running_var,
            (w.to(mean.dtype) * mean).sum(0),
            (w * var).sum(0),
            n * per_sample,
            momentum,
            num_batches_tracked=num_batches_tracked,
            store_unbiased=False,
            skipped_updates=skipped_updates,
        )
    return y


class GhostBatchNorm(BatchNorm):
    """:class:`batchnorm.BatchNorm` with ghost (virtual) batches of ``ghost_size`` samples.

    Batch statistics (training, or evaluation without running statistics) are per ghost
    batch, see :func:`ghost_batch_norm`; evaluation with running statistics is plain BN and
    does not depend on ``ghost_size``. Same state_dict as ``torch.nn.BatchNorm*d``.

    Args:
        num_features, eps, momentum, affine, track_running_stats, device, dtype: as BatchNorm.
        ghost_size: keyword-only, samples per ghost batch (e.g. 32 inside a batch of 4096).
        axis, center, scale, store_unbiased, small_batch: keyword-only, as BatchNorm.
    """

    def __init__(self, num_features: int, *args, ghost_size: int = 32, **kwargs) -> None:
        super().__init__(num_features, *args, **kwargs)
        validate.check_ghost_size(ghost_size)
        self.ghost_size = ghost_size

    def forward(self, input: Tensor, mask: Tensor | None = None) -> Tensor:
        use_batch_stats = self.training or self.running_mean is None
        if not use_batch_stats or input.shape[0] <= 1:
            return super().forward(input, mask)  # running statistics, or the small-batch policy
        if mask is not None:
            raise ValueError(
                "GhostBatchNorm does not support mask=; use BatchNorm for masked statistics"
            )
        self._check_input_dim(input)
        update = self.training and self.track_running_stats
        return ghost_batch_norm(
            input,
            self.running_mean if update else None,
            self.running_var if update else None,
            self.weight,
            self.bias,
            True,
            self.momentum,
            self.eps,
            ghost_size=self.ghost_size,
            axis=self.axis,
            num_batches_tracked=self.num_batches_tracked if update else None,
            store_unbiased=self.store_unbiased,
            skipped_updates=self.skipped_updates if update else None,
        )

    def extra_repr(self) -> str:
        return super().extra_repr() + f", ghost_size={self.ghost_size}"


class GhostBatchNorm1d(Rank1d, GhostBatchNorm):
    """:class:`GhostBatchNorm` for (N, C) or (N, C, L) input."""


class GhostBatchNorm2d(Rank2d, GhostBatchNorm):
    """:class:`GhostBatchNorm` for (N, C, H, W) input."""


class GhostBatchNorm3d(Rank3d, GhostBatchNorm):
    """:class:`GhostBatchNorm` for (N, C, D, H, W) input."""
