"""The functional core: statistics -> normalize -> update running statistics.

Every module and variant in the package calls :func:`batch_norm` (or the three steps it
is made of); the math lives here once. Equation numbers refer to ``docs/math.md``.

For each channel ``c`` (the entries of ``input`` along ``axis``), over the ``m`` values
of every other axis (batch and spatial positions alike)::

    mean    = sum(x) / m                                   (eq. 1)
    var     = sum((x - mean)^2) / m          (biased)      (eq. 2)
    inv_std = 1 / sqrt(var + eps)
    x_hat   = (x - mean) * inv_std                         (eq. 3)
    y       = gamma * x_hat + beta                         (eq. 4)

and in training the running statistics move towards the batch's (PyTorch convention)::

    running = (1 - momentum) * running + momentum * batch_stat           (eq. 13)
    running_var stores the unbiased var * m / (m - 1) by default          (eq. 16)

with ``momentum=None`` a cumulative average, ``running += (batch - running) / n``
(eq. 15), ``n`` the number of batches so far including this one.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
import torch.autograd.forward_ad as forward_ad
import torch.nn.functional as tnf
from torch import Tensor

from . import kernels, validate
from .autograd import Correction, TrainOptions, eval_forward, torch_op_forward, train_forward
from .kernels import _native
from .running import running_stats_step
from .stats import count_per_channel

__all__ = [
    "batch_norm",
    "batch_normalization",
    "batch_stats",
    "inference_affine",
    "moments",
    "running_stats_step",
    "update_running_stats",
]


# --------------------------------------------------------------------------- step 1: statistics


def batch_stats(input: Tensor, axis: int = 1) -> tuple[Tensor, Tensor]:
    """Per-channel mean and biased variance of ``input`` (eq. 1-2), without autograd.

    Accumulated in float32 (float64 for float64 input) with a stable reduction, never as
    ``E[x^2] - E[x]^2``.

    Args:
        input: tensor of rank >= 2.
        axis: channel axis.

    Returns:
        ``(mean, var)``, each of shape ``(C,)``.
    """
    axis = validate.normalize_axis(axis, input.ndim)
    with torch.no_grad():
        return kernels.get(input, axis).stats(input, axis)


# --------------------------------------------------------------------------- step 3: running update


def update_running_stats(
    running_mean: Tensor,
    running_var: Tensor,
    mean: Tensor,
    var: Tensor,
    count: int,
    momentum: float | Tensor | None = 0.1,
    *,
    num_batches_tracked: Tensor | None = None,
    store_unbiased: bool = True,
    skipped_updates: Tensor | None = None,
) -> None:
    """Move the running statistics towards a batch's, in place (eq. 13-16).

    ``running = (1 - momentum) * running + momentum * batch`` (PyTorch's convention: momentum
    weighs the *new* value), and for ``momentum=None`` the cumulative average
    ``running += (batch - running) / n`` with ``n = num_batches_tracked`` after this batch.
    ``running_var`` receives ``var * count / (count - 1)`` (unbiased) if ``store_unbiased``,
    else the biased ``var`` (Keras/Flax).

    A batch whose statistics are not all finite leaves every buffer untouched and adds one to
    ``skipped_updates``; the decision is made on the device (``torch.where``), with no host
    synchronisation. Runs on the kernel set of the buffers' device
    (:attr:`batchnorm.core.kernels.Kernels.running_update`).

    Args:
        running_mean, running_var: buffers of shape (C,), updated in place.
        mean, var: the batch's mean and biased variance, shape (C,).
        count: number of values per channel behind ``mean`` and ``var``.
        momentum: weight of the batch statistics, or None for a cumulative average.
        num_batches_tracked: scalar counter, incremented in place for a finite batch.
        store_unbiased: store the unbiased (True, PyTorch) or biased (False) variance.
        skipped_updates: scalar counter of non-finite batches, incremented in place.

    Raises:
        ValueError: ``momentum=None`` without ``num_batches_tracked``.
    """
    if momentum is None and num_batches_tracked is None:
        raise ValueError(
            "momentum=None (cumulative average) needs num_batches_tracked to know how many "
            "batches have been averaged; pass the module's num_batches_tracked buffer"
        )
    kernels.for_buffers(running_mean).running_update(
        running_mean,
        running_var,
        mean,
        var,
        count,
        momentum,
        num_batches_tracked,
        store_unbiased,
        skipped_updates,
    )


# --------------------------------------------------------------------------- the fixed map at inference


def inference_affine(
    running_mean: Tensor,
    running_var: Tensor,
    weight: Tensor | None,
    bias: Tensor | None,
    eps: float,
    dtype: torch.dtype = torch.float64,
) -> tuple[Tensor, Tensor]:
    """The fixed per-channel affine map that BN is at inference (eq. 23), without autograd.

    ``scale = gamma / sqrt(var + eps)``, ``shift = beta - mean * scale``, so that
    ``BN(x) = x * scale + shift``. Used to fold BN into a neighbouring layer's weights; the
    normalize step itself keeps the mean-first form ``(x - mean) * scale + beta`` (§9).

    Args:
        running_mean, running_var: the statistics, shape (C,).
        weight, bias: gamma and beta, (C,) or None (1 and 0).
        eps: added to the variance; 0 is accepted here (torch.nn allows it) as long as
            every ``var + eps`` is positive.
        dtype: the dtype of the computation and the result (float64 for folding).

    Returns:
        ``(scale, shift)``, each (C,) in ``dtype``.

    Raises:
        ValueError: ``var + eps <= 0`` or not finite in some channel (scale would be inf/NaN).
    """
    with torch.no_grad():
        var = running_var.to(dtype) + eps
        bad = ~(torch.isfinite(var) & (var > 0))
        if bad.any():
            raise ValueError(
                f"var + eps must be finite and > 0 in every channel, got var + eps = "
                f"{var[bad].tolist()} in channels {bad.nonzero().flatten().tolist()} (eps={eps}); "
                "BN with eps=0 on a constant channel has no finite inference map: use eps > 0"
            )
        inv_std = torch.rsqrt(var)
        scale, beta = _native.scale_shift(inv_std, weight, bias)
        return scale, beta - running_mean.to(dtype) * scale  # (eq. 23)


# --------------------------------------------------------------------------- the three steps


def graph_mode(*tensors: Tensor | None) -> str | None:
    """What, if anything, is recording or transforming this call, so that the call takes a
    path that it can see (the fast kernels work on plain tensors only):

    - ``"jit"``: ``torch.jit.trace`` (and the TorchScript ONNX exporter, which traces);
    - ``"export"``: ``torch.export`` (and the dynamo ONNX exporter, which exports);
    - ``"transform"``: a ``torch.func`` transform (vmap, grad, jvp, functional_call under
      them) or forward-mode AD (``torch.autograd.forward_ad``);
    - None: plain eager mode or ``torch.compile``, which sees the kernel ops themselves.
    """
    if kernels.jit_tracing():
        return "jit"
    if torch.compiler.is_exporting():
        return "export"
    if torch.compiler.is_compiling():
        return None  # torch.compile sees the kernel ops themselves
    if forward_ad._current_level >= 0:
        return "transform"
    functorch = torch._C._functorch
    for t in tensors:
        if t is not None and (
            functorch.is_functorch_wrapped_tensor(t) or functorch.is_legacy_batchedtensor(t)
        ):
            return "transform"
    return None


@contextmanager
def _untraced(mode: str | None) -> Iterator[None]:
    """Under ``torch.jit.trace``, run the body with tracing off: argument checks read sizes,
    which the tracer would record (and warn about); they are not part of the graph."""
    if mode != "jit":
        yield
        return
    state = torch._C._get_tracing_state()
    torch._C._set_tracing_state(None)  # type: ignore[attr-defined]
    try:
        yield
    finally:
        torch._C._set_tracing_state(state)  # type: ignore[attr-defined]


def _graph_batch_norm(
    mode: str,
    input: Tensor,
    running_mean: Tensor | None,
    running_var: Tensor | None,
    weight: Tensor | None,
    bias: Tensor | None,
    training: bool,
    momentum: float | None,
    eps: float,
    axis: int,
    num_batches_tracked: Tensor | None,
    store_unbiased: bool,
    skipped_updates: Tensor | None,
    mask: Tensor | None,
    small_batch: str,
    correction: Correction | None,
    process_group: Any,
) -> Tensor:
    """:func:`batch_norm` where a tracer, an exporter or a ``torch.func`` transform watches.

    Under ``torch.jit.trace`` (training or evaluation) and in evaluation under ``torch.export``
    it is ``torch.nn.functional.batch_norm`` itself, so the graph holds the one standard
    batch-norm node that deployment tools fold (ONNX ``BatchNormalization``,
    ``aten._native_batch_norm_legit_no_training``), with the module's parameters and buffers as
    its inputs; its arithmetic is torch's, as is its running update (a NaN batch is not
    skipped there). Under a ``torch.func`` transform or forward-mode AD it is the core's
    torch-op form (:func:`batchnorm.core.autograd.torch_op_forward`: the same exactness rules,
    differentiable by autograd, batched by vmap, with forward-mode tangents), and the running
    statistics are updated with torch ops.
    """
    if mode in ("jit", "export"):
        return _torch_batch_norm(
            mode, input, running_mean, running_var, weight, bias, training, momentum, eps, axis,
            num_batches_tracked, store_unbiased, mask, small_batch, correction, process_group,
        )  # fmt: skip
    _refuse(
        "torch.func transforms / forward-mode AD",
        mask=mask,
        correction=correction,
        process_group=process_group,
    )
    if training and count_per_channel(input, axis) == 1 and small_batch != "skip":
        if small_batch == "raise":
            raise validate.one_value_error(input, axis)
        if running_mean is None:
            _small_batch_running(input, weight, bias, None, None, eps, axis)  # raises
        mode_train = False  # "running": the running statistics, no update
    else:
        mode_train = training
    y, stats = torch_op_forward(
        input, weight, bias, running_mean, running_var, mode_train, eps, axis
    )
    if stats is not None and stats.num_values > 1 and running_mean is not None:
        assert running_var is not None
        if momentum is None and num_batches_tracked is None:
            update_running_stats(running_mean, running_var, stats.mean, stats.var, 2, None)
        # In torch ops, so that the tracer records it and a transform sees it.
        kernels.NATIVE.running_update(
            running_mean,
            running_var,
            stats.mean.detach(),
            stats.var.detach(),
            stats.num_values,
            momentum,
            num_batches_tracked,
            store_unbiased,
            skipped_updates,
        )
    return y


def _refuse(where: str, **options: object) -> None:
    """A clear error for options a graph path cannot express (none is silently dropped)."""
    given = [name for name, value in options.items() if value not in (None, False)]
    if given:
        raise validate.BatchNormError(
            f"batch_norm with {', '.join(given)} is not supported under {where}; call it in "
            "eager mode or under torch.compile, or without that option"
        )


def _torch_batch_norm(
    mode: str,
    input: Tensor,
    running_mean: Tensor | None,
    running_var: Tensor | None,
    weight: Tensor | None,
    bias: Tensor | None,
    training: bool,
    momentum: float | None,
    eps: float,
    axis: int,
    num_batches_tracked: Tensor | None,
    store_unbiased: bool,
    mask: Tensor | None,
    small_batch: str,
    correction: Correction | None,
    process_group: Any,
) -> Tensor:
    """``torch.nn.functional.batch_norm`` for a traced or exported graph (see the caller), with
    torch.nn's momentum rule: ``momentum=None`` is ``1 / num_batches_tracked``."""
    where = "torch.jit.trace" if mode == "jit" else "torch.export"
    _refuse(
        where,
        mask=mask,
        correction=correction,
        process_group=process_group,
        store_unbiased_false=training and not store_unbiased,
        small_batch_policy=training and small_batch != "raise",
    )
    factor = 0.0
    if training and running_mean is not None:
        if num_batches_tracked is not None:
            num_batches_tracked.add_(1)  # as torch.nn's module does, recorded in the graph
        if momentum is None:
            assert num_batches_tracked is not None  # checked by check_inputs' caller
            factor = 1.0 / float(num_batches_tracked)
        else:
            factor = momentum
    moved = input if axis == 1 else input.movedim(axis, 1)
    y = tnf.batch_norm(moved, running_mean, running_var, weight, bias, training, factor, eps)
    return y if axis == 1 else y.movedim(1, axis)


def _torch_layout(x: Tensor) -> Tensor:
    """``x`` in a layout whose output follows torch's memory-format rule: channels-last stays
    channels-last, anything else (a transpose, a strided slice) is made contiguous, so the
    output is contiguous as torch.nn's is and ``y.view(N, -1)`` works."""
    if x.is_contiguous():
        return x
    if x.ndim == 4 and x.is_contiguous(memory_format=torch.channels_last):
        return x
    if x.ndim == 5 and x.is_contiguous(memory_format=torch.channels_last_3d):
        return x
    return x.contiguous()


def _small_batch_running(
    input: Tensor,
    weight: Tensor | None,
    bias: Tensor | None,
    running_mean: Tensor | None,
    running_var: Tensor | None,
    eps: float,
    axis: int,
) -> Tensor:
    """``small_batch="running"``: normalize a one-value batch with the running statistics."""
    if running_mean is None or running_var is None:
        raise ValueError(
            "small_batch='running' needs running statistics to normalize a batch with one "
            "value per channel, but none were given (track_running_stats=False?); use "
            "small_batch='skip' or 'raise'"
        )
    return eval_forward(input, weight, bias, running_mean, running_var, eps, axis)


def _plain_train(
    input: Tensor,
    running_mean: Tensor | None,
    running_var: Tensor | None,
    weight: Tensor | None,
    bias: Tensor | None,
    momentum: float | None,
    eps: float,
    axis: int,
    num_batches_tracked: Tensor | None,
    store_unbiased: bool,
    skipped_updates: Tensor | None,
) -> Tensor | None:
    """The plain training step (no mask, correction or process group, more than one value per
    channel) where the input's kernel set does it in one op (``Kernels.train``): steps 1-2
    and their backward in one call, then step 3. None where it does not apply: the general
    path below takes the call. The same results as that path; fewer Python steps per call
    (a small layer's step is mostly per-call cost)."""
    track = running_mean is not None and running_var is not None
    if track and momentum is None and num_batches_tracked is None:
        return None  # the general path raises its error
    input = _torch_layout(input)  # torch's output memory format
    kern = kernels.get(input, axis)
    if kern.train is None or count_per_channel(input, axis) < 2:
        return None
    if track and not torch.compiler.is_compiling():
        assert running_mean is not None and running_var is not None
        if kern.buffers_fit is not None and kern.buffers_fit(
            running_mean, running_var, momentum, num_batches_tracked, skipped_updates
        ):
            # Step 3 in the same call (eager; a compiled graph keeps the update its own op).
            cumulative = momentum is None
            return kern.train(
                input, weight, bias, eps, axis, running_mean, running_var, num_batches_tracked,
                skipped_updates, 0.0 if cumulative else float(momentum), cumulative,  # type: ignore[arg-type]
                store_unbiased,
            )[0]  # fmt: skip
    y, mean, var, _ = kern.train(input, weight, bias, eps, axis)
    if track:
        assert running_mean is not None and running_var is not None
        kernels.for_buffers(running_mean).running_update(
            running_mean, running_var, mean, var, count_per_channel(input, axis), momentum,
            num_batches_tracked, store_unbiased, skipped_updates,
        )  # fmt: skip
    return y


def batch_norm(
    input: Tensor,
    running_mean: Tensor | None,
    running_var: Tensor | None,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    training: bool = False,
    momentum: float | None = 0.1,
    eps: float = 1e-5,
    *,
    axis: int = 1,
    num_batches_tracked: Tensor | None = None,
    store_unbiased: bool = True,
    skipped_updates: Tensor | None = None,
    mask: Tensor | None = None,
    small_batch: str = "raise",
    correction: Correction | None = None,
    process_group: Any = None,
) -> Tensor:
    """Batch normalization with the semantics of :func:`torch.nn.functional.batch_norm`.

    Training (``training=True``) normalizes with the batch's statistics over every axis but
    ``axis``::

        y = (x - mean_B) / sqrt(var_B + eps) * weight + bias        (eq. 1-4, var biased)

    and, if running statistics are given, updates them in place::

        running = (1 - momentum) * running + momentum * batch_stat  (eq. 13)

    storing the unbiased variance ``var_B * m / (m - 1)`` unless ``store_unbiased=False``.
    Evaluation uses the running statistics: one fixed affine map per channel (eq. 23-24).
    The gradient is the closed form of eq. 9, 10, 12, not autograd over primitive ops; double
    backward works.

    Args:
        input: tensor of rank >= 2 with channels along ``axis``.
        running_mean, running_var: (C,) buffers or None (then training must be True).
        weight, bias: gamma and beta, (C,) or None (gamma = 1, beta = 0).
        training: use (and update) batch statistics instead of the running ones.
        momentum: PyTorch convention, the weight of the new batch; None = cumulative average
            (needs ``num_batches_tracked``).
        eps: added to the variance inside the square root; must be > 0.
        axis: keyword-only, the channel axis (1 for NCHW, -1 for channels-last/Keras).
        num_batches_tracked: keyword-only scalar counter incremented for each finite update.
        store_unbiased: keyword-only; store the unbiased (PyTorch) or biased (Keras, Flax)
            batch variance in ``running_var``.
        skipped_updates: keyword-only scalar counter of updates skipped because the batch
            statistics were not finite (running statistics are never overwritten with NaN/inf).
        mask: keyword-only bool tensor, True at valid positions, broadcastable to the input's
            shape without the channel axis (e.g. (N, L) for (N, C, L)). In training the
            statistics (and the running update, with m = the number of valid values) use the
            valid positions only; every position is normalized, padded ones included. An
            all-masked batch returns the input unchanged and updates nothing. Reads the
            valid count on the host (one synchronisation).
        small_batch: keyword-only policy for training with exactly one value per channel:
            ``"raise"`` (ValueError), ``"running"`` (normalize with the running statistics,
            update nothing) or ``"skip"`` (Algorithm 1 as written, so ``y = beta``, and skip
            the running update, whose unbiased variance would divide by m - 1 = 0).
        correction: keyword-only ``(mean, var) -> (r, d)``, per-channel factors that make
            the training output ``gamma * (x_hat * r + d) + beta`` with r, d constants in the
            backward (Batch Renormalization, :mod:`batchnorm.variants`).
        process_group: keyword-only ``torch.distributed`` group (e.g. ``dist.group.WORLD``) to
            synchronize over in training, or None (local). Every rank of the group must call
            with the same layer in the same order; the statistics are those of the union of
            their batches (a rank may hold zero samples), the small-batch policy applies to
            the global count, and the running statistics, updated with the global count, are
            identical on every rank. See ``batchnorm.core.collectives`` and docs/distributed.md.

    Shape:
        input (N, C, *) for ``axis=1``; output the same shape and dtype as input.

    Returns:
        The normalized tensor.

    Raises:
        TypeError: non-tensor or non-floating input or parameters.
        ValueError: rank < 2, axis out of range, a parameter with the wrong number of
            channels or on another device, eps <= 0, momentum outside [0, 1], one value per
            channel in training (``small_batch="raise"``; over all ranks when synchronized),
            missing running statistics in evaluation, a mask that does not broadcast.

    Example:
        >>> x = torch.randn(8, 3, 4, 4)
        >>> rm, rv = torch.zeros(3), torch.ones(3)
        >>> y = batch_norm(x, rm, rv, training=True)
    """
    fast = kernels.front()
    if (
        fast is not None
        and mask is None
        and correction is None
        and process_group is None
        and forward_ad._current_level < 0
        and not torch.compiler.is_compiling()
    ):
        # The plain eager call, checks and op in one native call (Kernels.front); None where
        # anything differs, bad input included: the steps below take it and say what is wrong.
        y = fast(
            input, running_mean, running_var, weight, bias, training, momentum, eps, axis,
            num_batches_tracked, store_unbiased, skipped_updates,
        )  # fmt: skip
        if y is not None:
            return y
    mode = graph_mode(input, weight, bias)
    checks = (input, running_mean, running_var, weight, bias, training, momentum, eps, axis)
    if mode == "jit":
        with _untraced(mode):
            axis = validate.check_inputs(*checks, check_count=False)
    else:  # (no context manager: this runs on every call)
        axis = validate.check_inputs(*checks, check_count=False)
    if training and mode is None and mask is None and correction is None and process_group is None:
        y = _plain_train(
            input, running_mean, running_var, weight, bias, momentum, eps, axis,
            num_batches_tracked, store_unbiased, skipped_updates,
        )  # fmt: skip
        if y is not None:
            return y
    validate.check_small_batch(small_batch)
    if mode is not None and not (mode == "export" and training):
        # Training under torch.export keeps the kernel ops (they have fake implementations).
        return _graph_batch_norm(
            mode, input, running_mean, running_var, weight, bias, training, momentum, eps, axis,
            num_batches_tracked, store_unbiased, skipped_updates, mask, small_batch, correction,
            process_group,
        )  # fmt: skip
    input = _torch_layout(input)
    if not training:
        assert running_mean is not None and running_var is not None  # checked above
        return eval_forward(input, weight, bias, running_mean, running_var, eps, axis)
    count = None
    if mask is not None:
        mask = validate.prepare_mask(mask, input, axis)
        count = int(mask.sum())  # the valid values per channel: one host read
    opts = TrainOptions(axis, eps, mask, count, correction, process_group)
    local = count if count is not None else count_per_channel(input, axis)
    if local == 1 and process_group is None and small_batch != "skip":
        if small_batch == "raise":
            raise validate.one_value_error(input, axis, valid=mask is not None)
        return _small_batch_running(input, weight, bias, running_mean, running_var, eps, axis)
    # Synchronized: the count that matters is the global one, known after the statistics'
    # collective; every rank sees the same, so every rank takes the same branch (no hang).
    y, stats = train_forward(input, weight, bias, opts)
    if stats.num_values == 1:
        if small_batch == "raise":
            raise validate.one_value_error(input, axis, synchronized=True)
        if small_batch == "running":
            return _small_batch_running(input, weight, bias, running_mean, running_var, eps, axis)
        return y  # "skip": Algorithm 1 as written (var = 0, y = beta), no running update
    if running_mean is not None and running_var is not None and stats.num_values > 0:
        update_running_stats(
            running_mean,
            running_var,
            stats.mean,
            stats.var,
            stats.num_values,
            momentum,
            num_batches_tracked=num_batches_tracked,
            store_unbiased=store_unbiased,
            skipped_updates=skipped_updates,
        )
    return y


# --------------------------------------------------------------------------- TF-style pieces


def moments(x: Tensor, axes: Sequence[int], keepdims: bool = False) -> tuple[Tensor, Tensor]:
    """Mean and biased variance of ``x`` over ``axes``, as ``tf.nn.moments``.

    The core's statistics step (shifted, Welford/Chan, float32 accumulation for half inputs,
    the mean in float64) over ``axes``, returned in ``x``'s dtype. Differentiable.

    Args:
        x: a floating-point tensor.
        axes: the axes to reduce, e.g. ``[0]`` for (N, C) or ``[0, 1, 2]`` for NHWC.
        keepdims: keep the reduced axes with size 1.

    Returns:
        ``(mean, variance)``.

    Example:
        >>> mean, var = moments(torch.randn(8, 4, 4, 3), axes=[0, 1, 2])
    """
    if not isinstance(x, Tensor) or not x.is_floating_point():
        raise TypeError(
            f"moments expects a floating-point tensor, got {getattr(x, 'dtype', type(x))}"
        )
    dims = sorted({validate.normalize_axis(a, x.ndim) for a in axes})
    if not dims:
        raise ValueError("moments needs at least one axis to reduce over, got axes=[]")
    kept = [d for d in range(x.ndim) if d not in dims]
    kept_shape = [x.shape[d] for d in kept]
    # (K, R): every kept position is a "channel" of the core's shifted statistics (eq. 1-2).
    flat = x.permute(*kept, *dims).reshape(math.prod(kept_shape), -1)
    mean, var = _native.stats(flat, 0)
    out_shape = [1 if d in dims else x.shape[d] for d in range(x.ndim)] if keepdims else kept_shape
    return mean.to(x.dtype).reshape(out_shape), var.to(x.dtype).reshape(out_shape)


def batch_normalization(
    x: Tensor,
    mean: Tensor,
    variance: Tensor,
    offset: Tensor | None,
    scale: Tensor | None,
    variance_epsilon: float,
) -> Tensor:
    """``(x - mean) / sqrt(variance + variance_epsilon) * scale + offset``, as ``tf.nn.batch_normalization``.

    Statistics are given, not computed: this is the normalize step alone, with broadcasting.
    Unlike TensorFlow's ``x * inv + (offset - mean * inv)``, the mean is subtracted first,
    which keeps digits when ``|mean| >> std`` (§9 of docs/math.md); computed in the
    accumulation dtype (float32 for half inputs) and returned in ``x``'s dtype.

    Args:
        x: input tensor.
        mean, variance: tensors broadcastable to ``x`` (e.g. from :func:`moments` with keepdims).
        offset: beta, broadcastable to ``x``, or None.
        scale: gamma, broadcastable to ``x``, or None.
        variance_epsilon: added to the variance; must be > 0.

    Returns:
        The normalized tensor, in ``x``'s dtype.
    """
    if not variance_epsilon > 0:
        raise ValueError(
            f"variance_epsilon must be > 0, got {variance_epsilon} (Keras's default is 1e-3)"
        )
    acc = _native.acc_dtype(x.dtype)
    inv = torch.rsqrt(variance.to(acc) + variance_epsilon)
    if scale is not None:
        inv = inv * scale.to(acc)
    y = (x.to(acc) - mean.to(acc)) * inv  # mean first (§9)
    return (y if offset is None else y + offset.to(acc)).to(x.dtype)
