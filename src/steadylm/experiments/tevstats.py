"""TEV's statistics: does a TEV signal order the final loss, or the embedding's gradient
variance, once what differs between (depth, learning rate) groups is held fixed; where each run's
TEV growth lies between Adam's pure-noise and pure-drift references; and the recipes' TEV
difference at a matched step and at a matched validation loss.

The candidate signals are judged alike: μ_TEV and σ_TEV, TEV per token-frequency tercile where
the runs logged it, and ΔTEV/Σlr (the growth of μ_TEV since the first reading per unit of
cumulative learning rate).
"""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Any

import numpy as np

from steadylm.experiments.analysis import CellKey
from steadylm.experiments.runs import Run, num
from steadylm.experiments.stats import (
    grouped_spearman,
    mean_sd,
    paired_differences,
    pooled_estimates,
)

# Candidate signals: the metrics key (or a derived name) and how the report names it.
SIGNALS = {
    "tev_mean": "μ_TEV",
    "tev_std": "σ_TEV",
    "tev_mean/freq_hi": "μ_TEV, frequent third",
    "tev_mean/freq_mid": "μ_TEV, middle third",
    "tev_mean/freq_lo": "μ_TEV, rare third",
    "tev_std/freq_hi": "σ_TEV, frequent third",
    "tev_std/freq_mid": "σ_TEV, middle third",
    "tev_std/freq_lo": "σ_TEV, rare third",
    "tev_per_lr": "ΔTEV/Σlr",
}
DERIVED = {"tev_per_lr": "tev_mean"}  # derived signal: the metric it is computed from


def cumulative_lr(run: Run) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(steps, Σ lr, Σ lr²) over the updates up to and including each logged step; a skipped
    step made no update and adds nothing."""
    rows = [r for r in run.rows if "lr" in r]
    steps = np.array([r["step"] for r in rows], dtype=int)
    lr = np.array([0.0 if r.get("skipped") else num(r["lr"]) for r in rows])
    return steps, np.cumsum(lr), np.cumsum(lr**2)


def signal(run: Run, key: str) -> tuple[np.ndarray, np.ndarray]:
    """(steps, values) of a candidate signal. ΔTEV/Σlr at step t is (μ_TEV(t) − μ_TEV(t0)) over
    the learning rate summed over the updates after the first reading t0; it starts at the first
    reading after an update (at t0 it is undefined, not a divergence)."""
    if key not in DERIVED:
        return run.series(key)
    steps, mu = run.series(DERIVED[key])
    lr_steps, cum, _ = cumulative_lr(run)
    if not len(steps) or not len(lr_steps):
        return np.zeros(0, dtype=int), np.zeros(0)
    since = np.interp(steps, lr_steps, cum) - np.interp(steps[0], lr_steps, cum)
    moved = since > 0
    return steps[moved], (mu[moved] - mu[0]) / since[moved]


def signals_logged(runs: list[Run]) -> list[str]:
    """The candidate signals at least one run logged, in SIGNALS order."""
    logged = {k for r in runs for row in r.rows for k in row}
    return [k for k in SIGNALS if DERIVED.get(k, k) in logged]


def _last_finite(steps: np.ndarray, values: np.ndarray) -> float | None:
    ok = np.isfinite(values)
    return float(values[ok][-1]) if ok.any() else None


# ----------------------------------------------------------------- within-group correlations


def _included(runs: list[Run], summaries: dict[str, dict[str, Any]]) -> list[Run]:
    """Runs that count in a correlation: neither collapsed nor diverged (a run that learned
    nothing would rank last on loss whatever its TEV)."""
    return [
        r for r in runs if not summaries[r.name]["collapsed"] and not summaries[r.name]["diverged"]
    ]


def tev_vs_loss(runs: list[Run], summaries: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Per signal: Spearman's ρ of its final value and the final loss inside each (depth, lr)
    group, pooled, with the permutation p-value of shuffles inside groups (the headline), and
    the same across all runs for contrast (confounded by the learning rate)."""
    mine = _included(runs, summaries)
    groups = [(r.depth, r.lr) for r in mine]
    loss = [summaries[r.name]["final_loss"] for r in mine]
    out = {}
    for key in signals_logged(mine):
        last = [_last_finite(*signal(r, key)) for r in mine]
        x = [math.nan if v is None else v for v in last]
        out[key] = {
            "within": grouped_spearman(x, loss, groups),
            "across": grouped_spearman(x, loss, None),
        }
    return {"runs": len(mine), "left_out": len(runs) - len(mine), "signals": out}


def tev_vs_gradvar(runs: list[Run], summaries: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Per signal, at the featured step (the latest at which the most included runs logged the
    embedding's gradient variance g): Spearman's ρ of the signal and g inside each (depth, lr)
    group, pooled, with shuffles inside groups; across all runs for contrast."""
    mine = [r for r in _included(runs, summaries) if r.series("grad_var_embed")[0].size]
    if not mine:
        return {
            "available": False,
            "reason": "no run that learned logged the embedding's gradient variance "
            "(monitor.gradvar_every = 0, or runs shorter than its cadence)",
        }
    count: dict[int, int] = defaultdict(int)
    for r in mine:
        steps, gv = r.series("grad_var_embed")
        for s in steps[np.isfinite(gv)].tolist():
            count[s] += 1
    most = max(count.values())
    step = max(s for s, c in count.items() if c == most)
    at_step = [(r, r.at("grad_var_embed", step)) for r in mine]
    at = [r for r, v in at_step if v is not None]
    g = [v for _, v in at_step if v is not None]
    groups = [(r.depth, r.lr) for r in at]
    out = {}
    points = {
        r.name: {"grad_var": g[i], "depth": r.depth, "lr": r.lr, "variant": r.variant}
        for i, r in enumerate(at)
    }
    for key in signals_logged(at):
        x = []
        for r in at:
            steps, values = signal(r, key)
            hit = np.flatnonzero(steps == step)
            x.append(float(values[hit[0]]) if len(hit) else math.nan)
            points[r.name][key] = x[-1]
        out[key] = {
            "within": grouped_spearman(x, g, groups),
            "across": grouped_spearman(x, g, None),
        }
    return {"available": True, "step": step, "runs": len(at), "signals": out, "points": points}


# ----------------------------------------------------------------- Adam's references


def adam_references(run: Run) -> dict[str, np.ndarray]:
    """At each step with μ_TEV and σ_TEV: ΔTEV² (mean over rows of TEV_i², = μ² + σ², minus its
    value at the first reading) against two references for the mean squared displacement of an
    entry under Adam, whose update moves each entry by about lr per step whatever the gradient's
    size: pure noise (independent signs each step) gives N = Σ lr², pure drift (the same sign
    every step) gives D = (Σ lr)², sums over the updates after the first reading. The position
    log(ΔTEV²/N) / log(D/N) is 0 at the noise end and 1 at the drift end (undefined while
    ΔTEV² <= 0 or D <= N)."""
    steps, mu = run.series("tev_mean")
    steps_sd, sd = run.series("tev_std")
    lr_steps, cum, cum2 = cumulative_lr(run)
    if not len(steps) or len(steps) != len(steps_sd) or not len(lr_steps):
        return {}
    m2 = mu**2 + sd**2
    noise = np.interp(steps, lr_steps, cum2) - np.interp(steps[0], lr_steps, cum2)
    drift = (np.interp(steps, lr_steps, cum) - np.interp(steps[0], lr_steps, cum)) ** 2
    delta = m2 - m2[0]
    with np.errstate(divide="ignore", invalid="ignore"):
        ok = (delta > 0) & (noise > 0) & (drift > noise)
        position = np.where(
            ok,
            np.log(np.where(ok, delta / noise, 1)) / np.log(np.where(ok, drift / noise, 2)),
            np.nan,
        )
    return {
        "steps": steps,
        "delta_tev2": delta,
        "noise": noise,
        "drift": drift,
        "position": position,
    }


def adam_positions(runs: list[Run]) -> dict[str, Any]:
    """Each run's final position between the references, and per (depth, variant, lr) the mean ±
    sd over seeds."""
    per_run = {r.name: adam_references(r) for r in runs}
    final = {name: _last_finite(v["steps"], v["position"]) for name, v in per_run.items() if v}
    groups: dict[tuple, list[float | None]] = defaultdict(list)
    for r in runs:
        if r.name in final:
            groups[(r.depth, r.variant, r.lr)].append(final[r.name])
    table = [
        {"depth": d, "variant": v, "lr": lr, "position": mean_sd(vals)}
        for (d, v, lr), vals in groups.items()
    ]
    return {"runs": final, "groups": table, "trajectories": {k: v for k, v in per_run.items() if v}}


# ----------------------------------------------------------------- matched step, matched loss


def crossing_step(steps: np.ndarray, values: np.ndarray, target: float) -> float | None:
    """The first (fractional) step at which the series reaches `target` or below, linearly
    interpolated between the readings either side; None if it never does."""
    ok = np.isfinite(values)
    steps, values = steps[ok].astype(float), values[ok]
    below = np.flatnonzero(values <= target)
    if not len(below):
        return None
    i = int(below[0])
    if i == 0 or values[i - 1] == values[i]:
        return float(steps[i])
    frac = (values[i - 1] - target) / (values[i - 1] - values[i])
    return float(steps[i - 1] + frac * (steps[i] - steps[i - 1]))


def _at_final(runs: list[Run], key: str) -> dict[int, float | None]:
    return {r.seed: _last_finite(*signal(r, key)) for r in runs if r.seed is not None}


def _at_loss(runs: list[Run], key: str, target: float) -> dict[int, float]:
    """Each run's signal where its validation loss first reached `target` (interpolated)."""
    out = {}
    for r in runs:
        s = crossing_step(*r.series("val_loss"), target)
        steps, x = signal(r, key)
        ok = np.isfinite(x)
        if s is not None and ok.any() and r.seed is not None:
            out[r.seed] = float(np.interp(s, steps[ok], x[ok]))
    return out


def tev_matched(
    runs: list[Run], comparison: dict[str, Any], recipe: dict[str, str], key: str = "tev_mean"
) -> list[dict[str, Any]]:
    """For every compared cell: the seed-paired difference (variant − baseline) of the signal
    at the final step, and at the validation loss every run of the cell reached (the highest of
    their lowest validation losses), read where each run first reached it. Standard errors
    pooled per learning rate, as in the loss comparison. `recipe`: each run's recipe by name."""
    by: dict[tuple, list[Run]] = defaultdict(list)
    for r in runs:
        by[(recipe[r.name], r.depth, r.lr)].append(r)
    baseline = comparison["baseline"]
    final_d: dict[CellKey, list[float]] = {}
    matched_d: dict[CellKey, list[float]] = {}
    targets: dict[CellKey, float] = {}
    for row in comparison["rows"]:
        if row.estimate is None:
            continue
        k = row.key
        mine, theirs = by[(k.variant, k.depth, k.lr)], by[(baseline, k.depth, k.lr)]
        lows = [
            np.nanmin(v)
            for r in mine + theirs
            for v in [r.series("val_loss")[1]]
            if np.isfinite(v).any()
        ]
        if not lows:
            continue
        target = float(max(lows))
        targets[k] = target

        final_d[k] = paired_differences(_at_final(mine, key), _at_final(theirs, key))
        matched_d[k] = paired_differences(
            _at_loss(mine, key, target), _at_loss(theirs, key, target)
        )
    fin = pooled_estimates({k: d for k, d in final_d.items() if d}, {k: k.lr for k in final_d})
    mat = pooled_estimates({k: d for k, d in matched_d.items() if d}, {k: k.lr for k in matched_d})
    return [
        {"key": k, "target": targets[k], "final": fin.get(k), "matched": mat.get(k)}
        for k in targets
    ]
