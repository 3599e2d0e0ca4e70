"""``batchnorm bench``: our batch norm against torch's, and both against the copy floor.

Batch norm is memory-bound, so its speed limit is the machine's bandwidth. A plain tensor
copy (``dst.copy_(x)``: one read + one write) timed in the same run gives it, and each mode
needs a known number of passes over the tensor:

    train fwd  3 passes   read x for the statistics, read x + write y to normalize
    eval fwd   2 passes   read x, write y
    bwd        5 passes   read dy, x for the two sums; read dy, x + write dx
    fwd+bwd    8 passes   the two above

``floor = passes / 2 * copy_time`` and ``% floor = floor / ours``. Torch and ours run
interleaved (torch, ours, copy, torch, ours, copy, ...) after a warm-up, so load from other
processes hits both alike; each cell is the median of ``--repeat`` runs and the ratio is the
median of the paired ratios ``torch / ours``.

glibc returns freed blocks above ``mmap_threshold`` (dynamic, up to 32 MiB) to the OS and
page-faults them back on the next allocation; every output here is 10-30 MB, so the
allocator setting matters about as much as the kernel. ``--allocator both`` runs the table
in a child process with the default setting and in one with :data:`TUNED_GLIBC`, which keeps
such blocks.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable

import torch

TUNED_GLIBC = "glibc.malloc.trim_threshold=268435456:glibc.malloc.mmap_threshold=33554432"

# name -> (shape, channels_last)
SHAPES: dict[str, tuple[tuple[int, ...], bool]] = {
    "32x64x56x56": ((32, 64, 56, 56), False),
    "32x64x56x56-cl": ((32, 64, 56, 56), True),
    "128x256x14x14": ((128, 256, 14, 14), False),
    "128x256x14x14-cl": ((128, 256, 14, 14), True),
    "8x32x112x112": ((8, 32, 112, 112), False),
    "8x32x112x112-cl": ((8, 32, 112, 112), True),
    "4096x1024": ((4096, 1024), False),
}
MODES = {"train": 3, "eval": 2, "bwd": 5, "fwd+bwd": 8}  # mode -> passes over the tensor
DTYPES = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
    "float64": torch.float64,
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--threads", type=int, default=None, help="torch threads (default: torch's own setting)"
    )
    parser.add_argument("--repeat", type=int, default=30, help="timed runs per cell (median)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed runs per cell")
    parser.add_argument(
        "--shapes", default=",".join(SHAPES), help=f"comma-separated subset of {', '.join(SHAPES)}"
    )
    parser.add_argument("--modes", default=",".join(MODES), help=f"subset of {', '.join(MODES)}")
    parser.add_argument("--dtype", default="float32", choices=sorted(DTYPES))
    parser.add_argument(
        "--allocator",
        default="both",
        choices=["default", "tuned", "both", "inherit"],
        help="glibc malloc setting: default, tuned (GLIBC_TUNABLES keeping freed "
        "blocks), both (one child process each), inherit (this process as is)",
    )
    parser.add_argument("--quick", action="store_true", help="--repeat 7 --warmup 1, no cold start")
    parser.add_argument("--no-cold-start", action="store_true", help="skip the cold-start report")
    parser.add_argument(
        "--stat",
        default="median",
        choices=["median", "min"],
        help="summary of the timed runs; min shows the machine without other load",
    )
    parser.add_argument("--json", default=None, help="also write the rows to this JSON file")
    parser.add_argument(
        "--models",
        action="store_true",
        help="also time whole training steps (Figure-1 MLP, LeNet, a 4x64x2x2 forward) with "
        "our BN against torch.nn's, and the MLP step under 3 processes x 2 threads",
    )
    parser.add_argument(
        "--models-only", action="store_true", help="only the --models section (no kernel table)"
    )
    parser.add_argument("--model-steps", type=int, default=500, help="steps per model (median)")
    parser.add_argument(
        "--no-contention", action="store_true", help="skip the 3-process contention run"
    )
    parser.add_argument(
        "--save",
        default=None,
        help="folder for the raw output, named by date, CPU and instruction set (default: benchmarks/results "
        "of the source checkout, or none for an installed copy)",
    )
    parser.add_argument("--no-save", action="store_true", help="do not save the raw output")
    # --device cuda: the GPU bench (bench_cuda.py, its own options in the group below).
    from . import bench_cuda

    parser.add_argument(
        "--device",
        choices=["cpu", "cuda"],
        default="cpu",
        help="cpu: this bench; cuda: torch native, torch.compile and ours on the GPU against "
        "its copy floor (batchnorm/cli/bench_cuda.py)",
    )
    bench_cuda.add_device_arguments(parser.add_argument_group("--device cuda"))


# --------------------------------------------------------------------------- one cell


def _time(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return (time.perf_counter() - t0) * 1e3


def _cases(shape, channels_last, dtype, mode):
    """(torch_fn, ours_fn, copy_fn) for one cell, on fresh inputs."""
    import batchnorm.functional as BF

    g = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=g).to(dtype)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    C = shape[1]
    w = torch.rand(C, generator=g) + 0.5
    b = torch.randn(C, generator=g)
    stats = {k: (torch.zeros(C), torch.ones(C)) for k in ("torch", "ours")}
    dst = torch.empty_like(x)

    def copy():
        return dst.copy_(x)

    fns = {"torch": torch.nn.functional.batch_norm, "ours": BF.batch_norm}
    out = []
    for who in ("torch", "ours"):
        f, (rm, rv) = fns[who], stats[who]
        if mode == "train":
            out.append(lambda f=f, rm=rm, rv=rv: f(x, rm, rv, w, b, True))
        elif mode == "eval":
            out.append(lambda f=f, rm=rm, rv=rv: f(x, rm, rv, w, b, False))
        else:
            xg, wg, bg = (
                x.clone().requires_grad_(),
                w.clone().requires_grad_(),
                b.clone().requires_grad_(),
            )
            dy = torch.randn(shape, generator=g).to(dtype)
            if channels_last:
                dy = dy.contiguous(memory_format=torch.channels_last)
            if mode == "fwd+bwd":

                def step(f=f, rm=rm, rv=rv, xg=xg, wg=wg, bg=bg, dy=dy):
                    y = f(xg, rm, rv, wg, bg, True)
                    return torch.autograd.grad(y, (xg, wg, bg), dy)
            else:  # bwd alone: one forward kept, its graph replayed
                y = f(xg, rm, rv, wg, bg, True)

                def replay(y=y, xg=xg, wg=wg, bg=bg, dy=dy):
                    return torch.autograd.grad(y, (xg, wg, bg), dy, retain_graph=True)

                out.append(replay)
                continue
            out.append(step)
    return out[0], out[1], copy


def measure(
    name: str, mode: str, dtype: torch.dtype, repeat: int, warmup: int, stat: str = "median"
) -> dict:
    """One table row: medians (or minima) of interleaved runs of torch, ours and the copy."""
    from ..core import kernels

    shape, cl = SHAPES[name]
    t_fn, o_fn, c_fn = _cases(shape, cl, dtype, mode)
    x_probe = torch.empty(shape, dtype=dtype)
    if cl:
        x_probe = x_probe.contiguous(memory_format=torch.channels_last)
    path = kernels.get(x_probe, 1).name
    for _ in range(warmup):
        t_fn(), o_fn(), c_fn()
    tt, to, tc, ratios = [], [], [], []
    for _ in range(repeat):
        a, b_, c = _time(t_fn), _time(o_fn), _time(c_fn)
        tt.append(a)
        to.append(b_)
        tc.append(c)
        ratios.append(a / b_)
    pick = min if stat == "min" else statistics.median
    copy_ms = pick(tc)
    ours_ms = pick(to)
    nbytes = x_probe.numel() * x_probe.element_size()
    floor_ms = MODES[mode] / 2 * copy_ms
    return {
        "shape": name,
        "mode": mode,
        "kernel": path,
        "stat": stat,
        "torch_ms": pick(tt),
        "ours_ms": ours_ms,
        # median: of the paired ratios; min: of the two fastest runs
        "ratio": statistics.median(ratios) if stat == "median" else pick(tt) / ours_ms,
        "copy_gbs": 2 * nbytes / copy_ms / 1e6,
        "floor_ms": floor_ms,
        "floor_pct": 100 * floor_ms / ours_ms,
        "torch_min_ms": min(tt),
        "ours_min_ms": min(to),
        "copy_min_ms": min(tc),
    }


# --------------------------------------------------------------------------- cold start


_COLD = r"""
import json, time
t0 = time.perf_counter()
import torch
t1 = time.perf_counter()
import batchnorm
t2 = time.perf_counter()
x = torch.randn(8, 16, 32, 32)
bn = batchnorm.BatchNorm2d(16)
t3 = time.perf_counter(); bn(x); t4 = time.perf_counter(); bn(x); t5 = time.perf_counter()
from batchnorm.core.kernels import get, info
print(json.dumps({"import_torch_ms": (t1 - t0) * 1e3, "import_batchnorm_ms": (t2 - t1) * 1e3,
                  "first_call_ms": (t4 - t3) * 1e3, "second_call_ms": (t5 - t4) * 1e3,
                  "kernel": get(x, 1).name, "status": info()["reason"]}))
"""


def cold_start() -> dict:
    """First-call cost in a new process (the kernels are built at install: nothing compiles)."""
    env = dict(os.environ)

    def run(e):
        return json.loads(
            subprocess.run(
                [sys.executable, "-c", _COLD], env=e, capture_output=True, text=True, check=True
            )
            .stdout.strip()
            .splitlines()[-1]
        )

    run(env)  # the library's pages in the file cache, as for any later process
    return {"new_process": run(env)}


# --------------------------------------------------------------------------- driver


COLUMNS = (
    f"{'shape':<18} {'mode':<8} {'torch ms':>9} {'ours ms':>9} {'ratio':>6} "
    f"{'floor ms':>9} {'% floor':>8} {'copy GB/s':>10}  kernel"
)


def _line(r: dict) -> str:
    return (
        f"{r['shape']:<18} {r['mode']:<8} {r['torch_ms']:>9.2f} {r['ours_ms']:>9.2f} "
        f"{r['ratio']:>5.2f}x {r['floor_ms']:>9.2f} {r['floor_pct']:>7.0f}% {r['copy_gbs']:>10.1f}  {r['kernel']}"
    )


def _child_args(args: argparse.Namespace, allocator: str) -> list[str]:
    out = [
        sys.executable,
        "-m",
        "batchnorm.cli.bench",
        "--allocator",
        "inherit",
        "--no-cold-start",
        "--repeat",
        str(args.repeat),
        "--warmup",
        str(args.warmup),
        "--shapes",
        args.shapes,
        "--modes",
        args.modes,
        "--dtype",
        args.dtype,
        "--stat",
        args.stat,
    ]
    if args.threads:
        out += ["--threads", str(args.threads)]
    return out


def run(args: argparse.Namespace) -> int:
    if args.device == "cuda":  # the GPU bench: batchnorm/cli/bench_cuda.py
        from . import bench_cuda

        return bench_cuda.run(bench_cuda.from_cpu_bench(args))
    if args.quick:
        args.repeat, args.warmup, args.no_cold_start = 7, 1, True
    if args.allocator != "inherit":  # the parent: header, children, models, saved output
        return _parent(args)
    return _tables(args)


def _tables(args: argparse.Namespace) -> int:
    """The kernel tables: one child process per allocator setting, or this process as is."""
    unknown = [s for s in args.shapes.split(",") if s not in SHAPES]
    bad_modes = [m for m in args.modes.split(",") if m not in MODES]
    if unknown or bad_modes:
        raise ValueError(
            f"unknown shapes {unknown} or modes {bad_modes}; choose from "
            f"{', '.join(SHAPES)} and {', '.join(MODES)}"
        )
    if args.allocator in ("default", "tuned", "both"):
        settings = ["default", "tuned"] if args.allocator == "both" else [args.allocator]
        rows_all = []
        for setting in settings:
            env = dict(os.environ)
            env.pop("GLIBC_TUNABLES", None)
            if setting == "tuned":
                env["GLIBC_TUNABLES"] = TUNED_GLIBC
            cmd = _child_args(args, setting)
            if args.json:
                fd, tmp = tempfile.mkstemp(suffix=".json")
                os.close(fd)
                cmd += ["--json", tmp]
            sys.stdout.flush()
            child = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True)
            print(child.stdout, end="", flush=True)
            if args.json:
                with open(tmp) as f:
                    rows_all += json.load(f)["rows"]
                os.unlink(tmp)
            print()
        return _finish(args, rows_all)
    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = DTYPES[args.dtype]
    setting = os.environ.get("GLIBC_TUNABLES") or "default"
    from ..core import kernels

    kinfo = kernels.info()
    header = (
        f"batchnorm bench: {args.dtype}, {torch.get_num_threads()} threads, torch "
        f"{torch.__version__}, allocator GLIBC_TUNABLES={setting}, {args.stat} of {args.repeat} "
        f"(warm-up {args.warmup}); ratio = torch / ours; floor = passes/2 x copy time "
        f"(train 3, eval 2, bwd 5, fwd+bwd 8)\nCPU path: {kinfo['path']}, ISA {kinfo['isa']} "
        f"({kinfo['reason']})"
    )
    rows = []
    print(header, COLUMNS, sep="\n", flush=True)
    for name in args.shapes.split(","):
        for mode in args.modes.split(","):
            rows.append(measure(name, mode, dtype, args.repeat, args.warmup, args.stat))
            print(_line(rows[-1]), flush=True)
    for r in rows:
        r.update({"threads": torch.get_num_threads(), "allocator": setting, "dtype": args.dtype})
    return _finish(args, rows)


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo), or the platform's processor string."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("model name", "Model", "Hardware")):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine()


def copy_bandwidth() -> float:
    """GB/s of ``dst.copy_(x)`` on 25 MB (one read + one write), the best of 20."""
    x = torch.randn(32, 64, 56, 56)
    dst = torch.empty_like(x)
    best = min(_time(lambda: dst.copy_(x)) for _ in range(20))
    return 2 * x.numel() * x.element_size() / best / 1e6


def header_lines(threads: int) -> list[str]:
    """CPU model, the CPU path and ISA the kernels use, torch, threads, copy bandwidth."""
    from ..core import kernels

    info = kernels.info()
    return [
        f"host: {cpu_model()}, {os.cpu_count()} CPUs; torch {torch.__version__}, {threads} threads",
        f"CPU path: {info['path']}, ISA {info['isa']} ({info['reason']})",
        f"copy bandwidth: {copy_bandwidth():.1f} GB/s (dst.copy_(x), 25 MB, best of 20)",
    ]


def _results_dir(args: argparse.Namespace) -> str | None:
    if args.no_save:
        return None
    if args.save:
        return str(args.save)
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    out = os.path.join(root, "benchmarks", "results")
    return out if os.path.isdir(out) else None


def _slug(text: str) -> str:
    keep = "".join(c if c.isalnum() else "-" for c in text.lower())
    return "-".join(p for p in keep.split("-") if p)[:48]


def _parent(args: argparse.Namespace) -> int:
    """Header, the kernel tables (child processes per allocator setting), the --models
    section; everything printed is also saved under the results folder."""
    import contextlib
    import io

    if args.threads:
        torch.set_num_threads(args.threads)
    buf = io.StringIO()
    real = sys.stdout

    class _Both(io.TextIOBase):
        def write(self, text: str) -> int:
            real.write(text)
            buf.write(text)
            return len(text)

        def flush(self) -> None:
            real.flush()

    rc = 0
    with contextlib.redirect_stdout(_Both()):
        for line in header_lines(torch.get_num_threads()):
            print(line)
        if not args.models_only:
            rc = _tables(args)
        if args.models or args.models_only:
            from . import bench_models

            rows = bench_models.run_models(args.model_steps)
            cont = None if args.no_contention else bench_models.contention(args.model_steps)
            print("\n".join(bench_models.report(rows, cont)))
    out_dir = _results_dir(args)
    if out_dir is not None:
        os.makedirs(out_dir, exist_ok=True)
        stamp = time.strftime("%Y-%m-%d-%H%M%S")
        from ..core import kernels

        # The instruction set in the name too: BATCHNORM_CPU_ISA runs another path on one CPU.
        isa = kernels.info().get("isa") or "none"
        name = (
            f"{stamp}-{_slug(cpu_model())}-{_slug(isa)}-{args.dtype}-t{torch.get_num_threads()}.txt"
        )
        path = os.path.join(out_dir, name)
        with open(path, "w") as f:
            f.write(buf.getvalue())
        print(f"raw output saved to {path}")
    return rc


def _finish(args: argparse.Namespace, rows: list[dict]) -> int:
    """The cold-start report (unless skipped) and the JSON rows (if asked for)."""
    if not args.no_cold_start:
        _print_cold()
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"rows": rows}, f, indent=1)
    return 0


def _print_cold() -> None:
    c = cold_start()
    for label, d in (("kernels built at install", c["new_process"]),):
        print(
            f"cold start, new process, {label}: import torch {d['import_torch_ms']:.0f} ms, "
            f"import batchnorm {d['import_batchnorm_ms']:.0f} ms, first BatchNorm2d call "
            f"{d['first_call_ms']:.1f} ms (second {d['second_call_ms']:.2f} ms), kernel "
            f"{d['kernel']}: {d['status']}"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="batchnorm bench", description=__doc__.splitlines()[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
