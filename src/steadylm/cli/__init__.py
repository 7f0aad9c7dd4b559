"""The `steadylm` command: a thin `main(argv)` that tests call in-process.

Each subcommand lives in its own module with `register(subparsers)`, which adds its parser and
sets `func`. User errors (`SteadyLMError`) print one line on stderr and exit 2; a traceback is
shown only with `--debug`.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from steadylm import __version__
from steadylm.errors import SteadyLMError

# Subcommand modules, in the order `--help` lists them.
COMMANDS = [
    "prepare", "train", "finetune", "sample", "tev", "analyze", "export_hf", "bench", "sweep",
    "report", "tasks", "embed", "attack",
]  # fmt: skip


class _Parser(argparse.ArgumentParser):
    """argparse exits 2 on bad arguments already; keep its message to one line."""

    def error(self, message: str):  # noqa: D401
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="steadylm",
        description="Stable language-model pre-training, measured.",
    )
    parser.add_argument("--version", action="version", version=f"steadylm {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    for name in COMMANDS:
        importlib.import_module(f"steadylm.cli.{name}").register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except SteadyLMError as e:
        if args.debug:
            raise
        print(f"steadylm {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"steadylm {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
