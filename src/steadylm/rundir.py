"""The run folder: what a training run writes where, and how to find its checkpoints.

    RUN/
        config.toml         the resolved config, written once when the run starts
        provenance.json     versions, device, world size, precision, dataset, start time
        status.json         {"status": running|finished|stopped|diverged|failed, "step": N, ...},
                            replaced atomically at every change
        metrics.jsonl       one JSON object per optimizer step; events on lines of their own
        tensorboard/        only with monitor.tensorboard = true
        checkpoints/
            step_000100/    one checkpoint (its own layout: `steadylm.train.checkpoint`), with a
                            manifest.json holding the sha256 of every file in it

Every reader of runs (the trainer on resume, `sample`, `tev`, `analyze`, `export`, reports and
sweeps) goes through this module, so the layout is written down once. A checkpoint counts only
if its manifest verifies; "latest" is the newest such one, and a corrupt one is named on stderr
and skipped. This module imports only the standard library, `fsutil` and `errors`, so any layer
may use it.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from steadylm.errors import CheckpointError
from steadylm.fsutil import atomic_write, sha256_file

CONFIG = "config.toml"
PROVENANCE = "provenance.json"
STATUS = "status.json"
METRICS = "metrics.jsonl"
CHECKPOINTS = "checkpoints"
MANIFEST = "manifest.json"
SCHEMA_VERSION = 1  # of a checkpoint folder; bumped only with a reader for the older layout
_PREFIX = "step_"


def step_dir_name(step: int) -> str:
    """The folder name of the checkpoint taken after `step` optimizer steps."""
    return f"{_PREFIX}{step:06d}"


def is_run(path: Path | str) -> bool:
    """Whether `path` is a run folder (it holds the run's config.toml)."""
    return (Path(path) / CONFIG).is_file()


def read_status(run: Path | str) -> dict[str, Any]:
    """The run's status.json, or {} when there is none yet (or it cannot be read)."""
    try:
        return json.loads((Path(run) / STATUS).read_text())
    except (OSError, ValueError):
        return {}


def write_status(run: Path | str, status: str, **extra: Any) -> None:
    """Replace status.json atomically and durably: a reader sees the old or the new one."""
    with atomic_write(Path(run) / STATUS) as f:
        f.write((json.dumps({"status": status, **extra}) + "\n").encode())


def read_metrics(run_or_file: Path | str) -> list[dict[str, Any]]:
    """All complete lines of a run's metrics.jsonl (a torn last line, from a crash, is ignored)."""
    path = Path(run_or_file)
    if path.is_dir():
        path = path / METRICS
    rows: list[dict[str, Any]] = []
    if not path.is_file():
        return rows
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # torn write at a crash
    return rows


def verify_checkpoint(ckpt: Path) -> str | None:
    """None if the checkpoint's manifest verifies, else why not."""
    manifest_path = ckpt / MANIFEST
    if not manifest_path.is_file():
        return f"no {MANIFEST}"
    try:
        manifest = json.loads(manifest_path.read_text())
        files = manifest["files"]
    except (ValueError, KeyError, OSError) as e:
        return f"unreadable manifest ({e})"
    if manifest.get("schema_version") != SCHEMA_VERSION:
        version = manifest.get("schema_version")
        return f"schema version {version} (this steadylm reads {SCHEMA_VERSION})"
    for rel, digest in files.items():
        p = ckpt / rel
        if not p.is_file():
            return f"missing {rel}"
        if sha256_file(p) != digest:
            return f"{rel} does not match its sha256"
    return None


def read_manifest(ckpt: Path) -> dict[str, Any]:
    """The manifest of a checkpoint (call `verify_checkpoint` first)."""
    return json.loads((ckpt / MANIFEST).read_text())


def list_checkpoints(run: Path | str) -> list[Path]:
    """Checkpoint folders, newest first, verified or not (temporary folders excluded)."""
    root = Path(run) / CHECKPOINTS
    if not root.is_dir():
        return []
    n = len(_PREFIX)
    found = [
        p
        for p in root.iterdir()
        if p.is_dir() and p.name.startswith(_PREFIX) and p.name[n:].isdigit()
    ]
    return sorted(found, key=lambda p: int(p.name[n:]), reverse=True)


def verified_checkpoints(run: Path | str, quiet: bool = False) -> list[Path]:
    """The checkpoints whose manifest verifies, oldest first; corrupt ones are named on stderr."""
    return list(reversed(list(_verified_newest_first(Path(run), quiet))))


def latest_checkpoint(run: Path | str, quiet: bool = False) -> Path | None:
    """The newest checkpoint whose manifest verifies, or None; corrupt ones are named, skipped."""
    return next(_verified_newest_first(Path(run), quiet), None)


def _verified_newest_first(run: Path, quiet: bool):
    for ckpt in list_checkpoints(run):
        problem = verify_checkpoint(ckpt)
        if problem is None:
            yield ckpt
        elif not quiet:
            print(f"steadylm: skipping corrupt checkpoint {ckpt}: {problem}", file=sys.stderr)


def require_latest_checkpoint(run: Path | str) -> Path:
    """`latest_checkpoint`, or a CheckpointError that lists what the run holds."""
    run = Path(run)
    ckpt = latest_checkpoint(run)
    if ckpt is None:
        found = ", ".join(c.name for c in list_checkpoints(run)) or "none"
        raise CheckpointError(
            f"{run}: no checkpoint with a verified manifest in {run / CHECKPOINTS} (found: {found})"
        )
    return ckpt


def resolve_checkpoint(path: Path | str) -> Path:
    """A run folder resolves to its latest verified checkpoint; any other path is itself."""
    path = Path(path)
    return require_latest_checkpoint(path) if (path / CHECKPOINTS).is_dir() else path
