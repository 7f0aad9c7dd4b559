"""Fooling rates of `steadylm attack` runs, per method and layer over seeds, paired against UAT.

    python experiments/attack_table.py DIR [--out FILE.md]

Reads every DIR/*/attack.json. A row is a method and layer (uat, luat at block N); its cells are
the fooling rate on the victim's held-out inputs (mean ± sd over seeds, and each seed), the
neutral-trigger baseline, and the seed-paired difference against UAT with its t interval (each
seed's LUAT search against the UAT search of the same seed, same victim and budget). Runs made
with --transfer get one more table per other classifier: the same figures for the trigger scored
there, beside that classifier's own neutral-trigger baseline.
Runs must share the victim, the task and the search budget; the script refuses a mix.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

from steadylm.experiments.stats import mean_difference, mean_sd, paired_differences

BUDGET = ("iters", "batch", "candidates", "beam", "trigger_len", "max_eval")
LUAT_BUDGET = ("power_iters", "p", "q")  # the singular vector's; uat does not use them


def load(folder: Path) -> list[dict[str, Any]]:
    runs = [json.loads(f.read_text()) for f in sorted(folder.glob("*/attack.json"))]
    if not runs:
        raise SystemExit(f"{folder}: no */attack.json")
    for keys, group in ((BUDGET, runs), (LUAT_BUDGET, [r for r in runs if r["method"] == "luat"])):
        shared = {(r["classifier"], r["eval_task"], _budget(r, keys)) for r in group}
        if len(shared) > 1:
            raise SystemExit(f"{folder}: runs differ in victim, task or budget: {sorted(shared)}")
    return runs


def _budget(run: dict[str, Any], keys: tuple[str, ...]) -> str:
    options = run.get("options", {})
    return json.dumps({k: options.get(k) for k in keys}, sort_keys=True)


def table(runs: list[dict[str, Any]]) -> str:
    baseline = mean_sd(r["baseline_fooling_rate"] for r in runs)
    lines = [
        f"{len(runs)} runs on {runs[0]['classifier']} ({runs[0]['eval_task']}, n_eval "
        f"{runs[0]['n_eval']}); neutral trigger {runs[0]['baseline_trigger_text']!r}: fooling "
        f"rate {baseline['mean']:.3f}",
        "",
        *_rate_rows(runs, lambda r: r["fooling_rate"]),
    ]
    targets = sorted({t for r in runs for t in r.get("transfer_detail", {})})
    for target in targets:
        scored = [r for r in runs if target in r.get("transfer_detail", {})]
        details = [r["transfer_detail"][target] for r in scored]
        base = mean_sd(d["baseline_fooling_rate"] for d in details)
        lines += [
            "",
            f"Transfer to {target} (the trigger re-tokenised as text; n_eval {details[0]['n_eval']}; "
            f"neutral trigger: fooling rate {base['mean']:.3f}):",
            "",
            *_rate_rows(scored, lambda r, t=target: r["transfer_detail"][t]["fooling_rate"]),
        ]
    return "\n".join(lines) + "\n"


def _rate_rows(runs: list[dict[str, Any]], rate: Callable[[dict[str, Any]], float]) -> list[str]:
    """The table of one victim's fooling rates: per method and layer, mean ± sd over seeds,
    each seed, and the seed-paired difference against UAT."""
    rates: dict[str, dict[int, float]] = defaultdict(dict)
    for r in runs:
        name = "uat" if r["method"] == "uat" else f"luat, block {r['layer']}"
        rates[name][int(r["options"]["seed"])] = rate(r)
    lines = [
        "| method | fooling rate, mean ± sd | per seed | − uat, paired (95% t interval) |",
        "|---|---|---|---|",
    ]
    for name in sorted(rates, key=lambda n: (n != "uat", n)):
        seeds = rates[name]
        stat = mean_sd(seeds.values())
        sd = "" if stat["sd"] is None else f" ± {stat['sd']:.3f}"
        per_seed = ", ".join(f"{seeds[s]:.3f} (s{s})" for s in sorted(seeds))
        lines.append(f"| {name} | {stat['mean']:.3f}{sd} | {per_seed} | {_vs_uat(seeds, rates)} |")
    return lines


def _vs_uat(seeds: dict[int, float], rates: dict[str, dict[int, float]]) -> str:
    if seeds is rates.get("uat") or "uat" not in rates:
        return "—"
    diffs = paired_differences(seeds, rates["uat"])
    if not diffs:
        return "no shared seed"
    e = mean_difference(diffs)
    interval = "" if e.lo is None else f" [{e.lo:+.3f}, {e.hi:+.3f}]"
    return f"{e.mean:+.3f}{interval} (n = {e.n})"


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dir", type=Path)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    text = table(load(args.dir))
    if args.out:
        args.out.write_text(text)
    print(text, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
