"""The jobs a sweep can run (`[sweep] job = "train" | "finetune" | "attack" | "embed"`), resolved
by name here.

Each job says which config sections its keys belong to, which key takes the sweep's seeds, how
a config is built from the spec's base and overrides, how one run is trained in-process, and
which `steadylm` subcommand trains it in a subprocess (`--jobs > 1`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class RunOutcome:
    status: str
    step: int
    reason: str | None = None


@dataclass(frozen=True)
class SweepJob:
    name: str
    command: str  # the `steadylm` subcommand
    seed_key: str  # "section.key" that each of [sweep] seeds sets
    base_required: bool  # whether [sweep] base (a preset or TOML file) must be given
    sections: Callable[[], dict[str, type]]
    load: Callable[
        [str | None, Sequence[str]], Any
    ]  # (base, "section.key=value" overrides) -> config
    run: Callable[[Any, Path, bool], RunOutcome]  # (config, run dir, resume) -> outcome


def _train_sections() -> dict[str, type]:
    from steadylm.config import SECTIONS

    return SECTIONS


def _train_load(base: str | None, overrides: Sequence[str]) -> Any:
    from steadylm.config import load_config

    return load_config(base, overrides)


def _train_run(cfg: Any, run_dir: Path, resume: bool) -> RunOutcome:
    from steadylm.rundir import read_status
    from steadylm.train.trainer import Trainer

    result = Trainer(cfg, run_dir, resume=resume, progress=False).fit()
    reason = read_status(run_dir).get("reason") if result.status == "diverged" else None
    return RunOutcome(result.status, result.step, reason)


def _finetune_sections() -> dict[str, type]:
    from steadylm.finetune.config import SECTION, FinetuneConfig

    return {SECTION: FinetuneConfig}


def _finetune_load(base: str | None, overrides: Sequence[str]) -> Any:
    from steadylm.finetune.config import load_finetune_config

    return load_finetune_config(base or None, overrides)


def _finetune_run(cfg: Any, run_dir: Path, resume: bool) -> RunOutcome:
    from steadylm.finetune.job import FinetuneJob
    from steadylm.rundir import read_status

    FinetuneJob(cfg, run_dir, resume=resume, progress=False).run()
    st = read_status(run_dir)
    return RunOutcome(st.get("status", "failed"), int(st.get("step", 0)))


def _attack_sections() -> dict[str, type]:
    from steadylm.attack.config import SECTION, AttackConfig

    return {SECTION: AttackConfig}


def _attack_load(base: str | None, overrides: Sequence[str]) -> Any:
    from steadylm.attack.config import load_attack_config

    return load_attack_config(base or None, overrides)


def _attack_run(cfg: Any, run_dir: Path, resume: bool) -> RunOutcome:
    from steadylm.attack.job import AttackJob
    from steadylm.rundir import read_status

    AttackJob(cfg, run_dir, progress=False, resume=resume).run()
    return RunOutcome(read_status(run_dir).get("status", "failed"), 0)


def _embed_sections() -> dict[str, type]:
    from steadylm.embed.config import SECTION, EmbedConfig

    return {SECTION: EmbedConfig}


def _embed_load(base: str | None, overrides: Sequence[str]) -> Any:
    from steadylm.embed.config import load_embed_config

    return load_embed_config(base or None, overrides)


def _embed_run(cfg: Any, run_dir: Path, resume: bool) -> RunOutcome:
    """An embed run is written whole or not at all, so there is nothing to resume: a run dir that
    is not finished does not exist (the sweep skips finished ones)."""
    from steadylm.embed.job import run

    summary = run(cfg, run_dir, progress=False, log=lambda line: None)
    return RunOutcome("finished", summary["iterations"])


JOBS = {
    "train": SweepJob(
        "train", "train", "train.seed", True, _train_sections, _train_load, _train_run
    ),
    "finetune": SweepJob(
        "finetune",
        "finetune",
        "finetune.seed",
        False,
        _finetune_sections,
        _finetune_load,
        _finetune_run,
    ),
    "attack": SweepJob(
        "attack", "attack", "attack.seed", False, _attack_sections, _attack_load, _attack_run
    ),
    "embed": SweepJob(
        "embed", "embed", "embed.seed", False, _embed_sections, _embed_load, _embed_run
    ),
}
