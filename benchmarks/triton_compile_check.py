"""Compile every Triton kernel launch of the benchmark for a Hopper GPU, without a GPU.

    python benchmarks/triton_compile_check.py [--arch 90] [--shapes NAMES] [--json FILE]

The CUDA kernel set's entries are called on ``meta`` tensors of the bench's shapes (NCHW,
channels-last and 2-D; float32, bfloat16 and float16; the training forward, evaluation,
backward and running update) with the launches recorded instead of run; each distinct launch
(kernel, argument types, divisibility by 16 as Triton specializes it, constexprs, options) is
then compiled with this machine's triton for ``sm_<arch>`` (ptxas ships in the triton wheel)
and reported: registers, spilled bytes, the widest global load and store in the PTX, and any
compile error. It catches what the interpreter cannot (a construct the compiler rejects,
register spills, unvectorized loads) before GPU time is spent. Exit code 1 on an error.
Run it with ``TRITON_INTERPRET`` unset or 0: the compiler needs triton imported compiled.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from typing import Any

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

_TY = {
    torch.float32: "fp32",
    torch.float64: "fp64",
    torch.bfloat16: "bf16",
    torch.float16: "fp16",
    torch.int64: "i64",
    torch.int32: "i32",
}


class _Recorder:
    """Stands for one kernel: ``kernel[grid](*args, **kw)`` records the call."""

    def __init__(self, name: str, calls: list[tuple[str, tuple[Any, ...], dict[str, Any]]]):
        self.name, self.calls = name, calls

    def __getitem__(self, grid: Any) -> Any:
        return lambda *args, **kw: self.calls.append((self.name, args, kw))


class _FakeJit:
    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = []

    def __getattr__(self, name: str) -> _Recorder:
        return _Recorder(name, self.calls)


def record(
    shapes: dict[str, tuple[int, ...]],
    sm_count: int,
    dtypes: tuple[torch.dtype, ...] = (torch.float32, torch.bfloat16, torch.float16),
) -> list[tuple[str, tuple, dict]]:
    """Every launch of the CUDA set's entries on meta tensors of ``shapes``."""
    from batchnorm.core.kernels.triton import TritonSet, Tuning

    s = TritonSet("cuda", Tuning(sm_count=sm_count))
    fake = _FakeJit()
    s._jit, s._loaded = fake, True
    meta = torch.device("meta")
    for shape in shapes.values():
        fmts = [torch.contiguous_format] + ([torch.channels_last] if len(shape) == 4 else [])
        for fmt in fmts:
            for dt in dtypes:
                x = torch.empty(shape, dtype=dt, device=meta).contiguous(memory_format=fmt)
                C = shape[1]
                v32 = torch.empty(C, device=meta)
                v64 = torch.empty(C, dtype=torch.float64, device=meta)
                mean, var = s.stats(x, 1)
                s.normalize_stats(x, 1, mean, var, v32, v32, 1e-5)  # training forward
                s.normalize_stats(x, 1, v32, v32, v32, v32, 1e-5)  # eval: running buffers
                s.normalize_stats(x, 1, mean, var, None, None, 1e-5)  # affine=False
                s.normalize(x, 1, v64, v32, v32)
                s1, s2 = s.backward_reduce(x, x, 1, v64)
                s.backward_elemt_stats(x, x, 1, v64, v32, v32, s1, s2, 100)
                s.backward_elemt_stats(x, x, 1, v64, v32, None, s1, s2, 100)
                s.backward_elemt(x, x, 1, v64, v32, v32, v32)
    # The running update takes real buffers: record its three variants by hand.
    for cumulative, nbt in ((False, True), (True, True), (False, False)):
        fake.calls.append(
            (
                "running_update",
                (v32, v32, v64, v32, torch.empty(1, dtype=torch.int64, device=meta))
                + (torch.empty(1, dtype=torch.int64, device=meta), 64, 0.1, 0.9, 1.0),
                dict(
                    CUMULATIVE=cumulative,
                    HAS_NBT=nbt,
                    HAS_SKIP=True,
                    BLOCK=64,
                    num_warps=4,
                    enable_fp_fusion=False,
                ),
            )
        )
    return fake.calls


_OPTIONS = ("num_warps", "num_stages", "enable_fp_fusion")


def variant(fn: Any, args: tuple, kw: dict) -> tuple[dict, dict, dict, dict]:
    """(signature, constexprs, attrs, options) of one launch, as Triton specializes it."""
    names = [p.name for p in fn.params]
    bound = dict(zip(names, args))
    bound.update({k: v for k, v in kw.items() if k not in _OPTIONS})
    sig, consts, attrs = {}, {}, {}
    for i, p in enumerate(fn.params):
        v = bound[p.name]
        if p.is_constexpr:
            sig[p.name] = "constexpr"
            consts[p.name] = v
        elif isinstance(v, torch.Tensor):
            sig[p.name] = "*" + _TY[v.dtype]
            attrs[(i,)] = [["tt.divisibility", 16]]  # CUDA allocations are 256-byte aligned
        elif isinstance(v, bool):
            sig[p.name] = "i1"
        elif isinstance(v, int):
            sig[p.name] = "i32" if -(2**31) <= v < 2**31 else "i64"
            if v % 16 == 0:
                attrs[(i,)] = [["tt.divisibility", 16]]
        elif isinstance(v, float):
            sig[p.name] = "fp32"
        else:
            raise TypeError(f"{fn.__name__}: argument {p.name} of type {type(v)}")
    options = {k: kw[k] for k in _OPTIONS if k in kw}
    options.setdefault("enable_fp_fusion", True)  # as Triton <= 3.9 defaults it
    return sig, consts, attrs, options


def _widest(ptx: str, op: str) -> int:
    """The widest global ``op`` (ld or st) in the PTX, in bytes."""
    best = 0
    for m in re.finditer(rf"{op}\.global(?:\.[a-z0-9_]+)*?(?:\.v(\d))?\.(?:b|u|s|f)(\d+)", ptx):
        vec = int(m.group(1) or 1)
        best = max(best, vec * int(m.group(2)) // 8)
    return best


def _resources(cubin: bytes, cuobjdump: str) -> dict[str, int]:
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        out = subprocess.run([cuobjdump, "-res-usage", f.name], capture_output=True, text=True)
    res = {}
    for key, pat in (
        ("regs", r"REG:(\d+)"),
        ("stack", r"STACK:(\d+)"),
        ("shared", r"SHARED:(\d+)"),
    ):
        m = re.search(pat, out.stdout)
        if m:
            res[key] = int(m.group(1))
    return res


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", type=int, default=90, help="compute capability x10 (90: Hopper)")
    p.add_argument("--shapes", default=None, help="comma-separated bench shape names (all)")
    p.add_argument("--sm-count", type=int, default=132, help="multiprocessors (H200: 132)")
    p.add_argument("--dtypes", default="float32,bfloat16,float16")
    p.add_argument("--json", default=None)
    a = p.parse_args(argv)
    os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")  # silence 3.9's notice; the default
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from batchnorm.cli.bench_cuda import SHAPES
    from batchnorm.core.kernels.triton import _jit

    if not isinstance(_jit.stats_planes, triton.runtime.jit.JITFunction):
        print("triton was imported in interpreter mode: unset TRITON_INTERPRET", file=sys.stderr)
        return 2
    shapes = SHAPES if a.shapes is None else {k: SHAPES[k] for k in a.shapes.split(",")}
    dts = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    calls = record(shapes, a.sm_count, tuple(dts[d] for d in a.dtypes.split(",")))
    cuobjdump = os.path.join(os.path.dirname(triton.__file__), "backends/nvidia/bin/cuobjdump")
    target = GPUTarget("cuda", a.arch, 32)
    seen: dict[str, dict[str, Any]] = {}
    t0 = time.perf_counter()
    for name, args, kw in calls:
        fn = getattr(_jit, name)
        sig, consts, attrs, options = variant(fn, args, kw)
        key = json.dumps(
            [name, sig, sorted(consts.items()), sorted(map(str, attrs)), options], default=str
        )
        if key in seen:
            seen[key]["launches"] += 1
            continue
        row: dict[str, Any] = {
            "kernel": name,
            "launches": 1,
            "constexprs": consts,
            "options": options,
            "types": {k: v for k, v in sig.items() if v != "constexpr"},
        }
        try:
            src = ASTSource(fn=fn, signature=sig, constexprs=consts, attrs=attrs)
            k = triton.compile(src, target=target, options=options)
            ptx = k.asm["ptx"]
            row.update(_resources(k.asm["cubin"], cuobjdump))
            row["widest_load_bytes"] = _widest(ptx, "ld")
            row["widest_store_bytes"] = _widest(ptx, "st")
        except Exception as e:
            row["error"] = f"{type(e).__name__}: {e}"[:2000]
        seen[key] = row
    rows = list(seen.values())
    errors = [r for r in rows if "error" in r]
    print(
        f"{len(calls)} launches, {len(rows)} distinct kernel variants compiled for sm_{a.arch} "
        f"with triton {triton.__version__} in {time.perf_counter() - t0:.0f} s; "
        f"{len(errors)} failed"
    )
    print(f"{'kernel':<18}{'regs':>5}{'stack':>6}{'ld B':>6}{'st B':>6}  x  constexprs")
    for r in sorted(rows, key=lambda r: (r["kernel"], str(r["constexprs"]))):
        if "error" in r:
            print(f"{r['kernel']:<18} ERROR {r['error'][:300]}")
            continue
        cx = ",".join(f"{k}={v}" for k, v in r["constexprs"].items())
        x = r["types"].get("x_ptr", r["types"].get("dy_ptr", "-"))
        print(
            f"{r['kernel']:<18}{r.get('regs', -1):>5}{r.get('stack', -1):>6}"
            f"{r['widest_load_bytes']:>6}{r['widest_store_bytes']:>6}  {x:<6} {cx}"
        )
    if a.json:
        with open(a.json, "w") as f:
            json.dump(
                {"triton": triton.__version__, "arch": a.arch, "rows": rows},
                f,
                indent=1,
                default=str,
            )
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
