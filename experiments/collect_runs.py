"""Copy a sweep's small files into the repository, so its report can be regenerated and the sweep
continued on another machine without the checkpoints.

    python experiments/collect_runs.py runs/paper-cpu-v2 results/paper-cpu-v2/sweep

For every run whose status is final (finished, diverged, failed) it copies config.toml,
provenance.json, status.json and metrics.jsonl, and the result file of a fine-tuning, attack or
embedding run (eval.json, attack.json, embed.json and objective.jsonl) when it has one; it also
copies the sweep's index.jsonl and spec.
`steadylm report DEST` reads the copy as it reads the sweep. To continue the sweep elsewhere,
copy DEST back to a sweep folder: finished runs are kept, the rest are trained.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

SMALL_FILES = (
    "config.toml",
    "provenance.json",
    "status.json",
    "metrics.jsonl",
    "eval.json",
    "attack.json",
    "embed.json",
    "objective.jsonl",
)
FINAL = {"finished", "diverged", "failed"}


def collect(sweep: Path, dest: Path) -> int:
    copied = 0
    for name in ("index.jsonl", "spec.toml"):
        if (sweep / name).is_file():
            dest.mkdir(parents=True, exist_ok=True)
            shutil.copy2(sweep / name, dest / name)
    for run in sorted((sweep / "runs").iterdir()):
        status_file = run / "status.json"
        if not status_file.is_file() or json.loads(status_file.read_text())["status"] not in FINAL:
            continue
        out = dest / "runs" / run.name
        out.mkdir(parents=True, exist_ok=True)
        for name in SMALL_FILES:
            if (run / name).is_file():
                shutil.copy2(run / name, out / name)
        copied += 1
    return copied


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    print(f"{collect(Path(sys.argv[1]), Path(sys.argv[2]))} final runs copied")
