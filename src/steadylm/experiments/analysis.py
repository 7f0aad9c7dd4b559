"""The report's numbers, as plain functions of runs: finals per run, means over seeds,
learning-rate sensitivity, TEV against gradient variance, and the early-warning comparison.

Every definition the report states in words is implemented here, once.
"""

from __future__ import annotations

import math
import warnings
from collections import defaultdict
from typing import Any, Iterable

import numpy as np

from steadylm.experiments.runs import Run, num

TAIL = 10  # the final training loss is the mean of the last TAIL logged losses
PERMUTATIONS = 10_000  # shuffles behind a Spearman p-value


def _finite(x: float | None) -> bool:
    return x is not None and math.isfinite(x)


# ----------------------------------------------------------------- statistics


def rankdata(x: Iterable[float]) -> np.ndarray:
    """Ranks 1..n, ties given the mean of the ranks they span."""
    x = np.asarray(list(x), dtype=float)
    values, inverse, counts = np.unique(x, return_inverse=True, return_counts=True)
    first = np.cumsum(counts) - counts  # 0-based position of each distinct value's first rank
    return (first + (counts + 1) / 2)[inverse]


def spearman(x: Iterable[float], y: Iterable[float]) -> float | None:
    """Spearman's rho: Pearson's correlation of the ranks, over the pairs where both are finite.
    None with fewer than 3 pairs or when either side is constant (rho is undefined)."""
    x, y = np.asarray(list(x), dtype=float), np.asarray(list(y), dtype=float)
    keep = np.isfinite(x) & np.isfinite(y)
    if keep.sum() < 3:
        return None
    rx, ry = rankdata(x[keep]), rankdata(y[keep])
    rx, ry = rx - rx.mean(), ry - ry.mean()
    denom = math.sqrt(float((rx**2).sum() * (ry**2).sum()))
    return float((rx * ry).sum() / denom) if denom > 0 else None


def spearman_pvalue(x: Iterable[float], y: Iterable[float], n: int = PERMUTATIONS, seed: int = 0) -> float | None:
    """Two-sided permutation p-value of Spearman's rho: the share of shuffles of y at least as
    correlated (in absolute value) as observed, counting the observation itself."""
    x, y = np.asarray(list(x), dtype=float), np.asarray(list(y), dtype=float)
    keep = np.isfinite(x) & np.isfinite(y)
    rho = spearman(x[keep], y[keep])
    if rho is None:
        return None
    rx, ry = rankdata(x[keep]), rankdata(y[keep])
    rx = (rx - rx.mean()) / np.linalg.norm(rx - rx.mean())
    ry = (ry - ry.mean()) / np.linalg.norm(ry - ry.mean())
    perms = np.random.default_rng(seed).permuted(np.tile(ry, (n, 1)), axis=1)
    hits = int((np.abs(perms @ rx) >= abs(rho) - 1e-12).sum())
    return (hits + 1) / (n + 1)


def mean_sd(values: Iterable[float | None]) -> dict[str, Any]:
    """Mean and sample standard deviation over the finite values; `n` counts them."""
    v = np.asarray([x for x in values if _finite(x)], dtype=float)
    return {
        "mean": float(v.mean()) if len(v) else None,
        "sd": float(v.std(ddof=1)) if len(v) >= 2 else None,
        "n": int(len(v)),
    }


# ----------------------------------------------------------------- runs


def summarize(run: Run) -> dict[str, Any]:
    """A run's final figures. `diverged`: the trainer stopped it as diverged, or its final
    training loss is not finite or above its first-step loss (training went backwards)."""
    _, loss = run.series("loss")
    initial = float(loss[0]) if len(loss) else None
    final_train = float(loss[-TAIL:].mean()) if len(loss) else None
    val = run.last("val_loss")
    ppl = run.last("val_ppl")
    if ppl is None and val is not None:
        ppl = math.exp(val) if val < 700 else math.inf
    diverged = run.status == "diverged" or (
        initial is not None and not (_finite(final_train) and final_train <= initial)
    )
    skipped = {int(r["step"]) for r in run.rows if r.get("skipped")} | set(run.event_steps("skip"))
    return {
        "name": run.name, "variant": run.variant, "depth": run.depth, "lr": run.lr, "seed": run.seed,
        "status": run.status, "steps": len(run.rows), "error": run.error,
        "initial_loss": initial,
        "final_train_loss": final_train,
        "final_val_loss": val,
        "final_val_ppl": ppl,
        "final_tev_mean": run.last("tev_mean"),
        "final_tev_std": run.last("tev_std"),
        "final_grad_norm": run.last("grad_norm"),
        "spikes": len(run.event_steps("spike")),
        "spike_steps": run.event_steps("spike"),
        "skipped": len(skipped),
        "diverged": diverged,
        "final_loss": val if val is not None else final_train,
    }


def group_table(summaries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (depth, variant, lr): finals as mean ± sd over seeds, spikes and skipped
    steps summed, diverged counted."""
    groups: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
    for s in summaries:
        if s["steps"]:
            groups[(s["depth"], s["variant"], s["lr"])].append(s)
    out = []
    for (depth, variant, lr), members in groups.items():
        out.append({
            "depth": depth, "variant": variant, "lr": lr, "runs": len(members),
            "seeds": sorted(m["seed"] for m in members if m["seed"] is not None),
            **{key: mean_sd(m[key] for m in members)
               for key in ("final_val_loss", "final_val_ppl", "final_tev_mean", "final_tev_std")},
            "spikes": sum(m["spikes"] for m in members),
            "skipped": sum(m["skipped"] for m in members),
            "diverged": sum(m["diverged"] for m in members),
        })
    return out


def lr_sensitivity(summaries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per (depth, variant) with two or more learning rates: the final loss at each, and the
    sensitivity of Wortsman et al. (2023): the mean over learning rates of min(final, initial)
    minus its best value, a diverged run counting as its initial loss."""
    by: dict[tuple, dict[float, list[dict[str, Any]]]] = defaultdict(lambda: defaultdict(list))
    for s in summaries:
        if s["steps"] and s["lr"] is not None:
            by[(s["depth"], s["variant"])][s["lr"]].append(s)
    out = []
    for (depth, variant), per_lr in by.items():
        if len(per_lr) < 2:
            continue
        lrs = sorted(per_lr)
        capped = []
        for lr in lrs:
            vals = [s["initial_loss"] if s["diverged"] or not _finite(s["final_loss"])
                    else min(s["final_loss"], s["initial_loss"]) for s in per_lr[lr]]
            capped.append(float(np.mean(vals)))
        out.append({
            "depth": depth, "variant": variant, "lrs": lrs,
            "final_loss": [mean_sd(s["final_loss"] for s in per_lr[lr] if not s["diverged"]) for lr in lrs],
            "diverged": [sum(s["diverged"] for s in per_lr[lr]) for lr in lrs],
            "runs": [len(per_lr[lr]) for lr in lrs],
            "best_lr": lrs[int(np.argmin(capped))],
            "sensitivity": float(np.mean(capped) - min(capped)),
        })
    return out


# ----------------------------------------------------------------- TEV and gradient variance


def tev_budget(run: Run) -> dict[int, dict[str, float]]:
    """At each step that logged the embedding's gradient variance g: μ_TEV, σ_TEV, g,
    ΔTEV² = mean_i TEV_i² (= μ² + σ²) minus its value at the first step, and the budget
    Σ lr²·g over the updates since, with g interpolated linearly between the steps that logged it
    (skipped steps made no update and add nothing)."""
    gv_steps, gv = run.series("grad_var_embed")
    ok = np.isfinite(gv)
    gv_steps, gv = gv_steps[ok], gv[ok]
    tev = {r["step"]: (num(r["tev_mean"]), num(r["tev_std"])) for r in run.rows if "tev_mean" in r and "tev_std" in r}
    rows = [r for r in run.rows if "lr" in r]
    if not len(gv_steps) or not tev or not rows:
        return {}
    steps = np.array([r["step"] for r in rows])
    moved = np.array([0.0 if r.get("skipped") else 1.0 for r in rows])
    lr = np.array([num(r["lr"]) for r in rows])
    budget = dict(zip(steps.tolist(), np.cumsum(lr**2 * np.interp(steps, gv_steps, gv) * moved).tolist()))
    first = min(tev)  # its TEV reading already includes its own update: count the updates after it
    mu0, sd0 = tev[first]
    out = {}
    for s, g in zip(gv_steps.tolist(), gv.tolist()):
        if s in tev and s in budget and first in budget:
            mu, sd = tev[s]
            out[s] = {"tev_mean": mu, "tev_std": sd, "grad_var": g,
                      "delta_tev2": (mu**2 + sd**2) - (mu0**2 + sd0**2), "budget": budget[s] - budget[first]}
    return out


def tev_vs_gradvar(runs: list[Run]) -> dict[str, Any]:
    """Spearman's rho across runs at each matched step (a step at which several runs logged the
    gradient variance): μ_TEV vs g, σ_TEV vs g, and ΔTEV² vs Σ lr²·g; at the featured step (the
    latest with the most runs) also p-values and the same within each learning rate."""
    per_run = {r.name: tev_budget(r) for r in runs}
    per_run = {k: v for k, v in per_run.items() if v}
    if not per_run:
        return {"available": False, "reason": "no run logged the embedding's gradient variance "
                "(monitor.gradvar_every = 0, or runs shorter than its cadence)"}
    steps = sorted({s for v in per_run.values() for s in v})
    table = []
    for s in steps:
        pts = [v[s] for v in per_run.values() if s in v]
        col = {k: [p[k] for p in pts] for k in pts[0]}
        table.append({
            "step": s, "runs": len(pts),
            "rho_tev_mean": spearman(col["tev_mean"], col["grad_var"]),
            "rho_tev_std": spearman(col["tev_std"], col["grad_var"]),
            "rho_delta": spearman(col["delta_tev2"], col["budget"]),
        })
    usable = [t for t in table if t["rho_tev_mean"] is not None]
    if not usable:
        return {"available": False, "runs": len(per_run), "reason": (
            f"{len(per_run)} run(s) logged gradient variance, but no step has the 3 runs with "
            "finite, non-constant values that a rank correlation needs")}
    most = max(t["runs"] for t in usable)
    featured = max((t for t in usable if t["runs"] == most), key=lambda t: t["step"])["step"]
    points = [{"run": name, **v[featured]} for name, v in per_run.items() if featured in v]
    pv = {
        "p_tev_mean": spearman_pvalue([p["tev_mean"] for p in points], [p["grad_var"] for p in points]),
        "p_tev_std": spearman_pvalue([p["tev_std"] for p in points], [p["grad_var"] for p in points]),
        "p_delta": spearman_pvalue([p["delta_tev2"] for p in points], [p["budget"] for p in points]),
    }
    lr_of = {r.name: r.lr for r in runs}
    by_lr = []
    for lr in sorted({lr_of[p["run"]] for p in points if lr_of[p["run"]] is not None}):
        mine = [p for p in points if lr_of[p["run"]] == lr]
        by_lr.append({"lr": lr, "runs": len(mine),
                      "rho_tev_mean": spearman([p["tev_mean"] for p in mine], [p["grad_var"] for p in mine]),
                      "rho_delta": spearman([p["delta_tev2"] for p in mine], [p["budget"] for p in mine])})
    rhos = [t["rho_tev_mean"] for t in usable]
    return {
        "available": True, "runs": len(per_run), "steps": table, "featured_step": featured,
        "featured": next(t for t in table if t["step"] == featured) | pv,
        "median_rho_tev_mean": float(np.median(rhos)), "points": points, "by_lr": by_lr,
        "trajectories": per_run,
    }


# ----------------------------------------------------------------- early warning


def out_of_range(values: np.ndarray, window: int, k: float) -> np.ndarray:
    """flag[i]: the first difference d_i = x_i − x_{i−1} lies more than k standard deviations
    from the mean of the `window` differences before it (or is not finite). Only the past is
    used, so a flag is something a monitor could have raised at that step. The first window+1
    points cannot be judged and are never flagged."""
    x = np.asarray(values, dtype=float)
    flags = np.zeros(len(x), dtype=bool)
    if len(x) < window + 2:
        return flags
    d = np.diff(x)
    d_clean = np.where(np.isfinite(d), d, np.nan)
    past = np.lib.stride_tricks.sliding_window_view(d_clean, window)[: len(d) - window]  # d[i-1-window:i-1]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN windows after a divergence
        m, s = np.nanmean(past, axis=1), np.nanstd(past, axis=1)
    current = d[window:]  # d_i for i = window+1 ..
    judged = np.isfinite(m) & np.isfinite(s)
    with np.errstate(invalid="ignore"):
        out = ~np.isfinite(current) | (judged & (np.abs(current - m) > k * s))
    flags[window + 1:] = out
    return flags


def _episodes(spikes: list[int], horizon: int) -> list[int]:
    """Spikes that open an episode: a spike within `horizon` steps of the previous one belongs to it."""
    heads, last = [], None
    for s in sorted(set(spikes)):
        if last is None or s - last > horizon:
            heads.append(s)
        last = s
    return heads


SIGNALS = ("tev_mean", "tev_std", "grad_norm")


def early_warning(runs: list[Run], window: int, k: float, horizon: int) -> dict[str, Any]:
    """For each spike episode, per signal: steps between the earliest out-of-range flag within
    `horizon` steps before the spike (the spike's own step included) and the spike; None if none.
    Alongside, each signal's false-alarm rate: the share of judged steps flagged farther than
    `horizon` from any spike, and the chance that rate gives of a flag by luck in a horizon.
    A run's steps after its first non-finite value are not judged (it has diverged)."""
    spikes_out: list[dict[str, Any]] = []
    quiet = {sig: [0, 0] for sig in SIGNALS}  # flagged, judged steps away from spikes
    for run in runs:
        heads = _episodes(run.event_steps("spike"), horizon)
        all_spikes = np.array(run.event_steps("spike"), dtype=int)
        leads: dict[int, dict[str, Any]] = {s: {} for s in heads}
        for sig in SIGNALS:
            steps, x = run.series(sig)
            if len(steps) < window + 2:
                for s in heads:
                    leads[s][sig] = "too short"
                continue
            # After its first non-finite value a run has diverged: nothing later is judged.
            bad = np.flatnonzero(~np.isfinite(x))
            idx = np.arange(len(steps))
            judged = (idx > window) & (idx <= (bad[0] if len(bad) else len(x)))
            flags = out_of_range(x, window, k) & judged
            first_judged = steps[window + 1]
            near = np.zeros(len(steps), dtype=bool)
            for s in all_spikes:
                near |= np.abs(steps - s) <= horizon
            quiet[sig][0] += int((flags & judged & ~near).sum())
            quiet[sig][1] += int((judged & ~near).sum())
            for s in heads:
                if s - horizon < first_judged:
                    leads[s][sig] = "too early"
                    continue
                hit = steps[flags & (steps >= s - horizon) & (steps <= s)]
                leads[s][sig] = int(s - hit.min()) if len(hit) else None
        spikes_out += [{"run": run.name, "step": s, "leads": leads[s]} for s in heads]
    summary = {}
    for sig in SIGNALS:
        scored = [sp["leads"][sig] for sp in spikes_out if not isinstance(sp["leads"].get(sig), str)]
        ahead = [x for x in scored if x is not None and x >= 1]
        flagged, judged = quiet[sig]
        rate = flagged / judged if judged else None
        summary[sig] = {
            "scored": len(scored),
            "ahead": len(ahead),
            "at_spike": sum(1 for x in scored if x == 0),
            "missed": sum(1 for x in scored if x is None),
            "median_lead": float(np.median(ahead)) if ahead else None,
            "false_alarm_rate": rate,
            "chance_per_horizon": 1 - (1 - rate) ** (horizon + 1) if rate is not None else None,
        }
    return {"window": window, "k": k, "horizon": horizon, "spikes": spikes_out, "summary": summary}
