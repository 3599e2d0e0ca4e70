"""The fast CPU kernel set: the ``batchnorm::*`` torch ops of the library built at install.

``pip install .`` compiles ``csrc/`` into ``_cpu_ops*.so`` beside this file (``setup.py``),
with ``_cpu_ops.json`` recording its SHA-256 and the torch version it was built against.
:func:`load` checks both before the library is loaded (``torch.ops.load_library``), once per
process; a missing, truncated, replaced or mismatched file is never loaded: one warning names
it and says how to rebuild, and the package runs the torch-op set (``_native.py``).
Importing and calling writes nothing and needs no compiler.

The library registers, for the CPU and Meta dispatch keys, one op per primitive of
:class:`batchnorm.core.kernels.Kernels` (``batchnorm::stats``, ``normalize``,
``backward_reduce``, ``backward_elemt``, ``normalize_stats``, ``backward_elemt_stats``,
``running_update``) and ``batchnorm::train``, the training forward in one call with its
closed-form backward in C++ (Autograd key). Eager mode calls these ops; ``torch.compile``
and ``torch.export`` record the same ops.

Chosen for CPU tensors of float32, float64 or bfloat16 (the ops also take float16, see
``FAST_DTYPES``) that are contiguous (NCHW, NCL, NCDHW, (N, C)) or have the channel axis
innermost and the rest dense (channels-last, channels-last-3d, Keras ``axis=-1``).
"""

from __future__ import annotations

import hashlib
import importlib.machinery
import importlib.util
import json
import math
import os
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from .. import running

# float16 runs correctly in the kernels (the ops take it) but its bit-exact software
# conversions measured 2-3x slower than torch's own half kernels, so the set declines it.
FAST_DTYPES = (torch.float32, torch.float64, torch.bfloat16)
HERE = Path(__file__).parent
MANIFEST = HERE / "_cpu_ops.json"
REBUILD = (
    "reinstall from a source checkout with `pip install --no-build-isolation --force-reinstall .` "
    "(a C++ compiler needed), or run `batchnorm build-kernels` in an editable checkout"
)

_state: dict[str, Any] = {}


def _off_by_env() -> bool:
    return os.environ.get("BATCHNORM_CPU_KERNELS", "1").strip().lower() in (
        "0",
        "false",
        "off",
        "no",
    )


def _verify() -> tuple[Path | None, str]:
    """The library to load and why, or (None, the reason it is not loaded)."""
    if not MANIFEST.exists():
        found = sorted(HERE.glob("_cpu_ops*.so"))
        if found:
            return None, f"{found[0]} has no manifest ({MANIFEST.name}); not loaded. Fix: {REBUILD}"
        _state["quiet"] = True  # a build without kernels is a choice: info() says so, no warning
        return None, (
            "the CPU kernels were not built at install (no C++ compiler then?); "
            f"to get them, {REBUILD}"
        )
    try:
        manifest = json.loads(MANIFEST.read_text())
        path = HERE / str(manifest["file"])
        expected, built_for = str(manifest["sha256"]), str(manifest["torch"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        return None, f"{MANIFEST} is unreadable ({e}); not loaded. Fix: {REBUILD}"
    if path.parent != HERE or not path.name.startswith("_cpu_ops"):
        return None, f"{MANIFEST} names {path}, not a kernel library here; not loaded"
    try:
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError as e:
        return None, f"{path} cannot be read ({e}); not loaded. Fix: {REBUILD}"
    if digest != expected:
        return None, (
            f"{path} does not match the SHA-256 recorded when it was built (damaged, truncated "
            f"or replaced); not loaded. Fix: {REBUILD}"
        )
    # The release must match (the C++ API of another torch is another ABI); the local
    # label of a build (+cpu, +cu126) does not change the CPU ops' ABI.
    if built_for.split("+")[0] != torch.__version__.split("+")[0]:
        return None, (
            f"{path} was built against torch {built_for}, this is torch {torch.__version__}; "
            f"not loaded. Fix: {REBUILD}"
        )
    return path, f"{path.name} (sha256 verified, built for torch {built_for})"


def _import_front(path: Path) -> Any:
    """The verified library as a Python module (the same file, already loaded): its
    ``front``, the eager front of ``batch_norm`` (csrc/front.cpp)."""
    loader = importlib.machinery.ExtensionFileLoader(f"{__package__}._cpu_ops", str(path))
    spec = importlib.util.spec_from_loader(loader.name, loader)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module.front


def front() -> Any:
    """The eager front of the CPU set (``Kernels.front``), or None where the library is not
    loaded."""
    return _state.get("front") if load() else None


def load() -> bool:
    """Load and verify the library once per process; True where its ops are registered."""
    if "ok" in _state:
        return bool(_state["ok"])
    ok = False
    if _off_by_env():
        _state["reason"] = "fast CPU kernels off (BATCHNORM_CPU_KERNELS=0)"
    else:
        path, reason = _verify()
        _state["reason"] = reason
        if path is not None:
            try:
                torch.ops.load_library(str(path))  # type: ignore[no-untyped-call]
                _state["isa"] = str(torch.ops.batchnorm.info())
                _register_fakes()
                _state["front"] = _import_front(path)
                ok = True
            except (OSError, RuntimeError, ImportError, AttributeError) as e:
                _state["reason"] = f"{path} did not load ({e}). Fix: {REBUILD}"
        if not ok and not _state.get("quiet"):
            warnings.warn(
                f"batchnorm: fast CPU kernels unavailable, using torch ops: {_state['reason']}",
                RuntimeWarning,
                stacklevel=2,
            )
    _state["ok"] = ok
    return ok


def info() -> dict[str, str]:
    """Which CPU path runs and why: ``{"path", "isa", "reason"}``.

    ``path`` is ``"kernels"`` (the compiled ops) or ``"torch ops"``; ``isa`` the instruction
    set the kernels use (``avx512``, ``avx2``, ``baseline``; ``BATCHNORM_CPU_ISA`` chooses
    among those the CPU supports) and how it was chosen.
    """
    if load():
        isa, _, why = str(torch.ops.batchnorm.info()).partition(": ")
        return {"path": "kernels", "isa": isa, "reason": f"{_state['reason']}; {isa}: {why}"}
    return {"path": "torch ops", "isa": "none", "reason": str(_state["reason"])}


def set_isa(isa: str) -> str:
    """Switch the kernels' instruction set in this process (tests); returns the new info.

    Raises:
        RuntimeError: the library is not loaded, or this CPU lacks ``isa``.
    """
    if not load():
        raise RuntimeError(f"batchnorm: the CPU kernels are not loaded: {_state['reason']}")
    return str(torch.ops.batchnorm.set_isa(isa))


def isas() -> list[str]:
    """The instruction sets of the build that this CPU runs, widest first."""
    if not load():
        return []
    current = info()["isa"]
    found = []
    for isa in ("avx512", "avx2", "baseline"):
        try:
            set_isa(isa)
            found.append(isa)
        except RuntimeError:
            pass
    set_isa(current)
    return found


# --------------------------------------------------------------------------- fake implementations


def _acc(x: Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _out_like(x: Tensor, axis: int) -> Tensor:
    """The output the CPU kernel makes: x's layout, or contiguous for one it reads via a copy."""
    return torch.empty_like(x) if geometry(x, axis) is not None else x.new_empty(x.shape)


def _vec(x: Tensor, axis: int, dtype: torch.dtype) -> Tensor:
    return x.new_empty(x.shape[axis], dtype=dtype)


def _register_fakes() -> None:
    """Shapes, dtypes and layouts of every op's outputs, for fake tensors (torch.compile,
    torch.export, opcheck), symbolic sizes included."""
    fake: Any = torch.library.register_fake

    def _stats_fake(x: Tensor, axis: int) -> tuple[Tensor, Tensor]:
        return _vec(x, axis, torch.float64), _vec(x, axis, _acc(x))

    def _normalize_fake(x: Tensor, axis: int, mean: Tensor, scale: Tensor, shift: Tensor) -> Tensor:
        return _out_like(x, axis)

    def _backward_reduce_fake(
        dy: Tensor, x: Tensor, axis: int, mean: Tensor
    ) -> tuple[Tensor, Tensor]:
        return _vec(x, axis, _acc(x)), _vec(x, axis, _acc(x))

    def _backward_elemt_fake(dy: Tensor, x: Tensor, axis: int, *vectors: Tensor) -> Tensor:
        return _out_like(x, axis)

    def _normalize_stats_fake(x: Tensor, axis: int, *rest: Any) -> tuple[Tensor, Tensor]:
        return _out_like(x, axis), _vec(x, axis, _acc(x))

    def _backward_elemt_stats_fake(dy: Tensor, x: Tensor, axis: int, *rest: Any) -> Tensor:
        return _out_like(x, axis)

    def _running_update_fake(*args: Any) -> None:
        return None

    def _train_fake(
        x: Tensor, weight: Tensor | None, bias: Tensor | None, eps: float, axis: int, *rest: Any
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        acc = _acc(x)
        return (
            _out_like(x, axis),
            _vec(x, axis, torch.float64),
            _vec(x, axis, acc),
            _vec(x, axis, acc),
        )

    def _train_backward_fake(
        dy: Tensor,
        x: Tensor,
        weight: Tensor | None,
        mean: Tensor,
        inv_std: Tensor,
        axis: int,
        output_mask: list[bool],
    ) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
        dw = db = None
        if output_mask[1] and weight is not None:
            dw = weight.new_empty(weight.shape)
        if output_mask[2]:
            db = (weight if weight is not None else dy).new_empty(x.shape[axis])
        return (_out_like(x, axis) if output_mask[0] else None), dw, db

    fake("batchnorm::stats", _stats_fake)
    fake("batchnorm::normalize", _normalize_fake)
    fake("batchnorm::backward_reduce", _backward_reduce_fake)
    fake("batchnorm::backward_elemt", _backward_elemt_fake)
    fake("batchnorm::normalize_stats", _normalize_stats_fake)
    fake("batchnorm::backward_elemt_stats", _backward_elemt_stats_fake)
    fake("batchnorm::running_update", _running_update_fake)
    fake("batchnorm::train", _train_fake)
    fake("batchnorm::train_backward", _train_backward_fake)

    def _max_pool2x2_fake(x: Tensor) -> tuple[Tensor, Tensor]:
        shape = (x.shape[0], x.shape[1], x.shape[2] // 2, x.shape[3] // 2)
        return x.new_empty(shape), x.new_empty(shape, dtype=torch.int64)

    fake("batchnorm::max_pool2x2", _max_pool2x2_fake)


# --------------------------------------------------------------------------- the kernel set


def geometry(x: Tensor, axis: int) -> tuple[int, int, int] | None:
    """``(outer, C, inner)`` of a layout the kernels read, or None.

    ``inner > 1``: channel-major runs (contiguous NC*); ``inner == 1``: rows of C channels
    (channels-last or 2-D). ``axis`` is non-negative.
    """
    C = x.shape[axis]
    if x.is_contiguous():
        return math.prod(x.shape[:axis]), C, math.prod(x.shape[axis + 1 :])
    if x.stride(axis) == 1 and x.movedim(axis, -1).is_contiguous():
        return x.numel() // C, C, 1
    return None


def supports(x: Tensor, axis: int) -> bool:
    """True for a non-empty CPU tensor of a supported dtype and a layout the kernels read
    (:func:`geometry` is not None)."""
    return (
        x.device.type == "cpu"
        and x.dtype in FAST_DTYPES
        and x.numel() > 0
        and (x.is_contiguous() or (x.stride(axis) == 1 and x.movedim(axis, -1).is_contiguous()))
    )


_VEC = (torch.float32, torch.float64)


def _flat(t: Tensor, dtypes: tuple[torch.dtype, ...]) -> bool:
    return t.device.type == "cpu" and t.dtype in dtypes and t.is_contiguous()


def buffers_fit(
    running_mean: Tensor,
    running_var: Tensor,
    momentum: float | Tensor | None,
    num_batches_tracked: Tensor | None,
    skipped_updates: Tensor | None,
) -> bool:
    """Whether ``batchnorm::train`` (and ``running_update``) can update these buffers: float32
    or float64 CPU buffers of one dtype, a float (or None) momentum, int64 scalar counters.
    Anything else takes the torch-op update (float16 buffers are blended in float32 there)."""
    nbt, skipped = num_batches_tracked, skipped_updates
    return (
        (momentum is None or type(momentum) is float or type(momentum) is int)
        and running_mean.dtype in _VEC
        and running_var.dtype == running_mean.dtype
        and running_mean.device.type == "cpu"
        and running_var.device.type == "cpu"
        and (nbt is None or (nbt.dtype == torch.int64 and nbt.numel() == 1))
        and (skipped is None or (skipped.dtype == torch.int64 and skipped.numel() == 1))
    )


def _counter(t: Tensor | None) -> bool:
    return t is None or (_flat(t, (torch.int64,)) and t.numel() == 1)


def running_update(
    running_mean: Tensor,
    running_var: Tensor,
    mean: Tensor,
    var: Tensor,
    count: int,
    momentum: float | Tensor | None,
    num_batches_tracked: Tensor | None,
    store_unbiased: bool,
    skipped_updates: Tensor | None,
) -> None:
    """The kernel set's running update (eq. 13-16): ``batchnorm::running_update`` where
    :func:`_running_update` takes it, else the torch-op version (the same bits)."""
    args = (running_mean, running_var, mean, var, count, momentum)
    counters = (num_batches_tracked, store_unbiased, skipped_updates)
    if not _running_update(*args, *counters):
        running.native_running_update(*args, *counters)


def _running_update(
    running_mean: Tensor,
    running_var: Tensor,
    mean: Tensor,
    var: Tensor,
    count: int,
    momentum: float | Tensor | None,
    num_batches_tracked: Tensor | None,
    store_unbiased: bool,
    skipped_updates: Tensor | None,
) -> bool:
    """``update_running_stats`` as one ``batchnorm::running_update``; False where it declines.

    Taken for contiguous float32/float64 CPU buffers, a float64 mean, a float32/float64
    variance, a float (or None) momentum and int64 counters; anything else (a tensor
    momentum, half buffers) returns False and the caller runs the torch-op version. The same
    rule (non-finite batches skipped and counted), each step in the precision of the torch op
    it replaces (the same bits).
    """
    # One expression, no helper calls: this runs on every training step.
    rm, rv = running_mean, running_var
    if not (
        (momentum is None or type(momentum) is float or type(momentum) is int)
        and rm.dtype in _VEC
        and rv.dtype == rm.dtype
        and mean.dtype == torch.float64
        and var.dtype in _VEC
        and rm.device.type == "cpu"
        and rv.device.type == "cpu"
        and mean.device.type == "cpu"
        and var.device.type == "cpu"
        and rm.is_contiguous()
        and rv.is_contiguous()
        and mean.is_contiguous()
        and var.is_contiguous()
        and mean.numel() == var.numel() == rm.numel() == rv.numel()
        and (num_batches_tracked is None or _counter(num_batches_tracked))
        and (skipped_updates is None or _counter(skipped_updates))
    ):
        return False
    torch.ops.batchnorm.running_update(
        running_mean,
        running_var,
        mean,
        var,
        int(count),
        0.0 if momentum is None else float(momentum),
        momentum is None,
        store_unbiased,
        num_batches_tracked,
        skipped_updates,
    )
    return True
