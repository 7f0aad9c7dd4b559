"""The corrected final-value statistics of `results/paper-cpu/`, computed from the per-run finals
its summary.json keeps, while its run folders (not in git) wait to be re-created:

    PYTHONPATH=src python experiments/paper-cpu-corrections.py

Collapsed runs (against the unigram cross-entropy of the spec's data), seed-paired Δ per cell
with pooled standard errors and Holm's correction, the depth interaction, each recipe at its own
best learning rate, and final μ_TEV against the final loss and against the gradient variance
within (depth, lr) groups. What needs the per-step series (Δ along training, Adam's references,
matched validation loss, loss-defined early warning) waits for the re-render that
`experiments/paper-cpu-reading.md` describes.
"""

import json
from pathlib import Path

from steadylm.experiments import analysis
from steadylm.experiments.spec import parse_spec
from steadylm.experiments.stats import detectable, grouped_spearman
from steadylm.experiments.sweep import Sweep
from steadylm.experiments.unigram import collapsed, reference

HERE = Path(__file__).parent
summary = json.loads((HERE.parent / "results/paper-cpu/summary.json").read_text())
cfg = Sweep(parse_spec(HERE / "paper-cpu.toml"), HERE / "unused").entries[0].cfg
ref = reference(cfg, progress=False)
runs = summary["runs"]
for r in runs:
    r["collapsed"] = collapsed(r["final_val_loss"], ref)


def ci(e):
    return f"{e.mean:+.3f} [{e.lo:+.3f}, {e.hi:+.3f}], p {e.p:.2g}"


print(f"unigram cross-entropy {ref.nats:.3f} nats over {ref.tokens} validation tokens")
print(f"collapsed: {sum(bool(r['collapsed']) for r in runs)} of {len(runs)} runs")
cmp = analysis.compare_recipes(runs, "pre_ln")
print(f"\nΔ final val loss vs pre_ln, {cmp['family']} cells, pooled df {cmp['pooled_df']}")
for row in cmp["rows"]:
    k, e = row.key, row.estimate
    what = (f"{ci(e)}, Holm {row.holm_p:.2g}, detectable {detectable(e):.3f}" if e
            else f"not compared: {row.excluded.value}")
    print(f"  {k.variant:15s} L{k.depth:<3d} lr {k.lr:<6g} {what}")
print("\ndepth interaction (Δ deepest − Δ shallowest)")
for e in analysis.depth_interaction(cmp):
    print(f"  {e['variant']:15s} lr {e['lr']:<6g} {ci(e['estimate'])}, Holm {e['holm_p']:.2g}")
print("\neach recipe at its own best lr")
for b in analysis.best_lr_comparison(runs, cmp):
    e = b["estimate"]
    print(f"  {b['variant']:15s} L{b['depth']:<3d} lr {b['lr']:<6g} {b['mean']:.3f}"
          + (f"  Δ {ci(e)}" if e and e.lo is not None else ""))
ok = [r for r in runs if not r["collapsed"] and not r["diverged"]]
groups = [(r["depth"], r["lr"]) for r in ok]
tev, loss = [r["final_tev_mean"] for r in ok], [r["final_loss"] for r in ok]
print(f"\nfinal μ_TEV vs final loss, {len(ok)} runs")
print("  within (depth, lr):", grouped_spearman(tev, loss, groups))
print("  across all:        ", grouped_spearman(tev, loss, None))
for lr in (1e-3, 1e-2):
    sub = [i for i, r in enumerate(ok) if r["lr"] == lr]
    print(f"  lr {lr:g} within depths:", grouped_spearman([tev[i] for i in sub], [loss[i] for i in sub],
                                                        [ok[i]["depth"] for i in sub]))
points = {p["run"]: p for p in summary["tev_gradvar"]["points"]}
at = [r for r in ok if r["name"] in points]
print(f"\nμ_TEV vs gradient variance at step {summary['tev_gradvar']['featured_step']}, {len(at)} runs")
x, g = [points[r["name"]]["tev_mean"] for r in at], [points[r["name"]]["grad_var"] for r in at]
print("  within (depth, lr):", grouped_spearman(x, g, [(r["depth"], r["lr"]) for r in at]))
print("  across all:        ", grouped_spearman(x, g, None))
