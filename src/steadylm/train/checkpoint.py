"""Atomic, verified checkpoints in the layout of DESIGN §4.

    RUN/checkpoints/step_000100/
        model.safetensors   consolidated fp32 weights (tied head stored once, as wte; a TT
                            embedding as its cores, `transformer.wte.cores.K`)
        train_state/        optimizer (torch.distributed.checkpoint, so it can reshard),
                            rng_rank{r}.pt per rank, trainer.json (step, data cursor),
                            monitors.pt (TEV seen-row mask, spike window)
        config.toml         the resolved config
        tokenizer.json
        manifest.json       sha256 of every file, step, world size, schema version

A checkpoint is written under a temporary name, fsynced and renamed, so a crash leaves either
the previous state or a complete new folder. "Latest" is the newest folder whose manifest
verifies; a corrupt one is named on stderr and skipped.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import warnings
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from steadylm.errors import CheckpointError
from steadylm.fsutil import fsync_dir, sha256_file
from steadylm.train import faults


SCHEMA_VERSION = 1
_PREFIX = "step_"


def step_dir_name(step: int) -> str:
    return f"{_PREFIX}{step:06d}"


def _fsync_tree(root: Path) -> None:
    for p in sorted(root.rglob("*"), key=lambda p: len(p.parts), reverse=True):
        fd = os.open(p, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    fsync_dir(root)


def _files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file() and p.name != "manifest.json")


def model_state_for_saving(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """fp32 copies of the weights, a tied weight once under its first name (`transformer.wte`,
    not `lm_head`: safetensors stores no shared tensors). An untied head (TT embedding with
    `tt_head = "separate"`) is its own tensor and is kept."""
    sd, seen = {}, set()
    for k, v in model.state_dict().items():
        key = (v.data_ptr(), tuple(v.shape))
        if v.numel() and key in seen:  # empty tensors all share address 0: never deduplicated
            continue
        seen.add(key)
        sd[k] = v.detach().to("cpu", torch.float32).contiguous()
    return sd


def _dcp_quiet(fn, *args, **kwargs):
    # Single-process runs use DCP without a process group; its warning about that is expected.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        return fn(*args, **kwargs)


def save_checkpoint(
    run_dir: Path,
    step: int,
    model_state: dict[str, torch.Tensor] | None,
    optim_state: dict[str, Any],
    trainer_state: dict[str, Any],
    config_toml: str,
    tokenizer_json: Path,
    rank: int = 0,
    world_size: int = 1,
    barrier=lambda: None,
    monitor_state: dict[str, Any] | None = None,
) -> Path:
    """Write one checkpoint atomically. Every rank calls this; rank 0 writes all but its RNG/DCP shard.

    `model_state` must be consolidated on rank 0 (None elsewhere); `optim_state` is the
    rank's part of `get_optimizer_state_dict` and is written collectively with DCP.
    """
    import torch.distributed.checkpoint as dcp

    ckpt_root = run_dir / "checkpoints"
    final = ckpt_root / step_dir_name(step)
    tmp = ckpt_root / f".tmp_{step_dir_name(step)}"
    try:
        if rank == 0:
            if tmp.exists():
                shutil.rmtree(tmp)  # left by a crash mid-write
            (tmp / "train_state").mkdir(parents=True)
        barrier()
        _dcp_quiet(dcp.save, {"optim": optim_state}, checkpoint_id=str(tmp / "train_state" / "optim"))
        rng = {"cpu": torch.get_rng_state()}
        if torch.cuda.is_available():
            rng["cuda"] = torch.cuda.get_rng_state()
        torch.save(rng, tmp / "train_state" / f"rng_rank{rank}.pt")
        barrier()
        if rank == 0:
            if monitor_state is not None:
                torch.save(monitor_state, tmp / "train_state" / "monitors.pt")
            _write_rank0_files(tmp, step, model_state, trainer_state, config_toml, tokenizer_json, world_size)
            faults.crash_if_armed("checkpoint-before-rename", step)
            _replace_dir(tmp, final)
            faults.crash_if_armed("checkpoint-after-rename", step)
    except OSError as e:
        if rank == 0:
            shutil.rmtree(tmp, ignore_errors=True)
        previous = next((p.name for p in list_checkpoints(run_dir) if p != final), None)
        raise CheckpointError(
            f"could not write checkpoint {final.name} ({e.strerror or e}); "
            + (f"the previous checkpoint {previous} is intact" if previous else "no earlier checkpoint exists")
        ) from e
    barrier()
    return final


def _write_rank0_files(tmp, step, model_state, trainer_state, config_toml, tokenizer_json, world_size) -> None:
    save_file(model_state, str(tmp / "model.safetensors"), metadata={"format": "pt", "step": str(step)})
    (tmp / "train_state" / "trainer.json").write_text(json.dumps(trainer_state, indent=1))
    (tmp / "config.toml").write_text(config_toml)
    shutil.copyfile(tokenizer_json, tmp / "tokenizer.json")
    manifest = {
        "schema_version": SCHEMA_VERSION,
        "step": step,
        "world_size": world_size,
        "files": {str(p.relative_to(tmp)): sha256_file(p) for p in _files(tmp)},
    }
    (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1))
    _fsync_tree(tmp)


def _replace_dir(tmp: Path, final: Path) -> None:
    """Rename tmp to final. A folder already at final (the same step saved again after a resume)
    is moved aside first and deleted only after the new one is in place."""
    aside = final.with_name(f".old_{final.name}")
    if final.exists():
        shutil.rmtree(aside, ignore_errors=True)
        os.replace(final, aside)
    os.replace(tmp, final)
    fsync_dir(final.parent)
    shutil.rmtree(aside, ignore_errors=True)


def verify_checkpoint(ckpt: Path) -> str | None:
    """None if the manifest verifies, else why not."""
    manifest_path = ckpt / "manifest.json"
    if not manifest_path.is_file():
        return "no manifest.json"
    try:
        manifest = json.loads(manifest_path.read_text())
        files = manifest["files"]
    except (ValueError, KeyError, OSError) as e:
        return f"unreadable manifest ({e})"
    if manifest.get("schema_version") != SCHEMA_VERSION:
        return f"schema version {manifest.get('schema_version')} (this steadylm reads {SCHEMA_VERSION})"
    for rel, digest in files.items():
        p = ckpt / rel
        if not p.is_file():
            return f"missing {rel}"
        if sha256_file(p) != digest:
            return f"{rel} does not match its sha256"
    return None


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Checkpoint folders, newest first (temporary folders excluded)."""
    root = run_dir / "checkpoints"
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and p.name.startswith(_PREFIX) and p.name[5:].isdigit()]
    return sorted(found, key=lambda p: int(p.name[5:]), reverse=True)


def latest_checkpoint(run_dir: Path, quiet: bool = False) -> Path | None:
    """The newest checkpoint whose manifest verifies; corrupt ones are named and skipped."""
    for ckpt in list_checkpoints(Path(run_dir)):
        problem = verify_checkpoint(ckpt)
        if problem is None:
            return ckpt
        if not quiet:
            print(f"steadylm: skipping corrupt checkpoint {ckpt}: {problem}", file=sys.stderr)
    return None


def load_train_state(ckpt: Path, optim_state_template: dict[str, Any], rank: int = 0, world_size: int = 1) -> tuple[dict, dict, dict | None]:
    """Returns (optimizer state, trainer state, this rank's RNG state or None when the checkpoint
    was written by a different world size and holds none for this rank)."""
    import torch.distributed.checkpoint as dcp

    state = {"optim": optim_state_template}
    _dcp_quiet(dcp.load, state, checkpoint_id=str(ckpt / "train_state" / "optim"))
    trainer_state = json.loads((ckpt / "train_state" / "trainer.json").read_text())
    rng_path = ckpt / "train_state" / f"rng_rank{rank}.pt"
    same_world = trainer_state.get("world_size") == world_size
    rng = torch.load(rng_path, weights_only=True) if same_world and rng_path.is_file() else None
    return state["optim"], trainer_state, rng


def load_monitor_state(ckpt: Path) -> dict[str, Any] | None:
    """The monitors' state (TEV seen-row mask, spike window), or None for a checkpoint without it."""
    path = ckpt / "train_state" / "monitors.pt"
    return torch.load(path, weights_only=True) if path.is_file() else None


def prune_checkpoints(run_dir: Path, keep: int) -> None:
    """Keep the newest `keep` checkpoints (0 keeps all)."""
    if keep <= 0:
        return
    for old in list_checkpoints(run_dir)[keep:]:
        shutil.rmtree(old, ignore_errors=True)
