"""Collectives that keep their tensors alive until the backend lets go of them.

On gloo (CPU), a collective's worker thread still holds the tensors for a moment after `wait()`
returns (measured: three extra references, released within about a millisecond), and a gloo
barrier keeps the works before it alive until the barrier itself is freed. If Python has dropped
a tensor by then, the worker's last release frees its Python object, which needs the GIL.
Destroying the process group joins those worker threads while holding the GIL, so a worker
still waiting to release a tensor at that moment waits for ever and the process never exits:
the hang two-rank CPU runs showed at exit under load (a DDP Reducer dropping the last reference
to the group while a worker freed an `all_gather_object` tensor behind a barrier). Every
collective steadylm itself issues on a tensor goes through `all_reduce` or `broadcast` here,
which hold the tensor, and the end of a run calls `settle()` before the group goes. Collectives
inside torch (DDP's buckets, FSDP2, `torch.distributed.checkpoint`) manage their own tensors.
"""

from __future__ import annotations

import time
from typing import Any, cast

import torch
import torch.distributed as dist

# Tensors handed to a collective; each stays here until the backend's references are gone.
_held: list[torch.Tensor] = []


def _in_use(t: torch.Tensor) -> bool:
    # The TensorImpl's reference count (not in torch's type stubs); Python's object holds one.
    return cast(Any, t)._use_count() > 1


def _hold(t: torch.Tensor) -> None:
    _held[:] = [h for h in _held if _in_use(h)]  # released ones need no keeping
    _held.append(t)


def all_reduce(
    t: torch.Tensor, op: dist.ReduceOp.RedOpType = dist.ReduceOp.SUM, group=None
) -> torch.Tensor:
    """`dist.all_reduce(t)` in place; returns `t`."""
    _hold(t)
    dist.all_reduce(t, op=op, group=group)
    return t


def broadcast(t: torch.Tensor, src: int) -> torch.Tensor:
    """`dist.broadcast(t, src)` in place; returns `t`."""
    _hold(t)
    dist.broadcast(t, src)
    return t


def settle(timeout: float = 10.0) -> bool:
    """Wait, with the GIL free, until the backend holds none of the tensors given to it; True
    when it got there within `timeout` seconds. A tensor still held after that belongs to a
    collective that never finished (a peer gone), and is kept rather than freed from a worker."""
    deadline = time.monotonic() + timeout
    while any(_in_use(t) for t in _held):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.001)
    _held.clear()
    return True
