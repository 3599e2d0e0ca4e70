"""``batchnorm build-kernels``: build (or find) the fast CPU kernels ahead of time."""

from __future__ import annotations

import argparse
import ctypes

from ..core.kernels._cpu_build import _declare, build


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--force", action="store_true", help="rebuild even if a cached library exists"
    )
    parser.add_argument(
        "--strict",
        action="store_true",
        help="exit with status 1 if the library cannot be built (default: report and exit 0, "
        "the package then uses torch ops)",
    )


def run(args: argparse.Namespace) -> int:
    """Build (or find) the fast CPU kernels ahead of time and say where they are."""
    path, message = build(force=args.force)
    print(f"batchnorm fast CPU kernels: {message}")
    if path is None:
        print("batchnorm will use its torch-op kernels (same results, slower on CPU)")
        return 1 if args.strict else 0
    try:
        import torch  # noqa: F401

        _declare(ctypes.CDLL(str(path)))
    except OSError as e:
        print(f"but it does not load: {e}")
        return 1 if args.strict else 0
    return 0
