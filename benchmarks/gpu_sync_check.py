"""SyncBatchNorm over real processes: each rank normalizes its shard of one global batch and
must match one process normalizing the whole batch (our local BN and the float64 reference).

    python benchmarks/gpu_sync_check.py --backend nccl --device cuda --world 2 --out DIR

Ranks take GPU ``rank % device_count``, so with one GPU every rank shares it. NCCL refuses
that ("Duplicate GPU detected : rank 1 and rank 0 both on CUDA device ..."): the script then
exits with code 3 and says so, and ``benchmarks/gpu_check.sh`` runs the same check with gloo
on the CUDA tensors (the layer's code is the same; only the transport differs). Running NCCL
for real needs two GPUs (a ``nvidia-h200-x2`` machine). On CPU (``--backend gloo --device
cpu``) it is a dry run of the script itself.

Checked per dtype (float32: the Triton kernels on CUDA, float64: the native ops) and layout,
for unequal shards (5 and 3 samples), two training steps: the output and input gradient of
each shard, the weight and bias gradients summed over ranks (what DDP does), and the running
statistics. Results: ``DIR/sync_<backend>.json`` and one line per check on stdout.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import tempfile
import time
import traceback
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

SIZES = [5, 3, 4, 6, 2, 7, 1, 8]  # samples per rank (unequal on purpose)
C, H, W = 6, 7, 9
TOL = {torch.float32: 2e-4, torch.float64: 1e-10}


def _checks(rank: int, world: int, device: torch.device) -> list[dict[str, Any]]:
    from batchnorm import reference as ref
    from batchnorm.core import kernels
    from batchnorm.nn.batchnorm import BatchNorm2d
    from batchnorm.nn.sync import SyncBatchNorm

    sizes = SIZES[:world]
    start = sum(sizes[:rank])
    out = []
    for dtype in (torch.float32, torch.float64):
        for fmt in (torch.contiguous_format, torch.channels_last):
            if dtype == torch.float64 and fmt == torch.channels_last:
                continue
            g = torch.Generator().manual_seed(1234)
            sync = SyncBatchNorm(C, device=device, dtype=dtype)
            local = BatchNorm2d(C, device=device, dtype=dtype)
            with torch.no_grad():
                for m in (sync, local):
                    m.weight.copy_(torch.linspace(0.5, 1.5, C))
                    m.bias.copy_(torch.linspace(-1.0, 1.0, C))
            for step in range(2):
                n = sum(sizes)
                full = (torch.randn(n, C, H, W, generator=g, dtype=torch.float64) * 3 + 2).to(dtype)
                dy = torch.randn(n, C, H, W, generator=g, dtype=torch.float64).to(dtype)
                full = full.to(device).contiguous(memory_format=fmt)
                dy = dy.to(device).contiguous(memory_format=fmt)
                x = full[start : start + sizes[rank]].clone().requires_grad_(True)
                path = kernels.get(x.detach(), 1).name
                y = sync(x)
                y.backward(dy[start : start + sizes[rank]])
                xf = full.clone().requires_grad_(True)
                yf = local(xf)
                yf.backward(dy)
                dw = sync.weight.grad.clone()
                db = sync.bias.grad.clone()
                dist.all_reduce(dw)
                dist.all_reduce(db)
                y_np, cache = ref.batch_norm_forward(
                    full.double().cpu().numpy(),
                    sync.weight.detach().double().cpu().numpy(),
                    sync.bias.detach().double().cpu().numpy(),
                    sync.eps,
                    axis=1,
                )
                dx_np, dw_np, db_np = ref.batch_norm_backward(dy.double().cpu().numpy(), cache)
                sl = slice(start, start + sizes[rank])

                def err(a: torch.Tensor, b: object) -> float:
                    if isinstance(b, torch.Tensor):
                        b = b.detach().cpu()
                    e = a.detach().double().cpu() - torch.as_tensor(b, dtype=torch.float64)
                    return float(e.abs().max())

                errs = {
                    "y_vs_local": err(y, yf[sl]),
                    "dx_vs_local": err(x.grad, xf.grad[sl]),
                    "dw_vs_local": err(dw, local.weight.grad),
                    "db_vs_local": err(db, local.bias.grad),
                    "y_vs_reference": err(y, y_np[sl]),
                    "dx_vs_reference": err(x.grad, dx_np[sl]),
                    "dw_vs_reference": err(dw, dw_np),
                    "db_vs_reference": err(db, db_np),
                    "running_mean": err(sync.running_mean, local.running_mean),
                    "running_var": err(sync.running_var, local.running_var),
                }
                worst = max(errs.values())
                out.append(
                    {
                        "rank": rank,
                        "dtype": str(dtype).replace("torch.", ""),
                        "layout": "channels_last" if fmt == torch.channels_last else "nchw",
                        "step": step,
                        "kernel_path": path,
                        "errors": errs,
                        "worst": worst,
                        "ok": bool(
                            worst <= TOL[dtype] * 10 and errs["y_vs_reference"] <= TOL[dtype]
                        ),
                    }
                )
                for m in (sync, local):
                    m.weight.grad = m.bias.grad = None
    return out


def _worker(rank: int, world: int, store: str, backend: str, device_kind: str, out: str) -> None:
    if device_kind == "cuda":
        torch.cuda.set_device(rank % torch.cuda.device_count())
        device = torch.device("cuda", torch.cuda.current_device())
    else:
        device = torch.device("cpu")
    dist.init_process_group(
        backend,
        init_method=f"file://{store}",
        rank=rank,
        world_size=world,
        timeout=datetime.timedelta(seconds=60),
    )
    try:
        rows = _checks(rank, world, device)
        dist.barrier()
        with open(os.path.join(out, f"rank{rank}.json"), "w") as f:
            json.dump(rows, f)
    finally:
        dist.destroy_process_group()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--backend", choices=["nccl", "gloo"], default="nccl")
    p.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    p.add_argument("--world", type=int, default=2)
    p.add_argument("--timeout", type=float, default=180.0, help="seconds for the whole run")
    p.add_argument("--out", default=".", help="folder for sync_<backend>.json")
    a = p.parse_args(argv)
    if a.device == "cuda" and not torch.cuda.is_available():
        print("no CUDA device: use --device cpu --backend gloo for a dry run", file=sys.stderr)
        return 2
    os.makedirs(a.out, exist_ok=True)
    gpus = torch.cuda.device_count() if a.device == "cuda" else 0
    print(
        f"SyncBatchNorm check: backend {a.backend}, {a.world} processes on {a.device}"
        + (f" ({gpus} GPU(s): ranks share GPU rank % {gpus})" if gpus else ""),
        flush=True,
    )
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        store = os.path.join(tmp, "store")
        result: dict[str, Any] = {
            "backend": a.backend,
            "device": a.device,
            "world": a.world,
            "gpus": gpus,
        }
        try:
            ctx = mp.start_processes(  # type: ignore[attr-defined,no-untyped-call]
                _worker,
                args=(a.world, store, a.backend, a.device, tmp),
                nprocs=a.world,
                join=False,
                start_method="spawn",
            )
            deadline = time.monotonic() + a.timeout
            while not ctx.join(timeout=max(0.1, deadline - time.monotonic())):
                if time.monotonic() > deadline:
                    for proc in ctx.processes:
                        if proc.is_alive():
                            proc.terminate()
                    raise TimeoutError(f"the {a.world} processes did not finish in {a.timeout} s")
            rows = []
            for r in range(a.world):
                with open(os.path.join(tmp, f"rank{r}.json")) as f:
                    rows += json.load(f)
            result["rows"] = rows
            result["ok"] = all(r["ok"] for r in rows)
            code = 0 if result["ok"] else 1
        except Exception as e:
            text = "".join(traceback.format_exception_only(type(e), e))
            result["error"] = text[-4000:]
            duplicate = "Duplicate GPU" in text or "invalid usage" in text
            result["nccl_refused_shared_gpu"] = duplicate
            code = 3 if duplicate else 1
    result["seconds"] = round(time.perf_counter() - t0, 1)
    for r in result.get("rows", []):
        print(
            f"rank {r['rank']} {r['dtype']:<8} {r['layout']:<13} step {r['step']} "
            f"{r['kernel_path']:<12} worst error {r['worst']:.2e}  {'ok' if r['ok'] else 'FAIL'}"
        )
    if code == 3:
        print(
            "NCCL refused several ranks on one GPU (Duplicate GPU detected): NCCL needs one GPU "
            "per rank, so its path cannot run for real on a one-GPU machine. Next: the same "
            "check with gloo on the CUDA tensors; for NCCL itself, a machine with 2 GPUs."
        )
    elif "error" in result:
        print(result["error"])
    print(f"{'ok' if code == 0 else 'FAILED'} ({result['seconds']} s)")
    with open(os.path.join(a.out, f"sync_{a.backend}.json"), "w") as f:
        json.dump(result, f, indent=1)
    return code


if __name__ == "__main__":
    sys.exit(main())
