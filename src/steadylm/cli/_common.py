"""Arguments shared by the subcommands that read a config."""

from __future__ import annotations

import argparse


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
