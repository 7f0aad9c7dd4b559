"""The report's numbers about losses, as plain functions of runs: finals per run (with the
collapsed-run rule), means over seeds, learning-rate sensitivity, and the recipe comparison:
seed-paired differences per (depth, learning rate) cell with pooled standard errors and Holm's
correction, the depth interaction, the difference along training, and each recipe at its own
best learning rate.

Every definition the report states in words is implemented here, once; TEV's statistics are in
`tevstats`, the early-warning test in `warning`.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import numpy as np

from steadylm.experiments.runs import Run
from steadylm.experiments.stats import (
    Estimate,
    estimate,
    finite,
    holm,
    mean_sd,
    paired_differences,
    pooled_estimates,
)
from steadylm.experiments.unigram import Reference, collapsed

TAIL = 10  # the final training loss is the mean of the last TAIL logged losses

# ----------------------------------------------------------------- runs


def summarize(run: Run, ref: Reference | None = None, recipe: str | None = None) -> dict[str, Any]:
    """A run's final figures; `recipe` names what comparisons pair it by (default: its variant).
    `diverged`: the trainer stopped it as diverged, or its final training loss is not finite or
    above its first-step loss (training went backwards).
    `collapsed`: its final validation loss is within the margin of the unigram cross-entropy
    `ref`, or above (None when either is unknown)."""
    _, loss = run.series("loss")
    initial = float(loss[0]) if len(loss) else None
    final_train = float(loss[-TAIL:].mean()) if len(loss) else None
    val = run.last("val_loss")
    ppl = run.last("val_ppl")
    if ppl is None and val is not None:
        ppl = math.exp(val) if val < 700 else math.inf
    diverged = run.status == "diverged" or (
        initial is not None and not (finite(final_train) and final_train <= initial)
    )
    skipped = {int(r["step"]) for r in run.rows if r.get("skipped")} | set(run.event_steps("skip"))
    ref = ref or Reference(None, error="not computed")
    _, speed = run.series("tokens_per_s")
    speed = speed[np.isfinite(speed)]
    return {
        "name": run.name,
        "variant": run.variant,
        "recipe": recipe or run.variant,
        "depth": run.depth,
        "lr": run.lr,
        "seed": run.seed,
        "status": run.status,
        "steps": len(run.rows),
        "error": run.error,
        "initial_loss": initial,
        "final_train_loss": final_train,
        "final_val_loss": val,
        "final_val_ppl": ppl,
        "final_tev_mean": run.last("tev_mean"),
        "final_tev_std": run.last("tev_std"),
        "final_grad_norm": run.last("grad_norm"),
        "spikes": len(run.event_steps("spike")),
        "skipped": len(skipped),
        "diverged": diverged,
        "unigram_nats": ref.nats,
        "collapsed": collapsed(val, ref),
        "final_loss": val if val is not None else final_train,
        # size and speed: counts from provenance.json; the median over the logged windows of
        # tokens/s, each window's wall-clock throughput (evaluation windows are the outliers)
        "parameters": run.provenance.get("parameters"),
        "embedding_parameters": run.provenance.get("embedding_parameters"),
        "tokens_per_s": float(np.median(speed)) if len(speed) else None,
    }


def group_table(summaries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (depth, variant, lr): finals as mean ± sd over seeds, spikes and skipped
    steps summed, diverged and collapsed runs counted."""
    groups: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
    for s in summaries:
        if s["steps"]:
            groups[(s["depth"], s["variant"], s["lr"])].append(s)
    out = []
    for (depth, variant, lr), members in groups.items():
        out.append(
            {
                "depth": depth,
                "variant": variant,
                "lr": lr,
                "runs": len(members),
                "seeds": sorted(m["seed"] for m in members if m["seed"] is not None),
                **{
                    key: mean_sd(m[key] for m in members)
                    for key in (
                        "final_val_loss",
                        "final_val_ppl",
                        "final_tev_mean",
                        "final_tev_std",
                        "tokens_per_s",
                    )
                },
                # the same for every seed of a recipe; None when no run recorded it
                **{
                    key: max((m[key] for m in members if m[key] is not None), default=None)
                    for key in ("parameters", "embedding_parameters")
                },
                "spikes": sum(m["spikes"] for m in members),
                "skipped": sum(m["skipped"] for m in members),
                "diverged": sum(m["diverged"] for m in members),
                "collapsed": sum(bool(m["collapsed"]) for m in members),
            }
        )
    return out


def size_fronts(groups: list[dict[str, Any]]) -> dict[tuple, list[str]]:
    """Per (depth, lr) whose recipes differ in embedding parameters: the variants on the
    loss-against-size Pareto front, fewest parameters first. A variant is on it when its mean
    final validation loss is below that of every variant with no more embedding parameters.
    Cells with a diverged or collapsed run, or no validation loss, are left out."""
    cells: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
    for g in groups:
        if (
            g["embedding_parameters"] is not None
            and g["final_val_loss"]["mean"] is not None
            and not g["diverged"]
            and not g["collapsed"]
        ):
            cells[(g["depth"], g["lr"])].append(g)
    fronts = {}
    for cell, members in cells.items():
        if len({g["embedding_parameters"] for g in members}) < 2:
            continue
        front, best = [], math.inf
        by_size = sorted(
            members, key=lambda g: (g["embedding_parameters"], g["final_val_loss"]["mean"])
        )
        for g in by_size:
            if g["final_val_loss"]["mean"] < best:
                front.append(g["variant"])
                best = g["final_val_loss"]["mean"]
        fronts[cell] = front
    return fronts


def recipe_of(summary: dict[str, Any]) -> str:
    """What a run is compared as: its recipe (runs.recipes), else its variant."""
    return summary.get("recipe") or summary["variant"]


def lr_sensitivity(summaries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per (depth, recipe) with two or more learning rates: the final loss at each, and the
    sensitivity of Wortsman et al. (2023): the mean over learning rates of min(final, initial)
    minus its best value, a diverged run counting as its initial loss."""
    by: dict[tuple, dict[float, list[dict[str, Any]]]] = defaultdict(lambda: defaultdict(list))
    for s in summaries:
        if s["steps"] and s["lr"] is not None:
            by[(s["depth"], recipe_of(s))][s["lr"]].append(s)
    out = []
    for (depth, variant), per_lr in by.items():
        if len(per_lr) < 2:
            continue
        lrs = sorted(per_lr)
        capped = []
        for lr in lrs:
            vals = [
                s["initial_loss"]
                if s["diverged"] or not finite(s["final_loss"])
                else min(s["final_loss"], s["initial_loss"])
                for s in per_lr[lr]
            ]
            capped.append(float(np.mean(vals)))
        out.append(
            {
                "depth": depth,
                "variant": variant,
                "lrs": lrs,
                "final_loss": [
                    mean_sd(s["final_loss"] for s in per_lr[lr] if not s["diverged"]) for lr in lrs
                ],
                "diverged": [sum(s["diverged"] for s in per_lr[lr]) for lr in lrs],
                "collapsed": [sum(bool(s["collapsed"]) for s in per_lr[lr]) for lr in lrs],
                "runs": [len(per_lr[lr]) for lr in lrs],
                "best_lr": lrs[int(np.argmin(capped))],
                "sensitivity": float(np.mean(capped) - min(capped)),
            }
        )
    return out


# ----------------------------------------------------------------- recipe comparison


class Exclusion(StrEnum):
    """Why a cell is shown but kept out of the comparisons."""

    COLLAPSED = "collapsed"  # a seed ended at the unigram cross-entropy or above
    DIVERGED = "diverged"  # a seed diverged
    UNPAIRED = "no seed in common"  # the variant and the baseline share no finished seed


class Trajectory(StrEnum):
    """How the seed-paired difference evolved over the evaluations of a cell."""

    LASTING_GAIN = "lasting gain"  # below 0 (95% CI) at the last evaluation
    CATCH_UP = "early gain, caught up"  # below 0 at some evaluation, not at the last
    WORSE = "worse at the end"  # above 0 at the last evaluation
    NO_DIFFERENCE = "no clear difference"  # never below 0, not above at the end
    UNKNOWN = "not estimable"  # no degrees of freedom for an interval


@dataclass(frozen=True)
class CellKey:
    variant: str
    depth: int | None
    lr: float | None


@dataclass
class Comparison:
    """variant − baseline in one (depth, lr) cell, paired by seed."""

    key: CellKey
    baseline: str
    estimate: Estimate | None = None
    holm_p: float | None = None
    excluded: Exclusion | None = None
    variant_mean: float | None = None
    baseline_mean: float | None = None


def _cells(summaries: list[dict[str, Any]]) -> dict[CellKey, list[dict[str, Any]]]:
    cells: dict[CellKey, list[dict[str, Any]]] = defaultdict(list)
    for s in summaries:
        if s["steps"]:
            cells[CellKey(recipe_of(s), s["depth"], s["lr"])].append(s)
    return cells


def cell_exclusion(members: list[dict[str, Any]]) -> Exclusion | None:
    if any(m["collapsed"] for m in members):
        return Exclusion.COLLAPSED
    if any(m["diverged"] for m in members):
        return Exclusion.DIVERGED
    return None


def _by_seed(members: list[dict[str, Any]], key: str) -> dict[int, float]:
    return {m["seed"]: m[key] for m in members if m["seed"] is not None and finite(m[key])}


def _of_seeds(members: list[dict[str, Any]], seeds: set[int]) -> list[dict[str, Any]]:
    """The members of those seeds; all of them when no seed is shared."""
    return [m for m in members if m["seed"] in seeds] if seeds else members


def compare_recipes(
    summaries: list[dict[str, Any]], baseline: str, key: str = "final_loss"
) -> dict[str, Any]:
    """Each variant against `baseline` in every (depth, lr) cell both ran: the mean over seeds
    of (variant − baseline), paired by seed, its standard error pooled over the cells of the
    same learning rate, a t interval and p-value, and Holm's correction over every cell
    compared. Cells where either side has a collapsed or diverged seed are listed, not compared."""
    cells = _cells(summaries)
    rows: list[Comparison] = []
    diffs: dict[CellKey, list[float]] = {}
    for k in sorted(cells, key=lambda c: (_order(c.depth), _order(c.lr), c.variant)):
        base = CellKey(baseline, k.depth, k.lr)
        if k.variant == baseline or base not in cells:
            continue
        mine, theirs = cells[k], cells[base]
        # The means shown beside Δ are over the seeds both sides ran, so that they differ by Δ
        # (the baseline may have more seeds than the variant while a sweep is still running).
        both = set(_by_seed(mine, key)) & set(_by_seed(theirs, key))
        row = Comparison(
            k,
            baseline,
            variant_mean=mean_sd(m[key] for m in _of_seeds(mine, both))["mean"],
            baseline_mean=mean_sd(m[key] for m in _of_seeds(theirs, both))["mean"],
        )
        row.excluded = cell_exclusion(mine) or cell_exclusion(theirs)
        if row.excluded is None:
            d = paired_differences(_by_seed(mine, key), _by_seed(theirs, key))
            if d:
                diffs[k] = d
            else:
                row.excluded = Exclusion.UNPAIRED
        rows.append(row)
    est = pooled_estimates(diffs, {k: k.lr for k in diffs})
    for row in rows:
        row.estimate = est.get(row.key)
    compared = [
        (r, r.estimate.p) for r in rows if r.estimate is not None and r.estimate.p is not None
    ]
    for (r, _), p in zip(compared, holm([p for _, p in compared])):
        r.holm_p = p
    pooled_df = {k.lr: e.df for k, e in est.items()}
    return {
        "baseline": baseline,
        "metric": key,
        "rows": rows,
        "family": len(compared),
        "pooled_df": pooled_df,
    }


def _order(x):
    return (x is None, x)


def depth_interaction(comparison: dict[str, Any]) -> list[dict[str, Any]]:
    """Per variant and learning rate compared at two or more depths: Δ at the deepest minus Δ
    at the shallowest, with the two standard errors combined (independent seeds) and the
    pooled degrees of freedom of that learning rate; Holm over all of them."""
    by: dict[tuple, dict[int, Estimate]] = defaultdict(dict)
    for r in comparison["rows"]:
        if r.estimate is not None and r.key.depth is not None:
            by[(r.key.variant, r.key.lr)][r.key.depth] = r.estimate
    out = []
    for (variant, lr), per_depth in sorted(by.items(), key=lambda kv: (kv[0][0], _order(kv[0][1]))):
        if len(per_depth) < 2:
            continue
        shallow, deep = min(per_depth), max(per_depth)
        a, b = per_depth[deep], per_depth[shallow]
        se = math.sqrt(a.se**2 + b.se**2) if a.se is not None and b.se is not None else None
        out.append(
            {
                "variant": variant,
                "lr": lr,
                "deep": deep,
                "shallow": shallow,
                "delta_deep": a.mean,
                "delta_shallow": b.mean,
                "estimate": estimate(a.mean - b.mean, min(a.n, b.n), se, min(a.df, b.df)),
            }
        )
    for e, p in zip(out, holm([e["estimate"].p for e in out])):
        e["holm_p"] = p
    return out


def delta_over_steps(
    runs: list[Run],
    summaries: list[dict[str, Any]],
    comparison: dict[str, Any],
    key: str = "val_loss",
) -> list[dict[str, Any]]:
    """For every compared cell: the seed-paired difference of `key` (variant − baseline) at each
    step both logged it, pooled per (learning rate, step) as in the final comparison, and how
    it evolved (a lasting gain, an early gain the baseline caught up with, ...)."""
    recipe = {s["name"]: recipe_of(s) for s in summaries}
    series: dict[tuple, dict[int, dict[int, float]]] = defaultdict(lambda: defaultdict(dict))
    for run in runs:
        steps, values = run.series(key)
        if run.seed is None:  # nothing to pair it with by seed, as in `_by_seed`
            continue
        for s, v in zip(steps.tolist(), values.tolist()):
            series[(recipe[run.name], run.depth, run.lr)][s][run.seed] = v
    cells = [r.key for r in comparison["rows"] if r.estimate is not None]
    baseline = comparison["baseline"]
    per_step: dict[int, dict[CellKey, list[float]]] = defaultdict(dict)
    for k in cells:
        mine, theirs = series[(k.variant, k.depth, k.lr)], series[(baseline, k.depth, k.lr)]
        for s in sorted(set(mine) & set(theirs)):
            d = paired_differences(mine[s], theirs[s])
            if d:
                per_step[s][k] = d
    est_at = {s: pooled_estimates(c, {k: k.lr for k in c}) for s, c in per_step.items()}
    out = []
    for k in cells:
        points = [(s, est_at[s][k]) for s in sorted(est_at) if k in est_at[s]]
        if not points:
            continue
        out.append(
            {
                "key": k,
                "steps": [s for s, _ in points],
                "estimates": [e for _, e in points],
                "trajectory": classify(points),
            }
        )
    return out


def classify(points: list[tuple[int, Estimate]]) -> Trajectory:
    last = points[-1][1]
    if last.lo is None or last.hi is None:  # both None together: no degrees of freedom
        return Trajectory.UNKNOWN
    if last.hi < 0:
        return Trajectory.LASTING_GAIN
    if last.lo > 0:
        return Trajectory.WORSE
    if any(e.hi is not None and e.hi < 0 for _, e in points):
        return Trajectory.CATCH_UP
    return Trajectory.NO_DIFFERENCE


def seed_variance(
    summaries: list[dict[str, Any]], key: str = "final_loss"
) -> dict[float | None, tuple[float, int]]:
    """Per learning rate: the seed-to-seed variance of one recipe's final `key`, pooled over the
    cells (depth, variant) of that rate not collapsed or diverged, and its degrees of freedom."""
    ss: dict[float | None, float] = defaultdict(float)
    dof: dict[float | None, int] = defaultdict(int)
    for k, members in _cells(summaries).items():
        v = np.array([m[key] for m in members if finite(m[key])])
        if cell_exclusion(members) is None and len(v) >= 2:
            ss[k.lr] += float(((v - v.mean()) ** 2).sum())
            dof[k.lr] += len(v) - 1
    return {lr: (ss[lr] / dof[lr], dof[lr]) for lr in dof}


def best_lr_comparison(
    summaries: list[dict[str, Any]], comparison: dict[str, Any], key: str = "final_loss"
) -> list[dict[str, Any]]:
    """Per depth: each recipe at its own best learning rate (lowest mean final loss over the
    cells not collapsed or diverged) against the baseline at its own. Δ is the mean of the
    seed-paired differences. At the same rate, its interval is that of the cell comparison; at
    different rates the pairing spans two rates, so the standard error is √(v₁/n + v₂/n) from each
    rate's pooled seed variance (`seed_variance`, ignoring the pairing, which can only widen it)
    with Welch–Satterthwaite degrees of freedom. The best rate is chosen on the same runs, which
    flatters every recipe a little."""
    baseline = comparison["baseline"]
    cells = _cells(summaries)
    by_cell = {r.key: r.estimate for r in comparison["rows"]}
    var = seed_variance(summaries, key)
    best: dict[tuple, tuple[float, CellKey]] = {}
    for k, members in cells.items():
        if cell_exclusion(members) is None and k.lr is not None:
            m = mean_sd(x[key] for x in members)["mean"]
            if m is not None and (
                (k.variant, k.depth) not in best or m < best[(k.variant, k.depth)][0]
            ):
                best[(k.variant, k.depth)] = (m, k)
    out = []
    for (variant, depth), (m, k) in sorted(
        best.items(), key=lambda kv: (_order(kv[0][1]), kv[0][0])
    ):
        base = best.get((baseline, depth))
        row: dict[str, Any] = {
            "variant": variant,
            "depth": depth,
            "lr": k.lr,
            "mean": m,
            "estimate": None,
        }
        if base is not None and variant != baseline:
            row["baseline_lr"] = base[1].lr
            if base[1].lr == k.lr:
                row["estimate"] = by_cell.get(k)
            else:
                d = paired_differences(_by_seed(cells[k], key), _by_seed(cells[base[1]], key))
                if d and k.lr in var and base[1].lr in var:
                    (v1, f1), (v2, f2) = var[k.lr], var[base[1].lr]
                    a, b = v1 / len(d), v2 / len(d)
                    df = (a + b) ** 2 / (a**2 / f1 + b**2 / f2) if a + b > 0 else min(f1, f2)
                    row["estimate"] = estimate(float(np.mean(d)), len(d), math.sqrt(a + b), int(df))
                elif d:
                    row["estimate"] = estimate(float(np.mean(d)), len(d), None, 0)
        out.append(row)
    return out
