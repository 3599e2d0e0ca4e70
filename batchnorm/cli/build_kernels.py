"""``batchnorm build-kernels``: say which CPU path runs, and rebuild the kernels in place.

The kernels are built when the package is installed (``setup.py``). This command reports
what this process loads (``batchnorm.kernels.info()``: the compiled kernels and their
instruction set, or torch ops and why); with ``--rebuild`` in an editable checkout (the
source tree with ``setup.py`` and ``csrc/`` next to the package) it recompiles them in place
(``setup.py build_ext --inplace``), for instance after a change in ``csrc/`` or a new torch.
An installed (non-editable) copy is rebuilt by reinstalling it.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

SOURCE_ROOT = Path(__file__).resolve().parents[2]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--rebuild",
        "--force",
        action="store_true",
        help="recompile the kernels in place (editable checkout only)",
    )
    parser.add_argument(
        "--strict",
        action="store_true",
        help="exit with status 1 unless the compiled kernels load (default: report, exit 0; "
        "the package then uses torch ops)",
    )


def _report() -> dict[str, str]:
    # A new process: this one may have loaded (or refused) the library before the rebuild.
    code = "import json; from batchnorm.core import kernels; print(json.dumps(kernels.info()))"
    out = subprocess.run(
        [sys.executable, "-W", "ignore", "-c", code], capture_output=True, text=True, check=True
    )
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def run(args: argparse.Namespace) -> int:
    """Rebuild if asked (and possible), then report the CPU path a new process takes."""
    if args.rebuild:
        if not (SOURCE_ROOT / "setup.py").exists() or not (SOURCE_ROOT / "csrc").is_dir():
            print(
                "batchnorm build-kernels: this is an installed copy, not a source checkout; "
                "rebuild by reinstalling from the source: `pip install --no-build-isolation "
                "--force-reinstall .`"
            )
            return 1
        print(f"batchnorm build-kernels: compiling {SOURCE_ROOT / 'csrc'} in place", flush=True)
        subprocess.run(
            [sys.executable, "setup.py", "-q", "build_ext", "--inplace", "--force"],
            cwd=SOURCE_ROOT,
            check=False,
        )
    info = _report()
    print(f"batchnorm CPU path: {info['path']} (ISA {info['isa']}): {info['reason']}")
    if info["path"] != "kernels":
        print("batchnorm uses its torch-op kernels (same results, slower on CPU)")
        return 1 if args.strict else 0
    return 0
