"""`steadylm report`: which recipe is better, by how much and how surely, and does TEV see
trouble coming.

Writes REPORT/report.md, REPORT/report.html (one file, figures embedded), REPORT/plots/*.png and
REPORT/summary.json (every number of the tables, for scripts). The report is built in a
temporary folder and swapped in whole, so a failed rendering never leaves half a report.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass, fields, is_dataclass
from enum import Enum
from pathlib import Path
from typing import Any

import numpy as np

import steadylm
from steadylm.errors import SteadyLMError
from steadylm.experiments import analysis, plots, tevstats, warning
from steadylm.experiments.document import (
    Block,
    Bullets,
    Figure,
    Heading,
    Para,
    Table,
    parse_markdown,
    to_html,
    to_markdown,
)
from steadylm.experiments.runs import Run, load_runs, recipes
from steadylm.experiments.spec import short_float
from steadylm.experiments.stats import CONFIDENCE, PERMUTATIONS, POWER, Estimate, detectable
from steadylm.experiments.unigram import COLLAPSE_MARGIN, Reference, References

MAX_ROWS = 12  # events listed in a table; summary.json holds them all
MAX_CASES = 4  # events drawn in the early-warning figure


@dataclass
class Options:
    window: int = 50  # W: differences forming a signal's recent baseline
    k: float = 4.0  # out of range beyond k standard deviations of that baseline
    horizon: int = 50  # H: how far before an instability event a flag counts as a warning
    rise: float = warning.RISE  # nats above the running minimum that make an instability event
    baseline: str | None = None  # the variant others are compared with; None: the first one
    title: str = "steadylm report"
    preface: str = ""  # Markdown placed under the title: a reading of the results by hand
    progress: bool = True  # progress bars while preparing the data for the unigram reference


# ----------------------------------------------------------------- formatting


def fmt(x: float | None, spec: str) -> str:
    if x is None:
        return "—"
    if not math.isfinite(x):
        return str(x)
    return format(x, spec)


def fmt_ms(stat: dict[str, Any], spec: str, runs: int) -> str:
    """`mean ± sd` over seeds; `(n=k)` when only k of the runs had a finite value."""
    if stat["mean"] is None:
        return "—"
    text = fmt(stat["mean"], spec) + (
        f" ± {fmt(stat['sd'], spec)}" if stat["sd"] is not None else ""
    )
    return text + (f" (n={stat['n']})" if stat["n"] < runs else "")


def fmt_ci(e: Estimate | None, spec: str = "+.4f") -> str:
    """`mean [lo, hi]`, or the mean alone when no interval can be formed."""
    if e is None:
        return "—"
    if e.lo is None:
        return f"{fmt(e.mean, spec)} (no interval)"
    return f"{fmt(e.mean, spec)} [{fmt(e.lo, spec)}, {fmt(e.hi, spec)}]"


def fmt_p(p: float | None, floor: float | None = None) -> str:
    if p is None:
        return "—"
    if floor is not None and p <= floor * (1 + 1e-9):
        return f"≤ {floor:.1g} (floor)"
    return f"{p:.2g}" if p >= 1e-3 else f"{p:.1e}"


def lr_text(lr: float | None) -> str:
    return "—" if lr is None else short_float(lr)


def _json_safe(obj: Any) -> Any:
    """JSON has no NaN or Infinity: write them as strings, as metrics.jsonl does; dataclasses
    as objects, enums as their values."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return str(obj)
    if isinstance(obj, Enum):
        return obj.value
    if is_dataclass(obj) and not isinstance(obj, type):
        return _json_safe({f.name: getattr(obj, f.name) for f in fields(obj)})
    if isinstance(obj, dict):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _json_safe(obj.tolist())
    if isinstance(obj, np.generic):
        return _json_safe(obj.item())
    return obj


def _sort_key(x):
    return (x is None, x)


# ----------------------------------------------------------------- sections


class Report:
    def __init__(self, runs: list[Run], root: Path, options: Options, sources: list[str]):
        self.runs = runs
        self.root = root
        self.opt = options
        self.sources = sources
        self.variants = list(dict.fromkeys(r.variant for r in runs))
        self.recipe = recipes(runs)
        by_variant = {r.variant: self.recipe[r.name] for r in runs}
        names = list(dict.fromkeys([*self.variants, *self.recipe.values()]))
        if options.baseline is not None and options.baseline not in names:
            raise SteadyLMError(
                f"--baseline: no variant {options.baseline!r} in these runs; "
                f"choose one of {', '.join(names)}"
            )
        chosen = options.baseline or self.variants[0]
        self.baseline: str = by_variant.get(chosen, chosen)
        refs = References(options.progress)
        self.refs: dict[str, Reference] = {}
        for r in runs:  # only runs with a validation loss need the reference
            if r.last("val_loss") is not None:
                self.refs[r.name] = refs(r.cfg())
        self.summaries = [
            analysis.summarize(r, self.refs.get(r.name), self.recipe[r.name]) for r in runs
        ]
        self.by_name = {s["name"]: s for s in self.summaries}
        self.colors = plots.colors_for(names)
        self.with_data = [r for r in runs if r.rows]
        self.blocks: list[Block] = []

    def figure(self, fig, name: str, caption: str) -> None:
        plots.save(fig, self.root / "plots" / name)
        self.blocks.append(Figure(f"plots/{name}", caption))

    def _order(self, variant: str) -> int:
        """Spec order of a variant, or of a recipe's first variant."""
        first = variant.split(" / ")[0]
        return self.variants.index(first) if first in self.variants else len(self.variants)

    def intro(self) -> None:
        counts = Counter(r.status for r in self.runs)

        def seen(attr: str) -> list[Any]:
            return sorted({getattr(r, attr) for r in self.with_data}, key=_sort_key)

        self.blocks += [
            Heading(self.opt.title, 1),
            Para(
                f"{len(self.runs)} runs from {', '.join(f'`{s}`' for s in self.sources)}: "
                + ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
                + ". "
                f"Depths (n_layer): {', '.join(map(str, seen('depth')))}; "
                f"learning rates: {', '.join(map(lr_text, seen('lr')))}; "
                f"seeds: {', '.join(map(str, seen('seed')))}; variants: {', '.join(self.variants)} "
                f"(baseline of the comparisons: {self.baseline}). "
                f"Generated {time.strftime('%Y-%m-%d %H:%M')} by steadylm {steadylm.__version__}."
            ),
        ]
        self.blocks += parse_markdown(self.opt.preface)
        empty = [r for r in self.runs if not r.rows]
        if empty:
            self.blocks.append(
                Para(
                    "Runs without metrics (left out below): "
                    + "; ".join(
                        f"`{r.name}` ({r.status}{': ' + r.error if r.error else ''})" for r in empty
                    )
                    + "."
                )
            )

    def collapse_section(self) -> list[dict[str, Any]]:
        """Which runs learned nothing beyond token frequencies: the definition, then per
        validation set its unigram cross-entropy and the collapsed runs. Returns one entry per
        validation set for summary.json."""
        self.blocks += [
            Heading("Collapsed runs"),
            Para(
                "A run is **collapsed** when its final validation loss is within "
                f"{COLLAPSE_MARGIN:g} nats of the unigram cross-entropy or above it: it learned nothing a table "
                "of token frequencies would not. The unigram cross-entropy is the entropy of the token "
                "frequencies of exactly the validation tokens the run's evaluation scores (the targets of its "
                "first eval_batches × micro_batch_size validation windows), counted on those validation tokens, "
                "so it is the lowest loss any context-free predictor could reach on them; it is computed from "
                "the run's config through the cached dataset preparation. A cell (depth, variant, learning "
                "rate) with a collapsed or diverged seed is shown in the tables but kept out of every "
                "comparison and correlation."
            ),
        ]
        table = self._collapse_by_dataset()
        if not table:
            self.blocks.append(
                Para(
                    "No run logged a validation loss (train.eval_every = 0), so no run can "
                    "be judged collapsed."
                )
            )
            return []
        self._collapse_table(table)
        return [
            {"dataset": k, "reference": t["ref"], "runs": t["runs"], "collapsed": t["collapsed"]}
            for k, t in table.items()
        ]

    def _collapse_by_dataset(self) -> dict[str, dict[str, Any]]:
        """Runs with a unigram reference grouped by validation data: the reference, the number
        of runs and the names of the collapsed ones."""
        table: dict[str, dict[str, Any]] = {}
        for s in self.summaries:
            ref = self.refs.get(s["name"])
            if ref is None:
                continue
            t = table.setdefault(
                ref.dataset or ref.error or "?", {"ref": ref, "runs": 0, "collapsed": []}
            )
            t["runs"] += 1
            if s["collapsed"]:
                t["collapsed"].append(s["name"])
        return table

    def _collapse_table(self, table: dict[str, dict[str, Any]]) -> None:
        """The per-dataset table of unigram references and collapsed counts, and the names."""
        self.blocks.append(
            Table(
                [
                    "validation data",
                    "tokens scored",
                    "unigram cross-entropy (nats)",
                    "runs",
                    "collapsed",
                ],
                [
                    [
                        f"`{Path(where).name}`"
                        if t["ref"].nats is not None
                        else f"not computed: {t['ref'].error}",
                        str(t["ref"].tokens),
                        fmt(t["ref"].nats, ".4f"),
                        str(t["runs"]),
                        str(len(t["collapsed"])),
                    ]
                    for where, t in table.items()
                ],
            )
        )
        names = [n for t in table.values() for n in t["collapsed"]]
        if names:
            self.blocks.append(Para("Collapsed: " + ", ".join(f"`{n}`" for n in names) + "."))

    def depth_sections(self, groups: list[dict[str, Any]]) -> None:
        for depth in sorted({r.depth for r in self.with_data}, key=_sort_key):
            at_depth = [r for r in self.with_data if r.depth == depth]
            self.blocks.append(Heading(f"n_layer = {depth}"))
            rows = sorted(
                (g for g in groups if g["depth"] == depth),
                key=lambda g: (self._order(g["variant"]), _sort_key(g["lr"])),
            )
            self.blocks.append(
                Table(
                    [
                        "variant",
                        "lr",
                        "runs",
                        "val loss",
                        "val ppl",
                        "μ_TEV",
                        "σ_TEV",
                        "spikes",
                        "skipped",
                        "diverged",
                        "collapsed",
                    ],
                    [
                        [
                            g["variant"],
                            lr_text(g["lr"]),
                            str(g["runs"]),
                            fmt_ms(g["final_val_loss"], ".4f", g["runs"]),
                            fmt_ms(g["final_val_ppl"], ".2f", g["runs"]),
                            fmt_ms(g["final_tev_mean"], ".4g", g["runs"]),
                            fmt_ms(g["final_tev_std"], ".4g", g["runs"]),
                            str(g["spikes"]),
                            str(g["skipped"]),
                            f"{g['diverged']}/{g['runs']}",
                            f"{g['collapsed']}/{g['runs']}",
                        ]
                        for g in rows
                    ],
                )
            )
            self.blocks.append(Para(self._missing(at_depth)))
            for lr in sorted({r.lr for r in at_depth}, key=_sort_key):
                by_variant = {
                    v: [r for r in at_depth if r.variant == v and r.lr == lr] for v in self.variants
                }
                by_variant = {v: rs for v, rs in by_variant.items() if rs}
                self.figure(
                    plots.curves(by_variant, self.colors, f"n_layer = {depth}, lr = {lr_text(lr)}"),
                    f"curves-L{depth}-lr{lr_text(lr)}.png",
                    f"n_layer = {depth}, lr = {lr_text(lr)}: mean over seeds, band from min to max; "
                    "▼ marks a spike event of the trainer.",
                )

    def size_section(self, groups: list[dict[str, Any]]) -> dict[str, Any]:
        """Parameters, embedding parameters and throughput per recipe; where the recipes of a
        (depth, lr) cell differ in embedding parameters, final loss against that size."""
        rows = [g for g in groups if g["parameters"] is not None or g["tokens_per_s"]["n"]]
        if not rows:
            return {}
        self.blocks += [
            Heading("Size and speed"),
            Para(
                "Parameter counts from each run's provenance.json (the embedding's: its token "
                "table, or the cores that build it). Throughput is the median over a run's logged "
                "windows of tokens per wall-clock second, mean ± sd over seeds; it compares "
                "recipes only when their runs shared a machine and its load alike (one sweep with "
                f"a fixed --jobs). Ratios are against {self.baseline} at the same depth and "
                "learning rate."
            ),
        ]
        self.blocks.append(
            Table(
                [
                    "n_layer",
                    "variant",
                    "lr",
                    "runs",
                    "parameters",
                    "embedding parameters",
                    "embedding × smaller",
                    "val loss",
                    "tokens/s",
                    "speed vs baseline",
                ],
                self._size_rows(rows, groups),
            )  # fmt: skip
        )
        return self._size_front(groups)

    def _size_rows(
        self, rows: list[dict[str, Any]], groups: list[dict[str, Any]]
    ) -> list[list[str]]:
        """The size table's cells, each row's ratios against the baseline of its (depth, lr)."""
        recipe_of_variant = {r.variant: self.recipe[r.name] for r in self.runs}

        def base(g: dict[str, Any]) -> dict[str, Any] | None:
            return next(
                (b for b in groups if b["depth"] == g["depth"] and b["lr"] == g["lr"]
                 and recipe_of_variant.get(b["variant"]) == self.baseline),
                None,
            )  # fmt: skip

        def ratio(num: float | None, den: float | None, spec: str, unit: str = "") -> str:
            return f"{num / den:{spec}}{unit}" if num and den else "—"

        table = []
        for g in sorted(rows, key=lambda g: (_sort_key(g["depth"]), self._order(g["variant"]),
                                             _sort_key(g["lr"]))):  # fmt: skip
            b = base(g) or {}
            table.append([
                str(g["depth"]),
                g["variant"],
                lr_text(g["lr"]),
                str(g["runs"]),
                fmt(g["parameters"], ",d"),
                fmt(g["embedding_parameters"], ",d"),
                ratio(b.get("embedding_parameters"), g["embedding_parameters"], ".3g", "×"),
                fmt_ms(g["final_val_loss"], ".4f", g["runs"]),
                fmt_ms(g["tokens_per_s"], ".0f", g["runs"]),
                ratio(g["tokens_per_s"]["mean"], (b.get("tokens_per_s") or {}).get("mean"), ".3f"),
            ])  # fmt: skip
        return table

    def _size_front(self, groups: list[dict[str, Any]]) -> dict[str, Any]:
        """The loss-against-embedding-parameters front, in words and as a figure, where the
        recipes of a (depth, lr) cell differ in embedding parameters."""
        fronts = analysis.size_fronts(groups)
        if fronts:
            self.blocks.append(
                Para(
                    "Pareto front of final validation loss against embedding parameters (a "
                    "variant is on it when its mean loss is below that of every variant with no "
                    "more embedding parameters; cells with a diverged or collapsed run left out): "
                    + "; ".join(
                        f"n_layer {d}, lr {lr_text(lr)}: {' → '.join(f)}"
                        for (d, lr), f in fronts.items()
                    )
                    + "."
                )
            )
            self.figure(
                plots.loss_vs_size(groups, self.summaries, fronts, self.colors),
                "loss-vs-embedding-parameters.png",
                "Final validation loss against embedding parameters (log scale): dots are "
                "seeds, bars mean ± sd; the dashed line is the Pareto front.",
            )
        return {"fronts": [{"depth": d, "lr": lr, "variants": f} for (d, lr), f in fronts.items()]}

    @staticmethod
    def _missing(runs: list[Run]) -> str:
        def logged(key: str) -> bool:
            return any(key in row for r in runs for row in r.rows)

        missing = [
            what
            for key, what in (
                ("val_loss", "validation loss (train.eval_every = 0)"),
                (
                    "grad_var_embed",
                    "gradient variance (monitor.gradvar_every = 0, or runs shorter than it)",
                ),
                (
                    "rms/h.0",
                    "residual RMS per layer (monitor.act_every = 0, or runs shorter than it)",
                ),
            )
            if not logged(key)
        ]
        spikes = sum(len(r.event_steps("spike")) for r in runs)
        spiking = sum(1 for r in runs if r.event_steps("spike"))
        text = (
            f"Trainer spike events: {spikes} in {spiking} of {len(runs)} runs."
            if spikes
            else f"No trainer spike events in the {len(runs)} runs at this depth."
        )
        if missing:
            text += " Not logged here, so their panels are empty: " + "; ".join(missing) + "."
        return text

    def lr_section(self) -> list[dict[str, Any]]:
        self.blocks.append(Heading("Learning-rate sensitivity"))
        entries = analysis.lr_sensitivity(self.summaries)
        if not entries:
            self.blocks.append(
                Para(
                    "Every recipe ran at a single learning rate at each depth, so there is "
                    "no sensitivity curve; add `train.lr` to the sweep's grid."
                )
            )
            return entries
        self.blocks.append(
            Para(
                "Final loss (validation if evaluated, else the mean of the last "
                f"{analysis.TAIL} training losses) at each learning rate, mean ± sd over the seeds that did not "
                "diverge. Sensitivity (Wortsman et al. 2023): the mean over learning rates of min(final loss, "
                "first-step loss) minus its smallest value, a diverged run counting as its first-step loss; lower "
                "is more robust. It compares recipes over the same learning rates only."
            )
        )
        for depth in sorted({e["depth"] for e in entries}, key=_sort_key):
            mine = sorted(
                (e for e in entries if e["depth"] == depth), key=lambda e: self._order(e["variant"])
            )
            lrs = sorted({lr for e in mine for lr in e["lrs"]})
            rows = []
            for e in mine:
                cells = {
                    lr: self._lr_cell(fl, d, c, n)
                    for lr, fl, d, c, n in zip(
                        e["lrs"], e["final_loss"], e["diverged"], e["collapsed"], e["runs"]
                    )
                }
                rows.append(
                    [
                        e["variant"],
                        *[cells.get(lr, "") for lr in lrs],
                        lr_text(e["best_lr"]),
                        fmt(e["sensitivity"], ".4f"),
                    ]
                )
            self.blocks += [
                Heading(f"n_layer = {depth}", 3),
                Table(
                    ["variant", *[f"lr {lr_text(lr)}" for lr in lrs], "best lr", "sensitivity"],
                    rows,
                ),
            ]
        self.figure(
            plots.lr_sensitivity(entries, self.colors),
            "lr-sensitivity.png",
            "Final loss against learning rate (mean ± sd over seeds); ✕ on the top edge: diverged runs.",
        )
        return entries

    @staticmethod
    def _lr_cell(stat: dict[str, Any], diverged: int, collapsed: int, runs: int) -> str:
        if diverged == runs:
            return f"diverged ({runs}/{runs})"
        text = fmt_ms(stat, ".4f", runs - diverged)
        text += f", {diverged}/{runs} diverged" if diverged else ""
        return text + (f", {collapsed}/{runs} collapsed" if collapsed else "")

    def comparison_section(self) -> dict[str, Any]:
        """Every variant against the baseline, seed by seed: the per-cell table, whether the
        difference grows with depth, how it evolves along training, and each recipe at its own
        best learning rate. Returns those numbers for summary.json."""
        self.blocks.append(Heading("Recipes compared, seed by seed"))
        cmp = analysis.compare_recipes(self.summaries, self.baseline)
        out: dict[str, Any] = {"cells": cmp}
        if not cmp["rows"]:
            self.blocks.append(
                Para(
                    f"No cell has both {self.baseline} and another variant at the same depth and "
                    "learning rate, so there is nothing to compare."
                )
            )
            return out
        self._comparison_cells(cmp)
        out["depth_interaction"] = self._depth_interaction(cmp)
        out["over_steps"] = self._delta_over_steps(cmp)
        out["best_lr"] = self._best_lr_comparison(cmp)
        return out

    def _comparison_cells(self, cmp: dict[str, Any]) -> None:
        """How the cell comparison is computed, and its table: Δ, SE, interval, p, Holm p and the
        detectable difference of every (depth, learning rate, variant) cell."""
        conf = f"{CONFIDENCE:.0%}"
        dfs = ", ".join(
            f"{cmp['pooled_df'][lr]} at lr {lr_text(lr)}"
            for lr in sorted(cmp["pooled_df"], key=_sort_key)
        )
        self.blocks.append(
            Para(
                f"Δ = variant − {self.baseline} in final loss (validation if evaluated), per (depth, learning rate) "
                "cell, computed seed by seed (the same seed gives both recipes the same data order) and averaged. "
                "Two or three seeds cannot estimate a cell's own spread, so the standard error uses the variance of "
                "the paired differences pooled over all cells of the same learning rate (degrees of freedom: "
                f"{dfs or 'none'}); the interval is Student's t at {conf}. p tests Δ = 0; Holm's correction is over "
                f"the **{cmp['family']} cell{'s' if cmp['family'] != 1 else ''} compared** (every "
                "cell, not the most favourable). Negative Δ: the "
                f"variant is better. 'Detectable' is the smallest true |Δ| the cell would find with {POWER:.0%} "
                f"power at the {1 - CONFIDENCE:g} level: (t({(1 + CONFIDENCE) / 2:g}) + t({POWER:g})) × SE."
            )
        )
        self.blocks.append(
            Table(
                [
                    "n_layer",
                    "lr",
                    "variant",
                    "seeds",
                    "variant loss",
                    f"{self.baseline} loss",
                    "Δ",
                    "SE",
                    f"{conf} CI",
                    "p",
                    "Holm p",
                    "detectable",
                ],
                [self._cell_row(r) for r in cmp["rows"]],
            )
        )
        if cmp["family"] == 0:
            self.blocks.append(
                Para(
                    "No compared cell has a seed-to-seed spread to estimate (one paired seed "
                    "per cell), so the differences above have no interval or p-value: run "
                    "two or more seeds."
                )
            )

    @staticmethod
    def _cell_row(r: analysis.Comparison) -> list[str]:
        """One row of the cell table: the cell, its seeds and mean losses, then Δ with its
        uncertainty, or why the cell was not compared."""
        head = [
            str(r.key.depth),
            lr_text(r.key.lr),
            r.key.variant,
            str(r.estimate.n) if r.estimate else "—",
            fmt(r.variant_mean, ".4f"),
            fmt(r.baseline_mean, ".4f"),
        ]
        if not r.estimate:
            assert r.excluded is not None  # a cell without an estimate says why
            return [*head, f"not compared: {r.excluded.value}", "", "", "", "", ""]
        return [
            *head,
            fmt(r.estimate.mean, "+.4f"),
            fmt(r.estimate.se, ".4f"),
            fmt_ci(r.estimate).split(" ", 1)[1] if r.estimate.lo is not None else "—",
            fmt_p(r.estimate.p),
            fmt_p(r.holm_p),
            fmt(detectable(r.estimate), ".4f"),
        ]

    def _depth_interaction(self, cmp: dict[str, Any]) -> list[dict[str, Any]]:
        """Δ at the deepest depth minus Δ at the shallowest, per variant and learning rate;
        returns the differences (empty: fewer than two depths to contrast)."""
        conf = f"{CONFIDENCE:.0%}"
        inter = analysis.depth_interaction(cmp)
        if inter:
            self.blocks += [
                Heading("Does the difference grow with depth?", 3),
                Para(
                    "Δ at the deepest depth minus Δ at the shallowest, per variant and learning rate; negative: the "
                    "variant's advantage grows with depth. Standard errors combined as for independent seeds, "
                    f"t with the pooled degrees of freedom, Holm over the {len(inter)} differences."
                ),
            ]
            self.blocks.append(
                Table(
                    [
                        "variant",
                        "lr",
                        "Δ deep",
                        "Δ shallow",
                        "deep − shallow",
                        f"{conf} CI",
                        "p",
                        "Holm p",
                        "detectable",
                    ],
                    [
                        [
                            e["variant"],
                            lr_text(e["lr"]),
                            f"{fmt(e['delta_deep'], '+.4f')} (L{e['deep']})",
                            f"{fmt(e['delta_shallow'], '+.4f')} (L{e['shallow']})",
                            fmt(e["estimate"].mean, "+.4f"),
                            fmt_ci(e["estimate"]).split(" ", 1)[1]
                            if e["estimate"].lo is not None
                            else "—",
                            fmt_p(e["estimate"].p),
                            fmt_p(e["holm_p"]),
                            fmt(detectable(e["estimate"]), ".4f"),
                        ]
                        for e in inter
                    ],
                )
            )
        return inter

    def _delta_over_steps(self, cmp: dict[str, Any]) -> list[dict[str, Any]]:
        """The seed-paired Δ at every evaluation both recipes logged: a table of its first and
        last value with a reading (lasting or early gain), and a figure against step."""
        conf = f"{CONFIDENCE:.0%}"
        steps = analysis.delta_over_steps(self.with_data, self.summaries, cmp)
        if steps:
            self.blocks += [
                Heading("The difference along training", 3),
                Para(
                    "The same seed-paired Δ of the validation loss at every evaluation both recipes logged, pooled "
                    f"per learning rate and step. A lasting gain is below 0 ({conf} CI) at the last evaluation; "
                    "an early gain the baseline caught up with was below 0 at some evaluation but not at the last."
                ),
            ]
            self.blocks.append(
                Table(
                    [
                        "n_layer",
                        "lr",
                        "variant",
                        "evaluations",
                        "Δ at the first",
                        "Δ at the last",
                        "reading",
                    ],
                    [
                        [
                            str(e["key"].depth),
                            lr_text(e["key"].lr),
                            e["key"].variant,
                            str(len(e["steps"])),
                            f"{fmt_ci(e['estimates'][0])} (step {e['steps'][0]})",
                            f"{fmt_ci(e['estimates'][-1])} (step {e['steps'][-1]})",
                            e["trajectory"].value,
                        ]
                        for e in steps
                    ],
                )
            )
            self.figure(
                plots.delta_steps(steps, self.colors),
                "delta-over-steps.png",
                f"Seed-paired Δ validation loss (variant − {self.baseline}) against step, {conf} band; "
                "one panel per learning rate, line style by depth.",
            )
        return steps

    def _best_lr_comparison(self, cmp: dict[str, Any]) -> list[dict[str, Any]]:
        """Per depth, each recipe at its own best learning rate against the baseline at its
        best; shown only when the runs span more than one learning rate."""
        best = analysis.best_lr_comparison(self.summaries, cmp)
        if len({lr for lr in (s["lr"] for s in self.summaries)}) > 1 and best:
            self.blocks += [
                Heading("Each recipe at its own best learning rate", 3),
                Para(
                    "Per depth, each recipe at the learning rate with its lowest mean final loss (cells not collapsed "
                    f"or diverged), against {self.baseline} at its own best: the mean of the "
                    "seed-paired differences. At "
                    "the same rate the interval is the cell comparison's; at different rates the standard error is "
                    "√(v₁/n + v₂/n) from each rate's seed variance pooled over its cells (ignoring the pairing), "
                    "with Welch–Satterthwaite degrees of freedom. The best rate is picked on the same runs, which "
                    "flatters every recipe a little."
                ),
            ]
            self.blocks.append(
                Table(
                    [
                        "n_layer",
                        "variant",
                        "best lr",
                        "final loss",
                        f"Δ vs {self.baseline} at its best",
                        "p",
                    ],
                    [
                        [
                            str(b["depth"]),
                            b["variant"],
                            lr_text(b["lr"]),
                            fmt(b["mean"], ".4f"),
                            fmt_ci(b["estimate"])
                            + (f", n={b['estimate'].n}" if b["estimate"] else ""),
                            fmt_p(b["estimate"].p) if b["estimate"] else "—",
                        ]
                        for b in best
                    ],
                )
            )
        return best

    def tev_section(self, cmp: dict[str, Any]) -> dict[str, Any]:
        """Is TEV a useful signal: how the candidates are judged, then whether they order the
        final loss, track the embedding's gradient variance, where their growth sits between
        Adam's noise and drift references, and Δμ_TEV at a matched step and loss. Returns the
        numbers for summary.json."""
        self._tev_intro()
        out: dict[str, Any] = {}
        out["vs_loss"] = self._tev_vs_loss()
        out["vs_gradvar"] = self._tev_vs_gradvar()
        out["adam"] = self._tev_adam()
        out["matched"] = self._tev_matched(cmp)
        return out

    _CORR_HEADER = [
        "signal",
        "runs",
        "groups",
        "ρ within groups",
        "p (within)",
        "ρ across all (confounded)",
    ]

    @staticmethod
    def _corr_rows(result: dict[str, Any]) -> list[list[str]]:
        """One row per signal of a correlation result: within-group ρ and p, across-run ρ."""
        names = tevstats.SIGNALS
        return [
            [
                names[k],
                str(v["within"].n),
                str(v["within"].groups),
                fmt(v["within"].rho, "+.3f"),
                fmt_p(v["within"].p, v["within"].floor),
                fmt(v["across"].rho, "+.3f"),
            ]
            for k, v in result["signals"].items()
        ]

    def _tev_intro(self) -> None:
        """The TEV heading, how its candidate signals are judged, and which were not logged."""
        floor = 1 / (PERMUTATIONS + 1)
        self.blocks += [
            Heading("TEV"),
            Para(
                "Candidate signals, judged by the same tests: μ_TEV and σ_TEV; TEV per token-frequency third where "
                "the runs logged it; and ΔTEV/Σlr, the growth of μ_TEV since its first reading per unit of summed "
                "learning rate. The learning rate moves TEV, the loss and the gradient variance all at once, so "
                "correlations are taken **inside each (depth, learning rate) group** and pooled (the mean of the "
                "groups' Spearman ρ weighted by their sizes); the p-value shuffles only inside groups "
                f"({PERMUTATIONS:,} shuffles, so no p is below {floor:.1g}). The correlation across all runs is "
                "shown for contrast only: it mixes learning rates. Collapsed and diverged runs are left out."
            ),
        ]
        names = tevstats.SIGNALS
        absent = [names[k] for k in names if k not in tevstats.signals_logged(self.with_data)]
        if absent:
            self.blocks.append(
                Para("Not logged by these runs, so not judged: " + ", ".join(absent) + ".")
            )

    def _tev_vs_loss(self) -> dict[str, Any]:
        """Within-group rank correlation of each TEV signal with the final loss."""
        loss = tevstats.tev_vs_loss(self.with_data, self.by_name)
        self.blocks += [Heading("Does TEV order the final loss?", 3)]
        if loss["signals"]:
            self.blocks.append(Table(self._CORR_HEADER, self._corr_rows(loss)))
        else:
            self.blocks.append(Para("No TEV readings in the runs that learned."))
        return loss

    def _tev_vs_gradvar(self) -> dict[str, Any]:
        """Correlation of each TEV signal with the embedding's gradient variance at one step,
        with a scatter figure."""
        gv = tevstats.tev_vs_gradvar(self.with_data, self.by_name)
        self.blocks += [Heading("Does TEV track the embedding's gradient variance?", 3)]
        if not gv["available"]:
            self.blocks.append(Para(f"Not computed: {gv['reason']}."))
        else:
            self.blocks.append(
                Para(
                    f"g is the embedding's gradient variance as the trainer logs it (`grad_var_embed`: the mean over "
                    f"entries of the variance across a step's micro-batch gradients), read at step {gv['step']}, the "
                    f"latest step at which the most runs ({gv['runs']}) logged it."
                )
            )
            self.blocks.append(Table(self._CORR_HEADER, self._corr_rows(gv)))
            self.figure(
                plots.tev_gradvar(gv, self.colors),
                "tev-gradvar.png",
                f"μ_TEV against g at step {gv['step']}, one point per run (colour: variant, marker: "
                "depth, label: learning rate). Clusters by learning rate are what an across-run "
                "correlation measures; the within-group ρ ignores them.",
            )
        return gv

    def _tev_adam(self) -> dict[str, Any]:
        """Where each group's TEV growth sits between Adam's pure-noise and pure-drift
        references: a table of final positions and a figure along training."""
        adam = tevstats.adam_positions(self.with_data)
        self.blocks += [
            Heading("TEV growth against Adam's references", 3),
            Para(
                "Under Adam each embedding entry moves by about lr per step whatever the size of its gradient, so the "
                "random-walk budget Σ lr²·g of SGD does not apply. Two references bound the mean squared "
                "displacement of an entry: pure noise (a random sign every step) gives Σ lr², pure drift (the same "
                "sign every step) gives (Σ lr)², both summed over the updates after the first TEV reading. "
                "ΔTEV² is the mean over rows of TEV_i² (μ_TEV² + σ_TEV²) minus its first value. The position "
                "log(ΔTEV²/Σlr²) / log((Σlr)²/Σlr²) is 0 at the noise end and 1 at the drift end; below 0, TEV "
                "grew less than independent steps would make it (Adam steps smaller than lr, or weight decay). "
                "Final position, mean ± sd over seeds:"
            ),
        ]
        if adam["groups"]:
            self.blocks.append(
                Table(
                    ["n_layer", "variant", "lr", "runs", "position (0 noise, 1 drift)"],
                    [
                        [
                            str(g["depth"]),
                            g["variant"],
                            lr_text(g["lr"]),
                            str(g["position"]["n"]),
                            fmt_ms(g["position"], ".3f", g["position"]["n"]),
                        ]
                        for g in sorted(
                            adam["groups"],
                            key=lambda g: (
                                _sort_key(g["depth"]),
                                self._order(g["variant"]),
                                _sort_key(g["lr"]),
                            ),
                        )
                    ],
                )
            )
            self.figure(
                plots.adam_references(adam, {r.name: r for r in self.with_data}, self.colors),
                "adam-references.png",
                "Each run's ΔTEV² / Σlr² against (Σlr)² / Σlr² as it trains (log-log): the dashed line at 1 "
                "is pure noise, the dotted diagonal pure drift.",
            )
        else:
            self.blocks.append(Para("No run logged both μ_TEV and σ_TEV with its learning rate."))
        return adam

    def _tev_matched(self, cmp: dict[str, Any]) -> list[dict[str, Any]]:
        """Seed-paired Δμ_TEV per compared cell at the final step and at a matched validation
        loss (empty when no cell was compared)."""
        matched = (
            tevstats.tev_matched(self.with_data, cmp["cells"], self.recipe)
            if cmp.get("cells")
            else []
        )
        if matched:
            self.blocks += [
                Heading("μ_TEV at a matched step and at a matched validation loss", 3),
                Para(
                    f"Seed-paired Δμ_TEV (variant − {self.baseline}) per compared cell at the final step, and where "
                    "each run first reached the same validation loss (the highest of the cell's runs' lowest "
                    "validation losses, interpolated between evaluations): a recipe that learns faster has travelled "
                    "further at a given step, so the matched loss separates TEV from progress. Standard errors pooled "
                    "per learning rate."
                ),
            ]
            self.blocks.append(
                Table(
                    [
                        "n_layer",
                        "lr",
                        "variant",
                        "Δμ_TEV, final step",
                        "matched val loss",
                        "Δμ_TEV, matched loss",
                    ],
                    [
                        [
                            str(m["key"].depth),
                            lr_text(m["key"].lr),
                            m["key"].variant,
                            fmt_ci(m["final"], "+.4g"),
                            fmt(m["target"], ".4f"),
                            fmt_ci(m["matched"], "+.4g"),
                        ]
                        for m in matched
                    ],
                )
            )
        return matched

    def warning_section(self) -> dict[str, Any]:
        """Does a signal warn of an instability event before it happens: how events and
        warnings are defined, the events with each signal's lead, each signal's score against
        chance, and a figure of a few events. Returns the early-warning result."""
        o = self.opt
        self._warning_intro()
        ew = warning.early_warning(self.with_data, o.window, o.k, o.horizon, o.rise)
        if not ew["events"]:
            self.blocks.append(
                Para("No run had an instability event, so there is nothing to warn of here.")
            )
            return ew
        self._warning_events(ew)
        self._warning_scores(ew)
        self._warning_figure(ew)
        return ew

    def _warning_intro(self) -> None:
        """The early-warning heading and the definitions of an event, a warning and chance."""
        o = self.opt
        self.blocks += [
            Heading("Early warning"),
            Para(
                f"Instability events come from the training loss alone: an event starts at a step whose loss is not "
                f"finite or at least {o.rise:g} nat above the lowest loss of the steps before it, and lasts while that "
                f"holds. A signal is out of range at a step when its first difference lies more than k = {o.k:g} "
                f"standard deviations from the mean of its previous W = {o.window} differences (a non-finite value is "
                f"out of range; nothing after it is judged); only the past is used, as a monitor would. A signal "
                f"warned of an event when it was out of range in the H = {o.horizon} steps before the event's first "
                "step; out of range only at that step is 'at the event', not a warning. An event is unscorable for "
                "a signal with no judged step before it. Chance: per run, the signal's number of out-of-range steps "
                f"placed at random among its judged steps, {warning.DRAWS:,} times, scored the same way; p is the "
                "share of those draws that warned of at least as many events."
            ),
        ]

    @staticmethod
    def _lead_text(v: warning.Lead) -> str:
        """How one signal did before one event: steps ahead, at it, missed or unscorable."""
        return {
            warning.Outcome.WARNED: f"{v.steps} ahead",
            warning.Outcome.AT_EVENT: "at it",
            warning.Outcome.MISSED: "missed",
            warning.Outcome.UNSCORABLE: "—",
        }[v.outcome]

    def _warning_events(self, ew: dict[str, Any]) -> None:
        """The first MAX_ROWS instability events, each with every signal's lead."""
        names = ew["names"]
        lead = self._lead_text
        self.blocks.append(
            Table(
                ["run", "event step", "peak loss", *names.values()],
                [
                    [e.run, str(e.step), fmt(e.peak, ".2f"), *[lead(e.leads[k]) for k in names]]
                    for e in ew["events"][:MAX_ROWS]
                ],
            )
        )
        if len(ew["events"]) > MAX_ROWS:
            self.blocks.append(
                Para(f"… and {len(ew['events']) - MAX_ROWS} more events (all in summary.json).")
            )

    def _warning_scores(self, ew: dict[str, Any]) -> None:
        """Per signal: events warned of, at, missed and unscorable, median lead, and p against
        the same number of out-of-range steps placed at random."""
        names = ew["names"]
        self.blocks.append(
            Table(
                [
                    "signal",
                    "events scored",
                    "warned",
                    "at the event",
                    "missed",
                    "unscorable",
                    "median lead",
                    "out-of-range steps",
                    "warned by chance (mean)",
                    "p",
                ],
                [
                    [
                        names[k],
                        str(v.scored),
                        str(v.warned),
                        str(v.at_event),
                        str(v.missed),
                        str(v.unscorable),
                        fmt(v.median_lead, "g"),
                        str(v.alarms),
                        fmt(v.chance_mean, ".2f"),
                        fmt_p(v.p, 1 / (ew["draws"] + 1)),
                    ]
                    for k, v in ew["scores"].items()
                ],
            )
        )

    def _warning_figure(self, ew: dict[str, Any]) -> None:
        """A figure of the first MAX_CASES events some signal could be scored on."""
        o = self.opt
        cases = [
            e
            for e in ew["events"]
            if any(lead.outcome is not warning.Outcome.UNSCORABLE for lead in e.leads.values())
        ]
        if cases:
            meta = {r.name: r for r in self.with_data}
            self.figure(
                plots.early_warning(
                    [(meta[e.run], e.step) for e in cases[:MAX_CASES]], o.window, o.k, o.horizon
                ),
                "early-warning.png",
                "Around an instability event: the training loss, μ_TEV and the gradient norm, their "
                "out-of-range steps (orange) and the H steps before the event (shaded).",
            )

    def definitions(self) -> None:
        self.blocks += [
            Heading("Definitions"),
            Bullets(
                [
                    "Final validation loss and perplexity: the run's last evaluation; μ_TEV, σ_TEV: its last reading.",
                    "Spread: sample standard deviation over seeds (runs with a finite value; "
                    "`(n=k)` when fewer than all).",
                    f"Final training loss: the mean of the last {analysis.TAIL} logged training losses.",
                    (
                        "Diverged: the trainer stopped the run as diverged (non-finite values past "
                        "monitor.nonfinite_patience, or spikes past monitor.max_rollbacks), or "
                        "its final training loss is "
                        "not finite or above its first-step loss."
                    ),
                    (
                        f"Collapsed: final validation loss within {COLLAPSE_MARGIN:g} nats of the "
                        "unigram cross-entropy of "
                        "the validation tokens evaluated, or above."
                    ),
                    (
                        "Spikes: the trainer's spike events (they are not the instability events of the early-warning "
                        "test). Skipped: steps whose update was skipped (spike or non-finite guard), counted once each."
                    ),
                    (
                        "A sweep's variant comes from its index.jsonl (other grid keys than n_layer, lr and seed are "
                        "appended to it); a lone run is named by the recipe keys its config.toml sets away from the "
                        "defaults."
                    ),
                ]
            ),
        ]

    def runs_table(self) -> None:
        self.blocks += [
            Heading("Runs"),
            Table(
                [
                    "run",
                    "variant",
                    "n_layer",
                    "lr",
                    "seed",
                    "status",
                    "steps",
                    "val loss",
                    "collapsed",
                    "μ_TEV",
                    "spikes",
                ],
                [
                    [
                        s["name"],
                        s["variant"],
                        str(s["depth"]),
                        lr_text(s["lr"]),
                        str(s["seed"]),
                        s["status"],
                        str(s["steps"]),
                        fmt(s["final_val_loss"], ".4f"),
                        {True: "yes", False: "no", None: "—"}[s["collapsed"]],
                        fmt(s["final_tev_mean"], ".4g"),
                        str(s["spikes"]),
                    ]
                    for s in self.summaries
                ],
            ),
        ]

    def build(self) -> dict[str, Any]:
        self.intro()
        collapse = self.collapse_section()
        groups = analysis.group_table(self.summaries)
        size: dict[str, Any] = {}
        if self.with_data:
            self.depth_sections(groups)
            size = self.size_section(groups)
        lr = self.lr_section()
        cmp = self.comparison_section()
        tev = self.tev_section(cmp)
        ew = self.warning_section()
        self.definitions()
        self.runs_table()
        tev.get("adam", {}).pop(
            "trajectories", None
        )  # per-step series: in the runs' metrics, not here
        ew["scores"] = {
            k: {
                **{f.name: getattr(v, f.name) for f in fields(v) if f.name != "chance_hits"},
                "median_lead": v.median_lead,
                "chance_mean": v.chance_mean,
                "p": v.p,
            }
            for k, v in ew.get("scores", {}).items()
        }
        return {
            "steadylm_version": steadylm.__version__,
            "sources": self.sources,
            "options": asdict(self.opt),
            "runs": self.summaries,
            "collapse": collapse,
            "groups": groups,
            "size": size,
            "lr_sensitivity": lr,
            "comparison": cmp,
            "tev": tev,
            "early_warning": ew,
        }


# ----------------------------------------------------------------- writing


def _check_out(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise SteadyLMError(f"--out: {out} is a file; give a folder for the report")
    if out.is_dir() and any(out.iterdir()) and not (out / "report.md").is_file():
        raise SteadyLMError(
            f"--out: {out} already holds other files; choose an empty or new folder"
        )


def write_report(
    folders: list[str | Path], out: str | Path, options: Options | None = None
) -> Path:
    """Build the report of the runs in `folders` into `out`; returns the HTML file."""
    options = options or Options()
    for name in ("window", "horizon"):
        if getattr(options, name) < 2:
            raise SteadyLMError(f"--{name}: must be >= 2, got {getattr(options, name)}")
    if not options.k > 0:
        raise SteadyLMError(f"--k: must be > 0, got {options.k}")
    if not options.rise > 0:
        raise SteadyLMError(f"--rise: must be > 0, got {options.rise}")
    out = Path(out)
    _check_out(out)
    from steadylm.experiments import finetune_report  # fine-tuning runs get their own tables

    if finetune_report.finetune_runs(folders):
        return publish(out, lambda tmp: finetune_report.write_into(tmp, folders, options))
    runs = load_runs(folders)
    if not runs:
        raise SteadyLMError(f"no runs found in {', '.join(map(str, folders))}")

    def write_into(tmp: Path) -> None:
        report = Report(runs, tmp, options, [str(f) for f in folders])
        summary = report.build()
        write_documents(tmp, report.blocks, summary, options.title)

    return publish(out, write_into)


def write_documents(tmp: Path, blocks: list[Block], summary: dict[str, Any], title: str) -> None:
    """report.md, report.html and summary.json of `blocks` and `summary` into `tmp`."""
    (tmp / "report.md").write_text(to_markdown(blocks), encoding="utf-8")
    (tmp / "report.html").write_text(to_html(blocks, tmp, title), encoding="utf-8")
    (tmp / "summary.json").write_text(
        json.dumps(_json_safe(summary), indent=1, allow_nan=False) + "\n", encoding="utf-8"
    )


def publish(out: Path, write_into) -> Path:
    """Build a report in a temporary folder with `write_into(tmp)` and swap it in whole at `out`."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp"))
    try:
        write_into(tmp)
        os.chmod(tmp, 0o755)
        if out.exists():
            old = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".old"))
            os.replace(out, old / "report")
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out / "report.html"
