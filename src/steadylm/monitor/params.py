"""Per-layer gradient norms, parameter norms and update/parameter ratios, on the device.

Groups are the token embedding (`embed`) and each block (`h.N`); a group's norm is the L2 norm of
all its entries together. Norms use `torch._foreach_norm` (one fused kernel per dtype and device,
the same as `clip_grad_norm_`) and are combined per group with one `index_add_`, so a call costs a
read of the gradients or parameters and no host sync.

Per optimizer step::

    row.update(stats.grad_norms())     # after the last backward, before clipping
    stats.snapshot()                   # just before optimizer.step(), on steps you want ratios
    optimizer.step()
    row.update(stats.update_ratios())  # param_norm/G and update_ratio/G = ||W_new - W_old|| / ||W_old||

`snapshot()` keeps one copy of the watched parameters (allocated once, reused); skip it and
`update_ratios()` on steps where the ratio is not wanted, or use `param_norms()` alone.

With `sharded=True` (FSDP2, parameters and gradients are DTensors sharded over the ranks) each
rank reads its own shards and one all-reduce of the groups' squared norms gives the full norms;
every rank must then make the same calls.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn

from steadylm import collectives
from steadylm import metric_names as M
from steadylm.monitor.layout import model_layout


def local_shard(t: torch.Tensor) -> torch.Tensor:
    """This rank's shard of a DTensor; a plain tensor as it is."""
    return t.to_local() if hasattr(t, "to_local") else t


class ParamStatsMonitor:
    """Per-group norms for `model` (wrappers looked through; `blocks` overrides block discovery)."""

    def __init__(
        self, model: nn.Module, blocks: nn.ModuleList | None = None, sharded: bool = False
    ):
        self.sharded = sharded
        groups = model_layout(model, blocks).groups()
        self.names = list(groups)
        self._params = [p for ps in groups.values() for p in ps]
        group_of = [gi for gi, ps in enumerate(groups.values()) for _ in ps]
        self._device = local_shard(self._params[0]).device
        self._group_of = torch.tensor(group_of, device=self._device)
        self._before: list[torch.Tensor] | None = None
        self._snapped = False

    def _per_group(self, tensors: Sequence[torch.Tensor], index: torch.Tensor) -> torch.Tensor:
        # fp32 norms whatever the parameter dtypes: exact enough for bf16 and stackable across dtypes.
        local = [local_shard(t) for t in tensors]
        sq = torch.stack(torch._foreach_norm(local, 2, dtype=torch.float32)).square()
        sums = torch.zeros(len(self.names), device=self._device).index_add_(0, index, sq)
        if self.sharded:
            collectives.all_reduce(sums)  # the shards partition each tensor: squared norms add up
        return sums.sqrt()

    def _named(self, prefix: str, values: torch.Tensor) -> dict[str, torch.Tensor]:
        return {M.per_layer(prefix, n): v for n, v in zip(self.names, values.unbind(), strict=True)}

    @torch.no_grad()
    def grad_norms(self) -> dict[str, torch.Tensor]:
        """`grad_norm/embed`, `grad_norm/h.N`: L2 norms of the current `.grad` (missing grads count 0)."""
        present = [i for i, p in enumerate(self._params) if p.grad is not None]
        if not present:
            return self._named(M.GRAD_NORM, torch.zeros(len(self.names), device=self._device))
        index = self._group_of if len(present) == len(self._params) else self._group_of[present]
        grads = [g for i in present if (g := self._params[i].grad) is not None]
        return self._named(M.GRAD_NORM, self._per_group(grads, index))

    @torch.no_grad()
    def grad_norms_with_total(
        self, params: list[nn.Parameter]
    ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """`grad_norms()` and the total gradient norm over `params` (all the model's parameters),
        reading each gradient once: the groups' norms are reused for the total, as gradient
        clipping needs it anyway."""
        mine = {id(p) for p in self._params}
        rest = [p.grad for p in params if p.grad is not None and id(p) not in mine]
        groups = self.grad_norms()
        sq = torch.stack(list(groups.values())).square().sum()
        if rest:
            sq = sq + torch.stack(torch._foreach_norm(rest, 2)).float().square().sum()
        return groups, sq.sqrt()

    @torch.no_grad()
    def param_norms(self) -> dict[str, torch.Tensor]:
        """`param_norm/embed`, `param_norm/h.N`."""
        return self._named(M.PARAM_NORM, self._per_group(self._params, self._group_of))

    @torch.no_grad()
    def snapshot(self) -> None:
        """Remember the parameters as they are now (call right before `optimizer.step()`)."""
        if self._before is None:
            self._before = [local_shard(p.detach()).clone() for p in self._params]
        else:
            torch._foreach_copy_(self._before, [local_shard(p.detach()) for p in self._params])
        self._snapped = True

    @torch.no_grad()
    def update_ratios(self) -> dict[str, torch.Tensor]:
        """`param_norm/G` (after the step) and `update_ratio/G` against the last `snapshot()`."""
        before = self._before
        if not self._snapped or before is None:
            raise RuntimeError("update_ratios() needs snapshot() before optimizer.step()")
        self._snapped = False
        old = self._per_group(before, self._group_of)
        new = self._per_group(self._params, self._group_of)
        # now old - new, in place
        torch._foreach_sub_(before, [local_shard(p.detach()) for p in self._params])
        delta = self._per_group(before, self._group_of)
        out = self._named(M.PARAM_NORM, new)
        out.update(self._named(M.UPDATE_RATIO, delta / old))
        return out
