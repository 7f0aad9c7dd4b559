"""`make demo`: baseline against MLRA on a deep, narrow GPT-2, two seeds each, trained on the
default corpus side by side, then the comparison table, the seed-paired gap against the seed
spread, and the path of the HTML report."""

from __future__ import annotations

import os
import sys
import time
from importlib import resources
from pathlib import Path

from steadylm.errors import SteadyLMError
from steadylm.status import RunStatus

SPEC = "demo.toml"  # steadylm/experiments/demo.toml: what is trained, with why


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def comparison_table(groups: list[dict]) -> str:
    """One line per variant: the figures the paper compares (from the report's summary.json)."""

    def cell(stat: dict, spec: str) -> str:
        return "n/a" if stat["mean"] is None else format(stat["mean"], spec)

    lines = [
        f"{'variant':<10} {'val loss':>9} {'val ppl':>9} {'mu_TEV':>9} {'sigma_TEV':>10} {'spikes':>7}  diverged"
    ]
    for g in groups:
        lines.append(
            f"{g['variant']:<10} {cell(g['final_val_loss'], '.4f'):>9} {cell(g['final_val_ppl'], '.2f'):>9} "
            f"{cell(g['final_tev_mean'], '.5f'):>9} {cell(g['final_tev_std'], '.5f'):>10} {g['spikes']:>7}  "
            f"{'yes' if g['diverged'] else 'no'}"
        )
    return "\n".join(lines)


def gap_verdict(runs: list[dict], baseline: str = "pre_ln", variant: str = "mlra") -> str:
    """Seed-paired final-loss differences (variant − baseline) and whether they exceed the seed
    spread: both seeds' differences share a sign and each is larger than the largest difference
    between two seeds of the same arm. The rule is stated in the output; with two seeds a t
    interval (1 degree of freedom) is too wide to be the verdict, and the report gives it."""
    loss = {(r["variant"], r["seed"]): r["final_loss"] for r in runs}
    seeds = sorted(s for (v, s) in loss if v == variant and (baseline, s) in loss)
    pairs = [(s, loss[(variant, s)], loss[(baseline, s)]) for s in seeds]
    if len(pairs) < 2 or any(a is None or b is None for _, a, b in pairs):
        return f"{variant} − {baseline}: fewer than two seeds with a final loss in both arms; no verdict"
    diffs = [a - b for _, a, b in pairs]
    spread = max(
        max(x[i] for x in pairs) - min(x[i] for x in pairs) for i in (1, 2)
    )  # the largest seed-to-seed range within one arm
    listed = ", ".join(f"{d:+.3f} (seed {s})" for d, (s, _, _) in zip(diffs, pairs, strict=True))
    head = f"{variant} − {baseline}, final loss: {listed}; seed-to-seed spread within an arm up to {spread:.3f}"
    same_sign = all(d > 0 for d in diffs) or all(d < 0 for d in diffs)
    if same_sign and min(abs(d) for d in diffs) > spread:
        ahead = variant if diffs[0] < 0 else baseline
        return f"{head}\n-> the gap exceeds the seed spread in every seed: {ahead} is ahead at this setting"
    return (
        f"{head}\n-> the gap is within the seed spread: these seeds cannot tell the two apart here"
    )


def main() -> int:
    import json

    from steadylm.experiments.report import Options, write_report
    from steadylm.experiments.spec import parse_spec
    from steadylm.experiments.sweep import Sweep

    out = Path("runs") / f"demo-{time.strftime('%Y%m%d-%H%M%S')}"
    jobs = 2 if _cores() >= 2 else 1
    with resources.as_file(resources.files("steadylm.experiments") / SPEC) as spec_path:
        try:
            spec = parse_spec(spec_path)
            sweep = Sweep(spec, out)
            plan = sweep.entries[0].cfg
            print(
                f"steadylm demo: pre-LN baseline vs MLRA, {plan.model.n_layer} layers x {plan.model.n_embd} wide, "
                f"{plan.train.max_steps} steps at lr {plan.train.lr:g}, seeds {', '.join(map(str, spec.seeds or []))}, "
                f"on the default corpus, into {out}",
                flush=True,
            )
            if not sweep.run(jobs=jobs):
                print("steadylm demo: interrupted", file=sys.stderr)
                return 130
            html = write_report(
                [out], out / "report", Options(title="steadylm demo: pre-LN baseline vs MLRA")
            )
        except SteadyLMError as e:
            print(f"steadylm demo: error: {e}", file=sys.stderr)
            return 2
    summary = json.loads((html.parent / "summary.json").read_text())
    print()
    print(comparison_table(summary["groups"]))
    print(gap_verdict(summary["runs"]))
    d = plan.model.n_embd
    print(
        f"(at GPT-2 init, mu_TEV = 0.0200 and sigma_TEV = 0.02/sqrt(2d) = {0.02 / (2 * d) ** 0.5:.5f})"
    )
    print(f"report  {html}")
    print(
        f"next    steadylm tev {out}/runs/*   |   steadylm sweep experiments/paper-cpu-v2.toml --out "
        "runs/paper-cpu-v2 --jobs 2"
    )
    return 0 if all(e.status == RunStatus.FINISHED for e in sweep.entries) else 1


if __name__ == "__main__":
    sys.exit(main())
