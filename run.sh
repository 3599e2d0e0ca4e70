#!/usr/bin/env bash
# One entry point that sets everything up on a fresh machine, then runs a command.
#   bash run.sh reproduce [ARGS]   the main job: the articles' experiments on MNIST + report
#   bash run.sh test [PYTEST ARGS] the style checks (ruff, ruff format, mypy), then the tests
#   bash run.sh lint               the style checks alone
#   bash run.sh <any batchnorm subcommand> [ARGS]
# Set-up (idempotent): a virtual environment in .venv, the CPU build of torch if no torch is
# there (a bare `torch` requirement could pull a multi-GB CUDA build), then this package in
# editable mode, which compiles the CPU kernels (csrc/, setup.py; without a compiler the
# package runs on torch ops and says so), with what the command needs: [experiments]
# (matplotlib) for every command, and for `test`/`lint` also [dev] and triton ([gpu]) where
# it installs. A change in pyproject.toml, setup.py or csrc/ reinstalls and rebuilds.
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3}
VENV=${BATCHNORM_VENV:-.venv}
case "${1:-}" in
  test | lint) extras=dev,experiments ;;
  *) extras=experiments ;;
esac

if [ ! -x "$VENV/bin/python" ]; then
  echo "[setup] creating virtual environment in $VENV" >&2
  "$PY" -m venv "$VENV"
fi
VPY="$VENV/bin/python"
stamp="$VENV/.batchnorm-installed-$extras"
newer() { [ -n "$(find pyproject.toml setup.py csrc -newer "$stamp" -print -quit 2>/dev/null)" ]; }
if [ ! -f "$stamp" ] || newer; then
  if ! "$VPY" -c "import torch" >/dev/null 2>&1; then
    echo "[setup] installing the CPU build of torch" >&2
    "$VPY" -m pip install -q --disable-pip-version-check "torch==2.13.0"
  fi
  "$VPY" -m pip install -q --disable-pip-version-check "setuptools>=68" wheel
  echo "[setup] installing batchnorm[$extras] (compiles the CPU kernels)" >&2
  # No build isolation: the kernels build against the torch installed above.
  "$VPY" -m pip install -q --disable-pip-version-check --no-build-isolation -e ".[$extras]"
  # triton (the [gpu] extra): the tests run the CUDA kernels in its interpreter on CPU; where no
  # wheel exists for this platform those tests skip and CUDA uses torch's ops.
  if [ "$extras" = dev,experiments ]; then
    echo "[setup] installing triton ([gpu])" >&2
    # (the [gpu] extra's one requirement, installed alone so the package is not rebuilt)
    "$VPY" -m pip install -q --disable-pip-version-check "triton>=3.4" >&2 \
      || echo "[setup] triton not installed: the Triton kernel tests will skip" >&2
  fi
  # Which CPU path the package takes (the kernels just built, or torch ops and why).
  "$VENV/bin/batchnorm" build-kernels >&2 || true
  touch "$stamp"
fi

# The style CI enforces: lint, formatting, types (config in pyproject.toml), before any test.
lint() {
  echo "[lint] ruff check" >&2
  "$VENV/bin/ruff" check --quiet .
  echo "[lint] ruff format --check" >&2
  "$VENV/bin/ruff" format --check --quiet .
  echo "[lint] mypy" >&2
  "$VENV/bin/mypy"
}

cmd=${1:-}
[ $# -gt 0 ] && shift
case "$cmd" in
  lint)
    lint ;;
  test)
    lint
    exec "$VPY" -m pytest "$@" ;;
  "" | -h | --help)
    sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'
    exec "$VENV/bin/batchnorm" --help ;;
  *)
    exec "$VENV/bin/batchnorm" "$cmd" "$@" ;;
esac
