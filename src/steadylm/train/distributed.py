"""Process-group set-up for `torchrun`: rank, world size and device, from the environment."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

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
        if self.enabled:
            dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t


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


def shutdown(ctx: DistContext) -> None:
    if ctx.enabled and dist.is_initialized():
        dist.destroy_process_group()


def sharded_tev_summary(weight: torch.Tensor, n_rows: int) -> tuple[torch.Tensor, torch.Tensor]:
    """mu_TEV and sigma_TEV of an embedding sharded by rows (FSDP2's Shard(0) DTensor), from
    per-rank moments, so the full matrix is never gathered: one all-reduce of three numbers."""
    local = weight.to_local().detach().float()  # this rank's rows, in torch.chunk order
    rows_per_rank = -(-weight.shape[0] // dist.get_world_size())
    first = dist.get_rank() * rows_per_rank
    real = max(0, min(local.shape[0], n_rows - first))  # padding rows past the vocabulary excluded
    tev = tev_per_row_fast(local[:real])
    moments = torch.stack([tev.sum(), (tev * tev).sum(), torch.tensor(float(real), device=tev.device)])
    dist.all_reduce(moments)
    mean = moments[0] / moments[2]
    var = (moments[1] / moments[2] - mean * mean).clamp_min(0)
    return mean, var.sqrt()
