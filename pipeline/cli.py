"""The ``hemaflow`` command line: one subcommand per stage, plus run, compile, submit, schedule.

Subcommands are discovered from :mod:`pipeline.commands`: each module there defines
``register(subparsers)`` and sets ``func`` on its parser. Errors a user can fix (every
:class:`~hemaflow.errors.HemaflowError`, an unreadable user path) end the program with a
one-line reason and a non-zero status; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys

from hemaflow.pipeline import commands

import hemaflow
from hemaflow.errors import HemaflowError
from hemaflow.progress import setup_logging

# What a user can fix; anything else is a bug and keeps its traceback.
USER_ERRORS: tuple[type[BaseException], ...] = (HemaflowError, OSError)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hemaflow",
        description="Train, tune, ensemble and stress-test blood cell classifiers "
        "as a Kubeflow/Vertex pipeline.",
    )
    parser.add_argument("--version", action="version", version=f"hemaflow {hemaflow.__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging and tracebacks")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        if info.name.startswith("_"):
            continue
        importlib.import_module(f"hemaflow.pipeline.commands.{info.name}").register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging(args.verbose)
    try:
        result = args.func(args)
    except KeyboardInterrupt:
        print("hemaflow: interrupted", file=sys.stderr)
        return 130
    except USER_ERRORS as exc:
        if args.verbose:
            raise
        reason = " ".join(str(exc).split()) if "\n" not in str(exc).strip() else str(exc).strip()
        print(f"hemaflow {args.command}: error: {reason}", file=sys.stderr)
        return 1
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
