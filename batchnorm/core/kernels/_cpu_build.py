"""Compile ``cpu.cpp`` once per machine and load it with ctypes.

The library is plain C ABI (no torch headers, no pybind11), so it compiles with the system
C++ compiler in a few seconds, needs neither ninja nor Python headers, and loads in about a
millisecond. It is cached in ``$BATCHNORM_CACHE_DIR`` (default
``$XDG_CACHE_HOME/batchnorm/kernels`` or ``~/.cache/batchnorm/kernels``) under a key made of
the source's hash, the compiler, the flags and the CPU's feature flags (``-march=native``),
so a new process only loads the ``.so`` and a changed source or machine rebuilds.

Where no compiler works, :func:`load` returns None and logs one line; the package then uses
the native torch-op kernels. ``BATCHNORM_CPU_KERNELS=0`` turns the fast path off.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

log = logging.getLogger("batchnorm.kernels")

SOURCE = Path(__file__).with_name("cpu.cpp")
LIB_NAME = "libbatchnorm_cpu.so"
ABI_VERSION = 4
# -march=native first; a compiler that rejects it gets the portable flags.
FLAG_SETS = (
    ["-O3", "-march=native", "-fopenmp", "-std=c++17", "-shared", "-fPIC"],
    ["-O3", "-fopenmp", "-std=c++17", "-shared", "-fPIC"],
    ["-O3", "-std=c++17", "-shared", "-fPIC"],  # no OpenMP: one thread, still vectorised
)

_lock = threading.Lock()
_state: dict[str, object] = {}


def cache_dir() -> Path:
    """Where compiled libraries live (``BATCHNORM_CACHE_DIR`` overrides)."""
    env = os.environ.get("BATCHNORM_CACHE_DIR")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "batchnorm" / "kernels"


def _compiler() -> str | None:
    for cand in (os.environ.get("CXX"), "c++", "g++", "clang++"):
        if cand and shutil.which(cand):
            return shutil.which(cand)
    return None


def _cpu_flags() -> str:
    # The "flags" line decides what -march=native emits; a different CPU gets its own build.
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    return line
    except OSError:
        pass
    import platform

    return platform.machine() + platform.processor()


def _key(compiler: str, flags: list[str]) -> str:
    h = hashlib.sha256()
    h.update(SOURCE.read_bytes())
    for part in (compiler, " ".join(flags), _cpu_flags(), sys.platform, str(ABI_VERSION)):
        h.update(part.encode())
    return h.hexdigest()[:16]


def _declare(lib: ctypes.CDLL) -> ctypes.CDLL:
    i64, i32, vp = ctypes.c_int64, ctypes.c_int, ctypes.c_void_p
    lib.bn_abi_version.restype = i32
    lib.bn_stats.argtypes = [i32, vp, i64, i64, i64, vp, vp, i32]
    lib.bn_normalize.argtypes = [i32, vp, vp, i64, i64, i64, vp, vp, vp, i32]
    lib.bn_backward_reduce.argtypes = [i32, vp, vp, i64, i64, i64, vp, vp, vp, i32]
    lib.bn_backward_elemt.argtypes = [i32, vp, vp, vp, i64, i64, i64, vp, vp, vp, vp, i32]
    lib.bn_running_update.argtypes = [
        i32,
        vp,
        vp,
        i32,
        vp,
        vp,
        i64,
        i64,
        ctypes.c_double,
        i32,
        i32,
        vp,
        vp,
    ]
    lib.bn_normalize_stats.argtypes = [
        i32,
        vp,
        vp,
        i64,
        i64,
        i64,
        i32,
        vp,
        i32,
        vp,
        vp,
        vp,
        ctypes.c_double,
        vp,
        i32,
    ]
    lib.bn_backward_elemt_stats.argtypes = [
        i32,
        vp,
        vp,
        vp,
        i64,
        i64,
        i64,
        vp,
        vp,
        vp,
        vp,
        vp,
        i64,
        i32,
    ]
    for f in (
        lib.bn_stats,
        lib.bn_normalize,
        lib.bn_backward_reduce,
        lib.bn_backward_elemt,
        lib.bn_running_update,
        lib.bn_normalize_stats,
        lib.bn_backward_elemt_stats,
    ):
        f.restype = i32
    if lib.bn_abi_version() != ABI_VERSION:
        raise OSError(f"{LIB_NAME} has ABI {lib.bn_abi_version()}, expected {ABI_VERSION}")
    return lib


def _compile(compiler: str, flags: list[str], out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    # Build beside the target and rename: concurrent processes never load a half-written file.
    fd, tmp = tempfile.mkstemp(prefix=".build-", suffix=".so", dir=out.parent)
    os.close(fd)
    try:
        subprocess.run(
            [compiler, *flags, str(SOURCE), "-o", tmp],
            check=True,
            capture_output=True,
            text=True,
            timeout=600,
        )
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def build(force: bool = False) -> tuple[Path | None, str]:
    """Compile the library into the cache (if not there) and return ``(path, message)``.

    Tries ``-march=native`` with OpenMP, then portable flags, then without OpenMP.
    ``path`` is None where every attempt failed; ``message`` says what happened.
    """
    compiler = _compiler()
    if compiler is None:
        return None, "no C++ compiler found (set CXX, or install g++/clang++)"
    errors = []
    for flags in FLAG_SETS:
        path = cache_dir() / _key(compiler, flags) / LIB_NAME
        failed = path.with_name("FAILED")
        if path.exists() and not force:
            return path, f"cached {path}"
        if failed.exists() and not force:
            # Remembered so that every new process does not retry a build that cannot work.
            errors.append(str(failed))
            continue
        t0 = time.perf_counter()
        try:
            _compile(compiler, flags, path)
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError) as e:
            detail = (getattr(e, "stderr", "") or str(e)).strip()
            errors.append(str(failed))
            try:
                failed.parent.mkdir(parents=True, exist_ok=True)
                failed.write_text(detail + "\n")
            except OSError:
                pass
            continue
        return path, f"compiled {path} in {time.perf_counter() - t0:.1f} s"
    return None, (
        f"compiling {SOURCE.name} with {compiler} failed (details in {', '.join(errors)}; "
        "`batchnorm build-kernels --force` retries)"
    )


def load() -> ctypes.CDLL | None:
    """The loaded library, building it on first use; None where that is impossible.

    The outcome is remembered for the process: a failure is logged once and never retried.
    """
    if "lib" in _state:
        return _state["lib"]  # type: ignore[return-value]
    with _lock:
        if "lib" in _state:
            return _state["lib"]  # type: ignore[return-value]
        lib = None
        if os.environ.get("BATCHNORM_CPU_KERNELS", "1").strip().lower() in (
            "0",
            "false",
            "off",
            "no",
        ):
            # Asked for: no log line.
            _state["message"] = "fast CPU kernels off (BATCHNORM_CPU_KERNELS=0)"
            _state["lib"] = None
            return None
        import torch  # noqa: F401  (its libgomp must be loaded first so ours is the same one)

        path, message = build()
        _state["message"] = message
        if path is not None:
            try:
                lib = _declare(ctypes.CDLL(str(path)))
            except (OSError, AttributeError) as e:
                _state["message"] = f"could not load {path}: {e}"
        if lib is None:
            log.warning(
                "batchnorm: fast CPU kernels unavailable, using torch ops (%s)", _state["message"]
            )
        _state["lib"] = lib
        return lib


def status() -> str:
    """A one-line description of the fast CPU kernels' state in this process."""
    load()
    return str(_state.get("message", ""))
