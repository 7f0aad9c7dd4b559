"""Geometry over training, pooled over seeds: mean and spread per checkpoint and hidden state.

    python experiments/geometry_over_seeds.py OUT LABEL=PROFILE.json[,PROFILE.json...] ...

Each PROFILE.json is what `steadylm analyze RUN --over-training --out DIR` writes (DIR/profile.json),
one per seed; LABEL names the recipe (e.g. pre_ln=a/profile.json,b/profile.json). Only the steps
every seed of a recipe has are pooled. Writes OUT/over_seeds.json (per recipe, step and hidden
state: mean, sd and n of each figure), OUT/over_seeds.md (the figures at the embedding output,
the middle and the last hidden state, at each step) and OUT/over_seeds.png (mean over seeds with
a ±1 sd band, one colour per hidden state, one row per recipe).
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path
from typing import Any

FIGURES = (
    "anisotropy",
    "anisotropy_no_massive",
    "intrinsic_dim",
    "intrinsic_dim_mle",
    "nn_same_token",
    "linearity_no_residual",
)


def _stat(values: list[float]) -> dict[str, Any]:
    finite = [v for v in values if v is not None and v == v]
    return {
        "mean": statistics.fmean(finite) if finite else None,
        "sd": statistics.stdev(finite) if len(finite) > 1 else None,
        "n": len(finite),
    }


def pool(profiles: list[dict[str, Any]]) -> dict[str, Any]:
    """Per step shared by every profile: per hidden state, each figure's mean, sd and n over seeds."""
    by_step = [{c["step"]: c for c in p["checkpoints"]} for p in profiles]
    steps = sorted(set.intersection(*(set(s) for s in by_step)))
    if not steps:
        raise SystemExit("these profiles share no checkpoint step")
    pooled = []
    for step in steps:
        ckpts = [s[step] for s in by_step]
        n_states = min(len(c["layers"]) for c in ckpts)
        layers = [
            {f: _stat([c["layers"][i].get(f) for c in ckpts]) for f in FIGURES}
            for i in range(n_states)
        ]
        pooled.append({"step": step, "layers": layers})
    return {"runs": [p["run"] for p in profiles], "checkpoints": pooled}


def _cell(stat: dict[str, Any]) -> str:
    if stat["mean"] is None:
        return "-"
    sd = "" if stat["sd"] is None else f" ± {stat['sd']:.3g}"
    return f"{stat['mean']:.3g}{sd}"


def markdown(recipes: dict[str, dict[str, Any]]) -> str:
    out = []
    for label, result in recipes.items():
        n_states = len(result["checkpoints"][0]["layers"])
        shown = sorted({0, n_states // 2, n_states - 1})
        out.append(f"## {label} ({len(result['runs'])} seeds: {', '.join(result['runs'])})\n")
        head = [f"{f} h{i}" for f in FIGURES for i in shown]
        out.append("| step | " + " | ".join(head) + " |")
        out.append("|---:|" + "---:|" * len(head))
        for c in result["checkpoints"]:
            cells = [_cell(c["layers"][i][f]) for f in FIGURES for i in shown]
            out.append(f"| {c['step']} | " + " | ".join(cells) + " |")
        out.append("")
    return "\n".join(out)


def plot(recipes: dict[str, dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(
        len(recipes), len(FIGURES), figsize=(4 * len(FIGURES), 3.4 * len(recipes)), squeeze=False
    )
    cmap = plt.get_cmap("viridis")
    for row, (label, result) in zip(axes, recipes.items()):
        ckpts = result["checkpoints"]
        steps = [c["step"] for c in ckpts]
        n_states = len(ckpts[0]["layers"])
        for ax, f in zip(row, FIGURES):
            if all(layer[f]["mean"] is None for c in ckpts for layer in c["layers"]):
                ax.set_title(f"{label}: {f.replace('_', ' ')} (not in these profiles)", fontsize=8)
                ax.set_axis_off()
                continue
            for i in range(n_states):
                stats = [c["layers"][i][f] for c in ckpts]
                mean = [s["mean"] if s["mean"] is not None else float("nan") for s in stats]
                sd = [s["sd"] or 0.0 for s in stats]
                colour = cmap(i / max(n_states - 1, 1))
                ax.plot(steps, mean, "-", color=colour, lw=1.2, label=f"h{i}")
                lo = [m - s for m, s in zip(mean, sd)]
                hi = [m + s for m, s in zip(mean, sd)]
                ax.fill_between(steps, lo, hi, color=colour, alpha=0.15, lw=0)
            ax.set(title=f"{label}: {f.replace('_', ' ')}", xscale="log", xlabel="step")
            ax.grid(alpha=0.3)
        row[0].legend(fontsize=6, ncol=2)
    fig.suptitle("geometry over training: mean over seeds, band ±1 sd", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: list[str]) -> int:
    if len(argv) < 2 or any("=" not in a for a in argv[1:]):
        print(__doc__, file=sys.stderr)
        return 2
    out = Path(argv[0])
    recipes = {}
    for arg in argv[1:]:
        label, files = arg.split("=", 1)
        recipes[label] = pool([json.loads(Path(f).read_text()) for f in files.split(",")])
    out.mkdir(parents=True, exist_ok=True)
    (out / "over_seeds.json").write_text(json.dumps(recipes, indent=1) + "\n")
    (out / "over_seeds.md").write_text(markdown(recipes))
    plot(recipes, out / "over_seeds.png")
    print(f"wrote {out}/over_seeds.{{json,md,png}}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
