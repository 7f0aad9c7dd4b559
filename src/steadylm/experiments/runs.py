"""Runs as the report sees them: labels (variant, depth, lr, seed), status, and metric series.

A folder given to `steadylm report` is a sweep (it has index.jsonl), a single run (config.toml),
or a folder of runs. In a sweep the variant comes from the index; a lone run is labelled by the
recipe keys its config sets away from the defaults.
"""

from __future__ import annotations

import json
import math
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from steadylm.config import Config, ModelConfig, TrainConfig, config_from_dict
from steadylm.errors import SteadyLMError
from steadylm.experiments.sweep import read_index
from steadylm.rundir import read_metrics, read_status

# The keys that make a recipe, for naming runs that do not come from a sweep.
RECIPE_KEYS = (
    ("model", "attention"),
    ("model", "mlra_mode"),
    ("model", "mlra_rank"),
    ("model", "mlra_init"),
    ("model", "mlra_out"),
    ("model", "qkv_init_scale"),
    ("model", "norm_layout"),
    ("model", "embed_norm"),
    ("model", "reparam"),
    ("model", "qk_norm"),
    ("train", "z_loss"),
)
_DEFAULTS = {"model": ModelConfig(), "train": TrainConfig()}
# Grid keys shown as their own axes rather than folded into the variant's label.
AXES = ("model.n_layer", "train.lr", "train.seed")
# Config keys that do not make a recipe: the comparison's axes (depth, learning rate with its
# floor, seed) and settings that do not change what is trained.
NOT_RECIPE = {
    "model": {"n_layer"},
    "train": {
        "lr",
        "min_lr",
        "seed",
        "device",
        "compile",
        "precision_strict",
        "log_every",
        "checkpoint_every",
        "checkpoint_schedule",
        "keep_checkpoints",
    },
    "monitor": {"tensorboard"},
}


def num(v: Any) -> float:
    """A metrics value as a float: non-finite numbers are logged as strings ("nan", "inf")."""
    if v is None:
        return math.nan
    try:
        return float(v)
    except (TypeError, ValueError):
        return math.nan


@dataclass
class Run:
    name: str
    dir: Path
    variant: str
    depth: int | None
    lr: float | None
    seed: int | None
    status: str
    error: str | None = None
    rows: list[dict[str, Any]] = field(default_factory=list)  # one per step, in step order
    events: list[dict[str, Any]] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)  # the run's config.toml as read
    # provenance.json as read (parameter counts, device, threads), {} when absent
    provenance: dict[str, Any] = field(default_factory=dict)

    def cfg(self) -> Config | None:
        """The run's resolved config, or None when its config.toml is missing or no longer valid."""
        if not self.config:
            return None
        try:
            return config_from_dict(self.config)
        except SteadyLMError:
            return None

    def series(self, key: str) -> tuple[np.ndarray, np.ndarray]:
        """(steps, values) of the steps that logged `key`."""
        pts = [(r["step"], num(r[key])) for r in self.rows if key in r]
        if not pts:
            return np.zeros(0, dtype=int), np.zeros(0)
        steps, values = zip(*pts, strict=True)
        return np.asarray(steps, dtype=int), np.asarray(values, dtype=float)

    def last(self, key: str) -> float | None:
        for r in reversed(self.rows):
            if key in r:
                return num(r[key])
        return None

    def at(self, key: str, step: int) -> float | None:
        r = self._by_step.get(step)
        return num(r[key]) if r is not None and key in r else None

    def layer_keys(self, prefix: str) -> list[str]:
        """Per-layer keys such as rms/h.0, rms/h.1, ... in layer order."""
        keys = {k for r in self.rows for k in r if k.startswith(prefix + "/h.")}
        return sorted(keys, key=lambda k: int(k.rsplit(".", 1)[1]))

    def event_steps(self, kind: str) -> list[int]:
        return [int(e["step"]) for e in self.events if e.get("event") == kind and "step" in e]

    def __post_init__(self) -> None:
        self._by_step = {r["step"]: r for r in self.rows}


def _read_config(run_dir: Path) -> dict[str, Any]:
    try:
        return tomllib.loads((run_dir / "config.toml").read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError):
        return {}


def _read_provenance(run_dir: Path) -> dict[str, Any]:
    try:
        data = json.loads((run_dir / "provenance.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def recipe_label(config: dict[str, Any]) -> str:
    """`attention=mlra, mlra_init=variance_preserving`, or `baseline` for the default recipe."""
    parts = []
    for section, key in RECIPE_KEYS:
        value = config.get(section, {}).get(key, getattr(_DEFAULTS[section], key))
        if value != getattr(_DEFAULTS[section], key):
            parts.append(f"{key}={value}")
    return ", ".join(parts) or "baseline"


def recipes(runs: list[Run]) -> dict[str, str]:
    """Each run's recipe, for comparisons: runs whose configs agree on everything but depth,
    learning rate (and min_lr), seed and settings that do not change training are one recipe,
    named by their variant if they share one, else by their variants joined with " / " (a spec
    that gives each learning rate its own variant, e.g. `mlra-opt` and `mlra-stress`). A run
    without a config (pending in a sweep) takes the recipe of its variant's runs that have one,
    else its variant."""

    def fingerprint(run: Run) -> str:
        kept = {
            sec: {k: v for k, v in keys.items() if k not in NOT_RECIPE.get(sec, set())}
            for sec, keys in run.config.items()
            if isinstance(keys, dict)
        }
        return json.dumps(kept, sort_keys=True, default=str)

    names: dict[str, list[str]] = {}
    for r in runs:
        if r.config:
            names.setdefault(fingerprint(r), [])
            if r.variant not in names[fingerprint(r)]:
                names[fingerprint(r)].append(r.variant)
    of_variant = {r.variant: " / ".join(names[fingerprint(r)]) for r in runs if r.config}
    return {
        r.name: " / ".join(names[fingerprint(r)])
        if r.config
        else of_variant.get(r.variant, r.variant)
        for r in runs
    }


def load_run(run_dir: Path, name: str | None = None, index: dict[str, Any] | None = None) -> Run:
    config = _read_config(run_dir)
    index = index or {}
    over = index.get("overrides", {})

    def pick(dotted: str) -> Any:  # the run's own config, else what the index says it was given
        section, key = dotted.split(".")
        return config.get(section, {}).get(key, over.get(dotted))

    if index:
        variant = index.get("variant") or recipe_label(config)
        extra = [
            f"{k.split('.')[-1]}={v}" for k, v in index.get("grid", {}).items() if k not in AXES
        ]
        variant = " ".join([variant, *extra])
    else:
        variant = recipe_label(config)
    rows: dict[int, dict[str, Any]] = {}
    events = []
    for r in read_metrics(run_dir / "metrics.jsonl"):
        if "event" in r:
            events.append(r)
        elif "step" in r:
            rows[int(r["step"])] = r  # the last line of a step wins, should a log hold it twice
    status = (
        read_status(run_dir).get("status")
        or index.get("status")
        or ("unknown" if rows else "not started")
    )
    depth, lr, seed = pick("model.n_layer"), pick("train.lr"), pick("train.seed")
    return Run(
        name=name or run_dir.name,
        dir=run_dir,
        variant=variant,
        depth=int(depth) if depth is not None else None,
        lr=float(lr) if lr is not None else None,
        seed=int(seed) if seed is not None else None,
        status=status,
        error=index.get("error")
        or read_status(run_dir).get("reason")
        or read_status(run_dir).get("error"),
        rows=[rows[s] for s in sorted(rows)],
        events=events,
        config=config,
        provenance=_read_provenance(run_dir),
    )


def load_runs(folders: list[str | Path]) -> list[Run]:
    """Every run in `folders` (sweeps, run folders, or folders of runs), in the order given."""
    runs: list[Run] = []
    for folder in map(Path, folders):
        if (folder / "index.jsonl").is_file():
            try:
                index = read_index(folder)
            except (OSError, json.JSONDecodeError) as e:
                raise SteadyLMError(f"{folder}/index.jsonl: cannot be read ({e})") from None
            runs += [load_run(folder / rec["dir"], rec["name"], rec) for rec in index]
        elif (folder / "config.toml").is_file():
            runs.append(load_run(folder))
        elif folder.is_dir() and any((sub / "config.toml").is_file() for sub in folder.iterdir()):
            runs += [
                load_run(sub) for sub in sorted(folder.iterdir()) if (sub / "config.toml").is_file()
            ]
        else:
            raise SteadyLMError(
                f"{folder}: not a sweep (index.jsonl), a run (config.toml) or a folder of runs"
            )
    names = [r.name for r in runs]
    for r in runs:  # the same run name from two sweeps: tell them apart
        if names.count(r.name) > 1:
            r.name = (
                f"{r.dir.parent.parent.name}/{r.name}"
                if r.dir.parent.name == "runs"
                else str(r.dir)
            )
    return runs
