"""Sweep specs: a base config, named variants, a grid and seeds, expanded into named runs.

    [sweep]
    base = "tiny-cpu"          # a preset, or a TOML file (relative to this spec)
    seeds = [1, 2]             # each becomes train.seed
    order = "recipes-first"    # or "seeds-first": a cut-off sweep then leaves whole seeds

    [sweep.set]                # applied to every run
    "train.max_steps" = 300

    [sweep.grid]               # every combination
    "model.n_layer" = [4, 8]
    "train.lr" = [1e-3, 3e-3]

    [sweep.variants.baseline]  # a named recipe; an empty table is the base as it is
    [sweep.variants.mlra]      # a variant may set several keys
    "model.attention" = "mlra"
    "model.mlra_init" = "variance_preserving"

    [sweep.launcher]           # used by --launcher submitit only (see docs/compare.md)
    partition = "gpu"          # also: account, time (minutes), nodes, gpus, procs, cpus, mem_gb
    gpus = 4                   # per node; a run over several processes runs under torchrun

    [sweep]                    # another job: its own section; seeds set finetune.seed (embed.seed)
    job = "finetune"           # "train" (default), "finetune" or "embed"; base is then an optional
                               # TOML file with a [finetune] ([embed]) table

Keys are `section.key` as in `--set`, quoted or as TOML dotted keys (`model.n_layer = [4, 8]`).
Runs are variants x grid x seeds, named from what varies, e.g. `mlra-n_layer8-lr3e-3-s1`.
A key belongs to one of set, grid or variants, so no run depends on which of them wins.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from steadylm.config import SECTIONS, preset_names, toml_value
from steadylm.errors import SteadyLMError
from steadylm.experiments.jobs import JOBS
from steadylm.experiments.submit import launcher_config
from steadylm.registry import suggest

SWEEP_KEYS = ("job", "base", "seeds", "order", "set", "grid", "variants", "launcher")
# "recipes-first": variants outermost and seeds innermost, so a partial sweep covers every recipe
# early; "seeds-first": seeds outermost, so a partial sweep holds complete seed replicates (paired
# comparisons need every arm of a seed).
ORDERS = ("recipes-first", "seeds-first")
_VARIANT_NAME = re.compile(r"[A-Za-z0-9_+][A-Za-z0-9_.+-]*")


def short_float(x: float) -> str:
    """Plain notation from 0.1 to 1e5, scientific outside it (`3e-3`, `1e-2`, as learning rates
    are written), with as many digits as tell the value apart and no more."""
    if x != x or x in (math.inf, -math.inf):
        return repr(x)
    for digits in range(17):
        sci = f"{x:.{digits}e}"
        if float(sci) == x:
            break
    mantissa, exponent = sci.split("e")
    sci = f"{mantissa}e{int(exponent)}"
    plain = repr(x).removesuffix(".0")
    return plain if (x == 0 or 0.1 <= abs(x) < 1e5) and "e" not in plain else sci


def _fmt_value(v: Any) -> str:
    if isinstance(v, float):
        return short_float(v)
    if isinstance(v, list):
        return "+".join(_fmt_value(x) for x in v)
    return re.sub(r"[^A-Za-z0-9_.+]+", "_", str(v)).strip("_") or "_"


def _name_part(label: str, v: Any) -> str:
    if isinstance(v, bool):
        return label if v else f"no_{label}"
    if isinstance(v, str):
        return f"{label}_{_fmt_value(v)}"
    return f"{label}{_fmt_value(v)}"


@dataclass(frozen=True)
class RunPlan:
    """One point of a sweep: its name and the overrides it applies to the base config."""

    name: str
    variant: str | None
    grid: dict[str, Any]
    seed: int | None
    overrides: dict[str, Any]  # set, variant, grid point and seed together (no key repeats)

    def override_args(self) -> list[str]:
        """The overrides as `section.key=value` strings for `load_config` or `--set`."""
        return [f"{k}={toml_value(v)}" for k, v in self.overrides.items()]

    def index_fields(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "variant": self.variant,
            "grid": self.grid,
            "seed": self.seed,
            "overrides": self.overrides,
        }


@dataclass
class SweepSpec:
    path: Path
    raw: dict[str, Any]  # the parsed file, to tell a re-run of the same spec from a different one
    base: str  # a preset name or the absolute path of a TOML file
    seeds: list[int] | None
    fixed: dict[str, Any]
    grid: dict[str, list[Any]]
    variants: dict[str, dict[str, Any]]
    order: str = "recipes-first"
    launcher: dict[str, Any] = dataclasses.field(default_factory=dict)  # [sweep.launcher], checked

    @property
    def identity(self) -> dict[str, Any]:
        """What makes two specs the same sweep: all but [sweep.launcher], which only says where
        the runs train (a re-run may ask for more time or another partition)."""
        sweep = {k: v for k, v in self.raw.get("sweep", {}).items() if k != "launcher"}
        return {**self.raw, "sweep": sweep}

    job: str = "train"  # a name in experiments.jobs.JOBS

    def runs(self) -> list[RunPlan]:
        """Every run, in the spec's `order` (see ORDERS)."""
        varying = [k for k, values in self.grid.items() if len(values) > 1]
        labels = _short_labels(varying)
        variants: list[tuple[str | None, dict[str, Any]]] = list(self.variants.items()) or [
            (None, {})
        ]
        seeds: list[int | None] = list(self.seeds) if self.seeds is not None else [None]
        combos = list(itertools.product(variants, itertools.product(*self.grid.values()), seeds))
        if self.order == "seeds-first":
            combos.sort(
                key=lambda c: seeds.index(c[2])
            )  # stable: recipes keep their order within a seed
        plans = []
        for (variant, vset), values, seed in combos:
            point = dict(zip(self.grid, values, strict=True))
            parts = [variant] if variant else []
            parts += [_name_part(labels[k], point[k]) for k in varying]
            parts += [f"s{seed}"] if seed is not None else []
            overrides = {**self.fixed, **vset, **point}
            if seed is not None:
                overrides[JOBS[self.job].seed_key] = seed
            plans.append(RunPlan("-".join(parts) or "run", variant, point, seed, overrides))
        names = [p.name for p in plans]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise SteadyLMError(
                f"{self.path}: runs would share the name {dupes[0]!r} (grid values that read the same once "
                "made file-name safe); rename the values or use named variants"
            )
        return plans

    def resolve(self) -> list[tuple[RunPlan, Any]]:
        """Every run's validated config, so that a bad value fails before any training starts."""
        out = []
        for plan in self.runs():
            try:
                cfg = JOBS[self.job].load(self.base, plan.override_args())
            except SteadyLMError as e:
                raise SteadyLMError(f"{self.path}: run {plan.name}: {e}") from None
            out.append((plan, cfg))
        return out


def _short_labels(keys: list[str]) -> dict[str, str]:
    """`model.n_layer` -> `n_layer`, unless two varying keys end the same way."""
    tails = [k.split(".")[-1] for k in keys]
    return {
        k: t if tails.count(t) == 1 else k.replace(".", "_")
        for k, t in zip(keys, tails, strict=True)
    }


def _flatten(table: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """TOML dotted keys arrive as nested tables; quoted ones as a single key: accept both."""
    out = {}
    for k, v in table.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def _check_key(where: str, key: str, sections: dict[str, type] = SECTIONS) -> None:
    parts = key.split(".")
    if len(parts) != 2:
        raise SteadyLMError(f"{where} {key!r}: expected section.key, e.g. model.n_layer")
    section, name = parts
    if section not in sections:
        raise SteadyLMError(
            f"{where} {key}: unknown section {section!r}; sections: {', '.join(sections)}"
            + suggest(section, sections)
        )
    fields = [f.name for f in dataclasses.fields(sections[section])]
    if name not in fields:
        raise SteadyLMError(
            f"{where} {key}: unknown key; keys of [{section}]: {', '.join(fields)}"
            + suggest(name, fields)
        )


def _table(where: str, value: Any, sections: dict[str, type] = SECTIONS) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise SteadyLMError(f"{where}: must be a table of section.key = value")
    flat = _flatten(value)
    for key in flat:
        _check_key(where, key, sections)
    return flat


def _resolve_base(path: Path, base: Any) -> str:
    if not isinstance(base, str) or not base:
        raise SteadyLMError(
            f"{path}: [sweep] base: required, a preset ({', '.join(preset_names())}) or a TOML file"
        )
    if base.endswith(".toml") or "/" in base:
        file = (path.parent / base).resolve()
        if not file.is_file():
            raise SteadyLMError(
                f"{path}: [sweep] base: no such file {str(file)!r} (paths are relative to the spec)"
            )
        return str(file)
    if base not in preset_names():
        raise SteadyLMError(
            f"{path}: [sweep] base: {base!r} is neither a preset nor a .toml file; presets: "
            f"{', '.join(preset_names())}" + suggest(base, preset_names())
        )
    return base


def _seeds(path: Path, seeds: Any) -> list[int] | None:
    if seeds is None:
        return None
    ok = isinstance(seeds, list) and seeds and all(type(s) is int and s >= 0 for s in seeds)
    if not ok or len(set(seeds)) != len(seeds):
        raise SteadyLMError(
            f"{path}: [sweep] seeds: expected a non-empty list of distinct integers >= 0, got {seeds!r}"
        )
    return seeds


def _order(path: Path, order: Any) -> str:
    if order not in ORDERS:
        raise SteadyLMError(f"{path}: [sweep] order: {order!r} is not one of {', '.join(ORDERS)}")
    return order


def _grid(path: Path, raw: Any, sections: dict[str, type] = SECTIONS) -> dict[str, list[Any]]:
    grid = _table(f"{path}: [sweep.grid]", raw, sections)
    for key, values in grid.items():
        if not isinstance(values, list) or not values:
            raise SteadyLMError(
                f"{path}: [sweep.grid] {key}: expected a non-empty list of values, got {values!r}"
            )
        if any(values.count(v) > 1 for v in values):
            raise SteadyLMError(
                f"{path}: [sweep.grid] {key}: a value is listed twice in {values!r}"
            )
    return grid


def _variants(
    path: Path, raw: Any, sections: dict[str, type] = SECTIONS
) -> dict[str, dict[str, Any]]:
    if not isinstance(raw, dict):
        raise SteadyLMError(f"{path}: [sweep.variants]: expected tables [sweep.variants.NAME]")
    out = {}
    for name, table in raw.items():
        if not _VARIANT_NAME.fullmatch(name):
            raise SteadyLMError(
                f"{path}: [sweep.variants] {name!r}: a variant name is letters, digits and _ . + - "
                "(it becomes part of the run folders' names)"
            )
        out[name] = _table(f"{path}: [sweep.variants.{name}]", table, sections)
    return out


def _launcher(path: Path, raw: Any) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise SteadyLMError(f"{path}: [sweep.launcher]: must be a table of key = value")
    try:
        launcher_config(raw)
    except SteadyLMError as e:
        raise SteadyLMError(f"{path}: {e}") from None
    return raw


def _check_disjoint(path: Path, spec: SweepSpec) -> None:
    owners: dict[str, str] = {}

    def claim(key: str, where: str) -> None:
        if key in owners and owners[key] != where:
            raise SteadyLMError(
                f"{path}: {key} is set in both {owners[key]} and {where}; give each key one place"
            )
        owners[key] = where

    for key in spec.fixed:
        claim(key, "[sweep.set]")
    for key in spec.grid:
        claim(key, "[sweep.grid]")
    for table in spec.variants.values():
        for key in table:
            claim(key, "[sweep.variants]")
    if spec.seeds is not None:
        claim(JOBS[spec.job].seed_key, "[sweep] seeds")


def _job(path: Path, name: Any):
    if name not in JOBS:
        raise SteadyLMError(f"{path}: [sweep] job: {name!r} is not one of {', '.join(JOBS)}")
    return JOBS[name]


def parse_spec(path: str | Path) -> SweepSpec:
    """Read and check a sweep spec; every problem is one SteadyLMError line naming the key."""
    path = Path(path)
    if not path.is_file():
        raise SteadyLMError(f"no such sweep spec {str(path)!r}")
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise SteadyLMError(f"{path}: not valid TOML ({e})") from None
    return spec_from_raw(path, raw)


def spec_from_raw(path: Path, raw: dict[str, Any]) -> SweepSpec:
    """The spec of parsed TOML `raw`, checked; `path` names it in errors and anchors a relative
    base."""
    extra = sorted(set(raw) - {"sweep"})
    if extra or "sweep" not in raw:
        raise SteadyLMError(
            f"{path}: a sweep spec holds one [sweep] table (found {', '.join(f'[{k}]' for k in extra) or 'none'}); "
            "put overrides for every run under [sweep.set]"
        )
    sweep = raw["sweep"]
    unknown = sorted(set(sweep) - set(SWEEP_KEYS))
    if unknown:
        raise SteadyLMError(
            f"{path}: [sweep] {unknown[0]}: unknown key; keys: {', '.join(SWEEP_KEYS)}"
            + suggest(unknown[0], SWEEP_KEYS)
        )
    job = _job(path, sweep.get("job", "train"))
    sections = job.sections()
    spec = SweepSpec(
        path=path,
        raw=raw,
        base=_resolve_base(path, sweep.get("base")) if job.base_required or "base" in sweep else "",
        seeds=_seeds(path, sweep.get("seeds")),
        fixed=_table(f"{path}: [sweep.set]", sweep.get("set", {}), sections),
        grid=_grid(path, sweep.get("grid", {}), sections),
        variants=_variants(path, sweep.get("variants", {}), sections),
        order=_order(path, sweep.get("order", "recipes-first")),
        launcher=_launcher(path, sweep.get("launcher", {})),
        job=job.name,
    )
    _check_disjoint(path, spec)
    return spec


def extension_conflicts(old: SweepSpec, new: SweepSpec) -> list[str]:
    """Why `new` cannot continue a sweep of `old`, empty when it can: it must train every run of
    `old` under the same name with the same job, base and overrides, and may add runs (a control
    arm, another seed). The order and the launcher may change."""
    if (old.job, old.base) != (new.job, new.base):
        return [f"job or base differs ({old.job} {old.base!r} against {new.job} {new.base!r})"]
    plans = {p.name: p.overrides for p in new.runs()}
    problems = []
    for p in old.runs():
        if p.name not in plans:
            problems.append(f"run {p.name} is no longer in the spec")
        elif plans[p.name] != p.overrides:
            problems.append(f"run {p.name} would train with other overrides")
    return problems
