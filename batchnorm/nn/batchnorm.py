"""Batch-norm modules: drop-in ``torch.nn.BatchNorm1d/2d/3d`` and a general ``BatchNorm``.

The modules hold parameters and buffers and choose between training and evaluation; the
math is :func:`batchnorm.functional.batch_norm`. They subclass
``torch.nn.modules.batchnorm._BatchNorm``, so ``isinstance`` checks written for torch's
layers (weight-decay exclusion, ``SyncBatchNorm.convert_sync_batchnorm``, DDP buffer
broadcast) accept them, and their ``state_dict`` keys are torch's: ``weight``, ``bias``,
``running_mean``, ``running_var``, ``num_batches_tracked``.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from ..core import functional as F
from ..core import validate

__all__ = [
    "BatchNorm",
    "BatchNorm1d",
    "BatchNorm2d",
    "BatchNorm3d",
    "FrozenStatisticsWarning",
    "Rank1d",
    "Rank2d",
    "Rank3d",
    "frozen_params_updating",
    "refuse_unusable_statistics",
    "torch_equivalent",
    "warn_frozen_params_updating",
]


class FrozenStatisticsWarning(UserWarning):
    """A BN layer's gamma/beta are frozen but its running statistics still update in training."""


def frozen_params_updating(bn: nn.Module, *, training: bool | None = None) -> bool:
    """The fine-tuning bug: gamma/beta frozen (``requires_grad=False``) while training still
    moves the running statistics.

    True for a BN layer (ours or torch.nn) in training mode that tracks running statistics,
    has no statistics policy that stops the updates (``set_stats_mode``), and whose affine
    parameters all have ``requires_grad=False``. The one home of this rule: the layers' own
    warning, ``check_frozen`` and the doctor all ask it. ``training`` overrides the layer's
    own flag (the doctor reads the flags as they were before its probe).
    """
    training = getattr(bn, "training", False) if training is None else training
    if not (training and getattr(bn, "track_running_stats", False)):
        return False
    if getattr(bn, "stats_mode", None) not in (None, "batch"):  # "running"/"frozen": no update
        return False
    params = [p for p in (getattr(bn, "weight", None), getattr(bn, "bias", None)) if p is not None]
    return bool(params) and not any(p.requires_grad for p in params)


def warn_frozen_params_updating(bn: nn.Module, name: str = "", stacklevel: int = 4) -> None:
    """Emit :class:`FrozenStatisticsWarning` for ``bn``."""
    where = f" {name!r}" if name else ""
    warnings.warn(
        f"{type(bn).__name__}{where} has weight/bias with requires_grad=False but is in training "
        "mode, so its running statistics still update on every batch (the common fine-tuning "
        "bug). Freeze it completely with batchnorm.freeze(model) or "
        "batchnorm.set_stats_mode(layer, 'frozen'), or call layer.eval() after model.train()",
        FrozenStatisticsWarning,
        stacklevel=stacklevel,
    )


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
    counted in ``skipped_updates``, a 0-d int64 tensor on the layer's device that is neither a
    parameter nor a buffer (``named_buffers()`` and ``state_dict()`` hold exactly torch.nn's
    entries) and moves with ``.to()``.

    Where it differs from ``torch.nn.BatchNorm*d`` on purpose (README, "Drop-in"):
    the constructor rejects ``num_features < 1``, ``eps <= 0`` and a momentum outside [0, 1]
    (torch accepts them and fails later or never); an empty training batch leaves the running
    statistics *and* ``num_batches_tracked`` as they were (torch counts it, which shifts a
    ``momentum=None`` cumulative average by a batch that had no data).

    Args:
        num_features: number of channels C.
        eps: added to the variance inside the square root; > 0.
        momentum: weight of the new batch in the running average, or None (cumulative).
        affine: learn gamma (``weight``) and beta (``bias``), initialised to 1 and 0.
        track_running_stats: keep running statistics for evaluation.
        bias: keyword-only, as torch.nn (2.13+): ``bias=False`` learns gamma only.
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
        bias: bool = True,
        axis: int = 1,
        center: bool | None = None,
        scale: bool | None = None,
        store_unbiased: bool = True,
        small_batch: str = "raise",
    ) -> None:
        validate.check_hyper(num_features, eps, momentum, small_batch)
        center = (affine if center is None else center) and bias
        scale = affine if scale is None else scale
        super().__init__(
            num_features, eps, momentum, center or scale, track_running_stats, device, dtype
        )
        self.axis = axis
        self.store_unbiased = store_unbiased
        self.small_batch = small_batch
        if self.affine and not scale:
            self.register_parameter("weight", None)
        if self.affine and not center:
            self.register_parameter("bias", None)
        self._skipped_updates = torch.zeros((), dtype=torch.long, device=device)

    @property
    def skipped_updates(self) -> Tensor:
        """Training batches whose statistics were not finite, so were not stored (0-d int64)."""
        return self._skipped_updates

    @skipped_updates.setter
    def skipped_updates(self, value: Tensor) -> None:
        self._skipped_updates = value

    def _apply(self, fn: Callable[[Tensor], Tensor], recurse: bool = True) -> BatchNorm:
        # .to()/.cuda()/.half() reach parameters and buffers; the counter is neither, so it
        # follows here (dtype casts leave an int64 tensor as it is).
        super()._apply(fn, recurse)
        self._skipped_updates = fn(self._skipped_updates)
        return self

    def __prepare_scriptable__(self) -> nn.Module:
        """What ``torch.jit.script`` compiles in place of this layer (module docstring of
        :func:`torch_equivalent`): torch.nn's layer on the same parameters and buffers."""
        return torch_equivalent(self, purpose="torch.jit.script")

    def _load_from_state_dict(
        self,
        state_dict: dict[str, Any],
        prefix: str,
        local_metadata: dict[str, Any],
        strict: bool,
        missing_keys: list[str],
        unexpected_keys: list[str],
        error_msgs: list[str],
    ) -> None:
        # Checked once here, not per call: statistics that cannot normalize are refused, and
        # a cumulative average that would silently restart is announced.
        if refuse_unusable_statistics(self, state_dict, prefix, error_msgs):
            return
        nbt = prefix + "num_batches_tracked"
        if (
            self.momentum is None
            and self.track_running_stats
            and prefix + "running_mean" in state_dict
            and nbt not in state_dict
        ):
            warnings.warn(
                f"{type(self).__name__} {prefix.rstrip('.') or '(the layer)'} has momentum=None "
                "(a cumulative average over num_batches_tracked batches), but the state dict has "
                "no num_batches_tracked: the loaded running statistics would count as "
                f"{int(self.num_batches_tracked or 0)} batches and be replaced by the next "
                "training batch. Set layer.num_batches_tracked to the number of batches they "
                "average, or use a float momentum",
                validate.BatchNormStateWarning,
                stacklevel=4,
            )
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
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

    axis: int
    store_unbiased: bool
    small_batch: str

    # Statistics policy (batchnorm.freeze.set_stats_mode): None follows self.training as
    # torch.nn does; "batch" / "running" / "frozen" fix the choice through model.train().
    stats_mode: str | None = None
    _warned_frozen = False

    def forward(self, input: Tensor, mask: Tensor | None = None) -> Tensor:
        """Normalize ``input``; ``mask`` (bool, True = valid) restricts the statistics."""
        self._check_input_dim(input)
        # Parameters and buffers read from their dicts once (nn.Module.__getattr__ costs about
        # half a microsecond a name, and a small layer's step is mostly per-call cost).
        params, buffers = self._parameters, self._buffers
        running_mean, running_var = buffers.get("running_mean"), buffers.get("running_var")
        weight = params["weight"] if "weight" in params else getattr(self, "weight", None)
        bias = params["bias"] if "bias" in params else getattr(self, "bias", None)
        # As torch.nn: batch statistics in training, and in eval when there are no running
        # statistics; buffers are passed (and so updated) only when they are tracked.
        no_stats = running_mean is None and running_var is None
        if self.stats_mode is None:
            use_batch_stats = self.training or no_stats
            update = self.training and self.track_running_stats
            if update and self.affine and not self._warned_frozen and torch.is_grad_enabled():
                trainable = (weight is not None and weight.requires_grad) or (
                    bias is not None and bias.requires_grad
                )
                if not trainable and frozen_params_updating(self):
                    self._warned_frozen = True  # once per layer
                    warn_frozen_params_updating(self)
        else:
            use_batch_stats = self.stats_mode == "batch" or no_stats
            update = self.stats_mode == "batch" and self.training and self.track_running_stats
        pass_buffers = update or not use_batch_stats
        return F.batch_norm(
            input,
            running_mean if pass_buffers else None,
            running_var if pass_buffers else None,
            weight,
            bias,
            use_batch_stats,
            self.momentum,
            self.eps,
            axis=self.axis,
            num_batches_tracked=buffers.get("num_batches_tracked") if update else None,
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


class _AnyRankTorchBatchNorm(_BatchNorm):
    """torch.nn's batch norm for any rank >= 2, channels on axis 1: the scriptable form of a
    rank-free :class:`BatchNorm` (torch.nn has only the rank-checking 1d/2d/3d classes)."""

    def _check_input_dim(self, input: Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected an input of rank >= 2, got {input.dim()}D")


def _torch_class(bn: BatchNorm, purpose: str) -> type[_BatchNorm]:
    """The torch.nn class that computes what ``bn`` does, or a :class:`BatchNormError` naming
    what torch.nn cannot express and what to do instead. The one home of these rules:
    ``convert(to="torch")``, ``torch.jit.script`` and the quantization fusers all ask it."""
    where = f"{purpose}: {type(bn).__name__}"
    plain = (BatchNorm, BatchNorm1d, BatchNorm2d, BatchNorm3d)
    if type(bn) not in plain:
        raise validate.BatchNormError(
            f"{where} is a variant (not plain batch norm) that torch.nn has no layer for; use "
            "torch.export or torch.compile, torch.jit.trace on the model in eval mode, or "
            "batchnorm.fold / batchnorm.freeze for inference"
        )
    if bn.axis != 1:
        raise validate.BatchNormError(
            f"{where} normalizes axis {bn.axis}; torch.nn's layers have channels on axis 1: "
            "permute the input to NCHW and use axis=1, or use torch.export / torch.compile"
        )
    if bn.stats_mode is not None:
        raise validate.BatchNormError(
            f"{where} has stats_mode={bn.stats_mode!r}, which torch.nn cannot express; "
            "batchnorm.set_stats_mode(model, None) first, or batchnorm.freeze for frozen layers"
        )
    if not bn.store_unbiased:
        raise validate.BatchNormError(
            f"{where} stores the biased variance (store_unbiased=False); torch.nn always stores "
            "the unbiased one, so training after conversion would mix the two; keep our layer"
        )
    if bn.affine and bn.weight is None:
        raise validate.BatchNormError(
            f"{where} learns beta without gamma (scale=False); torch.nn's bias=False is the "
            "other way round; keep our layer"
        )
    if bn.small_batch != "raise":
        raise validate.BatchNormError(
            f"{where} has small_batch={bn.small_batch!r}; torch.nn always raises on one value "
            "per channel: set small_batch='raise' first, or keep our layer"
        )
    return {
        BatchNorm1d: nn.BatchNorm1d,
        BatchNorm2d: nn.BatchNorm2d,
        BatchNorm3d: nn.BatchNorm3d,
    }.get(type(bn), _AnyRankTorchBatchNorm)


def torch_equivalent(bn: BatchNorm, *, purpose: str = "torch.nn", share: bool = True) -> _BatchNorm:
    """torch.nn's layer for ``bn``: ``torch.nn.BatchNorm1d/2d/3d`` (or a rank-free torch.nn
    batch norm for :class:`BatchNorm`) with the same hyper-parameters and training flag.

    ``share=True``: the new layer holds the very parameter and buffer tensors of ``bn`` (what
    ``torch.jit.script`` and the quantization fusers need: an optimizer built on ``bn`` keeps
    working); ``share=False``: copies (``convert(to="torch")``). Its arithmetic is torch's:
    the same results up to rounding, without this package's exactness for ``|mean| >> std``.

    Raises:
        BatchNormError: a layer that torch.nn cannot express (a variant, another channel axis,
            a statistics policy, ``store_unbiased=False``, ``scale=False``, a small-batch
            policy); the message names the alternative.
    """
    cls = _torch_class(bn, purpose)
    ref = bn.weight if bn.weight is not None else bn.running_mean
    kw: dict[str, Any] = {} if ref is None else {"device": ref.device, "dtype": ref.dtype}
    new = cls(
        bn.num_features,
        bn.eps,
        bn.momentum,
        bn.affine,
        bn.track_running_stats,
        bias=bn.bias is not None or not bn.affine,
        **kw,
    )
    if share:
        for name in ("weight", "bias"):
            setattr(new, name, getattr(bn, name))
        for name in ("running_mean", "running_var", "num_batches_tracked"):
            new._buffers[name] = bn._buffers[name]
    else:
        new.load_state_dict(bn.state_dict())
        for name in ("weight", "bias"):
            p = getattr(bn, name)
            if p is not None:
                getattr(new, name).requires_grad_(p.requires_grad)
    new.train(bn.training)
    return new


def refuse_unusable_statistics(
    layer: nn.Module, state_dict: dict[str, Any], prefix: str, error_msgs: list[str]
) -> bool:
    """In ``_load_from_state_dict``: True (and the message queued for ``load_state_dict`` to
    raise) if the statistics to load cannot normalize, so the layer keeps its own state."""
    message = validate.check_statistics(
        state_dict.get(prefix + "running_mean"),
        state_dict.get(prefix + "running_var"),
        f"{type(layer).__name__} {prefix.rstrip('.') or '(the layer)'}",
    )
    if message is not None:
        error_msgs.append(message)
    return message is not None


class _RankMixin:
    """Channels on axis 1 and torch.nn's rank check, for every rank-specific class.

    Put first among the bases (``class BatchNorm2d(Rank2d, BatchNorm)``): the constructor
    takes the base's arguments with the channel axis fixed at 1.
    """

    _ranks: tuple[int, ...] = ()
    _shape_hint = ""

    def __init__(self, *args: Any, axis: int = 1, **kwargs: Any) -> None:
        if axis != 1:
            raise ValueError(
                f"{type(self).__name__} has channels on axis 1, got axis={axis}; use the "
                "rank-free class (e.g. batchnorm.BatchNorm(num_features, axis=-1)) for another axis"
            )
        super().__init__(*args, axis=1, **kwargs)  # type: ignore[call-arg]  # a mixin

    def _check_input_dim(self, input: Tensor) -> None:
        if input.dim() not in self._ranks:
            want = " or ".join(f"{r}D" for r in self._ranks)
            raise ValueError(
                f"{type(self).__name__} expects {want} input {self._shape_hint}, got "
                f"{input.dim()}D input of shape {tuple(input.shape)}; use the class of the "
                "matching rank, or the rank-free class with axis=... for any rank"
            )


class Rank1d(_RankMixin):
    """(N, C) or (N, C, L) input, as ``torch.nn.BatchNorm1d``."""

    _ranks, _shape_hint = (2, 3), "(N, C) or (N, C, L)"


class Rank2d(_RankMixin):
    """(N, C, H, W) input (any memory format), as ``torch.nn.BatchNorm2d``."""

    _ranks, _shape_hint = (4,), "(N, C, H, W)"


class Rank3d(_RankMixin):
    """(N, C, D, H, W) input, as ``torch.nn.BatchNorm3d``."""

    _ranks, _shape_hint = (5,), "(N, C, D, H, W)"


class BatchNorm1d(Rank1d, BatchNorm):
    """:class:`BatchNorm` for (N, C) or (N, C, L) input, as ``torch.nn.BatchNorm1d``."""


class BatchNorm2d(Rank2d, BatchNorm):
    """:class:`BatchNorm` for (N, C, H, W) input (any memory format), as ``torch.nn.BatchNorm2d``."""


class BatchNorm3d(Rank3d, BatchNorm):
    """:class:`BatchNorm` for (N, C, D, H, W) input, as ``torch.nn.BatchNorm3d``."""
