"""The gradient-variance reference under FSDP2 (2 gloo processes): read from the reduced gradient
shards, it equals W x the variance over micro-batches of the rank-averaged gradient, computed here
from every rank's full, unsharded gradients."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from steadylm.config import load_config
from steadylm.model.gpt import GPT
from steadylm.monitor import GradVarianceMonitor
from steadylm.monitor.layout import model_layout

pytestmark = pytest.mark.slow

WORLD, HALVES, MB, T = 2, 2, 2, 8


def _tiny_gpt() -> GPT:
    cfg = load_config(
        overrides=[
            "model.n_layer=2",
            "model.n_head=2",
            "model.n_embd=16",
            "model.block_size=8",
            "model.vocab_size=37",
        ]
    ).model
    torch.manual_seed(0)
    return GPT(cfg)


def _half_loss(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    logits = model(x[:, :-1])  # (MB, T, V)
    return F.cross_entropy(logits.flatten(0, 1), x[:, 1:].flatten())


def _worker(rank: int, init_file: str, out: dict) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    torch.set_num_threads(1)
    from torch.distributed.fsdp import fully_shard

    plain = _tiny_gpt()
    sharded = copy.deepcopy(plain)
    for block in sharded.transformer.h:
        fully_shard(block)
    fully_shard(sharded)
    gen = torch.Generator().manual_seed(100 + rank)
    halves = [torch.randint(0, 37, (MB, T + 1), generator=gen) for _ in range(HALVES)]

    gv = GradVarianceMonitor(sharded, sharded=True)
    gv.begin(hooks=False)
    for x in halves:
        sharded.zero_grad(set_to_none=True)
        _half_loss(sharded, x).backward()  # FSDP2 reduce-scatters the rank average
        gv.record()
    got = {k: float(v) for k, v in gv.end().items() if k not in ("grad_var_k", "grad_var_seconds")}

    # The reference: each rank's full gradients of each half, gathered, averaged over ranks.
    groups = model_layout(plain).groups()
    want = {}
    per_half = []
    for x in halves:
        plain.zero_grad(set_to_none=True)
        _half_loss(plain, x).backward()
        per_half.append({name: [p.grad.clone() for p in ps] for name, ps in groups.items()})
    for name in groups:
        flat = torch.stack([torch.cat([g.flatten() for g in h[name]]) for h in per_half])  # (K, n)
        gathered = [torch.empty_like(flat) for _ in range(WORLD)]
        dist.all_gather(gathered, flat)
        averaged = torch.stack(gathered).mean(0)  # (K, n): the rank-averaged gradient of each half
        key = "grad_var_embed" if name == "embed" else f"grad_var/{name}"
        want[key] = WORLD * averaged.var(dim=0).mean().item()
    if rank == 0:
        out.update(got=got, want=want)
    dist.destroy_process_group()


def test_sharded_gradvar_equals_the_gathered_reference(tmp_path):
    with mp.Manager() as manager:
        out = manager.dict()
        mp.spawn(_worker, args=(str(tmp_path / "init"), out), nprocs=WORLD, join=True)
        got, want = dict(out["got"]), dict(out["want"])
    assert set(got) == set(want) and "grad_var/h.1" in got
    for key, value in want.items():
        assert value > 0 and got[key] == pytest.approx(value, rel=1e-4), key
