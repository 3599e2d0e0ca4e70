"""Validation of batch-norm arguments: one check per rule, one message per check.

Every public entry point (the functional core, the modules, the variants, the tools) calls
these, so a wrong ``eps`` or a parameter with the wrong number of channels reads the same
wherever it comes from. Only metadata is read (shapes, dtypes, devices, Python numbers): no
value of any tensor, so no check costs a host synchronisation.
"""

from __future__ import annotations

from typing import Final

import torch
from torch import Tensor

from .stats import count_per_channel

__all__ = [
    "SMALL_BATCH_POLICIES",
    "BatchNormError",
    "BatchNormStateWarning",
    "BatchNormTypeError",
    "check_statistics",
    "check_eps",
    "check_ghost_size",
    "check_hyper",
    "check_inputs",
    "check_momentum",
    "check_num_features",
    "check_small_batch",
    "normalize_axis",
    "one_value_error",
    "prepare_mask",
]

SMALL_BATCH_POLICIES: Final = ("raise", "running", "skip")


class BatchNormError(ValueError, RuntimeError):
    """A call that torch.nn's batch norm rejects with a RuntimeError, with our message.

    Both a ``ValueError`` (this package's convention for a bad value) and a ``RuntimeError``
    (what ``torch.nn.functional.batch_norm`` raises for a wrong-size parameter, a tensor on
    another device, or missing running statistics in evaluation), so code written against
    either catches it.
    """


class BatchNormStateWarning(UserWarning):
    """Loaded state that is valid but does not mean what it meant where it was saved."""


def check_statistics(
    running_mean: Tensor | None, running_var: Tensor | None, where: str
) -> str | None:
    """A message if loaded statistics cannot normalize (a NaN or inf mean, a negative, NaN or
    inf variance), naming the channels; None if they can.

    Reads the values: one host synchronisation, made once when state is loaded (a state dict,
    a Keras file), never per call.
    """
    problems = []
    for name, t, bad_fn in (
        ("running_mean", running_mean, lambda v: ~torch.isfinite(v)),
        ("running_var", running_var, lambda v: ~torch.isfinite(v) | (v < 0)),
    ):
        if t is None or t.numel() == 0 or not t.is_floating_point():
            continue
        bad = bad_fn(t.detach().double())
        if bool(bad.any()):
            idx = bad.nonzero().flatten()[:8].tolist()
            values = t.detach().double().flatten()[idx].tolist()
            problems.append(
                f"{name} has {int(bad.sum())} unusable entries (channels {idx}: {values})"
            )
    if not problems:
        return None
    return (
        f"{where}: {'; '.join(problems)}. A variance must be finite and >= 0 and a mean finite, "
        "or every output of that channel would be NaN in evaluation. Fix the saved values (e.g. "
        "recompute them with batchnorm.recompute_statistics) or reset them with "
        "layer.reset_running_stats()"
    )


class BatchNormTypeError(TypeError, NotImplementedError):
    """A wrong dtype or type: a ``TypeError``, and the ``NotImplementedError`` /
    ``RuntimeError`` torch raises for a non-floating input or parameter."""


def normalize_axis(axis: int, ndim: int) -> int:
    """``axis`` made non-negative for a tensor of rank ``ndim``.

    Raises:
        ValueError: ``axis`` outside ``[-ndim, ndim)``.
    """
    if not -ndim <= axis < ndim:
        raise ValueError(
            f"channel axis {axis} is out of range for an input of rank {ndim}; "
            f"use an axis in [{-ndim}, {ndim - 1}] (1 for NCHW, -1 for channels-last/Keras)"
        )
    return axis % ndim


def check_num_features(num_features: object) -> int:
    """``num_features`` as an int, or a ValueError naming the value received."""
    if isinstance(num_features, bool) or not isinstance(num_features, int) or num_features < 1:
        raise ValueError(
            f"num_features must be a positive int (the number of channels), got {num_features!r}"
        )
    return num_features


def check_eps(eps: float, name: str = "eps") -> float:
    """``eps > 0``: it keeps ``1 / sqrt(var + eps)`` finite for a constant channel."""
    if not eps > 0:
        raise ValueError(
            f"{name} must be > 0 (it keeps 1/sqrt(var + eps) finite for a constant channel), "
            f"got {eps}; PyTorch's default is 1e-5, Keras's 1e-3"
        )
    return eps


def check_momentum(momentum: float | None) -> float | None:
    """``momentum`` in [0, 1] or None (a cumulative average), PyTorch's convention."""
    if momentum is not None and not 0.0 <= momentum <= 1.0:
        raise ValueError(
            f"momentum must be in [0, 1] or None (cumulative average), got {momentum}; in the "
            "PyTorch convention it is the weight of the new batch (default 0.1): Keras's "
            "momentum m is 1 - m here"
        )
    return momentum


def check_ghost_size(ghost_size: object) -> int:
    """Ghost BN's samples per virtual batch: a positive int."""
    if isinstance(ghost_size, bool) or not isinstance(ghost_size, int) or ghost_size < 1:
        raise ValueError(
            f"ghost_size must be a positive int (samples per virtual batch), got {ghost_size!r}"
        )
    return ghost_size


def check_small_batch(policy: str) -> str:
    """One of :data:`SMALL_BATCH_POLICIES`."""
    if policy not in SMALL_BATCH_POLICIES:
        raise ValueError(f"small_batch must be one of {SMALL_BATCH_POLICIES}, got {policy!r}")
    return policy


def check_hyper(
    num_features: object, eps: float, momentum: float | None, small_batch: str = "raise"
) -> None:
    """The constructor checks every batch-norm layer shares (modules, frozen BN, variants)."""
    check_num_features(num_features)
    check_eps(eps)
    check_momentum(momentum)
    check_small_batch(small_batch)


def check_inputs(
    input: Tensor,
    running_mean: Tensor | None,
    running_var: Tensor | None,
    weight: Tensor | None,
    bias: Tensor | None,
    training: bool,
    momentum: float | None,
    eps: float,
    axis: int,
    *,
    check_count: bool = True,
) -> int:
    """Validate shapes, dtypes, devices and hyper-parameters; return the axis, non-negative.

    ``check_count=False`` leaves the one-value-per-channel check to the caller (the core
    applies its ``small_batch`` policy there).

    Raises:
        TypeError: a non-tensor input; :class:`BatchNormTypeError` (also a
            ``NotImplementedError``/``RuntimeError``, as torch) for a non-floating input or
            parameter.
        ValueError: rank < 2, an axis out of range, eps <= 0, momentum outside [0, 1] in
            training, one value per channel in training; :class:`BatchNormError` (also a
            ``RuntimeError``, as torch) for running statistics given alone or missing in
            evaluation, a parameter with the wrong number of channels or on another device.
    """
    fast = (
        isinstance(input, Tensor)
        and input.is_floating_point()
        and input.ndim >= 2
        and -input.ndim <= axis < input.ndim
        and eps > 0
        and (not training or momentum is None or 0.0 <= momentum <= 1.0)
        and (running_mean is None) == (running_var is None)
        and (training or running_mean is not None)
    )
    if fast:  # the common case, in one expression: this runs on every call
        axis = axis % input.ndim
    else:  # the same checks one by one, each with its message
        if not isinstance(input, Tensor):
            raise TypeError(f"batch_norm expects a torch.Tensor input, got {type(input).__name__}")
        if not input.is_floating_point():
            raise BatchNormTypeError(
                f"batch_norm expects a floating-point input, got dtype={input.dtype}; "
                "convert it first, e.g. x.float()"
            )
        if input.ndim < 2:
            raise ValueError(
                f"batch_norm expects an input of rank >= 2 (batch, channels, ...), got shape "
                f"{tuple(input.shape)}; add a batch axis, e.g. x.unsqueeze(0)"
            )
        axis = normalize_axis(axis, input.ndim)
        check_eps(eps)
        if training:  # as torch: a momentum is only ever used to update in training
            check_momentum(momentum)
        if (running_mean is None) != (running_var is None):
            raise BatchNormError(
                "running_mean and running_var must be given together or both be None"
            )
        if not training and running_mean is None:
            raise BatchNormError(
                "batch_norm in evaluation mode (training=False) needs running_mean and running_var; "
                "pass them, or use training=True to normalize with the batch's own statistics"
            )
    channels = input.shape[axis]
    # Cheaper to compare than torch.device objects: the index (-1 on CPU and meta) and flags.
    where = (input.get_device(), input.is_cpu, input.is_cuda)
    for name, t in (
        ("running_mean", running_mean),
        ("running_var", running_var),
        ("weight", weight),
        ("bias", bias),
    ):
        if t is None:
            continue
        if type(t) is Tensor or type(t) is torch.nn.Parameter:
            here = (t.get_device(), t.is_cpu, t.is_cuda)
            if t.numel() == channels and here == where and t.is_floating_point():
                continue  # the common case, decided with three cheap calls
        if not isinstance(t, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor or None, got {type(t).__name__}")
        if t.numel() != channels:
            raise BatchNormError(
                f"{name} has {t.numel()} entries (shape {tuple(t.shape)}) but the input of shape "
                f"{tuple(input.shape)} has {channels} channels along axis {axis}; give one value "
                "per channel, or pick the right channel axis (axis=1 for NCHW, axis=-1 for "
                "channels-last)"
            )
        if t.device != input.device:
            raise BatchNormError(
                f"{name} is on {t.device} but the input is on {input.device}; "
                f"move them to one device, e.g. module.to({str(input.device)!r})"
            )
        if not t.is_floating_point():
            raise BatchNormTypeError(
                f"{name} must be floating point, got dtype={t.dtype}; convert it, e.g. "
                f"{name}.float(), or build the layer with dtype=torch.float32"
            )
    if check_count and training and count_per_channel(input, axis) == 1:
        raise one_value_error(input, axis)
    return axis


def one_value_error(
    input: Tensor, axis: int, *, valid: bool = False, synchronized: bool = False
) -> ValueError:
    """The error for a training batch with exactly one value per channel.

    ``valid``: the count is of valid (unmasked) positions; ``synchronized``: the count is over
    every process of a synchronized layer together.
    """
    where = (
        f"over all processes together (this process's input has shape {tuple(input.shape)})"
        if synchronized
        else f"in the input of shape {tuple(input.shape)}"
    )
    return ValueError(
        f"batch_norm in training needs more than one value per channel, but there is exactly "
        f"1{' valid' if valid else ''} value per channel (axis {axis}) {where}: a batch of one "
        "sample normalizes every feature to beta. Use a batch of at least 2, call model.eval() "
        "to normalize with the running statistics, or choose a small-batch policy "
        "(small_batch='running' or 'skip', see docs/variants.md)"
    )


def prepare_mask(mask: Tensor, input: Tensor, axis: int) -> Tensor:
    """Check ``mask`` and view it with the shape of ``input`` but size 1 along ``axis``.

    ``mask`` is boolean, True at valid positions, and broadcasts to the input's shape without
    its channel axis (e.g. (N, L) for (N, C, L) input, or (N, L) for channels-last (N, L, C)).
    """
    if not isinstance(mask, Tensor) or mask.dtype != torch.bool:
        raise TypeError(
            f"mask must be a torch.bool tensor (True = valid position), got "
            f"{getattr(mask, 'dtype', type(mask).__name__)}; e.g. "
            "mask = lengths[:, None] > torch.arange(L)"
        )
    if mask.device != input.device:
        raise ValueError(
            f"mask is on {mask.device} but the input is on {input.device}; "
            "move it with mask.to(x.device)"
        )
    without_channel = input.shape[:axis] + input.shape[axis + 1 :]
    try:
        mask = torch.broadcast_to(mask, without_channel)
    except RuntimeError:
        raise ValueError(
            f"mask of shape {tuple(mask.shape)} does not broadcast to the input's shape without "
            f"its channel axis {axis}, {tuple(without_channel)}; give one flag per position "
            "(batch and spatial axes), not per channel"
        ) from None
    return mask.unsqueeze(axis)
