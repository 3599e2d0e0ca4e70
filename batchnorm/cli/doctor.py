"""``batchnorm doctor``: audit a model built by a factory function for batch-norm mistakes."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "factory", help="package.module:function, a callable that returns the model (no arguments)"
    )
    parser.add_argument(
        "--input-shape", required=True, help="shape of the example input, e.g. 2,1,28,28"
    )
    parser.add_argument(
        "--dtype", default="float32", help="dtype of the example input (default float32)"
    )
    parser.add_argument("--eval", action="store_true", help="call model.eval() before the audit")
    parser.add_argument(
        "--inference",
        action="store_true",
        help="the model is for inference: flag BN in training mode",
    )
    parser.add_argument(
        "--weights-from",
        choices=("keras", "torch"),
        help="framework the weights were trained in",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the random example input")


def run(args: argparse.Namespace) -> int:
    """Print the findings; exit status 0 without findings, 1 with any, 2 on bad arguments."""
    import importlib
    import sys

    import torch
    from torch import nn

    from ..tools.doctor import diagnose, format_findings

    module_name, sep, func_name = args.factory.partition(":")
    if not sep or not module_name or not func_name:
        print(f"error: expected package.module:function, got {args.factory!r}", file=sys.stderr)
        return 2
    try:
        shape = tuple(int(s) for s in args.input_shape.split(","))
    except ValueError:
        print(
            f"error: --input-shape must be comma-separated integers, got {args.input_shape!r}",
            file=sys.stderr,
        )
        return 2
    dtype = getattr(torch, args.dtype, None)
    if not isinstance(dtype, torch.dtype):
        print(f"error: unknown --dtype {args.dtype!r}; use e.g. float32", file=sys.stderr)
        return 2
    sys.path.insert(0, "")  # so a module in the current directory is found, as `python -m` would
    try:
        factory = getattr(importlib.import_module(module_name), func_name)
    except (ImportError, AttributeError) as err:
        print(f"error: cannot load {args.factory!r}: {err}", file=sys.stderr)
        return 2
    model = factory()
    if not isinstance(model, nn.Module):
        print(
            f"error: {args.factory} returned a {type(model).__name__}, not a torch.nn.Module",
            file=sys.stderr,
        )
        return 2
    if args.eval:
        model.eval()
    torch.manual_seed(args.seed)
    x = torch.randn(shape, dtype=dtype)
    findings = diagnose(model, x, inference=args.inference, weights_from=args.weights_from)
    print(format_findings(findings))
    return 1 if findings else 0
