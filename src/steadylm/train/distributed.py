"""Process-group set-up for `torchrun`: rank, world size and device, from the environment."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from steadylm import collectives
from steadylm.device import resolve_device
from steadylm.monitor.tev import tev_per_row_fast


@dataclass
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def all_reduce_sum(self, t: torch.Tensor) -> torch.Tensor:
        return collectives.all_reduce(t) if self.enabled else t

    def first_error(self, error: str | None) -> tuple[int, str] | None:
        """Every rank passes its error (or None) and gets the lowest failing rank's, so that all
        ranks stop together instead of waiting for one that has given up. On the normal path
        this is one all-reduce; the text travels only when some rank failed."""
        if not self.enabled:
            return None if error is None else (0, error)
        mine = self.rank if error is not None else self.world_size
        src = int(collectives.all_reduce(self._int64([mine]), op=dist.ReduceOp.MIN).item())
        if src == self.world_size:
            return None
        text = list((error or "").encode()) if self.rank == src else []
        size = int(collectives.broadcast(self._int64([len(text)]), src).item())
        buf = self._int64(text) if self.rank == src else self._int64([0] * size)
        return src, bytes(collectives.broadcast(buf, src).tolist()).decode()

    def _int64(self, values: list[int]) -> torch.Tensor:
        return torch.tensor(values, dtype=torch.int64, device=self.device)


def init_distributed(device_name: str) -> DistContext:
    """One process: rank 0 of 1. Under torchrun (WORLD_SIZE > 1): NCCL on CUDA, gloo on CPU."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(device_name, local_rank)
    if world_size > 1 and not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return DistContext(rank=rank, world_size=world_size, local_rank=local_rank, device=device)


def shutdown(ctx: DistContext, synchronise: bool = False) -> None:
    """Destroy the process group once the backend has let go of every tensor given to it (see
    `steadylm.collectives`). `synchronise`: first wait until every rank is here, so no rank
    tears the group down while a peer is still in its last collective; only for a normal end,
    when every rank arrives."""
    if ctx.enabled and dist.is_initialized():
        if synchronise:
            dist.barrier()
        collectives.settle()  # no gloo worker may need the GIL when the group is joined
        dist.destroy_process_group()


def sharded_tev_summary(
    weight: torch.Tensor, n_rows: int, seen: torch.Tensor | None = None
) -> dict[str, torch.Tensor]:
    """`tev_mean tev_std` (and, given the all-rank `seen` mask, `tev_seen_mean tev_seen_std`) of
    an embedding sharded by rows (FSDP2's Shard(0) DTensor), from per-rank moments, so the full
    matrix is never gathered: one all-reduce of three (or six) numbers."""
    from torch.distributed.tensor import DTensor

    assert isinstance(weight, DTensor)  # FSDP2 shards the embedding as a DTensor
    local = weight.to_local().detach().float()  # this rank's rows, in torch.chunk order
    rows_per_rank = -(-weight.shape[0] // dist.get_world_size())
    first = dist.get_rank() * rows_per_rank
    real = max(0, min(local.shape[0], n_rows - first))  # padding rows past the vocabulary excluded
    tev = tev_per_row_fast(local[:real])  # (real,)
    masks = [torch.ones_like(tev)]
    if seen is not None:
        masks.append(seen[first : first + real].to(tev.dtype))
    moments = torch.stack(
        [x for m in masks for x in ((tev * m).sum(), (tev * tev * m).sum(), m.sum())]
    )
    collectives.all_reduce(moments)
    out = {}
    for prefix, (s1, s2, n) in zip(("tev", "tev_seen"), moments.view(-1, 3)):
        mean = s1 / n
        out[f"{prefix}_mean"], out[f"{prefix}_std"] = (
            mean,
            (s2 / n - mean * mean).clamp_min(0).sqrt(),
        )
    return out
