"""σReparam (Zhai et al. 2023, "Stabilizing Transformer Training by Preventing Attention Entropy
Collapse"): each linear weight is used as Ŵ = (γ / σ(W)) · W.

σ(W) is W's spectral norm, estimated as uᵀWv from persistent vectors u and v. The vectors are
buffers, so they are saved with the weights, and they take one power-iteration step per optimizer
step (`power_iteration_`, which `GPT.after_optimizer_step` calls); the forward pass only reads
them, so it is a deterministic function of the model state. Gradients flow through σ(W) (∂σ/∂W =
u vᵀ), as in the paper. γ is learned and starts at σ(W₀), with u and v the exact top singular
vectors of W₀ (as the reference code does, by SVD), so at init Ŵ = W₀ and the layout's init rule
is untouched.

A weight can hold several independent matrices stacked along its output rows (the fused Q/K/V
projection holds three; an MLRA factor one per projection and head). Each gets its own γ, u, v,
exactly as if the projections were separate layers.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from steadylm.config import ModelConfig
from steadylm.registry import Registry


class SigmaReparam(nn.Module):
    """γ and the power-iteration vectors for a weight viewed as `blocks` matrices (rows, in).

    The weight is (out, in) with out = blocks · rows (a stacked nn.Linear weight) or
    (blocks, rows, in) (a grouped weight); either way it is viewed as (blocks, rows, in).
    """

    u: torch.Tensor  # buffers, declared for the type checker
    v: torch.Tensor

    def __init__(self, weight_shape: torch.Size, blocks: int):
        super().__init__()
        fan_in = weight_shape[-1]
        rows = weight_shape.numel() // (blocks * fan_in)
        self.blocks = blocks
        self.gamma = nn.Parameter(torch.ones(blocks))  # (blocks,) set to σ(W₀) by reset_
        self.register_buffer("u", torch.zeros(blocks, rows))  # left singular vector estimates
        self.register_buffer("v", torch.zeros(blocks, fan_in))  # right singular vector estimates

    def _view(self, weight: torch.Tensor) -> torch.Tensor:
        return weight.float().view(self.blocks, -1, weight.shape[-1])  # (blocks, rows, in)

    def spectral_norm(self, weight: torch.Tensor) -> torch.Tensor:
        """σ estimate uᵀWv per block, (blocks,), differentiable in `weight`."""
        # fp32 even under autocast: σ rescales the whole matrix, so its rounding error would too.
        with torch.autocast(weight.device.type, enabled=False):
            return torch.einsum("bo,boi,bi->b", self.u, self._view(weight), self.v)

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        """The effective weight (γ/σ)·W, same shape and dtype as `weight`."""
        scale = (self.gamma / self.spectral_norm(weight))[:, None, None]  # (blocks, 1, 1)
        return (self._view(weight) * scale).view(weight.shape).to(weight.dtype)

    @torch.no_grad()
    def power_iteration_(self, weight: torch.Tensor) -> None:
        """One power-iteration step on each block: v ← Wᵀu/‖·‖, u ← Wv/‖·‖."""
        w = self._view(weight)
        v = F.normalize(torch.einsum("boi,bo->bi", w, self.u), dim=-1)
        self.u.copy_(F.normalize(torch.einsum("boi,bi->bo", w, v), dim=-1))
        self.v.copy_(v)

    @torch.no_grad()
    def reset_(self, weight: torch.Tensor) -> None:
        """Exact top singular triplets of the freshly initialised weight: γ = σ(W₀), Ŵ = W₀."""
        U, S, Vh = torch.linalg.svd(self._view(weight), full_matrices=False)
        self.u.copy_(U[:, :, 0])
        self.v.copy_(Vh[:, 0, :])
        self.gamma.copy_(S[:, 0])


class SigmaReparamLinear(nn.Linear):
    """nn.Linear whose weight is used through σReparam (`sigma` holds γ, u, v)."""

    def __init__(self, in_features: int, out_features: int, bias: bool, blocks: int = 1):
        super().__init__(in_features, out_features, bias=bias)
        self.sigma = SigmaReparam(self.weight.shape, blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.sigma(self.weight), self.bias)


# model.reparam -> the state each weight carries (None: plain weights)
REPARAMS: Registry[type[SigmaReparam] | None] = Registry(
    "model.reparam", {"none": None, "sigma": SigmaReparam}
)


def linear(
    cfg: ModelConfig, in_features: int, out_features: int, bias: bool, blocks: int = 1
) -> nn.Linear:
    """The model's linear layer under `model.reparam`. `blocks`: how many independent matrices the
    weight stacks along its rows (3 for a fused Q/K/V projection)."""
    if REPARAMS[cfg.reparam] is None:
        return nn.Linear(in_features, out_features, bias=bias)
    return SigmaReparamLinear(in_features, out_features, bias, blocks)


def sigma_reparam(cfg: ModelConfig, weight_shape: torch.Size, blocks: int) -> SigmaReparam | None:
    """σReparam state for a weight that is not an nn.Linear (MLRA's grouped factors), or None."""
    state = REPARAMS[cfg.reparam]
    return None if state is None else state(weight_shape, blocks)


def _reparametrised(model: nn.Module):
    """(σReparam state, raw weight) of every reparametrised layer. The tied token embedding is an
    nn.Embedding, never built through `linear`, so it is excluded by construction."""
    for module in model.modules():
        sigma = getattr(module, "sigma", None)
        if isinstance(sigma, SigmaReparam):
            yield sigma, module.weight


def reset_sigma_(model: nn.Module) -> None:
    """Set γ = σ(W₀) and exact singular vectors; call after the weights are initialised."""
    for sigma, weight in _reparametrised(model):
        sigma.reset_(weight)


def power_iteration_(model: nn.Module) -> None:
    """One power-iteration step for every reparametrised weight (once per optimizer step)."""
    for sigma, weight in _reparametrised(model):
        # Under FSDP2 the weight is a sharded DTensor between steps; every rank gathers it and
        # computes the same u, v (the buffers are not sharded).
        sigma.power_iteration_(weight.full_tensor() if hasattr(weight, "full_tensor") else weight)
