"""The training step of two revisions of steadylm, timed side by side on this machine.

`steadylm bench` measures one revision; a refactor that promises "no change in speed" needs the
revision before and the one after on the same processor, interleaved so that drift in the
machine's load falls on both. Each revision's `src/` is exported with `git archive` into a
temporary folder; every measurement is a fresh process that imports that revision's
`steadylm.bench.measure_training` (present since eacd8eb) at the reference config (GPT-2
vocabulary, 6 x 256, block 256, batch 8, fp32), with every default monitor on, with them off,
and with MLRA attention (`--configs` picks some). The ratio reported is the median over rounds
of (new step time / old step time) within the round, with its range. Each measurement also
times the periodic monitors' steps, so one takes a few minutes at one thread.

    python experiments/bench_revisions.py eacd8eb HEAD --configs fp32 fp32-monitors-off \
        --rounds 2 --out results/bench/revisions
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
from io import BytesIO
from pathlib import Path

CONFIGS = {
    "fp32": ['train.precision="fp32"'],
    "fp32-monitors-off": ['train.precision="fp32"', "MONITORS_OFF"],
    "mlra-fp32": ['train.precision="fp32"', 'model.attention="mlra"'],
}

# Runs in the exported revision: its own bench module, its own monitors-off list.
MEASURE = """
import json, sys
from steadylm import bench
overrides = [o for x in json.loads(sys.argv[1]) for o in (bench.MONITORS_OFF if x == "MONITORS_OFF" else [x])]
m = bench.measure_training(sys.argv[2], overrides, int(sys.argv[3]), int(sys.argv[4]))
print(json.dumps({"step_s": m.step_s, "sections": m.sections, "peak_rss_mb": m.peak_rss_mb}))
"""


def export(repo: Path, rev: str, into: Path) -> tuple[str, Path]:
    """`rev`'s src/ unpacked into `into`; returns the full commit id and the src folder."""
    commit = subprocess.run(
        ["git", "rev-parse", rev], cwd=repo, check=True, capture_output=True, text=True
    ).stdout.strip()
    archive = subprocess.run(
        ["git", "archive", commit, "src"], cwd=repo, check=True, capture_output=True
    ).stdout
    with tarfile.open(fileobj=BytesIO(archive)) as tar:
        tar.extractall(into, filter="data")
    return commit, into / "src"


def measure(src: Path, label: str, steps: int, warmup: int) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", MEASURE, json.dumps(CONFIGS[label]), label, str(steps), str(warmup)],
        check=True,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(src)},
    ).stdout
    return json.loads(out.strip().splitlines()[-1])


def compare(
    repo: Path, old: str, new: str, configs: list[str], rounds: int, steps: int, warmup: int
) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        revs = {
            name: export(repo, rev, Path(tmp) / name) for name, rev in (("old", old), ("new", new))
        }
        rows: dict[str, dict[str, list[dict]]] = {
            label: {"old": [], "new": []} for label in configs
        }
        for r in range(rounds):
            for label in configs:
                # Alternate which revision goes first, so a trend in the load favours neither.
                order = ("old", "new") if r % 2 == 0 else ("new", "old")
                for name in order:
                    rows[label][name].append(measure(revs[name][1], label, steps, warmup))
                    print(
                        f"round {r + 1}/{rounds} {label} {name}: "
                        f"{rows[label][name][-1]['step_s'] * 1e3:.0f} ms",
                        file=sys.stderr,
                    )
    summary = {}
    for label, by_rev in rows.items():
        ratios = [
            n["step_s"] / o["step_s"] for o, n in zip(by_rev["old"], by_rev["new"], strict=True)
        ]
        summary[label] = {
            "old_step_ms": statistics.median(m["step_s"] for m in by_rev["old"]) * 1e3,
            "new_step_ms": statistics.median(m["step_s"] for m in by_rev["new"]) * 1e3,
            "new_over_old": statistics.median(ratios),
            "range": [min(ratios), max(ratios)],
            "old_rss_mb": statistics.median(m["peak_rss_mb"] for m in by_rev["old"]),
            "new_rss_mb": statistics.median(m["peak_rss_mb"] for m in by_rev["new"]),
        }
    return {
        "old": revs["old"][0],
        "new": revs["new"][0],
        "threads": os.environ.get("OMP_NUM_THREADS", "torch's default"),
        "rounds": rounds,
        "steps": steps,
        "warmup": warmup,
        "summary": summary,
        "raw": rows,
    }


def format_table(r: dict) -> str:
    lines = [
        f"old {r['old'][:10]}, new {r['new'][:10]}: {r['rounds']} interleaved rounds, "
        f"median of {r['steps']} steps after {r['warmup']} each, OMP_NUM_THREADS={r['threads']}",
        f"{'run':<20} {'old ms':>8} {'new ms':>8} {'new/old':>8}  (range)      "
        f"{'old RSS':>8} {'new RSS':>8}",
    ]
    for label, s in r["summary"].items():
        lo, hi = s["range"]
        lines.append(
            f"{label:<20} {s['old_step_ms']:>8.0f} {s['new_step_ms']:>8.0f} "
            f"{s['new_over_old']:>8.3f}  ({lo:.3f}-{hi:.3f})  "
            f"{s['old_rss_mb']:>8.0f} {s['new_rss_mb']:>8.0f}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("old", help="the revision before (any git revision)")
    ap.add_argument("new", help="the revision after")
    ap.add_argument("--configs", nargs="+", choices=list(CONFIGS), default=list(CONFIGS))
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=6, help="timed steps per measurement")
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    ap.add_argument("--out", type=Path, help="also write revisions.json and revisions.md here")
    args = ap.parse_args(argv)
    repo = Path(__file__).resolve().parent.parent
    result = compare(repo, args.old, args.new, args.configs, args.rounds, args.steps, args.warmup)
    table = format_table(result)
    print(table)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "revisions.json").write_text(json.dumps(result, indent=1) + "\n")
        command = " ".join(["python experiments/bench_revisions.py", *(argv or sys.argv[1:])])
        (args.out / "revisions.md").write_text(f"Produced by `{command}`.\n\n```\n{table}\n```\n")


if __name__ == "__main__":
    main()
