"""`steadylm report`: which recipe is stable, by how much, and does TEV see it coming.

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
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

import steadylm
from steadylm.errors import SteadyLMError
from steadylm.experiments import analysis, plots
from steadylm.experiments.document import (
    Block, Bullets, Figure, Heading, Para, Table, parse_markdown, to_html, to_markdown,
)
from steadylm.experiments.runs import Run, load_runs
from steadylm.experiments.spec import short_float

MAX_ROWS = 12  # matched steps and spikes listed in a table; summary.json holds them all
MAX_CASES = 4  # spikes drawn in the early-warning figure


@dataclass
class Options:
    window: int = 50  # W: differences forming a signal's recent baseline
    k: float = 4.0  # out of range beyond k standard deviations of that baseline
    horizon: int = 50  # H: how far before a spike a flag counts as a warning
    title: str = "steadylm report"
    preface: str = ""  # Markdown placed under the title: a reading of the results by hand


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
    text = fmt(stat["mean"], spec) + (f" ± {fmt(stat['sd'], spec)}" if stat["sd"] is not None else "")
    return text + (f" (n={stat['n']})" if stat["n"] < runs else "")


def lr_text(lr: float | None) -> str:
    return "—" if lr is None else short_float(lr)


def _json_safe(obj: Any) -> Any:
    """JSON has no NaN or Infinity: write them as strings, as metrics.jsonl does."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return str(obj)
    if isinstance(obj, dict):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
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
        self.summaries = [analysis.summarize(r) for r in runs]
        self.variants = list(dict.fromkeys(r.variant for r in runs))
        self.colors = plots.colors_for(self.variants)
        self.with_data = [r for r in runs if r.rows]
        self.blocks: list[Block] = []

    def figure(self, fig, name: str, caption: str) -> None:
        plots.save(fig, self.root / "plots" / name)
        self.blocks.append(Figure(f"plots/{name}", caption))

    def _order(self, variant: str) -> int:
        return self.variants.index(variant)

    def intro(self) -> None:
        counts = Counter(r.status for r in self.runs)
        seen = lambda attr: sorted({getattr(r, attr) for r in self.with_data}, key=_sort_key)  # noqa: E731
        self.blocks += [
            Heading(self.opt.title, 1),
            Para(f"{len(self.runs)} runs from {', '.join(f'`{s}`' for s in self.sources)}: "
                 + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())) + ". "
                 f"Depths (n_layer): {', '.join(map(str, seen('depth')))}; "
                 f"learning rates: {', '.join(map(lr_text, seen('lr')))}; "
                 f"seeds: {', '.join(map(str, seen('seed')))}; variants: {', '.join(self.variants)}. "
                 f"Generated {time.strftime('%Y-%m-%d %H:%M')} by steadylm {steadylm.__version__}."),
        ]
        self.blocks += parse_markdown(self.opt.preface)
        empty = [r for r in self.runs if not r.rows]
        if empty:
            self.blocks.append(Para("Runs without metrics (left out below): " + "; ".join(
                f"`{r.name}` ({r.status}{': ' + r.error if r.error else ''})" for r in empty) + "."))

    def depth_sections(self, groups: list[dict[str, Any]]) -> None:
        for depth in sorted({r.depth for r in self.with_data}, key=_sort_key):
            at_depth = [r for r in self.with_data if r.depth == depth]
            self.blocks.append(Heading(f"n_layer = {depth}"))
            rows = sorted((g for g in groups if g["depth"] == depth),
                          key=lambda g: (self._order(g["variant"]), _sort_key(g["lr"])))
            self.blocks.append(Table(
                ["variant", "lr", "runs", "val loss", "val ppl", "μ_TEV", "σ_TEV", "spikes", "skipped", "diverged"],
                [[g["variant"], lr_text(g["lr"]), str(g["runs"]),
                  fmt_ms(g["final_val_loss"], ".4f", g["runs"]), fmt_ms(g["final_val_ppl"], ".2f", g["runs"]),
                  fmt_ms(g["final_tev_mean"], ".4g", g["runs"]), fmt_ms(g["final_tev_std"], ".4g", g["runs"]),
                  str(g["spikes"]), str(g["skipped"]), f"{g['diverged']}/{g['runs']}"] for g in rows],
            ))
            self.blocks.append(Para(self._missing(at_depth)))
            for lr in sorted({r.lr for r in at_depth}, key=_sort_key):
                by_variant = {v: [r for r in at_depth if r.variant == v and r.lr == lr] for v in self.variants}
                by_variant = {v: rs for v, rs in by_variant.items() if rs}
                self.figure(plots.curves(by_variant, self.colors, f"n_layer = {depth}, lr = {lr_text(lr)}"),
                            f"curves-L{depth}-lr{lr_text(lr)}.png",
                            f"n_layer = {depth}, lr = {lr_text(lr)}: mean over seeds, band from min to max; "
                            "▼ marks a spike event.")

    @staticmethod
    def _missing(runs: list[Run]) -> str:
        def logged(key: str) -> bool:
            return any(key in row for r in runs for row in r.rows)

        missing = [what for key, what in (
            ("val_loss", "validation loss (train.eval_every = 0)"),
            ("grad_var_embed", "gradient variance (monitor.gradvar_every = 0, or runs shorter than it)"),
            ("rms/h.0", "residual RMS per layer (monitor.act_every = 0, or runs shorter than it)"),
        ) if not logged(key)]
        spikes = sum(len(r.event_steps("spike")) for r in runs)
        spiking = sum(1 for r in runs if r.event_steps("spike"))
        text = (f"Spikes: {spikes} in {spiking} of {len(runs)} runs." if spikes
                else f"No spikes in the {len(runs)} runs at this depth.")
        if missing:
            text += " Not logged here, so their panels are empty: " + "; ".join(missing) + "."
        return text

    def lr_section(self) -> list[dict[str, Any]]:
        self.blocks.append(Heading("Learning-rate sensitivity"))
        entries = analysis.lr_sensitivity(self.summaries)
        if not entries:
            self.blocks.append(Para("Every recipe ran at a single learning rate at each depth, so there is "
                                    "no sensitivity curve; add `train.lr` to the sweep's grid."))
            return entries
        self.blocks.append(Para(
            "Final loss (validation if evaluated, else the mean of the last "
            f"{analysis.TAIL} training losses) at each learning rate, mean ± sd over the seeds that did not "
            "diverge. Sensitivity (Wortsman et al. 2023): the mean over learning rates of min(final loss, "
            "first-step loss) minus its smallest value, a diverged run counting as its first-step loss; lower "
            "is more robust. It compares recipes over the same learning rates only."))
        for depth in sorted({e["depth"] for e in entries}, key=_sort_key):
            mine = sorted((e for e in entries if e["depth"] == depth), key=lambda e: self._order(e["variant"]))
            lrs = sorted({lr for e in mine for lr in e["lrs"]})
            rows = []
            for e in mine:
                cells = {lr: self._lr_cell(fl, d, n) for lr, fl, d, n in zip(e["lrs"], e["final_loss"], e["diverged"], e["runs"])}
                rows.append([e["variant"], *[cells.get(lr, "") for lr in lrs], lr_text(e["best_lr"]),
                             fmt(e["sensitivity"], ".4f")])
            self.blocks += [Heading(f"n_layer = {depth}", 3),
                            Table(["variant", *[f"lr {lr_text(lr)}" for lr in lrs], "best lr", "sensitivity"], rows)]
        self.figure(plots.lr_sensitivity(entries, self.colors), "lr-sensitivity.png",
                    "Final loss against learning rate (mean ± sd over seeds); ✕ on the top edge: diverged runs.")
        return entries

    @staticmethod
    def _lr_cell(stat: dict[str, Any], diverged: int, runs: int) -> str:
        if diverged == runs:
            return f"diverged ({runs}/{runs})"
        text = fmt_ms(stat, ".4f", runs - diverged)
        return text + (f", {diverged}/{runs} diverged" if diverged else "")

    def tev_section(self) -> dict[str, Any]:
        self.blocks += [Heading("TEV and gradient variance"), Para(
            "g is the embedding's gradient variance as the trainer logs it (`grad_var_embed`: the mean over "
            "entries of the variance across a step's micro-batch gradients). At each matched step, a step at "
            "which several runs logged g, Spearman's ρ ranks runs by μ_TEV (or σ_TEV) and by g. ΔTEV² is the "
            "mean over rows of TEV_i² (μ² + σ²) minus its value at the first step, set against the budget "
            "Σ lr²·g over the updates since (g interpolated between its readings), the random-walk relation "
            "of DESIGN §2. Under Adam TEV also follows the learning rate itself, so a correlation across "
            "learning rates says less than one within a learning rate (table by lr below).")]
        result = analysis.tev_vs_gradvar(self.with_data)
        if not result["available"]:
            self.blocks.append(Para(f"Not computed: {result['reason']}."))
            return result
        usable = [t for t in result["steps"] if t["rho_tev_mean"] is not None]
        shown = [usable[i] for i in sorted(set(np.linspace(0, len(usable) - 1, min(MAX_ROWS, len(usable))).round().astype(int)))]
        rho = lambda r: fmt(r, "+.3f")  # noqa: E731
        self.blocks.append(Table(
            ["step", "runs", "ρ(μ_TEV, g)", "ρ(σ_TEV, g)", "ρ(ΔTEV², Σ lr²·g)"],
            [[str(t["step"]), str(t["runs"]), rho(t["rho_tev_mean"]), rho(t["rho_tev_std"]), rho(t["rho_delta"])]
             for t in shown]))
        f = result["featured"]
        self.blocks.append(Para(
            f"{len(shown)} of {len(usable)} matched steps shown; the median ρ(μ_TEV, g) over all of them is "
            f"{result['median_rho_tev_mean']:+.3f}. At step {result['featured_step']} (the latest with the most "
            f"runs, {f['runs']}): ρ(μ_TEV, g) = {rho(f['rho_tev_mean'])} (permutation p = {fmt(f['p_tev_mean'], '.3g')}), "
            f"ρ(σ_TEV, g) = {rho(f['rho_tev_std'])} (p = {fmt(f['p_tev_std'], '.3g')}), "
            f"ρ(ΔTEV², Σ lr²·g) = {rho(f['rho_delta'])} (p = {fmt(f['p_delta'], '.3g')})."))
        if len(result["by_lr"]) > 1:
            self.blocks.append(Table(
                ["lr", "runs", "ρ(μ_TEV, g)", "ρ(ΔTEV², Σ lr²·g)"],
                [[lr_text(b["lr"]), str(b["runs"]), rho(b["rho_tev_mean"]), rho(b["rho_delta"])] for b in result["by_lr"]]))
        meta = {r.name: r for r in self.with_data}
        self.figure(plots.tev_gradvar(result, meta, self.colors), "tev-gradvar.png",
                    f"Left and middle: one point per run at step {result['featured_step']} (colour: variant, "
                    "marker: depth). Right: each run's ΔTEV² against its own Σ lr²·g at the steps g was logged.")
        return result

    def warning_section(self) -> dict[str, Any]:
        o = self.opt
        self.blocks += [Heading("Early warning"), Para(
            f"A signal is out of range at a step when its first difference (this step's value minus the "
            f"previous one) lies more than k = {o.k:g} standard deviations from the mean of its previous "
            f"W = {o.window} differences; a non-finite value is out of range, and a run is not judged after it. "
            f"Only the past is used, as a monitor would. Spikes are the trainer's spike events (loss or gradient norm above the mean "
            f"plus monitor.spike_sigma standard deviations of the previous monitor.spike_window steps); a spike "
            f"within H = {o.horizon} steps of the previous one belongs to its episode. The lead is the number "
            f"of steps from the earliest out-of-range step in the H steps before the spike (its own step "
            f"included) to the spike: 0 means the signal moved only with the spike. The false-alarm rate is the "
            f"share of steps more than H steps from any spike that are out of range; 'by luck' is the chance of "
            f"at least one such flag in H + 1 steps at that rate.")]
        ew = analysis.early_warning(self.with_data, o.window, o.k, o.horizon)
        names = {"tev_mean": "μ_TEV", "tev_std": "σ_TEV", "grad_norm": "gradient norm"}
        if not ew["spikes"]:
            self.blocks.append(Para(
                "No run had a spike event, so there is nothing for TEV to warn of here; the false-alarm "
                "rates below are the rule's base rates on these runs."))
        else:
            lead = lambda v: "none" if v is None else str(v)  # noqa: E731
            self.blocks.append(Table(
                ["run", "spike step", *[f"{names[s]} lead" for s in analysis.SIGNALS]],
                [[sp["run"], str(sp["step"]), *[lead(sp["leads"].get(s)) for s in analysis.SIGNALS]]
                 for sp in ew["spikes"][:MAX_ROWS]]))
            if len(ew["spikes"]) > MAX_ROWS:
                self.blocks.append(Para(f"… and {len(ew['spikes']) - MAX_ROWS} more spikes (all in summary.json)."))
        self.blocks.append(Table(
            ["signal", "spikes scored", "warned ahead", "at the spike", "missed", "median lead",
             "false-alarm rate", "by luck in H + 1 steps"],
            [[names[s], str(v["scored"]), str(v["ahead"]), str(v["at_spike"]), str(v["missed"]),
              fmt(v["median_lead"], "g"), fmt(v["false_alarm_rate"], ".4f"), fmt(v["chance_per_horizon"], ".3f")]
             for s, v in ew["summary"].items()]))
        cases = self._cases(ew)
        if cases:
            self.figure(plots.early_warning(cases, o.window, o.horizon), "early-warning.png",
                        "Around each spike: the signal, its out-of-range steps (orange) and the H steps "
                        "before the spike (shaded).")
        return ew

    def _cases(self, ew: dict[str, Any]) -> list[dict[str, Any]]:
        meta = {r.name: r for r in self.with_data}
        cases = []
        for sp in ew["spikes"][:MAX_CASES]:
            run = meta[sp["run"]]
            flags = {key: analysis.out_of_range(run.series(key)[1], self.opt.window, self.opt.k)
                     for key in ("tev_mean", "grad_norm")}
            cases.append({"run": run, "step": sp["step"], "flags": flags})
        return cases

    def definitions(self) -> None:
        self.blocks += [Heading("Definitions"), Bullets([
            "Final validation loss and perplexity: the run's last evaluation; μ_TEV, σ_TEV: its last reading.",
            "Spread: sample standard deviation over seeds (runs with a finite value; `(n=k)` when fewer than all).",
            f"Final training loss: the mean of the last {analysis.TAIL} logged training losses.",
            "Diverged: the trainer stopped the run as diverged (non-finite values past monitor.nonfinite_patience, "
            "or spikes past monitor.max_rollbacks), or its final training loss is not finite or above its "
            "first-step loss.",
            "Spikes: the trainer's spike events. Skipped: steps whose update was skipped (spike or non-finite "
            "guard), counted once each.",
            "A sweep's variant comes from its index.jsonl (other grid keys than n_layer, lr and seed are "
            "appended to it); a lone run is named by the recipe keys its config.toml sets away from the defaults.",
        ])]

    def runs_table(self) -> None:
        self.blocks += [Heading("Runs"), Table(
            ["run", "variant", "n_layer", "lr", "seed", "status", "steps", "val loss", "μ_TEV", "spikes"],
            [[s["name"], s["variant"], str(s["depth"]), lr_text(s["lr"]), str(s["seed"]), s["status"],
              str(s["steps"]), fmt(s["final_val_loss"], ".4f"), fmt(s["final_tev_mean"], ".4g"), str(s["spikes"])]
             for s in self.summaries])]

    def build(self) -> dict[str, Any]:
        self.intro()
        groups = analysis.group_table(self.summaries)
        if self.with_data:
            self.depth_sections(groups)
        lr = self.lr_section()
        tev = self.tev_section()
        ew = self.warning_section()
        self.definitions()
        self.runs_table()
        return {
            "steadylm_version": steadylm.__version__, "sources": self.sources, "options": asdict(self.opt),
            "runs": self.summaries, "groups": groups, "lr_sensitivity": lr, "tev_gradvar": tev,
            "early_warning": ew,
        }


# ----------------------------------------------------------------- writing


def _check_out(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise SteadyLMError(f"--out: {out} is a file; give a folder for the report")
    if out.is_dir() and any(out.iterdir()) and not (out / "report.md").is_file():
        raise SteadyLMError(f"--out: {out} already holds other files; choose an empty or new folder")


def write_report(folders: list[str | Path], out: str | Path, options: Options | None = None) -> Path:
    """Build the report of the runs in `folders` into `out`; returns the HTML file."""
    options = options or Options()
    for name in ("window", "horizon"):
        if getattr(options, name) < 2:
            raise SteadyLMError(f"--{name}: must be >= 2, got {getattr(options, name)}")
    if not options.k > 0:
        raise SteadyLMError(f"--k: must be > 0, got {options.k}")
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
    (tmp / "summary.json").write_text(json.dumps(_json_safe(summary), indent=1, allow_nan=False) + "\n",
                                      encoding="utf-8")


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
