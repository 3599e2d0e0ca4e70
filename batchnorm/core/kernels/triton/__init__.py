"""Triton kernels of the batch-norm primitives, for CUDA; interpretable on CPU for the tests.

How they are chosen: where the ``triton`` package is installed (the ``[gpu]`` extra) the set
is registered for ``"cuda"`` when :mod:`batchnorm.core.kernels` is imported (nothing of triton
is imported until the first CUDA call), and :func:`batchnorm.core.kernels.get` picks it for a
CUDA tensor that :meth:`TritonSet.supports`: float32, bfloat16 or float16, contiguous NC* or
channels-last / 2-D (the channel axis innermost), at most :data:`MAX_NUMEL` values, on the
current device of compute capability 8.0 or more, in plain eager mode. Anything else (float64,
another layout, ``torch.compile``, ``torch.func``, a tensor subclass) runs the native torch ops.
``BATCHNORM_TRITON=0`` keeps the set unregistered.

What they compute: the primitives of :mod:`batchnorm.core.kernels` with its exactness rules
(float32 statistics about a per-channel shift, a float64 mean, the mean subtracted before
scaling as ``(x - hi) - lo``; a constant channel gives exactly ``beta``), deterministic (no
atomics; every reduction in a fixed order). A training forward is 4 launches (statistics
partials, their merge, normalize, running update), a backward 3 (two sums, their merge, dx);
with one split per channel the merges fold into the first kernel. Design and status:
``docs/gpu.md``.
"""

from __future__ import annotations

import importlib.util
import os

from .. import Kernels
from ._set import (
    DTYPES,
    MAX_NUMEL,
    Plan,
    TritonSet,
    Tuning,
    geometry,
    interpreted,
    load_error,
    load_jit,
    make_plan,
)


def available() -> bool:
    """Whether the ``triton`` package is installed (found, not imported)."""
    return importlib.util.find_spec("triton") is not None


def kernel_set(device_type: str = "cuda", tuning: Tuning | None = None) -> Kernels:
    """A :class:`~batchnorm.core.kernels.Kernels` of the Triton kernels for ``device_type``.

    Args:
        device_type: ``"cuda"`` runs the compiled kernels; ``"cpu"`` runs them in Triton's
            interpreter on CPU tensors (slow: for tests, ``tests/test_kernels_triton.py``).
        tuning: launch shapes (:class:`Tuning`); the defaults target an H100/H200.

    Example:
        >>> from batchnorm.core import kernels
        >>> kernels.register("cpu", kernel_set("cpu"))  # doctest: +SKIP
    """
    s = TritonSet(device_type, tuning)
    return Kernels(
        name=f"triton-{device_type}",
        supports=s.supports,
        stats=s.stats,
        normalize=s.normalize,
        backward_reduce=s.backward_reduce,
        backward_elemt=s.backward_elemt,
        running_update=s.running_update,
        normalize_stats=s.normalize_stats,
        backward_elemt_stats=s.backward_elemt_stats,
    )


def default_cuda_set() -> Kernels | None:
    """The set :mod:`batchnorm.core.kernels` registers for ``"cuda"``, or None where triton is
    not installed or ``BATCHNORM_TRITON=0``."""
    if os.environ.get("BATCHNORM_TRITON", "1") == "0" or not available():
        return None
    return kernel_set("cuda")


__all__ = [
    "DTYPES",
    "MAX_NUMEL",
    "Plan",
    "TritonSet",
    "Tuning",
    "available",
    "default_cuda_set",
    "geometry",
    "interpreted",
    "kernel_set",
    "load_error",
    "load_jit",
    "make_plan",
]
