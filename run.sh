#!/usr/bin/env bash
# One entry point that sets everything up on a fresh machine, then runs a command.
#   bash run.sh reproduce [ARGS]   the main job: the articles' experiments on MNIST + report
#   bash run.sh test [PYTEST ARGS] the test suite
#   bash run.sh <any batchnorm subcommand> [ARGS]
# Set-up (idempotent): a virtual environment in .venv, the CPU build of torch if no torch is
# there (a bare `torch` requirement could pull a multi-GB CUDA build), then this package in
# editable mode with what the command needs: [experiments] (matplotlib) for every command,
# and for `test` also [dev] and triton ([gpu]) where it installs.
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3}
VENV=${BATCHNORM_VENV:-.venv}
if [ "${1:-}" = test ]; then extras=dev,experiments; else extras=experiments; fi

if [ ! -x "$VENV/bin/python" ]; then
  echo "[setup] creating virtual environment in $VENV" >&2
  "$PY" -m venv "$VENV"
fi
VPY="$VENV/bin/python"
stamp="$VENV/.batchnorm-installed-$extras"
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  if ! "$VPY" -c "import torch" >/dev/null 2>&1; then
    echo "[setup] installing the CPU build of torch" >&2
    "$VPY" -m pip install -q --disable-pip-version-check "torch==2.13.0"
  fi
  echo "[setup] installing batchnorm[$extras]" >&2
  "$VPY" -m pip install -q --disable-pip-version-check -e ".[$extras]"
  # triton (the [gpu] extra): the tests run the CUDA kernels in its interpreter on CPU; where no
  # wheel exists for this platform those tests skip and CUDA uses torch's ops.
  if [ "$extras" = dev,experiments ]; then
    echo "[setup] installing triton ([gpu])" >&2
    "$VPY" -m pip install -q --disable-pip-version-check -e ".[gpu]" >&2 \
      || echo "[setup] triton not installed: the Triton kernel tests will skip" >&2
  fi
  # Compile the fast CPU kernels once (cached per machine); without a compiler the package
  # falls back to torch ops, so this step never fails the set-up.
  "$VENV/bin/batchnorm" build-kernels >&2 || echo "[setup] fast CPU kernels not built: torch-op fallback" >&2
  touch "$stamp"
fi

cmd=${1:-}
[ $# -gt 0 ] && shift
case "$cmd" in
  test)
    exec "$VPY" -m pytest "$@" ;;
  "" | -h | --help)
    sed -n '2,8p' "$0" | sed 's/^# \{0,1\}//'
    exec "$VENV/bin/batchnorm" --help ;;
  *)
    exec "$VENV/bin/batchnorm" "$cmd" "$@" ;;
esac
