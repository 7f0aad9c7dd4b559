"""Atomic, verified checkpoints of named state components.

    RUN/checkpoints/step_000100/
        model.safetensors   consolidated fp32 weights (tied head stored once, as wte; a TT
                            embedding as its cores, `transformer.wte.cores.K`)
        train_state/        optim/ (torch.distributed.checkpoint, so it can reshard),
                            rng_rank{r}.pt per rank, trainer.json (step, data cursor),
                            monitors.pt (TEV seen-row mask, spike window), scaler.pt (fp16 only)
        config.toml         the resolved config
        tokenizer.json
        manifest.json       sha256 of every file, step, world size, schema version

A checkpoint is written under a temporary name, fsynced and renamed, so a crash leaves either
the previous state or a complete new folder. Finding checkpoints (listing, verifying, "latest")
belongs to the run folder: `steadylm.rundir`.

Components
----------
Every piece of state is a `Component`: a name, its file in the checkpoint folder, an object with
`state_dict()` / `load_state_dict(state)`, and the format of the file::

    Component("monitors", "train_state/monitors.pt", trainer.monitors, "torch", required=False)

`save_checkpoint` calls `state_dict()` on every rank, in list order (it may be a collective), and
writes each in its format; `load_checkpoint` reads them back in the same order and calls
`load_state_dict`. Formats (see `FORMATS`):

    safetensors  a flat dict of tensors consolidated on rank 0 (other ranks return None)
    dcp          torch.distributed.checkpoint: every rank writes its shard; loading fills the
                 template that `state_dict()` returns, resharding across world sizes
    json         rank 0's dict, as JSON
    torch        rank 0's dict, with torch.save; every rank loads it
    per_rank     each rank's own dict at a path holding "{rank}"; restored only when the world
                 size is the one that wrote it

A component with `required=False` may be absent from a checkpoint (one written before it existed):
loading leaves it as it is. `load_checkpoint` returns the names it restored, so the caller can
react to what was missing. Adding a piece of state (a classifier head, a LoRA adapter) is one more
`Component` in the list the job passes; nothing here changes.
"""

from __future__ import annotations

import json
import shutil
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
from safetensors.torch import load_file, save_file

from steadylm.errors import CheckpointError
from steadylm.fsutil import fsync_tree, replace_dir, sha256_file
from steadylm.model.tied_head import drop_tied_head
from steadylm.rundir import (
    CHECKPOINTS,
    MANIFEST,
    SCHEMA_VERSION,
    list_checkpoints,
    read_manifest,
    step_dir_name,
)
from steadylm.train import faults
from steadylm.train.distributed import DistContext

FORMATS = ("safetensors", "dcp", "json", "torch", "per_rank")


class Stateful(Protocol):
    def state_dict(self) -> Any: ...

    def load_state_dict(self, state: Any) -> Any: ...


@dataclass(frozen=True)
class Component:
    """One named piece of checkpointed state (see the module doc)."""

    name: str
    path: str  # relative to the checkpoint folder; "{rank}" in it for format "per_rank"
    obj: Stateful
    format: str = "torch"
    required: bool = True

    def __post_init__(self) -> None:
        if self.format not in FORMATS:
            raise ValueError(
                f"checkpoint component {self.name}: format {self.format!r} is not one of {FORMATS}"
            )

    def file(self, rank: int) -> str:
        return self.path.format(rank=rank) if self.format == "per_rank" else self.path


def model_state_for_saving(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """fp32 CPU copies of the weights without a tied head (safetensors stores no shared tensors).
    An untied head (a TT embedding with `tt_head = "separate"`) is its own tensor and is kept."""
    return drop_tied_head(
        {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in model.state_dict().items()}
    )


def _dcp_quiet(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    # Single-process runs use DCP without a process group; its warning about that is expected.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        return fn(*args, **kwargs)


def _write(c: Component, state: Any, folder: Path, ctx: DistContext) -> None:
    """Write one component's state under `folder`; ranks other than 0 write only their own parts."""
    import torch.distributed.checkpoint as dcp

    path = folder / c.file(ctx.rank)
    if c.format == "dcp":
        _dcp_quiet(dcp.save, {path.name: state}, checkpoint_id=str(path))
        return
    if c.format != "per_rank" and not ctx.is_main:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    if c.format == "safetensors":
        save_file(state, str(path), metadata={"format": "pt"})
    elif c.format == "json":
        path.write_text(json.dumps(state, indent=1))
    else:
        torch.save(state, path)


def _read(c: Component, path: Path, ctx: DistContext) -> Any:
    import torch.distributed.checkpoint as dcp

    if c.format == "dcp":
        state = {path.name: c.obj.state_dict()}  # the template DCP fills in place
        _dcp_quiet(dcp.load, state, checkpoint_id=str(path))
        return state[path.name]
    if c.format == "safetensors":
        return load_file(str(path), device=str(ctx.device))
    if c.format == "json":
        return json.loads(path.read_text())
    return torch.load(path, weights_only=True)


class _WriteFailed(Exception):
    """A rank could not write its part of a checkpoint; every rank raises it together."""


def _together(ctx: DistContext, work: Callable[[], None]) -> None:
    """Run this rank's part of a write phase, then learn whether any rank failed: all raise the
    first failing rank's error (naming the rank when there are several)."""
    try:
        work()
        mine = None
    except OSError as e:
        mine = str(e.strerror or e)
    failed = ctx.first_error(mine)
    if failed is not None:
        rank, message = failed
        raise _WriteFailed(f"rank {rank}: {message}" if ctx.enabled else message)


def save_checkpoint(
    run_dir: Path,
    step: int,
    components: list[Component],
    files: dict[str, str | Path],
    ctx: DistContext | None = None,
) -> Path:
    """Write one checkpoint atomically; every rank calls this. `files` are copied as they are by
    rank 0: a str is the file's text, a Path a file to copy (the config, the tokenizer). A write
    failure on any rank raises the same CheckpointError, naming that rank, on every rank."""
    ctx = ctx or DistContext()
    states = [c.obj.state_dict() for c in components]  # on every rank, in order: may be collectives
    final = run_dir / CHECKPOINTS / step_dir_name(step)
    tmp = final.with_name(f".tmp_{final.name}")
    main = ctx.is_main

    def own_files() -> None:
        faults.fail_if_armed("checkpoint-write", step, ctx.rank)
        for c, state in zip(components, states):
            if c.format != "dcp":
                _write(c, state, tmp, ctx)

    def publish() -> None:  # once every rank's files are in place
        _write_files_and_manifest(tmp, step, files, ctx.world_size)
        faults.crash_if_armed("checkpoint-before-rename", step)
        replace_dir(tmp, final)
        faults.crash_if_armed("checkpoint-after-rename", step)

    try:
        _together(ctx, lambda: _fresh_dir(tmp) if main else None)
        for c, state in zip(components, states):
            if c.format == "dcp":
                _write(c, state, tmp, ctx)  # a collective: DCP raises a failure on every rank
        _together(ctx, own_files)
        _together(ctx, publish if main else lambda: None)
    except _WriteFailed as e:
        if main:
            shutil.rmtree(tmp, ignore_errors=True)
        previous = next((p.name for p in list_checkpoints(run_dir) if p != final), None)
        kept = (
            f"the previous checkpoint {previous} is intact"
            if previous
            else "no earlier checkpoint exists"
        )
        raise CheckpointError(f"could not write checkpoint {final.name} ({e}); {kept}") from e
    ctx.barrier()  # as before the write phases compared outcomes: every rank leaves together
    return final


def _fresh_dir(tmp: Path) -> None:
    if tmp.exists():
        shutil.rmtree(tmp)  # left by a crash mid-write
    tmp.mkdir(parents=True)


def _write_files_and_manifest(
    tmp: Path, step: int, files: dict[str, str | Path], world_size: int
) -> None:
    for rel, source in files.items():
        if isinstance(source, Path):
            shutil.copyfile(source, tmp / rel)
        else:
            (tmp / rel).write_text(source)
    manifest = {
        "schema_version": SCHEMA_VERSION,
        "step": step,
        "world_size": world_size,
        "files": {
            str(p.relative_to(tmp)): sha256_file(p)
            for p in sorted(tmp.rglob("*"))
            if p.is_file() and p.name != MANIFEST
        },
    }
    (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1))
    fsync_tree(tmp)


def load_checkpoint(
    ckpt: Path, components: list[Component], ctx: DistContext | None = None
) -> set[str]:
    """Restore `components` from the verified checkpoint `ckpt`, in list order; returns the names
    restored (an optional component absent from `ckpt`, or a per-rank one written by another world
    size, is left as it is)."""
    ctx = ctx or DistContext()
    same_world = read_manifest(ckpt).get("world_size") == ctx.world_size
    restored = set()
    for c in components:
        path = ckpt / c.file(ctx.rank)
        if c.format == "per_rank" and not same_world:
            continue
        if not path.exists():
            if c.required:
                raise CheckpointError(f"{ckpt}: {c.file(ctx.rank)} is missing (the {c.name} state)")
            continue
        try:
            c.obj.load_state_dict(_read(c, path, ctx))
        except CheckpointError as e:
            raise CheckpointError(f"{ckpt}: {e}") from e
        restored.add(c.name)
    return restored


def prune_checkpoints(run_dir: Path, keep: int) -> None:
    """Keep the newest `keep` checkpoints (0 keeps all)."""
    if keep <= 0:
        return
    for old in list_checkpoints(run_dir)[keep:]:
        shutil.rmtree(old, ignore_errors=True)
