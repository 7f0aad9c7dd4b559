"""Arguments shared by the subcommands that read a config and write a run folder."""

from __future__ import annotations

import argparse
from pathlib import Path

from steadylm.errors import SteadyLMError


def add_config_args(p: argparse.ArgumentParser, required: bool = False) -> None:
    p.add_argument(
        "--config",
        required=required,
        metavar="FILE|PRESET",
        help="a TOML file or a preset name (tiny-cpu, gpt2-small, gpt2-deep48, ...); "
        "without it, the built-in defaults (GPT-2 small shape)",
    )
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override one config key, e.g. --set model.n_layer=6 (repeatable; values are TOML)",
    )


def add_run_args(p: argparse.ArgumentParser, stop_help: str) -> None:
    """--out, --resume, --stop-at and --no-progress of a job that writes a run folder."""
    p.add_argument("--out", required=True, metavar="RUN", help="run directory")
    p.add_argument(
        "--resume", action="store_true", help="continue the run in --out from its latest checkpoint"
    )
    p.add_argument("--stop-at", type=int, metavar="STEP", help=stop_help)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def run_config_source(args: argparse.Namespace) -> str | Path | None:
    """The config to read: --config, or on --resume without it the run's own resolved config.
    Also checks --stop-at."""
    if args.stop_at is not None and args.stop_at < 1:
        raise SteadyLMError(f"--stop-at: must be >= 1, got {args.stop_at}")
    if args.config is not None or not args.resume:
        return args.config
    source = Path(args.out) / "config.toml"
    if not source.is_file():
        raise SteadyLMError(f"--resume: {args.out} holds no steadylm run (no config.toml)")
    return source
