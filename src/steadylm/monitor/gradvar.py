"""Gradient variance across micro-batches: the expensive reference that TEV stands in for.

With K >= 2 micro-batches in a step, g_k is the gradient of micro-batch k's mean loss. The figure
for a group of parameters is the mean over its entries of the unbiased variance of g_k across k:

    grad_var = (1 / n_entries) * sum_entries  (1 / (K - 1)) * sum_k (g_k - mean_k g_k)^2

reported for the token embedding (`grad_var_embed`) and each block (`grad_var/h.N`).

How the per-micro-batch gradients are read: `begin()` puts a hook on every watched parameter.
Autograd calls such a hook with the gradient of the current backward pass *before* adding it to
`.grad`, so the hook sees micro-batch k's own gradient whatever has accumulated in `.grad`, and
before DDP averages it over ranks (the figure is over the rank's own K micro-batches). A tied
weight's hook receives the sum of both uses, i.e. the weight's full gradient. Each hook updates a
Welford mean (one fp32 buffer per parameter, so memory is one copy of the watched parameters,
never K) and a scalar sum of squared deviations; `end()` removes the hooks and reduces.

Contract for the training loop, on the steps where the reference is due::

    gv.begin(grad_scale=c)       # before the first micro-batch's backward
    for each micro-batch:        # exactly one backward() per micro-batch
        (loss_k * s).backward()  # gradients accumulate in .grad as usual
    row.update(gv.end())         # before optimizer.step() / zero_grad()

`grad_scale` turns the gradient of what you call backward() on into the gradient of the
micro-batch's *mean* loss. steadylm's trainer backpropagates each micro-batch's summed token
loss times world_size / (batch_size * T), so c = batch_size / (world_size * micro_batch_size)
(the number of micro-batches per rank); under an fp16 GradScaler, divide that by
`scaler.get_scale()` (a tensor is accepted). A loop doing `(mean_loss / K).backward()` passes c = K.

Without hooks (`begin(..., hooks=False)`), the loop clears `.grad` before each micro-batch's
backward and calls `gv.record()` after it: the monitor reads `.grad` itself. That is how FSDP2 is
served (`sharded=True`): there the backward's reduce-scatter leaves each rank the shard of the
gradient *averaged over ranks*, so each rank reads its shards, `end()` sums the squared deviations
and entry counts over ranks with one all-reduce, and multiplies by the world size W. For
micro-batches drawn independently, the variance of a W-rank average is the single micro-batch
variance over W, so the figure estimates the same quantity as DDP's rank-local one (it is not
equal to it run by run: it is measured on other samples).

Not supported: more than one backward() per micro-batch.
"""

from __future__ import annotations

import time

import torch
import torch.distributed as dist
import torch.nn as nn

from steadylm import collectives
from steadylm import metric_names as M
from steadylm.monitor.layout import model_layout
from steadylm.monitor.params import local_shard


def _sync(t: torch.Tensor) -> None:
    # Host timers only measure queued kernels on CUDA; the reference steps are rare, so pay a sync
    # there to report true seconds.
    if t.device.type == "cuda":
        torch.cuda.synchronize(t.device)


class GradVarianceMonitor:
    """Streaming (Welford) variance of per-micro-batch gradients, per group; see the module doc.

    `end()` returns `grad_var_embed`, `grad_var/h.N` (0-d fp32 tensors on the parameters' device),
    `grad_var_seconds` (float: time spent in the hooks and the reduction, device-synchronised on
    CUDA) and `grad_var_k` (int: micro-batches seen).
    """

    def __init__(
        self, model: nn.Module, blocks: nn.ModuleList | None = None, sharded: bool = False
    ):
        self.sharded = sharded
        groups = model_layout(model, blocks).groups()
        self._keys = [
            M.GRAD_VAR_EMBED if g == "embed" else M.per_layer(M.GRAD_VAR, g) for g in groups
        ]
        self._params: list[nn.Parameter] = []
        self._group: list[int] = []
        for gi, params in enumerate(groups.values()):
            for p in params:
                self._params.append(p)
                self._group.append(gi)
        self._handles: list = []
        self.active = False  # between begin() and end()

    def begin(self, grad_scale: float | torch.Tensor = 1.0, hooks: bool = True) -> None:
        """Start collecting; the next backward passes are micro-batches 1..K. With `hooks` False
        the loop calls `record()` after each backward instead (see the module doc)."""
        if self.active:
            raise RuntimeError("GradVarianceMonitor.begin() called again before end()")
        self.active = True
        self._scale = grad_scale
        self._n = [0] * len(self._params)
        self._mean: list[torch.Tensor | None] = [None] * len(self._params)
        self._m2: list[torch.Tensor | None] = [None] * len(self._params)
        self._seconds = 0.0
        if hooks:
            self._handles = [p.register_hook(self._hook(i)) for i, p in enumerate(self._params)]

    def record(self) -> None:
        """Add the gradients now in `.grad` (this rank's shards under FSDP2) as one micro-batch."""
        if not self.active or self._handles:
            raise RuntimeError("GradVarianceMonitor.record() needs begin(..., hooks=False)")
        for i, p in enumerate(self._params):
            if p.grad is not None:
                self._timed_add(i, local_shard(p.grad))

    def _hook(self, i: int):
        def hook(grad: torch.Tensor) -> None:
            self._timed_add(i, grad)

        return hook

    def _timed_add(self, i: int, grad: torch.Tensor) -> None:
        _sync(grad)
        t0 = time.perf_counter()
        with torch.no_grad():
            g = grad.detach().float() * self._scale  # a copy: the buffer below may keep it
            n = self._n[i] = self._n[i] + 1
            if n == 1:
                self._mean[i] = g
                self._m2[i] = torch.zeros((), device=g.device)
            else:
                mean, m2 = self._mean[i], self._m2[i]
                assert mean is not None and m2 is not None  # set at this entry's first gradient
                # Welford: mean += d/n; M2 += d * (g - new_mean) = (1 - 1/n) * d^2, summed over entries.
                delta = g.sub_(mean)
                mean.add_(delta, alpha=1.0 / n)
                m2.add_(torch.linalg.vecdot(delta.flatten(), delta.flatten()), alpha=1.0 - 1.0 / n)
        _sync(grad)
        self._seconds += time.perf_counter() - t0

    def end(self) -> dict[str, torch.Tensor | float | int]:
        """Stop collecting and return the figures (see the class doc). Needs K >= 2."""
        if not self.active:
            raise RuntimeError("GradVarianceMonitor.end() called without begin()")
        for h in self._handles:
            h.remove()
        self._handles = []
        self.active = False
        k = max(self._n)
        if k < 2:
            raise RuntimeError(
                f"gradient variance needs K >= 2 micro-batches with a backward pass; saw {k}"
            )
        t0 = time.perf_counter()
        dev = next(m for m in self._mean if m is not None).device
        m2 = torch.zeros(len(self._keys), device=dev)
        numel = [0] * len(self._keys)
        for i, p in enumerate(self._params):
            gi, n = self._group[i], self._n[i]
            numel[gi] += local_shard(p).numel()
            if n == 0:
                continue  # never received a gradient: zero in every micro-batch, zero variance
            extra, mean = self._m2[i], self._mean[i]
            assert extra is not None and mean is not None  # n > 0: it received a gradient
            if n < k:
                # It got no gradient in k - n micro-batches: merge n observations with k - n zeros.
                flat = mean.flatten()
                extra = extra + torch.linalg.vecdot(flat, flat) * (n * (k - n) / k)
            m2[gi] += extra
        count = torch.tensor(numel, device=dev, dtype=torch.float32)
        if self.sharded:  # each rank holds a shard of every tensor: sums and counts add up
            both = torch.stack([m2, count])
            collectives.all_reduce(both)
            # the shards hold the rank-averaged gradient: back to one micro-batch's variance
            m2, count = both[0] * dist.get_world_size(), both[1]
        values = m2 / ((k - 1) * count.clamp_min(1))
        self._mean, self._m2 = [], []  # free the buffers until the next reference step
        _sync(values)
        seconds = self._seconds + time.perf_counter() - t0
        out: dict[str, torch.Tensor | float | int] = dict(
            zip(self._keys, values.unbind(), strict=True)
        )
        out[M.GRAD_VAR_SECONDS] = seconds
        out[M.GRAD_VAR_K] = k
        return out
