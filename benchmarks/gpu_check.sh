#!/usr/bin/env bash
# The prepared GPU check of the Triton kernels (issue 15), for a machine with one NVIDIA GPU
# (an H100 or H200). Run from a clone of this repository:
#
#   bash benchmarks/gpu_check.sh [OUT_DIR]     (default: $OUT if set, else runs/gpu-check-<date>)
#
# It needs python3 with a CUDA build of torch and triton (the image's own: nothing is
# installed; the package runs from this source tree through PYTHONPATH) and writes at most 8
# files, all under OUT_DIR:
#   summary.txt   machine, versions, every step's exit code and seconds
#   smoke.log     one forward+backward per dtype and layout against torch (seconds)
#   bench.log     batchnorm bench --device cuda: the table        bench.json: its rows
#   numerics.log  determinism, gradient errors against float64    numerics.json
#   tests.log     pytest -m gpu tests/test_kernels_triton.py (compiled kernels)
#   sync.log      SyncBatchNorm in 2 processes over NCCL; where NCCL refuses two ranks on one
#                 GPU ("Duplicate GPU detected"), the same check over gloo on CUDA tensors
# Each step has a time limit and runs whatever happened before; the whole run stops starting
# steps once GPU_CHECK_BUDGET seconds (default 540) are spent. About 5 minutes on an H200.
# GPU_CHECK_SWEEP=1 adds a tuning sweep of our kernels (bench --sweep) into bench.log.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT_DIR=${1:-${OUT:-runs/gpu-check-$(date +%Y%m%d-%H%M%S)}}
mkdir -p "$OUT_DIR"
PY=${PYTHON:-python3}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
export TRITON_INTERPRET=0 # compiled kernels (the tests ask for the interpreter otherwise)
BUDGET=${GPU_CHECK_BUDGET:-540}
T0=$(date +%s)
SUMMARY="$OUT_DIR/summary.txt"
: >"$SUMMARY"

note() { echo "$*" | tee -a "$SUMMARY"; }

# step NAME LIMIT_S LOG CMD...: run CMD with a time limit (cut to what the budget has left),
# output appended to LOG, exit code and seconds to the summary.
step() {
  local name=$1 limit=$2 log=$3
  shift 3
  local left=$((BUDGET - ($(date +%s) - T0)))
  if [ "$left" -lt 20 ]; then
    note "$name: skipped (budget of ${BUDGET}s spent)"
    return 0
  fi
  [ "$limit" -gt "$left" ] && limit=$left
  local start
  start=$(date +%s)
  echo "== $name (limit ${limit}s): $*" | tee -a "$log"
  timeout -k 10 "$limit" "$@" >>"$log" 2>&1
  local rc=$?
  local why=""
  [ "$rc" -eq 124 ] && why=" (timed out)"
  note "$name: rc=$rc$why in $(($(date +%s) - start))s -> $(basename "$log")"
  tail -n 25 "$log"
  return $rc
}

note "gpu_check $(date -Is) in $PWD, output $OUT_DIR"
{
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,clocks.max.mem \
    --format=csv 2>&1 || echo "nvidia-smi failed"
  "$PY" - <<'PY' 2>&1
import platform, torch
print("python", platform.python_version(), "| torch", torch.__version__, "| CUDA", torch.version.cuda,
      "| cuDNN", torch.backends.cudnn.version(), "| device", torch.cuda.is_available() and torch.cuda.get_device_name())
try:
    import triton
    print("triton", triton.__version__)
except Exception as e:
    print("triton missing:", e)
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print("SMs", p.multi_processor_count, "| L2 MiB", getattr(p, "L2_cache_size", 0) / 2**20,
          "| capability", torch.cuda.get_device_capability(0))
PY
  git log -1 --format='commit %H %s' 2>/dev/null || echo "commit: not a git checkout"
} | tee -a "$SUMMARY"

# 1. Smoke: does every dtype and layout take our kernels and agree with torch? (seconds)
step smoke 120 "$OUT_DIR/smoke.log" "$PY" - <<'PY'
import torch, batchnorm.functional as F
from batchnorm.core import kernels
from batchnorm.core.kernels import triton as T
g = torch.Generator(device="cuda").manual_seed(0)
bad = 0
for shape, fmt in [((8, 16, 9, 11), None), ((8, 16, 9, 11), torch.channels_last), ((300, 24), None)]:
    for dt in (torch.float32, torch.bfloat16, torch.float16):
        x = torch.randn(shape, generator=g, device="cuda").mul(2).add(1).to(dt)
        if fmt is not None:
            x = x.contiguous(memory_format=fmt)
        C = shape[1]
        w = torch.rand(C, device="cuda") + 0.5
        b = torch.randn(C, device="cuda")
        dy = torch.randn_like(x)
        out = []
        for f in (F.batch_norm, torch.nn.functional.batch_norm):
            xg, wg, bg = (t.clone().requires_grad_(True) for t in (x, w, b))
            rm, rv = torch.zeros(C, device="cuda"), torch.ones(C, device="cuda")
            y = f(xg, rm, rv, wg, bg, True, 0.1, 1e-5)
            out.append((y, *torch.autograd.grad(y, (xg, wg, bg), dy), rm, rv))
        errs = [float((a.float() - e.float()).abs().max()) for a, e in zip(*out)]
        tol = 1e-3 if dt == torch.float32 else 0.1
        ok = max(errs) < tol * 10
        bad += not ok
        print(f"{str(shape):<16} {'cl' if fmt else 'contig':<7} {str(dt):<15} path "
              f"{kernels.get(x, 1).name:<12} max|ours - torch| y,dx,dw,db,rm,rv: "
              + " ".join(f"{e:.1e}" for e in errs) + ("" if ok else "  <-- LARGE"))
print("load error:", T.load_error())
raise SystemExit(1 if bad else 0)
PY

# 2. The bench: native, torch.compile and ours against the copy floor.
step bench 300 "$OUT_DIR/bench.log" "$PY" -m batchnorm bench --device cuda --repeat 15 \
  --json "$OUT_DIR/bench.json"

# 3. Determinism and gradient accuracy against float64 (ours and native).
step numerics 150 "$OUT_DIR/numerics.log" "$PY" benchmarks/gpu_numerics.py --out "$OUT_DIR"

# 4. The CUDA tests (compiled kernels; the interpreter half skips). -W default: a library's
# warning on this machine is reported, not turned into a failure that hides a measurement.
step tests 200 "$OUT_DIR/tests.log" "$PY" -m pytest -q -m gpu -p no:cacheprovider -W default \
  -rs tests/test_kernels_triton.py

# 5. SyncBatchNorm over NCCL in 2 processes; with one GPU NCCL refuses two ranks on it (exit
# code 3, "Duplicate GPU detected"): then the same check over gloo on CUDA tensors.
SYNC_TMP=$(mktemp -d)
NCCL_DEBUG=${NCCL_DEBUG:-WARN} step sync-nccl 120 "$OUT_DIR/sync.log" "$PY" \
  benchmarks/gpu_sync_check.py --backend nccl --device cuda --world 2 --out "$SYNC_TMP" \
  --timeout 100
if [ $? -ne 0 ]; then # refused (exit code 3), or failed otherwise: the same layer over gloo
  step sync-gloo-cuda 120 "$OUT_DIR/sync.log" "$PY" benchmarks/gpu_sync_check.py \
    --backend gloo --device cuda --world 2 --out "$SYNC_TMP" --timeout 100
fi
cat "$SYNC_TMP"/*.json >>"$OUT_DIR/sync.log" 2>/dev/null
rm -rf "$SYNC_TMP"

# 6. Optional: our kernels under alternative launch shapes (docs/gpu.md says how to read it).
if [ "${GPU_CHECK_SWEEP:-0}" = 1 ]; then
  step sweep 150 "$OUT_DIR/bench.log" "$PY" -m batchnorm bench --device cuda --sweep \
    --shapes 256x64x112x112,256x64x112x112-cl,128x256x14x14,65536x1024 --dtypes bfloat16 \
    --repeat 10
fi

note "done in $(($(date +%s) - T0))s; files: $(ls "$OUT_DIR" | tr '\n' ' ')"
