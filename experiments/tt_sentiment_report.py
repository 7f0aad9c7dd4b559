"""The table and plot of `experiments/tt_sentiment.py`, from the run files it wrote:

    python experiments/tt_sentiment_report.py results/tt-embeddings/sentiment

OUT/summary.md and OUT/summary.json: per variant, test accuracy mean ± sample std over seeds, every
seed's value, embedding parameters and compression, and the seed-paired differences against
`dense` and, when it was run, `dense-glorot` (variant minus reference at each seed, mean with a
Student t 95% interval on n − 1 degrees of freedom, each variant's own spread).
OUT/accuracy_vs_compression.png: test accuracy against embedding compression, seeds as points,
mean ± std as a bar.
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from steadylm.errors import SteadyLMError
from steadylm.experiments.plots import colors_for, save
from steadylm.experiments.stats import mean_sd, paired_differences, pooled_estimates
from steadylm.fsutil import atomic_write

# References for the seed-paired differences, when present: the paper's dense baseline, and the
# dense table started at the TT init's scale (the control for init against structure).
BASELINES = ("dense", "dense-glorot")
PLOT = "accuracy_vs_compression.png"


def load_runs(out: Path) -> list[dict[str, Any]]:
    runs = [json.loads(p.read_text()) for p in sorted((out / "runs").glob("*.json"))]
    if not runs:
        raise SteadyLMError(f"{out}: no runs/*.json; run experiments/tt_sentiment.py --out {out}")
    return runs


def summarise(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per variant: dense, dense-glorot, then the rest by compression."""
    by_variant: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in runs:
        by_variant[r["variant"]].append(r)
    acc_by_seed = {v: {r["seed"]: r["test_acc"] for r in rs} for v, rs in by_variant.items()}
    estimates = {  # baseline -> variant -> Estimate, each variant's own spread
        b: pooled_estimates({
            v: d for v in by_variant if v != b
            if (d := paired_differences(acc_by_seed[v], acc_by_seed[b]))})
        for b in BASELINES if b in by_variant
    }  # fmt: skip
    rows = []
    for v, rs in by_variant.items():
        rs = sorted(rs, key=lambda r: r["seed"])
        acc = mean_sd(r["test_acc"] for r in rs)
        rows.append({
            "variant": v,
            "tt_shape": rs[0]["tt_shape"],
            "embedding_params": rs[0]["embedding_params"],
            "compression": rs[0]["compression"],
            "total_params": rs[0]["total_params"],
            "n": acc["n"],
            "test_acc_mean": acc["mean"],
            "test_acc_sd": acc["sd"],
            "val_acc_mean": mean_sd(r["val_acc"] for r in rs)["mean"],
            "test_acc": {str(r["seed"]): r["test_acc"] for r in rs},
            "best_epoch": {str(r["seed"]): r["best_epoch"] for r in rs},
            "wall_s_mean": mean_sd(r["wall_s"] for r in rs)["mean"],
            "diff_vs": {b: {"mean": e.mean, "n": e.n, "df": e.df, "lo": e.lo, "hi": e.hi, "p": e.p}
                        for b, es in estimates.items() if (e := es.get(v))},
        })  # fmt: skip
    order = {b: i for i, b in enumerate(BASELINES)}  # references first, then by compression
    return sorted(rows, key=lambda row: (order.get(row["variant"], len(order)), row["compression"]))


def _pm(mean: float | None, sd: float | None) -> str:
    if mean is None:
        return "–"
    return f"{mean:.4f} ± {sd:.4f}" if sd is not None else f"{mean:.4f}"


def _diff(d: dict[str, Any] | None) -> str:
    if d is None:
        return "–"
    if d["lo"] is None:
        return f"{d['mean']:+.4f} (n={d['n']}, no interval)"
    return f"{d['mean']:+.4f} [{d['lo']:+.4f}, {d['hi']:+.4f}] (n={d['n']}, p={d['p']:.2g})"


def markdown(rows: list[dict[str, Any]]) -> str:
    present = [b for b in BASELINES if any(b in r["diff_vs"] for r in rows)]
    head = ("| variant | TT shape | embedding params | compression | total params | "
            "test acc (mean ± std) | per seed | best epoch | s / run |"
            + "".join(f" − {b}, paired (95% t CI) |" for b in present))  # fmt: skip
    lines = [head, "|" + "---|" * (9 + len(present))]
    for r in rows:
        diffs = "".join(f" {_diff(r['diff_vs'].get(b))} |" for b in present)
        seeds = ", ".join(f"s{s} {a:.4f}" for s, a in r["test_acc"].items())
        epochs = ", ".join(str(e) for e in r["best_epoch"].values())
        lines.append(
            f"| {r['variant']} | {r['tt_shape'] or 'dense'} | {r['embedding_params']:,} | "
            f"{r['compression']:.1f}× | {r['total_params']:,} | "
            f"{_pm(r['test_acc_mean'], r['test_acc_sd'])} | {seeds} | {epochs} | "
            f"{r['wall_s_mean']:.0f} |{diffs}"
        )
    return "\n".join(lines) + "\n"


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    fig = Figure(figsize=(6.4, 4.2))
    ax = fig.add_subplot()
    colors = colors_for([r["variant"] for r in rows])
    placed: dict[float, int] = defaultdict(int)  # variants already drawn at a compression
    for r in rows:
        # variants of equal size (dense, dense-glorot) side by side instead of on top
        x = r["compression"] * 1.12 ** placed[round(r["compression"], 3)]
        placed[round(r["compression"], 3)] += 1
        c = colors[r["variant"]]
        ax.scatter([x] * r["n"], list(r["test_acc"].values()), s=14, color=c, alpha=0.5)
        ax.errorbar(x, r["test_acc_mean"], yerr=r["test_acc_sd"] or 0, fmt="o", ms=7,
                    capsize=4, color=c, label=f"{r['variant']} ({r['compression']:.0f}×)")  # fmt: skip
    ax.set_xscale("log")
    ax.set_xlabel("embedding compression (dense |V|·d / embedding parameters)")
    ax.set_ylabel("test accuracy")
    ax.set_title("bi-LSTM sentiment: seeds (points), mean ± std (bars)", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    save(fig, path)


def write_report(out: Path) -> list[dict[str, Any]]:
    rows = summarise(load_runs(out))
    with atomic_write(out / "summary.json") as f:
        f.write((json.dumps(rows, indent=1) + "\n").encode())
    with atomic_write(out / "summary.md") as f:
        f.write(markdown(rows).encode())
    plot(rows, out / PLOT)
    return rows


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    try:
        print(markdown(write_report(Path(sys.argv[1]))), end="")
    except SteadyLMError as e:
        print(f"tt_sentiment_report: error: {e}", file=sys.stderr)
        sys.exit(2)
