"""Matrix-free products with the Jacobian of "trigger embeddings -> a block's output over a batch",
and the per-layer sensitivity profile built on them.

J maps the trigger's embedding rows x (L, C) to the output of block ℓ for every input of the
batch (B, T, C), padding rows zeroed; it is never formed. Jᵀw is one reverse pass. J·v is taken
by the double-vjp trick: g(u) = Jᵀu is linear in u, so J·v = ∂/∂u ⟨g(u), v⟩, a reverse pass
through the first one. (Forward-mode AD, `torch.func.jvp`, would be the direct route, but the fused
CPU attention kernels have no forward-mode rule.) The graph of g is built once per point x and
serves every power iteration, so an iteration costs two reverse passes and no forward pass.
"""

from __future__ import annotations

import torch
from tqdm.auto import tqdm

from steadylm.attack.power import pq_singular
from steadylm.attack.victim import Victim


class LayerJacobian:
    """J at the trigger embedding `trigger_emb` (L, C), for block `layer` (1..L) on (ids, mask)."""

    def __init__(
        self,
        victim: Victim,
        ids: torch.Tensor,
        mask: torch.Tensor,
        trigger_emb: torch.Tensor,
        layer: int,
    ):
        self.x = trigger_emb.detach().clone().requires_grad_(True)  # (L, C)
        self.y = victim.layer_output(ids, mask, self.x, layer)  # (B, T, C)
        self.u = torch.zeros_like(self.y, requires_grad=True)  # (B, T, C), a dummy cotangent
        (self.jt_u,) = torch.autograd.grad(self.y, self.x, self.u, create_graph=True)  # (L, C)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.x.shape)

    def jvp(self, v: torch.Tensor) -> torch.Tensor:
        """J v: (L, C) -> (B, T, C)."""
        (out,) = torch.autograd.grad(self.jt_u, self.u, v, retain_graph=True)
        return out

    def vjp(self, w: torch.Tensor) -> torch.Tensor:
        """Jᵀ w: (B, T, C) -> (L, C)."""
        (out,) = torch.autograd.grad(self.y, self.x, w, retain_graph=True)
        return out


def layer_singular(
    victim: Victim,
    ids: torch.Tensor,
    mask: torch.Tensor,
    trigger_emb: torch.Tensor,
    layer: int,
    p: float,
    q: float,
    iters: int,
    generator: torch.Generator,
) -> tuple[torch.Tensor, float]:
    """The (p,q)-singular vector (L, C) and value of block `layer`'s Jacobian at `trigger_emb`."""
    jac = LayerJacobian(victim, ids, mask, trigger_emb, layer)
    return pq_singular(
        jac.jvp, jac.vjp, jac.shape, p, q, iters, generator, victim.device, trigger_emb.dtype
    )


def sensitivity_profile(
    victim: Victim,
    ids: torch.Tensor,
    mask: torch.Tensor,
    trigger_emb: torch.Tensor,
    p: float,
    q: float,
    iters: int,
    seed: int,
    progress: bool = True,
) -> list[dict]:
    """The (p,q)-singular value of every block's Jacobian, [{"layer": ℓ, "singular_value": s}],
    each from the same start (seeded), so layers are compared on equal terms."""
    rows = []
    for layer in tqdm(
        range(1, victim.n_layer + 1), desc="profile", unit="layer", disable=not progress
    ):
        g = torch.Generator().manual_seed(seed)
        _, s = layer_singular(victim, ids, mask, trigger_emb, layer, p, q, iters, g)
        rows.append({"layer": layer, "singular_value": s})
    return rows
