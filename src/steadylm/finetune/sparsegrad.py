"""SparseGrad (Chekalina et al., EMNLP 2024): MLP weights trained in a gradient-aligned basis.

A linear layer y = x Wᵀ + b (W: out × in) is rewritten with orthogonal U_out (out × out) and
U_in (in × in) as W̃ = U_outᵀ W U_in, so that

    y = ((x U_in) W̃ᵀ) U_outᵀ + b                      (exactly the same map)
    ∂L/∂W̃ = U_outᵀ (∂L/∂W) U_in = (g U_out)ᵀ (x U_in)    g = ∂L/∂y, the HOSVD core of the gradient
    ∂L/∂b = Σ g                                         (the bias stays in the original basis)

U_out and U_in are the HOSVD factors of the weight gradients of all blocks, stacked over a few
preliminary batches: one pair per layer type (e.g. all up-projections), shared by the blocks.
In that basis a few entries of ∂L/∂W̃ carry most of its energy; each step keeps the top-k by
magnitude as a sparse gradient, which `torch.optim.SparseAdam` applies to those entries only.

Two choices where the reference code differs (see docs/finetune.md): the kept gradient is the true
HOSVD core U_outᵀ G U_in (not U_outᵀ G U_inᵀ), and top-k ranks |value|, not the signed value.
The bases are computed from the Gram matrices of the two unfoldings (eigh in float64), which
gives the same left singular vectors as an SVD of the unfoldings at a fraction of the cost. The
layer computes with W = U_out W̃ U_inᵀ formed once per call (see `_SparseGradLinearFn`).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


class HOSVD:
    """The HOSVD factors of a stream of gradients G_i (out × in), without stacking them.

    U_out holds the left singular vectors of the mode-2 unfolding [G_1 … G_n] (out × n·in), U_in
    those of the mode-3 unfolding (in × n·out): the eigenvectors of Σ_i G_i G_iᵀ and Σ_i G_iᵀ G_i,
    which are accumulated in float64 as gradients arrive (memory out² + in², whatever n).
    """

    def __init__(self) -> None:
        self.gram_out: torch.Tensor | None = None
        self.gram_in: torch.Tensor | None = None
        self.count = 0

    def add(self, g: torch.Tensor) -> None:
        g = g.detach().to(torch.float64)
        if self.gram_out is None:
            self.gram_out, self.gram_in = g @ g.t(), g.t() @ g
        else:
            assert self.gram_in is not None  # set together with gram_out
            self.gram_out += g @ g.t()
            self.gram_in += g.t() @ g
        self.count += 1

    def bases(self, dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
        """(U_out, U_in), orthogonal, columns by decreasing energy."""
        if self.gram_out is None:
            raise ValueError("no gradients added")
        out = []
        for gram in (self.gram_out, self.gram_in):
            _, vecs = torch.linalg.eigh(gram)  # ascending eigenvalues
            out.append(vecs.flip(-1).to(dtype).contiguous())
        return out[0], out[1]


def hosvd_bases(grads: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(U_out, U_in) of a stack of gradients (n, out, in); see `HOSVD`."""
    h = HOSVD()
    for g in grads:
        h.add(g)
    return h.bases(grads.dtype)


def topk_energy_share(g: torch.Tensor, k: int) -> float:
    """Share of ||g||² held by its k largest entries in magnitude."""
    sq = g.detach().double().flatten().square()
    return float(sq.topk(k).values.sum() / sq.sum().clamp_min(1e-300))


class _SparseGradLinearFn(torch.autograd.Function):
    """y = x Wᵀ + b with W = U_out W̃ U_inᵀ formed once per call; the gradient of W̃ is the top-k
    of the core U_outᵀ (gᵀ x) U_in. Forming W (out·out·in + out·in·in operations) is cheaper
    than rotating every token's input and output (n·(in² + out²)) once a batch has more tokens
    than the layer has inputs, and gives the same numbers up to rounding."""

    @staticmethod
    def forward(ctx, x, weight, bias, u_out, u_in, k, layer):
        w = u_out @ weight @ u_in.t()  # (out, in): the layer's weight in the original basis
        y = F.linear(x, w, bias)  # (..., out)
        ctx.save_for_backward(x, w, u_out, u_in)
        ctx.k, ctx.layer, ctx.has_bias = k, layer, bias is not None
        return y

    @staticmethod
    def backward(ctx, grad_y):
        x, w, u_out, u_in = ctx.saved_tensors
        grad_x = grad_w = grad_b = None
        g2 = grad_y.reshape(-1, grad_y.shape[-1])  # (N, out)
        if ctx.needs_input_grad[0]:
            grad_x = grad_y @ w
        if ctx.needs_input_grad[1]:
            # The dense core (out × in); the sparse-by-dense trick of the paper, which multiplies
            # only the rows that survive, is a speed optimisation left out here.
            dense = g2.t() @ x.reshape(-1, x.shape[-1])  # ∂L/∂W in the original basis
            core = u_out.t() @ dense @ u_in
            grad_w = _top_k_sparse(core, ctx.k)
            kept = grad_w._values().square().sum()
            ctx.layer.kept_energy = kept / core.square().sum().clamp_min(1e-30)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = g2.sum(0)  # original basis: the bias is added there
        return grad_x, grad_w, grad_b, None, None, None, None


def _top_k_sparse(g: torch.Tensor, k: int) -> torch.Tensor:
    """The k largest-magnitude entries of g (out × in) as a coalesced sparse COO tensor."""
    idx = g.abs().flatten().topk(k, sorted=False).indices.sort().values
    rows, cols = idx // g.shape[1], idx % g.shape[1]
    values = g.flatten()[idx]
    return torch.sparse_coo_tensor(
        torch.stack([rows, cols]), values, g.shape, is_coalesced=True, check_invariants=False
    )  # sorted, unique indices by construction


class SparseGradLinear(nn.Module):
    """A linear layer trained as W̃ = U_outᵀ W U_in with top-k sparse gradients (see module doc).

    `weight` is W̃ (out × in) and receives a sparse gradient; `bias` is the original bias.
    The bases are buffers shared by every layer of the same type and saved once per type by
    `sparsegrad_state` (not with each layer).
    """

    u_out: torch.Tensor  # buffers (registered in __init__), declared for the type checker
    u_in: torch.Tensor

    def __init__(
        self, linear: nn.Linear, u_out: torch.Tensor, u_in: torch.Tensor, k: int, layer_type: str
    ):
        super().__init__()
        out_f, in_f = linear.weight.shape
        if not 1 <= k <= out_f * in_f:
            raise ValueError(f"k={k} must be in 1..{out_f * in_f}")
        self.in_features, self.out_features, self.k, self.layer_type = in_f, out_f, k, layer_type
        self.register_buffer("u_out", u_out, persistent=False)
        self.register_buffer("u_in", u_in, persistent=False)
        with torch.no_grad():
            w = linear.weight.detach()
            self.weight = nn.Parameter((u_out.t() @ w.to(u_out.dtype) @ u_in).to(w.dtype))
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach().clone())
        self.kept_energy: torch.Tensor | None = (
            None  # share of the core's energy kept at the last backward
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (..., in) -> (..., out)
        return _SparseGradLinearFn.apply(
            x, self.weight, self.bias, self.u_out, self.u_in, self.k, self
        )

    @torch.no_grad()
    def to_linear(self) -> nn.Linear:
        """The equivalent plain nn.Linear, W = U_out W̃ U_inᵀ."""
        lin = nn.Linear(
            self.in_features,
            self.out_features,
            bias=self.bias is not None,
            device=self.weight.device,
            dtype=self.weight.dtype,
        )
        lin.weight.copy_(self.u_out @ self.weight @ self.u_in.t())
        if self.bias is not None:
            lin.bias.copy_(self.bias)
        return lin

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, k={self.k}, type={self.layer_type}"


def sparsegrad_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The bases of every layer type, once each: `sparsegrad.<type>.u_out` / `.u_in`."""
    out: dict[str, torch.Tensor] = {}
    for m in model.modules():
        if isinstance(m, SparseGradLinear):
            out[f"sparsegrad.{m.layer_type}.u_out"] = m.u_out
            out[f"sparsegrad.{m.layer_type}.u_in"] = m.u_in
    return out


def load_sparsegrad_state(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Put saved bases back into every SparseGradLinear (shared again per layer type)."""
    shared: dict[str, torch.Tensor] = {}
    for m in model.modules():
        if isinstance(m, SparseGradLinear):
            for name in ("u_out", "u_in"):
                key = f"sparsegrad.{m.layer_type}.{name}"
                if key not in shared:
                    shared[key] = state[key].to(m.weight.device, m.weight.dtype)
                setattr(m, name, shared[key])
