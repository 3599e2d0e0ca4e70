"""``batchnorm bench --device cuda``: torch's native batch norm, ``torch.compile`` of a plain
one, and ours (the Triton kernels), against the HBM copy floor measured in the same run.

Each cell (shape, dtype, layout, mode) is timed with CUDA events, the L2 flushed (a buffer of
several times the L2 written) before every timed call, the implementations interleaved
(native, compile, ours, copy, native, ...) so drifting clocks hit all alike; a cell reports
the median of ``--repeat`` runs. Passes over the tensor per mode (as ``batchnorm bench``)::

    train fwd  3 passes   read x for the statistics, read x + write y to normalize
    eval fwd   2 passes   read x, write y
    fwd+bwd    8 passes   the forward, then read dy, x for the sums and dy, x + write dx

``floor = passes / 2 * copy_time`` (``dst.copy_(x)``: one read and one write of the tensor,
timed the same way) and ``% floor = floor / time``. Ratios are medians of the paired ratios
``native / ours`` and ``compile / ours``. ``train`` times a training forward of inputs that
require grad (the graph is recorded, as in training).

Also per cell: ``wall`` (ms per call of ``--wall-calls`` back-to-back calls, no flush, one
synchronize: what a training loop sees, host overhead included when it exceeds the GPU time),
``host`` (ms of host time to issue one call), the kernel path taken, and the largest
difference between our output and native's. ``torch.compile`` is reset before each cell and
compiles it once (its compile time is reported); ``--no-compile`` skips it.

Nothing here runs without a CUDA device; the pure parts (cells, floor, table, arguments) are
tested on CPU (tests/test_bench_cuda.py).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

#: The issue's shapes; 4-D ones run NCHW and channels-last ("-cl").
SHAPES: dict[str, tuple[int, ...]] = {
    "32x64x56x56": (32, 64, 56, 56),
    "128x256x14x14": (128, 256, 14, 14),
    "8x32x112x112": (8, 32, 112, 112),
    "64x128x56x56": (64, 128, 56, 56),
    "256x64x112x112": (256, 64, 112, 112),
    "4096x1024": (4096, 1024),
    "65536x1024": (65536, 1024),
}
MODES = {"train": 3, "eval": 2, "fwd+bwd": 8}  # mode -> passes over the tensor
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
IMPLS = ("native", "compile", "ours")
DEFAULT_MODES = "train,fwd+bwd"
DEFAULT_DTYPES = "float32,bfloat16"


def default_cells() -> str:
    """Every shape, NCHW and channels-last for the 4-D ones."""
    names = []
    for name, shape in SHAPES.items():
        names.append(name)
        if len(shape) == 4:
            names.append(name + "-cl")
    return ",".join(names)


@dataclass(frozen=True)
class Cell:
    """One benchmark case: a shape in a layout and dtype, in one mode."""

    name: str  # e.g. "256x64x112x112-cl"
    shape: tuple[int, ...]
    channels_last: bool
    dtype: str
    mode: str

    @property
    def passes(self) -> int:
        return MODES[self.mode]

    def nbytes(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n * DTYPES[self.dtype].itemsize


def parse_cells(shapes: str, dtypes: str, modes: str) -> list[Cell]:
    """The cells of comma-separated shape names (``NAME`` or ``NAME-cl``), dtypes and modes.

    Raises:
        ValueError: an unknown name, dtype or mode, or ``-cl`` on a 2-D shape.
    """
    out = []
    names = [s for s in shapes.split(",") if s]
    dts = [d for d in dtypes.split(",") if d]
    mds = [m for m in modes.split(",") if m]
    bad = [d for d in dts if d not in DTYPES] + [m for m in mds if m not in MODES]
    if bad:
        raise ValueError(
            f"unknown dtypes or modes {bad}; dtypes: {', '.join(DTYPES)}; modes: {', '.join(MODES)}"
        )
    for name in names:
        base, cl = (name[:-3], True) if name.endswith("-cl") else (name, False)
        if base not in SHAPES:
            raise ValueError(
                f"unknown shape {name!r}; choose from {', '.join(SHAPES)} (add -cl for "
                "channels-last on the 4-D ones)"
            )
        if cl and len(SHAPES[base]) != 4:
            raise ValueError(f"{name!r}: channels-last needs a 4-D shape, {base} is 2-D")
        for dt in dts:
            for mode in mds:
                out.append(Cell(name, SHAPES[base], cl, dt, mode))
    return out


def floor_ms(passes: int, copy_ms: float) -> float:
    """The copy floor of ``passes`` passes: a copy is 2 passes (read + write)."""
    return passes / 2 * copy_ms


def summarize(cell: Cell, times: dict[str, list[float]]) -> dict[str, Any]:
    """One row from the per-repeat times (ms) of each implementation and of the copy.

    ``times`` maps "native", "compile", "ours" (any may be missing: not run or failed) and
    "copy" to equally long lists, entry ``i`` of each from the same interleaved round.
    """
    copy_ms = statistics.median(times["copy"])
    fl = floor_ms(cell.passes, copy_ms)
    row: dict[str, Any] = {
        "shape": cell.name,
        "dtype": cell.dtype,
        "mode": cell.mode,
        "bytes": cell.nbytes(),
        "copy_ms": copy_ms,
        "copy_tbs": 2 * cell.nbytes() / copy_ms / 1e9,
        "floor_ms": fl,
    }
    for impl in IMPLS:
        t = times.get(impl)
        if not t:
            continue
        row[f"{impl}_ms"] = statistics.median(t)
        row[f"{impl}_min_ms"] = min(t)
        row[f"{impl}_floor_pct"] = 100 * fl / statistics.median(t)
    ours = times.get("ours")
    if ours:
        for impl in ("native", "compile"):
            t = times.get(impl)
            if t:
                row[f"{impl}_over_ours"] = statistics.median(a / b for a, b in zip(t, ours))
        others = [row[f"{i}_ms"] for i in ("native", "compile") if f"{i}_ms" in row]
        if others:
            row["best_other_over_ours"] = min(others) / row["ours_ms"]
    return row


HEADER = (
    f"{'shape':<19}{'dtype':<9}{'mode':<8}{'native':>8}{'compile':>8}{'ours':>8}"
    f"{'n/o':>6}{'c/o':>6}{'floor':>7}{'%fl n':>6}{'%fl c':>6}{'%fl o':>6}"
    f"{'wall n':>8}{'wall o':>8}{'host n':>7}{'host o':>7}  path"
)


def _f(row: dict[str, Any], key: str, width: int, fmt: str) -> str:
    v = row.get(key)
    return f"{'-':>{width}}" if v is None else f"{v:>{width}{fmt}}"


def format_row(row: dict[str, Any]) -> str:
    """One line of the table (times in ms; '-' where an implementation did not run)."""
    return (
        f"{row['shape']:<19}{row['dtype']:<9}{row['mode']:<8}"
        + _f(row, "native_ms", 8, ".3f")
        + _f(row, "compile_ms", 8, ".3f")
        + _f(row, "ours_ms", 8, ".3f")
        + _f(row, "native_over_ours", 6, ".2f")
        + _f(row, "compile_over_ours", 6, ".2f")
        + _f(row, "floor_ms", 7, ".3f")
        + _f(row, "native_floor_pct", 6, ".0f")
        + _f(row, "compile_floor_pct", 6, ".0f")
        + _f(row, "ours_floor_pct", 6, ".0f")
        + _f(row, "native_wall_ms", 8, ".3f")
        + _f(row, "ours_wall_ms", 8, ".3f")
        + _f(row, "native_host_ms", 7, ".3f")
        + _f(row, "ours_host_ms", 7, ".3f")
        + f"  {row.get('path', '-')}"
        + (f"  errors: {row['errors']}" if row.get("errors") else "")
    )


# --------------------------------------------------------------------------- arguments


def add_device_arguments(group: Any) -> None:
    """The options ``batchnorm bench --device cuda`` adds to ``batchnorm bench``'s own
    (``--shapes``, ``--modes``, ``--repeat``, ``--warmup`` and ``--json`` are shared; left at
    their CPU defaults, the CUDA defaults apply)."""
    group.add_argument(
        "--dtypes",
        default=DEFAULT_DTYPES,
        help=f"--device cuda: comma-separated dtypes (default {DEFAULT_DTYPES})",
    )
    group.add_argument(
        "--no-compile", action="store_true", help="--device cuda: skip torch.compile"
    )
    group.add_argument(
        "--wall-calls",
        type=int,
        default=20,
        help="--device cuda: back-to-back calls for the per-call wall time",
    )
    group.add_argument(
        "--flush-mb",
        type=int,
        default=0,
        help="--device cuda: L2 flush buffer in MiB (0: 4x the device's L2, at least 256)",
    )
    group.add_argument(
        "--out", default=None, help="--device cuda: folder for bench.json and bench.txt"
    )
    group.add_argument(
        "--sweep",
        action="store_true",
        help="--device cuda: time ours only, under each tuning of SWEEP (pick launch shapes)",
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The standalone command's options (``python -m batchnorm.cli.bench_cuda``)."""
    parser.add_argument("--shapes", default=default_cells(), help="comma-separated shape names")
    parser.add_argument("--modes", default=DEFAULT_MODES, help=f"subset of {', '.join(MODES)}")
    parser.add_argument("--repeat", type=int, default=20, help="timed runs per cell (median)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed runs per cell")
    parser.add_argument("--json", default=None, help="also write the rows to this JSON file")
    add_device_arguments(parser)


def from_cpu_bench(args: argparse.Namespace) -> argparse.Namespace:
    """``batchnorm bench``'s namespace with the CUDA defaults where its CPU ones are left."""
    from . import bench

    ns = argparse.Namespace(**vars(args))
    if ns.shapes == ",".join(bench.SHAPES):
        ns.shapes = default_cells()
    if ns.modes == ",".join(bench.MODES):
        ns.modes = DEFAULT_MODES
    if getattr(ns, "quick", False):
        ns.repeat, ns.warmup = 7, 1
    elif ns.repeat == 30:  # bench's CPU default
        ns.repeat = 20
    return ns


# --------------------------------------------------------------------------- measuring


#: Alternative launch shapes for ``--sweep`` (name -> Tuning keyword arguments).
SWEEP: dict[str, dict[str, int]] = {
    "default": {},
    "tile1024": {"tile": 1024},
    "tile4096-w8": {"tile": 4096, "reduce_warps": 8, "elemt_warps": 8},
    "pps4": {"programs_per_sm": 4},
    "pps16": {"programs_per_sm": 16},
    "elemt-w8": {"elemt_warps": 8},
}


@dataclass
class _Case:
    """The callables of one cell on the device."""

    fns: dict[str, Callable[[], object]] = field(default_factory=dict)
    copy: Callable[[], object] | None = None
    errors: dict[str, str] = field(default_factory=dict)
    compile_s: float | None = None


def _inputs(cell: Cell, device: torch.device) -> dict[str, torch.Tensor]:
    g = torch.Generator(device=device).manual_seed(0)
    dt = DTYPES[cell.dtype]
    fmt = torch.channels_last if cell.channels_last else torch.contiguous_format
    x = torch.randn(cell.shape, generator=g, device=device).to(dt).contiguous(memory_format=fmt)
    dy = torch.randn(cell.shape, generator=g, device=device).to(dt).contiguous(memory_format=fmt)
    C = cell.shape[1]
    w = torch.rand(C, generator=g, device=device) + 0.5
    b = torch.randn(C, generator=g, device=device)
    return {"x": x, "dy": dy, "w": w, "b": b}


def _make(cell: Cell, impl: str, t: dict[str, torch.Tensor]) -> Callable[[], object]:
    """The timed callable of one implementation (fresh running buffers each)."""
    import batchnorm.functional as BF

    C = cell.shape[1]
    rm = torch.zeros(C, device=t["x"].device)
    rv = torch.ones(C, device=t["x"].device)
    if impl == "ours":
        bn: Callable[..., torch.Tensor] = BF.batch_norm
    else:

        def plain(
            x: torch.Tensor,
            rm: torch.Tensor,
            rv: torch.Tensor,
            w: torch.Tensor,
            b: torch.Tensor,
            training: bool,
        ) -> torch.Tensor:
            return torch.nn.functional.batch_norm(x, rm, rv, w, b, training, 0.1, 1e-5)

        bn = torch.compile(plain, dynamic=False) if impl == "compile" else plain
    if cell.mode == "eval":
        x, w, b = t["x"], t["w"], t["b"]
        return lambda: bn(x, rm, rv, w, b, False)
    xg = t["x"].detach().clone().requires_grad_(True)
    wg = t["w"].detach().clone().requires_grad_(True)
    bg = t["b"].detach().clone().requires_grad_(True)
    if cell.mode == "train":
        return lambda: bn(xg, rm, rv, wg, bg, True)
    dy = t["dy"]

    def step() -> object:
        y = bn(xg, rm, rv, wg, bg, True)
        return torch.autograd.grad(y, (xg, wg, bg), dy)

    return step


def _prepare(
    cell: Cell, impls: Sequence[str], device: torch.device
) -> tuple[_Case, dict[str, torch.Tensor]]:
    t = _inputs(cell, device)
    case = _Case()
    dst = torch.empty_like(t["x"])
    case.copy = lambda: dst.copy_(t["x"])
    for impl in impls:
        try:
            if impl == "compile":
                torch._dynamo.reset()
            fn = _make(cell, impl, t)
            t0 = time.perf_counter()
            fn()  # compiles (torch.compile, Triton) outside the timing
            torch.cuda.synchronize(device)
            if impl == "compile":
                case.compile_s = time.perf_counter() - t0
            case.fns[impl] = fn
        except Exception as e:  # one implementation failing must not stop the run
            case.errors[impl] = f"{type(e).__name__}: {e}"[:300]
    return case, t


def _time_events(fn: Callable[[], object], flush: torch.Tensor) -> float:
    start = torch.cuda.Event(enable_timing=True)
    end = torch.cuda.Event(enable_timing=True)
    flush.zero_()  # evict the L2
    start.record()
    fn()
    end.record()
    end.synchronize()
    return float(start.elapsed_time(end))


def _wall_and_host(
    fn: Callable[[], object], calls: int, device: torch.device
) -> tuple[float, float]:
    """ms per call of ``calls`` back-to-back calls (one synchronize) and the median host ms to
    issue one call (each after a synchronize)."""
    torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    for _ in range(calls):
        fn()
    torch.cuda.synchronize(device)
    wall = (time.perf_counter() - t0) * 1e3 / calls
    host = []
    for _ in range(max(5, calls // 4)):
        torch.cuda.synchronize(device)
        t1 = time.perf_counter()
        fn()
        host.append((time.perf_counter() - t1) * 1e3)
    torch.cuda.synchronize(device)
    return wall, statistics.median(host)


def measure(
    cell: Cell,
    impls: Sequence[str],
    repeat: int,
    warmup: int,
    flush: torch.Tensor,
    wall_calls: int,
    device: torch.device,
) -> dict[str, Any]:
    """One row: interleaved CUDA-event times with the L2 flushed, the wall and host times,
    the kernel path, ours against native, and any implementation's error."""
    from ..core import kernels

    case, t = _prepare(cell, impls, device)
    assert case.copy is not None
    runnable = dict(case.fns)
    for _ in range(warmup):
        for fn in (*runnable.values(), case.copy):
            fn()
    times: dict[str, list[float]] = {k: [] for k in (*runnable, "copy")}
    for _ in range(repeat):
        for impl, fn in runnable.items():
            times[impl].append(_time_events(fn, flush))
        times["copy"].append(_time_events(case.copy, flush))
    row = summarize(cell, times)
    for impl, fn in runnable.items():
        row[f"{impl}_wall_ms"], row[f"{impl}_host_ms"] = _wall_and_host(fn, wall_calls, device)
    row["path"] = kernels.get(t["x"], 1).name
    row["compile_s"] = case.compile_s
    row["errors"] = case.errors
    if "ours" in runnable and "native" in runnable and cell.mode != "fwd+bwd":
        row["max_abs_diff_ours_native"] = _diff(cell, t)
    return row


def _diff(cell: Cell, t: dict[str, torch.Tensor]) -> float:
    """max |y_ours - y_native| on the cell's input (same mode, fresh buffers)."""
    import batchnorm.functional as BF

    C, dev = cell.shape[1], t["x"].device
    x, w, b = t["x"], t["w"], t["b"]
    training = cell.mode != "eval"
    y1 = BF.batch_norm(x, torch.zeros(C, device=dev), torch.ones(C, device=dev), w, b, training)
    rm, rv = torch.zeros(C, device=dev), torch.ones(C, device=dev)
    y0 = torch.nn.functional.batch_norm(x, rm, rv, w, b, training)
    return float((y1.float() - y0.float()).abs().max())


def environment(device: torch.device) -> dict[str, Any]:
    """What the numbers were measured on."""
    props = torch.cuda.get_device_properties(device)
    env: dict[str, Any] = {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "device": props.name,
        "sm_count": props.multi_processor_count,
        "memory_gib": round(props.total_memory / 2**30, 1),
        "l2_mib": round(getattr(props, "L2_cache_size", 0) / 2**20, 1),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version(),
        "python": platform.python_version(),
    }
    try:
        import triton

        env["triton"] = triton.__version__
    except ImportError:
        env["triton"] = None
    return env


def run(args: argparse.Namespace) -> int:
    """Run the table (or the tuning sweep) and write it where asked."""
    if not torch.cuda.is_available():
        print(
            "batchnorm bench --device cuda: no CUDA device here (torch.cuda.is_available() is "
            "False); run it on a GPU machine (benchmarks/gpu_check.sh)",
            file=sys.stderr,
        )
        return 2
    cells = parse_cells(args.shapes, args.dtypes, args.modes)
    device = torch.device("cuda", torch.cuda.current_device())
    env = environment(device)
    l2 = int(env["l2_mib"] * 2**20) or 50 * 2**20
    flush_bytes = args.flush_mb * 2**20 if args.flush_mb else max(256 * 2**20, 4 * l2)
    flush = torch.empty(flush_bytes // 4, dtype=torch.float32, device=device)
    out_lines = [
        f"batchnorm bench --device cuda, {env['date']}: {env['device']} ({env['sm_count']} SMs, "
        f"L2 {env['l2_mib']} MiB), torch {env['torch']}, CUDA {env['cuda']}, cuDNN "
        f"{env['cudnn']}, triton {env['triton']}",
        f"median of {args.repeat} CUDA-event timings (warm-up {args.warmup}), L2 flushed with "
        f"{flush_bytes >> 20} MiB before each; ms; n/o, c/o = native / ours, compile / ours; "
        "floor = passes/2 x copy (train 3, eval 2, fwd+bwd 8); %fl = floor / time; wall = ms "
        f"per call over {args.wall_calls} back-to-back calls; host = ms to issue one call",
    ]
    rows = []
    if args.sweep:
        rows = _sweep(cells, args, flush, device, out_lines)
    else:
        impls = [i for i in IMPLS if not (i == "compile" and args.no_compile)]
        print(*out_lines, HEADER, sep="\n", flush=True)
        out_lines.append(HEADER)
        for cell in cells:
            try:
                row = measure(cell, impls, args.repeat, args.warmup, flush, args.wall_calls, device)
            except Exception as e:  # out of memory, say: report the cell and go on
                row = {"shape": cell.name, "dtype": cell.dtype, "mode": cell.mode}
                row["errors"] = {"cell": f"{type(e).__name__}: {e}"[:300]}
            torch.cuda.empty_cache()
            rows.append(row)
            line = format_row(row)
            out_lines.append(line)
            print(line, flush=True)
            if args.json:  # after every row: a run cut short keeps what it measured
                _write_json(args.json, {"environment": env, "rows": rows})
    payload = {"environment": env, "rows": rows}
    if args.json:
        _write_json(args.json, payload)
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        name = "sweep" if args.sweep else "bench"
        with open(os.path.join(args.out, f"{name}.json"), "w") as f:
            json.dump(payload, f, indent=1)
        with open(os.path.join(args.out, f"{name}.txt"), "w") as f:
            f.write("\n".join(out_lines) + "\n")
    return 0


def _write_json(path: str, payload: dict[str, Any]) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(payload, f, indent=1)
    os.replace(tmp, path)


def _sweep(
    cells: list[Cell],
    args: argparse.Namespace,
    flush: torch.Tensor,
    device: torch.device,
    out_lines: list[str],
) -> list[dict[str, Any]]:
    """Ours under each tuning of :data:`SWEEP` (the registry restored afterwards)."""
    from ..core import kernels
    from ..core.kernels import triton as T

    previous = kernels._REGISTRY.get("cuda")
    header = f"{'shape':<19}{'dtype':<9}{'mode':<8}" + "".join(f"{k:>13}" for k in SWEEP)
    print(*out_lines, "ours (ms) under each tuning:", header, sep="\n", flush=True)
    out_lines += ["ours (ms) under each tuning:", header]
    rows = []
    try:
        for cell in cells:
            row: dict[str, Any] = {"shape": cell.name, "dtype": cell.dtype, "mode": cell.mode}
            for name, kw in SWEEP.items():
                kernels.register("cuda", T.kernel_set("cuda", T.Tuning(**kw)))
                r = measure(cell, ["ours"], args.repeat, args.warmup, flush, 1, device)
                row[name] = r.get("ours_ms")
                row[f"{name}_errors"] = r["errors"]
            rows.append(row)
            line = f"{cell.name:<19}{cell.dtype:<9}{cell.mode:<8}" + "".join(
                f"{row[k]:>13.3f}" if row[k] is not None else f"{'error':>13}" for k in SWEEP
            )
            out_lines.append(line)
            print(line, flush=True)
    finally:
        if previous is None:
            kernels._REGISTRY.pop("cuda", None)
        else:
            kernels.register("cuda", previous)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m batchnorm.cli.bench_cuda", description=__doc__.splitlines()[0]
    )
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
