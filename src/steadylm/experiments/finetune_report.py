"""`steadylm report` on fine-tuning runs: accuracy ± spread per task and method, and the costs.

A folder holds fine-tuning runs when its run folders' config.toml has a [finetune] table (a
sweep with `job = "finetune"`, one run, or a folder of runs). Figures come from each run's
eval.json; runs without one (unfinished or failed) are listed with their status.
"""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any

import steadylm
from steadylm.experiments.analysis import mean_sd
from steadylm.experiments.document import Heading, Para, Table
from steadylm.experiments.stats import detectable, mean_difference, paired_differences
from steadylm.experiments.sweep import read_index, read_status

METHOD_ORDER = ("full", "lora", "sparsegrad")


def _is_finetune(run_dir: Path) -> bool:
    try:
        return "finetune" in tomllib.loads((run_dir / "config.toml").read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError):
        return False


def _run_dirs(folder: Path) -> list[tuple[str, Path]]:
    if (folder / "index.jsonl").is_file():
        return [(rec["name"], folder / rec["dir"]) for rec in read_index(folder)]
    if (folder / "config.toml").is_file():
        return [(folder.name, folder)]
    if folder.is_dir():
        return [
            (sub.name, sub) for sub in sorted(folder.iterdir()) if (sub / "config.toml").is_file()
        ]
    return []


def finetune_runs(folders: list[str | Path]) -> list[tuple[str, Path]]:
    """(name, run dir) of every fine-tuning run in `folders`; empty if they hold none."""
    runs = [r for f in map(Path, folders) for r in _run_dirs(f)]
    found = [r for r in runs if _is_finetune(r[1])]
    return (
        found
        if found and len(found) == len([r for r in runs if (r[1] / "config.toml").is_file()])
        else []
    )


def _fmt(stat: dict[str, Any], spec: str) -> str:
    if stat["mean"] is None:
        return "—"
    sd = f" ± {format(stat['sd'], spec)}" if stat["sd"] is not None else ""
    return format(stat["mean"], spec) + sd


_AVERAGED = (
    "accuracy",
    "macro_f1",
    "trainable_params",
    "mlp_budget",
    "peak_mem_mb",
    "steps_per_s",
    "steps_per_cpu_s",
    "hosvd_seconds",
)


def _collect(folders: list[str | Path]) -> list[dict[str, Any]]:
    """Every fine-tuning run in `folders`: its name, folder, status and eval.json (None if
    it has none yet)."""
    runs = []
    for name, run_dir in finetune_runs(folders):
        path = run_dir / "eval.json"
        result = json.loads(path.read_text()) if path.is_file() else None
        runs.append(
            {
                "name": name,
                "dir": str(run_dir),
                "status": read_status(run_dir).get("status", "not started"),
                "eval": result,
            }
        )
    return runs


def _group(done: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The evaluated runs per (task, method), in task then METHOD_ORDER order: seeds, and the
    mean ± sd over seeds of accuracy, macro-F1 and the costs."""
    keys = sorted(
        {(e["task"], e["method"]) for e in done},
        key=lambda k: (k[0], METHOD_ORDER.index(k[1]) if k[1] in METHOD_ORDER else 99),
    )
    groups = []
    for task, method in keys:
        members = [e for e in done if e["task"] == task and e["method"] == method]
        groups.append(
            {
                "task": task,
                "method": method,
                "runs": len(members),
                "seeds": sorted(e["seed"] for e in members),
                **{k: mean_sd(e.get(k) for e in members) for k in _AVERAGED},
                "k": members[0].get("k"),
                "lora_rank": members[0].get("lora_rank"),
            }
        )
    return groups


def _group_row(g: dict[str, Any]) -> list[str]:
    """One (task, method) row of the accuracy-and-cost table."""
    return [
        g["task"],
        g["method"],
        str(g["runs"]),
        _fmt(g["accuracy"], ".4f"),
        _fmt(g["macro_f1"], ".4f"),
        _fmt(g["trainable_params"], ",.0f"),
        _fmt(g["mlp_budget"], ",.0f"),
        _fmt(g["peak_mem_mb"], ".0f"),
        _fmt(g["steps_per_s"], ".2f"),
        _fmt(g["steps_per_cpu_s"], ".2f"),
        _fmt(g["hosvd_seconds"], ".1f"),
        f"k={g['k']}" if g["k"] else (f"r={g['lora_rank']}" if g["lora_rank"] else "—"),
    ]


# The comparisons the SparseGrad paper makes: each parameter-efficient method against full
# fine-tuning, and SparseGrad against LoRA at the same budget.
PAIRS = (("lora", "full"), ("sparsegrad", "full"), ("sparsegrad", "lora"))


def compare_methods(done: list[dict[str, Any]], key: str = "accuracy") -> list[dict[str, Any]]:
    """Per task and pair of PAIRS both ran: the mean over seeds of (a − b) in `key`, paired by
    seed (the same seed gives both methods the same data order and head initialisation), with
    its t interval on n − 1 degrees of freedom and the smallest difference it could detect."""
    by: dict[tuple[str, str], dict[int, float]] = {}
    for run in done:
        by.setdefault((run["task"], run["method"]), {})[run["seed"]] = run[key]
    rows = []
    for task in sorted({t for t, _ in by}):
        for a, b in PAIRS:
            if (task, a) not in by or (task, b) not in by:
                continue
            d = paired_differences(by[(task, a)], by[(task, b)])
            if not d:
                continue
            e = mean_difference(d)
            rows.append({"task": task, "a": a, "b": b, "diffs": d, "estimate": e,
                         "detectable": detectable(e)})  # fmt: skip
    return rows


def _comparison_row(c: dict[str, Any]) -> list[str]:
    e = c["estimate"]
    interval = f"[{e.lo:+.4f}, {e.hi:+.4f}]" if e.lo is not None else "—"
    return [
        c["task"],
        f"{c['a']} − {c['b']}",
        str(e.n),
        " ".join(f"{x:+.4f}" for x in c["diffs"]),
        f"{e.mean:+.4f}",
        interval,
        f"{e.p:.2g}" if e.p is not None else "—",
        f"{c['detectable']:.4f}" if c["detectable"] is not None else "—",
    ]


def _run_row(r: dict[str, Any]) -> list[str]:
    """One run of the runs table: status, and its test results when it has them."""
    e = r["eval"]
    results = (
        (e["task"], e["method"], str(e["seed"]), f"{e['accuracy']:.4f}", f"{e['macro_f1']:.4f}")
        if e
        else ("—",) * 5
    )
    return [r["name"], r["status"], *results]


def _blocks(
    runs: list[dict[str, Any]],
    done: int,
    groups: list[dict[str, Any]],
    comparisons: list[dict[str, Any]],
    options,
) -> list:
    """The report's document: title, preface, how to read it, the per-(task, method) table,
    the seed-paired comparisons and the runs table."""
    blocks = [
        Heading(
            options.title if options.title != "steadylm report" else "steadylm fine-tuning report",
            level=1,
        ),
        Para(options.preface) if options.preface else None,
        Para(
            f"{len(runs)} runs, {done} with test results. Accuracy and macro-F1 on the test split, "
            "mean ± sample standard deviation over seeds; peak memory is the process's peak resident set on "
            "a CPU (peak allocated memory on a GPU); steps/s counts training steps only, per wall-clock and per "
            "process-CPU second; MLP budget is what the MLP matrices learn per step (k or r·(d_in + d_out), "
            "summed over matrices)."
        ),
        Heading("Accuracy and cost per task and method"),
        Table(
            [
                "task",
                "method",
                "seeds",
                "accuracy",
                "macro-F1",
                "trainable params",
                "MLP budget",
                "peak MB",
                "steps/s",
                "steps/CPU s",
                "HOSVD s",
                "k / LoRA rank",
            ],
            [_group_row(g) for g in groups],
        ),
        *_comparison_blocks(comparisons),
        Heading("Runs"),
        Table(
            ["run", "status", "task", "method", "seed", "accuracy", "macro-F1"],
            [_run_row(r) for r in runs],
        ),
    ]
    return [b for b in blocks if b is not None]


def _comparison_blocks(comparisons: list[dict[str, Any]]) -> list:
    """The seed-paired method comparisons with how to read them; nothing when there are none."""
    if not comparisons:
        return []
    return [
        Heading("Methods compared, seed by seed"),
        Para(
            "Test accuracy of method a minus method b on the same task, seed by seed (a seed gives "
            "both the same data order and classifier-head initialisation), averaged; 95% Student's t "
            "interval on n − 1 degrees of freedom; p tests a difference of 0; 'detectable' is the "
            "smallest true difference found with 80% power at the 0.05 level, (t(0.975) + t(0.8)) × SE. "
            "No correction for the several pairs compared."
        ),
        Table(
            ["task", "a − b", "seeds", "per seed", "mean", "95% CI", "p", "detectable"],
            [_comparison_row(c) for c in comparisons],
        ),
    ]


def write_into(tmp: Path, folders: list[str | Path], options) -> None:
    """Write the fine-tuning report of `folders` into `tmp`: report.md, report.html and
    summary.json (the groups and every run)."""
    from steadylm.experiments.report import write_documents

    runs = _collect(folders)
    done = [r["eval"] for r in runs if r["eval"]]
    groups = _group(done)
    comparisons = compare_methods(done)
    summary = {
        "steadylm_version": steadylm.__version__,
        "sources": [str(f) for f in folders],
        "groups": groups,
        "comparisons": [
            {k: v for k, v in c.items() if k != "estimate"} | {"estimate": vars(c["estimate"])}
            for c in comparisons
        ],
        "runs": runs,
    }
    write_documents(
        tmp, _blocks(runs, len(done), groups, comparisons, options), summary, options.title
    )
