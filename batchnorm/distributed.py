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

:func:`convert_sync_batchnorm` and :func:`revert_sync_batchnorm` swap the layers of a model in
place of the old ones, sharing their parameters and buffers.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from ._surgery import replace_modules
from .modules import BatchNorm, BatchNorm1d, BatchNorm2d, BatchNorm3d
from .renorm import BatchRenorm

__all__ = ["SyncBatchNorm", "SyncBatchRenorm", "convert_sync_batchnorm", "revert_sync_batchnorm"]


def _active_group(process_group: object | None) -> object | None:
    """The group to synchronize over, or None (local) when there is nothing to sync with.

    None when torch.distributed is not initialized or the group has one process, so a
    synchronized layer then runs as a local one and never waits on a collective.
    """
    if not (dist.is_available() and dist.is_initialized()):
        return None
    group = process_group if process_group is not None else dist.group.WORLD
    if dist.get_world_size(group) <= 1:
        return None
    return group


class SyncBatchNorm(BatchNorm):
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
        self.process_group = process_group

    def _sync_group(self) -> object | None:
        return _active_group(self.process_group)


class SyncBatchRenorm(BatchRenorm):
    """Batch Renormalization (:class:`batchnorm.BatchRenorm`) with synchronized statistics.

    In training the batch statistics, and so r and d, are those of the global batch over
    ``process_group`` (the same collectives as :class:`SyncBatchNorm`); every rank applies the
    same correction and keeps the same running statistics. Evaluation is local.

    Args:
        num_features, eps, momentum, affine, device, dtype, r_max, d_max: as
            :class:`batchnorm.BatchRenorm` (keyword arguments of BatchNorm pass through).
        process_group: keyword-only, the group to synchronize over; None means the world.
    """

    def __init__(self, *args, process_group: dist.ProcessGroup | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.process_group = process_group

    def _sync_group(self) -> object | None:
        return _active_group(self.process_group)


# The local classes a SyncBatchNorm may come from and go back to, exactly (a subclass may
# change the behaviour, e.g. a frozen or ghost variant, and is left alone).
_LOCAL_TYPES: tuple[type, ...] = (
    nn.BatchNorm1d,
    nn.BatchNorm2d,
    nn.BatchNorm3d,
    BatchNorm,
    BatchNorm1d,
    BatchNorm2d,
    BatchNorm3d,
)


def _swap(old: _BatchNorm, new: _BatchNorm) -> _BatchNorm:
    """Give ``new`` the parameters, buffers and training flag of ``old`` (shared, not copied).

    Sharing the very tensors keeps their values, device, dtype and ``requires_grad``, and
    keeps an optimizer built on the old parameters working.
    """
    new.weight, new.bias = old.weight, old.bias
    new.running_mean, new.running_var = old.running_mean, old.running_var
    new.num_batches_tracked = old.num_batches_tracked
    if isinstance(old, BatchNorm):
        new.skipped_updates = old.skipped_updates
    new.train(old.training)
    if "stats_mode" in vars(old):  # a per-layer statistics policy (batchnorm.freeze)
        new.stats_mode = old.stats_mode
    if hasattr(old, "qconfig"):
        new.qconfig = old.qconfig
    return new


def _hyper(module: _BatchNorm) -> dict:
    """Constructor arguments of a BatchNorm-like module, for our classes."""
    kwargs = dict(
        num_features=module.num_features,
        eps=module.eps,
        momentum=module.momentum,
        affine=module.affine,
        track_running_stats=module.track_running_stats,
        axis=getattr(module, "axis", 1),
        store_unbiased=getattr(module, "store_unbiased", True),
        small_batch=getattr(module, "small_batch", "raise"),
    )
    if module.affine:
        kwargs.update(center=module.bias is not None, scale=module.weight is not None)
    # Allocate the (soon replaced) tensors where the old ones are, with their dtype.
    ref = next((t for t in (module.weight, module.running_mean) if t is not None), None)
    if ref is not None:
        kwargs.update(device=ref.device, dtype=ref.dtype)
    return kwargs


def convert_sync_batchnorm(
    module: nn.Module, process_group: dist.ProcessGroup | None = None
) -> nn.Module:
    """Replace every batch-norm layer of ``module`` by a :class:`SyncBatchNorm`.

    Converted: ``torch.nn.BatchNorm1d/2d/3d``, ``torch.nn.SyncBatchNorm`` and this package's
    ``BatchNorm``, ``BatchNorm1d/2d/3d`` (exactly these types; other subclasses, such as
    frozen or ghost variants, are left as they are). The new layer shares the old one's
    parameters and buffers (values, device, dtype, ``requires_grad``, optimizer references)
    and takes its training flag, channel axis and conventions; ``SyncBatchNorm`` layers
    already there are kept. :func:`revert_sync_batchnorm` undoes it.

    Args:
        module: a model, or a single batch-norm layer.
        process_group: the group to synchronize over (None: the default world group).

    Returns:
        ``module``, changed in place, or the new layer if ``module`` itself is one.

    Example:
        >>> model = convert_sync_batchnorm(model)       # before wrapping it in DDP
    """

    def convert(name: str, m: nn.Module) -> nn.Module | None:
        if type(m) in _LOCAL_TYPES or type(m) is nn.SyncBatchNorm:
            group = (
                process_group if process_group is not None else getattr(m, "process_group", None)
            )
            sync = _swap(m, SyncBatchNorm(**_hyper(m), process_group=group))
            # Remember the class to go back to (torch's SyncBatchNorm reverts to our BatchNorm).
            sync._local_type = type(m) if type(m) in _LOCAL_TYPES else BatchNorm
            return sync
        return None

    return replace_modules(module, convert)


def revert_sync_batchnorm(module: nn.Module) -> nn.Module:
    """Replace every :class:`SyncBatchNorm` (ours or torch's) of ``module`` by a local layer.

    A layer made by :func:`convert_sync_batchnorm` goes back to the class it came from;
    others become :class:`~batchnorm.BatchNorm` (any rank, same axis). Parameters and
    buffers are shared as in :func:`convert_sync_batchnorm`. Useful to evaluate or export a
    model trained with synchronized statistics in a single process.

    Args:
        module: a model, or a single layer.

    Returns:
        ``module``, changed in place, or the new layer if ``module`` itself is one.
    """

    def revert(name: str, m: nn.Module) -> nn.Module | None:
        if not isinstance(m, (SyncBatchNorm, nn.SyncBatchNorm)):
            return None
        cls = getattr(m, "_local_type", BatchNorm)
        kwargs = _hyper(m)
        fixed = {k: v for k, v in kwargs.items() if k in _FIXED_ARGS}
        # The fixed-rank classes have channels on axis 1 and both or neither of gamma, beta;
        # torch's also only store the unbiased variance, raise on one value per channel and
        # know no statistics policy. What they cannot express goes to the general class.
        expressible = kwargs["axis"] == 1 and kwargs.get("center", True) == kwargs.get(
            "scale", True
        )
        if cls is not BatchNorm and issubclass(cls, BatchNorm) and expressible:
            local = cls(**fixed, small_batch=kwargs["small_batch"])
            local.store_unbiased = kwargs["store_unbiased"]
        elif (
            not issubclass(cls, BatchNorm)
            and expressible
            and kwargs["store_unbiased"]
            and kwargs["small_batch"] == "raise"
            and "stats_mode" not in vars(m)
        ):
            local = cls(**fixed)
        else:
            local = BatchNorm(**kwargs)
        return _swap(m, local)

    return replace_modules(module, revert)


_FIXED_ARGS = (
    "num_features",
    "eps",
    "momentum",
    "affine",
    "track_running_stats",
    "device",
    "dtype",
)
