"""Per-device implementations of the four batch-norm primitives, behind one interface.

Every normalizing path in the package goes through these four functions; a faster
implementation for a device registers itself with :func:`register` and is chosen by
:func:`get` from the input's device. The portable implementation in ``_native.py``
(torch ops only) is always there and is the fallback for anything a faster kernel
does not support.

The primitives, per channel ``c`` over the reduction set ``R`` (every axis but ``axis``),
``m = |R|`` (equation numbers refer to ``docs/math.md``):

- ``stats(x, axis) -> (mean, var)``: ``mean_c = sum_R x / m`` (eq. 1), returned in float64,
  and the *biased* ``var_c = sum_R (x - mean_c)^2 / m`` (eq. 2) in the accumulation dtype
  (float64 for float64 input, else float32), computed stably.
- ``normalize(x, axis, mean, scale, shift) -> y``: ``y = (x - mean) * scale + shift``
  (eq. 3-4 with ``scale = gamma * inv_std``). Every ``x - mean`` is taken with the float64
  mean split into ``hi + lo`` as ``(x - hi) - lo``, so ``|mean| >> std`` loses no digits
  (§9 of docs/math.md; ``_native.center``).
- ``backward_reduce(dy, x, axis, mean) -> (sum_dy, sum_dy_xmu)``: ``sum_R dy`` and
  ``sum_R dy * (x - mean)``.
- ``backward_elemt(dy, x, axis, mean, k, mean_dy, proj) -> dx``:
  ``dx = k * (dy - mean_dy - (x - mean) * proj)`` (eq. 12).
- ``running_update(running_mean, running_var, mean, var, count, momentum,
  num_batches_tracked, store_unbiased, skipped_updates) -> None``: the running-statistics
  update of ``functional.update_running_stats`` in place (eq. 13-16, a non-finite batch
  skipped and counted), chosen by the buffers' device (:func:`for_buffers`).

``mean`` is always float64; ``scale``, ``shift``, ``k``, ``mean_dy`` and ``proj`` are in the
accumulation dtype. A kernel set declines an input through ``supports`` (:class:`Kernels`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from .. import running
from . import _native
from ._eager import jit_tracing, plain_eager

Tensor = torch.Tensor
StatsFn = Callable[[Tensor, int], tuple[Tensor, Tensor]]
NormalizeFn = Callable[[Tensor, int, Tensor, Tensor, Tensor], Tensor]
BackwardReduceFn = Callable[[Tensor, Tensor, int, Tensor], tuple[Tensor, Tensor]]
BackwardElemtFn = Callable[[Tensor, Tensor, int, Tensor, Tensor, Tensor, Tensor], Tensor]
RunningUpdateFn = Callable[..., None]
NormalizeStatsFn = Callable[
    [Tensor, int, Tensor, Tensor, "Tensor | None", "Tensor | None", float], tuple[Tensor, Tensor]
]
BackwardElemtStatsFn = Callable[
    [Tensor, Tensor, int, Tensor, Tensor, "Tensor | None", Tensor, Tensor, int], Tensor
]
TrainFn = Callable[..., tuple[Tensor, Tensor, Tensor, Tensor]]
FrontFn = Callable[..., "Tensor | None"]
BuffersFitFn = Callable[
    [Tensor, Tensor, "float | Tensor | None", "Tensor | None", "Tensor | None"], bool
]


@dataclass(frozen=True)
class Kernels:
    """A set of the four primitives for one device type.

    ``supports(x, axis)`` says whether this set handles the input (dtype, layout,
    device); where it returns False the native set is used instead, with identical
    results up to rounding.

    Two optional entries let a set build the per-channel vectors of the plain step inside the
    kernel call instead of the core building them with tiny tensor ops (each costs 5-20 us
    after a large kernel has flushed the caches); None, and the core builds them:

    - ``normalize_stats(x, axis, mean, var, weight, bias, eps) -> (y, inv_std)``: ``normalize``
      with ``inv_std = rsqrt(var.to(acc) + eps)``, ``scale = weight * inv_std``, ``shift = bias``.
    - ``backward_elemt_stats(dy, x, axis, mean, inv_std, weight, sum_dy, sum_dy_xmu, count)``:
      ``backward_elemt`` with ``k = weight * inv_std``, ``mean_dy = sum_dy / count``,
      ``proj = sum_dy_xmu / count * inv_std^2`` (eq. 12).

    Both must give the bits of the core's composition (tested).

    - ``train(x, weight, bias, eps, axis[, running_mean, running_var, num_batches_tracked,
      skipped_updates, momentum, cumulative, store_unbiased]) -> (y, mean, var, inv_std)``:
      the whole plain training forward (``stats`` then ``normalize_stats``) in one call,
      differentiable in ``x``, ``weight`` and ``bias`` with the closed-form backward (eq. 9,
      10, 12), to any order; ``mean``, ``var`` and ``inv_std`` are not differentiable. Given
      running buffers it also runs ``running_update`` on them (momentum as a float,
      ``cumulative`` for ``momentum=None``), where ``buffers_fit`` says it can. None: the
      core runs the steps itself. Used where no mask, correction or process group changes a
      step.

    - ``front(input, running_mean, running_var, weight, bias, training, momentum, eps, axis,
      num_batches_tracked, store_unbiased, skipped_updates) -> y | None``: the whole plain
      eager call of :func:`batchnorm.batch_norm` (``train``, or ``normalize_stats`` where no
      gradient can flow in evaluation), its checks included, in one native call; None wherever
      anything differs from the plain case (bad input included: the core then takes the call
      and raises its error). It must give the bits and the graph of the core's own path
      (tested). Only the set registered for "cpu" is asked (:func:`front`): there a small
      layer's step is mostly per-call cost.
    """

    name: str
    supports: Callable[[Tensor, int], bool]
    stats: StatsFn
    normalize: NormalizeFn
    backward_reduce: BackwardReduceFn
    backward_elemt: BackwardElemtFn
    running_update: RunningUpdateFn
    normalize_stats: NormalizeStatsFn | None = None
    backward_elemt_stats: BackwardElemtStatsFn | None = None
    train: TrainFn | None = None
    buffers_fit: BuffersFitFn | None = None
    front: FrontFn | None = None


NATIVE = Kernels(
    name="native",
    supports=lambda x, axis: True,
    stats=_native.stats,
    normalize=_native.normalize,
    backward_reduce=_native.backward_reduce,
    backward_elemt=_native.backward_elemt,
    running_update=running.native_running_update,
)

_REGISTRY: dict[str, Kernels] = {}
_ENABLED = True


def register(device_type: str, kernels: Kernels) -> None:
    """Register a faster kernel set for ``device_type`` ("cpu", "cuda")."""
    _REGISTRY[device_type] = kernels


def set_enabled(enabled: bool) -> bool:
    """Turn the fast kernels on or off globally; returns the previous setting."""
    global _ENABLED
    previous, _ENABLED = _ENABLED, bool(enabled)
    return previous


def enabled() -> bool:
    """Whether the fast kernels are switched on (:func:`set_enabled`)."""
    return _ENABLED


def get(x: torch.Tensor, axis: int) -> Kernels:
    """The kernel set for ``x``: the registered one for its device if it supports ``x``."""
    if _ENABLED:
        fast = _REGISTRY.get(x.device.type)
        if fast is not None and fast.supports(x, axis):
            return fast
    return NATIVE


def front() -> FrontFn | None:
    """The front of the set registered for "cpu" (:attr:`Kernels.front`) while the fast
    kernels are on, else None. Asked on every eager call, before any check."""
    if _ENABLED:
        cpu = _REGISTRY.get("cpu")
        if cpu is not None:
            return cpu.front
    return None


def for_buffers(buffer: torch.Tensor) -> Kernels:
    """The kernel set for per-channel buffers (the running update): by device alone; the
    set's ``running_update`` falls back to the native one for what it does not cover."""
    if _ENABLED:
        fast = _REGISTRY.get(buffer.device.type)
        if fast is not None:
            return fast
    return NATIVE


# The fast CPU set: the batchnorm::* ops of the library built at install (csrc/, setup.py),
# verified and loaded here; where it is absent or refused, CPU tensors get NATIVE and
# info() says why.
from . import _cpu  # noqa: E402

if _cpu.load():
    _ops = torch.ops.batchnorm
    register(
        "cpu",
        Kernels(
            name="cpu",
            supports=_cpu.supports,
            stats=_ops.stats,
            normalize=_ops.normalize,
            backward_reduce=_ops.backward_reduce,
            backward_elemt=_ops.backward_elemt,
            running_update=_cpu.running_update,
            normalize_stats=_ops.normalize_stats,
            backward_elemt_stats=_ops.backward_elemt_stats,
            train=_ops.train,
            buffers_fit=_cpu.buffers_fit,
            front=_cpu.front(),
        ),
    )


def info() -> dict[str, str]:
    """Which CPU path this process runs: ``{"path": "kernels" | "torch ops", "isa", "reason"}``
    (the compiled kernels and the instruction set they use, or why torch ops run instead)."""
    return _cpu.info()


# The Triton set for CUDA (triton/, the [gpu] extra): registered where triton is installed;
# triton itself is imported on the first CUDA call, and supports() declines what it cannot run.
from . import triton as _triton  # noqa: E402

_cuda_set = _triton.default_cuda_set()
if _cuda_set is not None:
    register("cuda", _cuda_set)

__all__ = [
    "NATIVE",
    "Kernels",
    "enabled",
    "for_buffers",
    "front",
    "get",
    "info",
    "jit_tracing",
    "plain_eager",
    "register",
    "set_enabled",
]
