"""The ``batchnorm`` command.

Each subcommand lives in the module that owns it and is loaded only when called, so
``batchnorm --help`` stays fast and ``import batchnorm`` never pulls in plotting code.
A subcommand is ``name -> (module, help)``; the module defines ``add_arguments(parser)``
and ``run(args) -> int``.
"""

from __future__ import annotations

import argparse
import importlib
import sys

SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "demo": (
        "batchnorm.cli.demo",
        "train a small sigmoid network with and without BN on data it makes",
    ),
    "bench": (
        "batchnorm.cli.bench",
        "time our CPU batch norm against torch's and the memory-bandwidth floor",
    ),
    "build-kernels": (
        "batchnorm.cli.build_kernels",
        "say which CPU path runs (kernels built at install, or torch ops); --rebuild in place",
    ),
    "doctor": (
        "batchnorm.cli.doctor",
        "find batch-norm mistakes in a model (module:function returning it)",
    ),
    "reproduce": (
        "batchnorm.experiments.reproduce",
        "run the articles' experiments on MNIST; write report.md/.html",
    ),
    "train": (
        "batchnorm.experiments.train_cli",
        "train one experiment config (options or a preset file)",
    ),
}


def build_parser(command: str | None = "*") -> argparse.ArgumentParser:
    """The parser; only ``command``'s module is imported for its options (``"*"``: all,
    ``None``: none, enough for ``batchnorm --help``, which then needs no torch)."""
    parser = argparse.ArgumentParser(
        prog="batchnorm",
        description="Batch normalization for PyTorch: tools and experiments.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_text) in SUBCOMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(_module=module)
        if command in ("*", name):
            importlib.import_module(module).add_arguments(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    # The subcommand is the first word that is not an option (the top level has no options
    # that take a value); only its module is imported.
    command = next((a for a in argv if not a.startswith("-")), None)
    parser = build_parser(command if command in SUBCOMMANDS else None)
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    return int(importlib.import_module(args._module).run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
