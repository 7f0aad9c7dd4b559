"""The `[attack]` section: the options of `steadylm attack` in one dataclass whose field help
serves as `--help`, read from flags, a TOML file (`--config`) or `--set attack.key=value` (which is
how `steadylm sweep` runs attacks)."""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from steadylm.config import (
    documented,
    field_help,
    load_section_config,
    table_toml,
)
from steadylm.errors import SteadyLMError

SECTION = "attack"
METHODS = ("uat", "luat")


@dataclass
class AttackConfig:
    """A universal trigger against one classifier, searched on the training split and scored on
    the test split."""

    classifier: str = documented(
        "", "the victim: a `steadylm finetune` run or a Hugging Face sequence-classifier folder"
    )
    method: str = documented(
        "luat",
        "uat (HotFlip along the loss gradient) | luat (HotFlip along the (p,q)-singular vector "
        "of a hidden layer's Jacobian)",
    )
    task: str = documented(
        "rt", "a task name (`steadylm tasks`) or a .jsonl/.csv file with text, label"
    )
    eval_task: str = documented(
        "", "the task whose test split scores the trigger (task-to-task transfer; default: --task)"
    )
    layer: str | int = documented(
        "auto",
        "luat: the block N (1..L) whose output is perturbed, or 'auto' (every block is tried and "
        "the best fooling rate on the selection set wins)",
    )
    select_task: str = documented(
        "",
        "luat --layer auto: the task whose validation split picks the layer (default: --task)",
    )
    select_examples: int = documented(128, "examples of the selection set (its validation split)")
    trigger_len: int = documented(3, "tokens in the trigger")
    p: float = documented(math.inf, "luat: the p of the (p,q)-singular vector (inf, or > 1)")
    q: float = documented(5.0, "luat: the q of the (p,q)-singular vector (> 1)")
    power_iters: int = documented(
        10, "luat: generalised power-method iterations per singular vector"
    )
    iters: int = documented(
        10, "search iterations (each: one direction, candidates, one beam search)"
    )
    candidates: int = documented(20, "HotFlip candidates per trigger position")
    beam: int = documented(1, "beam width of the search over positions (1: greedy)")
    batch: int = documented(64, "training examples per search iteration")
    target_label: str = documented(
        "",
        "a label name or id to push every input to (targeted); by default untargeted (any change)",
    )
    max_length: int = documented(64, "tokens per input, special tokens and trigger included")
    max_eval: int = documented(0, "test examples scored (the first N of the split); 0: all")
    profile: bool = documented(
        True, "compute the per-layer (p,q)-singular values at the neutral trigger (the profile)"
    )
    profile_examples: int = documented(32, "training examples in the sensitivity profile's batch")
    profile_only: bool = documented(
        False,
        "only the sensitivity profile, no trigger (DIR/profile.json); CLASSIFIER may then also be "
        "a pre-trained steadylm run or checkpoint",
    )
    # str | list: the config layer types lists only inside a union; validate() makes it a list
    transfer: str | list[str] = field(
        default_factory=list,
        metadata={"help": "other classifiers (run folders) scored with the trigger as text"},
    )
    reuse: str | list[str] = field(
        default_factory=list,
        metadata={
            "help": "earlier attacks (their folders) on the same classifier, task, seed and "
            "search options whose triggers are read back instead of searched again: for luat "
            "--layer auto, single-layer luat attacks (scored on the selection set); for uat or "
            "--layer N, one attack of the same method and layer (scored on --eval-task and "
            "--transfer)"
        },
    )
    seed: int = documented(0, "seeds the batches and the power method's start")
    device: str = documented("auto", "auto (cuda when available) | cpu | cuda | cuda:N")

    def validate(self) -> AttackConfig:
        if not self.classifier:
            raise SteadyLMError("give the CLASSIFIER to attack (or attack.classifier)")
        self.transfer, self.reuse = _as_list(self.transfer), _as_list(self.reuse)
        if self.method not in METHODS:
            raise SteadyLMError(f"--method {self.method!r}: choose one of {', '.join(METHODS)}")
        if self.layer != "auto" and not (str(self.layer).isdigit() and int(self.layer) >= 1):
            raise SteadyLMError(f"--layer {self.layer!r}: give a block number >= 1 or 'auto'")
        for name, low in (("trigger_len", 1), ("power_iters", 1), ("iters", 1), ("candidates", 1),
                          ("beam", 1), ("batch", 1), ("select_examples", 1), ("max_eval", 0),
                          ("profile_examples", 1), ("seed", 0)):  # fmt: skip
            if getattr(self, name) < low:
                flag = name.replace("_", "-")
                raise SteadyLMError(f"--{flag}: must be >= {low}, got {getattr(self, name)}")
        if len(self.reuse) > 1 and not (self.method == "luat" and self.layer == "auto"):
            raise SteadyLMError(
                "--reuse: one folder for uat or --layer N (several only for luat --layer auto)"
            )
        if self.profile_only and (not self.profile or self.transfer):
            raise SteadyLMError("--profile-only: takes neither --no-profile nor --transfer")
        if not (self.p > 1):
            raise SteadyLMError(f"--p: must be > 1 or inf, got {self.p}")
        if not (1 < self.q < math.inf):
            raise SteadyLMError(f"--q: must be > 1 and finite, got {self.q}")
        if self.max_length < self.trigger_len + 3:
            raise SteadyLMError(
                f"--max-length {self.max_length}: leaves no room for the text beside a "
                f"{self.trigger_len}-token trigger and special tokens"
            )
        return self

    @property
    def transfer_runs(self) -> list[str]:
        return _as_list(self.transfer)

    @property
    def reuse_runs(self) -> list[str]:
        return _as_list(self.reuse)

    @property
    def layer_number(self) -> int | None:
        """The block to perturb, or None for 'auto'."""
        return None if self.layer == "auto" else int(self.layer)

    def to_toml(self) -> str:
        return table_toml(SECTION, dataclasses.asdict(self))


def _as_list(value: str | list[str]) -> list[str]:
    """A folder list from TOML or flags: one string (empty: none) or a list."""
    if isinstance(value, str):
        return [value] if value else []
    return list(value)


help_of = functools.partial(field_help, AttackConfig)  # an option's `--help` text, by name


def load_attack_config(
    source: str | Path | None = None, overrides: Sequence[str] = ()
) -> AttackConfig:
    """A validated AttackConfig from an optional TOML file with a `[attack]` table, then
    `attack.key=value` overrides in order (a later one wins)."""
    return load_section_config(AttackConfig, SECTION, source, overrides)
