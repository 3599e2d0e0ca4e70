"""Determinism and gradient accuracy of a training step, ours against torch native, on the
benchmark's shapes (the issue's targets: two runs give the same bits; bfloat16 weight and
bias gradients within 1e-5 relative of float64).

    python benchmarks/gpu_numerics.py --out DIR [--shapes ...] [--dtypes bfloat16,float32]

Per shape, layout and dtype: a forward+backward of ``batchnorm.functional.batch_norm`` twice
from the same inputs (y, dx, dweight, dbias and the running statistics compared bit for bit),
and the errors of ours and of ``torch.nn.functional.batch_norm`` against float64 math on the
same (rounded) inputs, computed on the device: ``max_c |g_c - g64_c| / max_c |g64_c|`` for the
weight and bias gradients, ``max |y - y64|`` and ``max |dx - dx64| / max |dx64|``. Writes
``DIR/numerics.json`` and prints a table. ``--device cpu --shapes tiny`` is a dry run.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from typing import Any

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from batchnorm.cli.bench_cuda import SHAPES  # noqa: E402

SHAPES = {**SHAPES, "tiny": (4, 3, 5, 7)}
EPS = 1e-5


def _step(
    bn: Callable[..., torch.Tensor],
    x: torch.Tensor,
    dy: torch.Tensor,
    w: torch.Tensor,
    b: torch.Tensor,
) -> tuple[torch.Tensor, ...]:
    """One training forward+backward; (y, dx, dw, db, running_mean, running_var)."""
    C = x.shape[1]
    rm, rv = torch.zeros(C, device=x.device), torch.ones(C, device=x.device)
    xg = x.detach().clone().requires_grad_(True)
    wg = w.detach().clone().requires_grad_(True)
    bg = b.detach().clone().requires_grad_(True)
    y = bn(xg, rm, rv, wg, bg, True, 0.1, EPS)
    dx, dw, db = torch.autograd.grad(y, (xg, wg, bg), dy)
    return y.detach(), dx, dw, db, rm, rv


def _float64(
    x: torch.Tensor, dy: torch.Tensor, w: torch.Tensor, b: torch.Tensor
) -> tuple[torch.Tensor, ...]:
    """y, dx, dw, db of training BN in float64 from the same values (eq. 1-4, 9, 10, 12)."""
    x64, dy64, w64, b64 = x.double(), dy.double(), w.double(), b.double()
    dims = tuple(d for d in range(x.ndim) if d != 1)
    shape = [1] * x.ndim
    shape[1] = -1
    mean = x64.mean(dims, keepdim=True)
    inv = torch.rsqrt(x64.var(dims, unbiased=False, keepdim=True) + EPS)
    xhat = (x64 - mean) * inv
    y = xhat * w64.view(shape) + b64.view(shape)
    db = dy64.sum(dims)
    dw = (dy64 * xhat).sum(dims)
    m = x64.numel() // x64.shape[1]
    dx = w64.view(shape) * inv / m * (m * dy64 - db.view(shape) - xhat * dw.view(shape))
    return y, dx, dw, db


def _rel(a: torch.Tensor, e: torch.Tensor) -> float:
    return float((a.double() - e).abs().max() / e.abs().max().clamp_min(1e-300))


def run_case(name: str, cl: bool, dtype: torch.dtype, device: torch.device) -> dict[str, Any]:
    import batchnorm.functional as BF
    from batchnorm.core import kernels

    shape = SHAPES[name]
    g = torch.Generator(device=device).manual_seed(0)
    fmt = torch.channels_last if cl else torch.contiguous_format
    x = (torch.randn(shape, generator=g, device=device) * 2 + 1).to(dtype)
    x = x.contiguous(memory_format=fmt)
    dy = torch.randn(shape, generator=g, device=device).to(dtype).contiguous(memory_format=fmt)
    C = shape[1]
    w = torch.rand(C, generator=g, device=device) + 0.5
    b = torch.randn(C, generator=g, device=device)
    row: dict[str, Any] = {
        "shape": name + ("-cl" if cl else ""),
        "dtype": str(dtype).replace("torch.", ""),
        "path": kernels.get(x, 1).name,
    }
    t0 = time.perf_counter()
    first = _step(BF.batch_norm, x, dy, w, b)
    second = _step(BF.batch_norm, x, dy, w, b)
    names = ("y", "dx", "dw", "db", "running_mean", "running_var")
    row["same_bits"] = {n: bool(torch.equal(p, q)) for n, p, q in zip(names, first, second)}
    row["deterministic"] = all(row["same_bits"].values())
    native = _step(torch.nn.functional.batch_norm, x, dy, w, b)
    y64, dx64, dw64, db64 = _float64(x, dy, w, b)
    for who, (y, dx, dw, db, _, _) in (("ours", first), ("native", native)):
        row[f"{who}_dw_rel"] = _rel(dw, dw64)
        row[f"{who}_db_rel"] = _rel(db, db64)
        row[f"{who}_dx_rel"] = _rel(dx, dx64)
        row[f"{who}_y_abs"] = float((y.double() - y64).abs().max())
    del y64, dx64
    row["seconds"] = round(time.perf_counter() - t0, 2)
    return row


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shapes", default=",".join(s for s in SHAPES if s != "tiny"))
    p.add_argument("--dtypes", default="bfloat16,float32")
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    p.add_argument("--out", default=".")
    a = p.parse_args(argv)
    if a.device == "cuda" and not torch.cuda.is_available():
        print("no CUDA device: use --device cpu --shapes tiny for a dry run", file=sys.stderr)
        return 2
    device = torch.device(a.device)
    dtypes = {"bfloat16": torch.bfloat16, "float32": torch.float32, "float16": torch.float16}
    rows = []
    head = (
        f"{'shape':<19}{'dtype':<9}{'path':<12}{'same bits':<10}{'dw ours':>9}{'dw nat':>9}"
        f"{'db ours':>9}{'db nat':>9}{'dx ours':>9}{'dx nat':>9}{'y ours':>9}{'y nat':>9}"
    )
    print(
        "relative errors against float64 on the same inputs (dw, db, dx: max|err| / max|g|; "
        "y: max|err|); bf16 dw/db target 1e-5",
        head,
        sep="\n",
        flush=True,
    )
    for name in a.shapes.split(","):
        layouts = (False, True) if len(SHAPES[name]) == 4 else (False,)
        for cl in layouts:
            for dt in a.dtypes.split(","):
                try:
                    r = run_case(name, cl, dtypes[dt], device)
                except Exception as e:  # report and go on: one case must not stop the others
                    r = {"shape": name + ("-cl" if cl else ""), "dtype": dt, "error": repr(e)}
                    print(f"{r['shape']:<19}{dt:<9}error: {e!r}"[:300], flush=True)
                    rows.append(r)
                    continue
                rows.append(r)
                print(
                    f"{r['shape']:<19}{r['dtype']:<9}{r['path']:<12}"
                    f"{'yes' if r['deterministic'] else 'NO':<10}"
                    + "".join(
                        f"{r[k]:>9.1e}"
                        for k in (
                            "ours_dw_rel",
                            "native_dw_rel",
                            "ours_db_rel",
                            "native_db_rel",
                            "ours_dx_rel",
                            "native_dx_rel",
                            "ours_y_abs",
                            "native_y_abs",
                        )
                    ),
                    flush=True,
                )
                if device.type == "cuda":
                    torch.cuda.empty_cache()
    bf = [r for r in rows if r.get("dtype") == "bfloat16" and "error" not in r]
    summary = {
        "all_deterministic": all(r.get("deterministic", False) for r in rows),
        "bf16_worst_dw_db_rel_ours": max(
            (max(r["ours_dw_rel"], r["ours_db_rel"]) for r in bf), default=None
        ),
        "bf16_worst_dw_db_rel_native": max(
            (max(r["native_dw_rel"], r["native_db_rel"]) for r in bf), default=None
        ),
    }
    print(json.dumps(summary))
    os.makedirs(a.out, exist_ok=True)
    with open(os.path.join(a.out, "numerics.json"), "w") as f:
        json.dump({"summary": summary, "rows": rows}, f, indent=1)
    return 0 if summary["all_deterministic"] else 1


if __name__ == "__main__":
    sys.exit(main())
