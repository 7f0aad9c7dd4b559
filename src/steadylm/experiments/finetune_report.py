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


def _run_row(r: dict[str, Any]) -> list[str]:
    """One run of the runs table: status, and its test results when it has them."""
    e = r["eval"]
    results = (
        (e["task"], e["method"], str(e["seed"]), f"{e['accuracy']:.4f}", f"{e['macro_f1']:.4f}")
        if e
        else ("—",) * 5
    )
    return [r["name"], r["status"], *results]


def _blocks(runs: list[dict[str, Any]], done: int, groups: list[dict[str, Any]], options) -> list:
    """The report's document: title, preface, how to read it, the per-(task, method) table
    and the runs table."""
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
        Heading("Runs"),
        Table(
            ["run", "status", "task", "method", "seed", "accuracy", "macro-F1"],
            [_run_row(r) for r in runs],
        ),
    ]
    return [b for b in blocks if b is not None]


def write_into(tmp: Path, folders: list[str | Path], options) -> None:
    """Write the fine-tuning report of `folders` into `tmp`: report.md, report.html and
    summary.json (the groups and every run)."""
    from steadylm.experiments.report import write_documents

    runs = _collect(folders)
    done = [r["eval"] for r in runs if r["eval"]]
    groups = _group(done)
    summary = {
        "steadylm_version": steadylm.__version__,
        "sources": [str(f) for f in folders],
        "groups": groups,
        "runs": runs,
    }
    write_documents(tmp, _blocks(runs, len(done), groups, options), summary, options.title)
