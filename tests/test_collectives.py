"""Collectives over 2 gloo processes: the lowest failing rank's error reaches every rank, and the
tensors given to the backend are kept until it lets go of them (the exit hang's cure)."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from steadylm import collectives
from steadylm.train.distributed import DistContext

pytestmark = pytest.mark.slow

WORLD = 2


def _worker(rank: int, init_file: str, out: dict) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    ctx = DistContext(rank=rank, world_size=WORLD)
    errors = {
        "none": None,
        "rank 1": "disk full ☃" if rank == 1 else None,
        "both": f"rank {rank} failed",
        "empty text": "" if rank == 1 else None,
    }
    got = {case: ctx.first_error(error) for case, error in errors.items()}

    t = torch.full((3,), float(rank + 1))
    reduced = ctx.all_reduce_sum(t)
    held = any(h is t for h in collectives._held)
    settled = collectives.settle()
    out[rank] = {
        "errors": got,
        "sum": reduced.tolist(),
        "held": held,
        "settled": settled,
        "left": len(collectives._held),
        "use_count": t._use_count(),
    }
    dist.destroy_process_group()


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    out = mp.Manager().dict()
    init = tmp_path_factory.mktemp("collectives") / "init"
    mp.spawn(_worker, args=(str(init), out), nprocs=WORLD, join=True)
    return dict(out)


def test_every_rank_gets_the_lowest_failing_ranks_error(results):
    for rank in range(WORLD):
        assert results[rank]["errors"] == {
            "none": None,
            "rank 1": (1, "disk full ☃"),
            "both": (0, "rank 0 failed"),
            "empty text": (1, ""),
        }


def test_a_reduced_tensor_is_held_until_the_backend_lets_go(results):
    for rank in range(WORLD):
        r = results[rank]
        assert r["sum"] == [3.0, 3.0, 3.0]
        assert r["held"]  # all_reduce_sum went through collectives, which keeps the tensor
        assert r["settled"] and r["left"] == 0
        assert r["use_count"] == 1  # the backend's references are gone
