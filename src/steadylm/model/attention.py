"""Causal self-attention: standard multi-head (`mha`) and multi-head low-rank (`mlra`).

`build_attention(cfg, layout)` is the one place `model.attention` is read. Both variants share
the head split, QK-norm, causal SDPA, Sub-LN's extra norm and the output dropout
(`CausalSelfAttention`); they differ only in how Q, K, V are projected in and how the heads are
projected out.

MLRA (Chung et al. 2024, "Stable Language Model Pre-training by Reducing Embedding Variability")
factorises each of the Q, K and V projections as W = W_up · W_down through rank r:
- `shared`: one d → r → d factorisation per projection. r = d/2 by default, which makes it
  parameter-equal to MHA (2·d·r = d²).
- `per_head`: each head's d → d_head projection factorised through its own rank r, by default
  floor(d·d_head/(d + d_head)), equal to MHA within h·(d + d_head) parameters per projection.
`model.mlra_out` factorises the output projection the same way (per head: d_head → r → d).
Biases sit on the up factors only: a bias between the factors would be absorbed by the up
factor's bias, so the parameter count matches MHA's bias for bias.

MLRA init, for a factorised weight whose full matrix the layout would draw with std σ (0.02 under
GPT-2 init; see `norms.NormLayout.weight_std`), with fan_in the input width of W_down:
- `gpt2` (the paper's plain GPT-2 init, the default): W_down ~ N(0, 0.02²), W_up ~ N(0, σ²). The
  product's entries have variance r·0.02²·σ², so the attention branch's output variance shrinks
  by about r·0.02² against MHA (0.15 at d = 768, r = 384): the small effective init that may be
  where MLRA's gain comes from.
- `variance_preserving`: W_down ~ N(0, 1/fan_in), W_up ~ N(0, σ²·fan_in/r): the product has the
  full matrix's variance σ², so only the rank differs from MHA.
The control for the first is MHA with `model.qkv_init_scale` = sqrt(r)·0.02, which gives the full
matrices the same variance without the rank constraint.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from steadylm.config import ModelConfig
from steadylm.model.norms import INIT_STD, NormLayout, layer_norm
from steadylm.model.reparam import linear, sigma_reparam
from steadylm.registry import Registry

QKV = ("q", "k", "v")


class CausalSelfAttention(nn.Module):
    """What every variant shares. Subclasses build their projections in `_build_projections`
    (first, so they lead the state dict) and implement `qkv`, `project_out` and `init_weights`."""

    def __init__(self, cfg: ModelConfig, layout: NormLayout):
        super().__init__()
        self.config = cfg
        self.n_head = cfg.n_head
        self.n_embd = cfg.n_embd
        self.dropout = cfg.dropout
        self._build_projections(cfg)
        # QK-norm (Dehghani et al. 2023): LayerNorm over each head's q and k (shared across heads),
        # so attention logits cannot grow with the weights' norm.
        self.q_norm = layer_norm(cfg, cfg.head_dim) if cfg.qk_norm else None
        self.k_norm = layer_norm(cfg, cfg.head_dim) if cfg.qk_norm else None
        # Magneto's, before the output projection
        self.ln_sub = layer_norm(cfg, cfg.n_embd) if layout.sub_ln else None
        self.resid_dropout = nn.Dropout(cfg.dropout)

    def _build_projections(self, cfg: ModelConfig) -> None:
        raise NotImplementedError

    def qkv(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, C) -> (B, T, 3C): q, k, v side by side, heads contiguous within each."""
        raise NotImplementedError

    def project_out(self, y: torch.Tensor) -> torch.Tensor:
        """(B, T, C) merged heads -> (B, T, C)."""
        raise NotImplementedError

    def init_weights(self, layout: NormLayout) -> None:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.qkv(x).split(C, dim=2)  # 3 x (B, T, C)
        # (B, T, C) -> (B, nh, T, hs)
        q = q.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        k = k.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        v = v.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        if self.q_norm is not None and self.k_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        p = self.dropout if self.training else 0.0
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=p, is_causal=True)  # (B, nh, T, hs)
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        if self.ln_sub is not None:
            y = self.ln_sub(y)
        return self.resid_dropout(self.project_out(y))


class MultiHeadAttention(CausalSelfAttention):
    """GPT-2's attention: fused `c_attn` (C -> 3C) and `c_proj` (C -> C), Hugging Face names."""

    def _build_projections(self, cfg: ModelConfig) -> None:
        C = cfg.n_embd
        self.c_attn = linear(cfg, C, 3 * C, bias=cfg.bias, blocks=3)  # q, k, v stacked
        self.c_proj = linear(cfg, C, C, bias=cfg.bias)

    def qkv(self, x: torch.Tensor) -> torch.Tensor:
        return self.c_attn(x)

    def project_out(self, y: torch.Tensor) -> torch.Tensor:
        return self.c_proj(y)

    @torch.no_grad()
    def init_weights(self, layout: NormLayout) -> None:
        C = self.n_embd
        for i, role in enumerate(QKV):  # qkv_init_scale: the init control for MLRA's small product
            std = layout.weight_std(role, C, C) * self.config.qkv_init_scale
            self.c_attn.weight[i * C : (i + 1) * C].normal_(0.0, std)
        self.c_proj.weight.normal_(0.0, layout.weight_std("attn_out", C, C))
        _zero_biases(self)


class GroupedLinear(nn.Module):
    """G independent linear maps on G equal slices of the last dimension: (..., G·in) -> (..., G·out).
    The weight is (G, out, in), each slice like an nn.Linear weight; the bias is (G·out)."""

    def __init__(
        self, cfg: ModelConfig, groups: int, in_features: int, out_features: int, bias: bool
    ):
        super().__init__()
        self.groups, self.in_features, self.out_features = groups, in_features, out_features
        self.weight = nn.Parameter(torch.empty(groups, out_features, in_features))
        self.bias = nn.Parameter(torch.zeros(groups * out_features)) if bias else None
        self.sigma = sigma_reparam(cfg, self.weight.shape, blocks=groups)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight if self.sigma is None else self.sigma(self.weight)
        y = torch.einsum(
            "...gi,goi->...go", x.unflatten(-1, (self.groups, self.in_features)), w
        ).flatten(-2)
        return y if self.bias is None else y + self.bias.to(y.dtype)


def mlra_rank(cfg: ModelConfig) -> int:
    """`model.mlra_rank`, or the parameter-matched default of the mode (module docstring)."""
    if cfg.mlra_rank:
        return cfg.mlra_rank
    if cfg.mlra_mode == "shared":
        return cfg.n_embd // 2
    return max(1, cfg.n_embd * cfg.head_dim // (cfg.n_embd + cfg.head_dim))


def _gpt2_factors(sigma: float, fan_in: int, rank: int) -> tuple[float, float]:
    return INIT_STD, sigma


def _variance_preserving_factors(sigma: float, fan_in: int, rank: int) -> tuple[float, float]:
    return 1.0 / math.sqrt(fan_in), sigma * math.sqrt(fan_in / rank)


# model.mlra_init -> (std of W_down, std of W_up) for a full-matrix std σ (module docstring)
MLRA_INITS = Registry(
    "model.mlra_init", {"gpt2": _gpt2_factors, "variance_preserving": _variance_preserving_factors}
)
# model.mlra_mode -> how many factorisations each projection has: one, or one per head
MLRA_MODES = Registry(
    "model.mlra_mode", {"shared": lambda cfg: 1, "per_head": lambda cfg: cfg.n_head}
)


class MultiHeadLowRankAttention(CausalSelfAttention):
    """MLRA. Q, K, V = c_attn_up(c_attn_down(x)):
    - `c_attn_down` (3·g·r, C): the down factors of q (g of them), then k, then v, stacked;
    - `c_attn_up` grouped (3·g, C/g, r): the matching up factors, bias (3C),
    with g = 1 (`shared`) or n_head (`per_head`, one factorisation per head and projection).
    The output projection is `c_proj` (full rank) or, with `model.mlra_out`, `c_proj_down`
    then `c_proj_up`: (r, C) then (C, r) shared, or per head grouped (h, r, hs) then (C, h·r)."""

    def _build_projections(self, cfg: ModelConfig) -> None:
        C, hs = cfg.n_embd, cfg.head_dim
        self.rank = r = mlra_rank(cfg)
        self.factor_groups = g = MLRA_MODES[cfg.mlra_mode](cfg)
        self.c_attn_down = linear(cfg, C, 3 * g * r, bias=False, blocks=3 * g)
        self.c_attn_up = GroupedLinear(cfg, 3 * g, r, C // g, bias=cfg.bias)
        if not cfg.mlra_out:
            self.c_proj = linear(cfg, C, C, bias=cfg.bias)
        elif g == 1:
            self.c_proj_down: nn.Linear | GroupedLinear = linear(cfg, C, r, bias=False)
            self.c_proj_up = linear(cfg, r, C, bias=cfg.bias)
        else:
            self.c_proj_down = GroupedLinear(cfg, g, hs, r, bias=False)
            self.c_proj_up = linear(cfg, g * r, C, bias=cfg.bias)

    def qkv(self, x: torch.Tensor) -> torch.Tensor:
        return self.c_attn_up(self.c_attn_down(x))  # (B, T, C) -> (B, T, 3·g·r) -> (B, T, 3C)

    def project_out(self, y: torch.Tensor) -> torch.Tensor:
        if self.config.mlra_out:
            return self.c_proj_up(self.c_proj_down(y))  # (B, T, C) -> (B, T, g·r) -> (B, T, C)
        return self.c_proj(y)

    @torch.no_grad()
    def init_weights(self, layout: NormLayout) -> None:
        C, r, g = self.n_embd, self.rank, self.factor_groups
        factor_stds = MLRA_INITS[self.config.mlra_init]
        down = self.c_attn_down.weight.view(3, g * r, C)  # per projection: its g down factors
        for i, role in enumerate(QKV):
            s_down, s_up = factor_stds(layout.weight_std(role, C, C), C, r)
            down[i].normal_(0.0, s_down)
            self.c_attn_up.weight[i * g : (i + 1) * g].normal_(0.0, s_up)
        sigma_out = layout.weight_std("attn_out", C, C)
        if not self.config.mlra_out:
            self.c_proj.weight.normal_(0.0, sigma_out)
        else:  # the down factor reads the merged heads (shared) or one head (per head)
            s_down, s_up = factor_stds(sigma_out, C // g, r)
            self.c_proj_down.weight.normal_(0.0, s_down)
            self.c_proj_up.weight.normal_(0.0, s_up)
        _zero_biases(self)


def _zero_biases(module: nn.Module) -> None:
    for name, p in module.named_parameters():
        if name.endswith("bias"):  # projections' biases and the norms' (also 0 at init)
            p.zero_()


ATTENTION = Registry(
    "model.attention", {"mha": MultiHeadAttention, "mlra": MultiHeadLowRankAttention}
)


def build_attention(cfg: ModelConfig, layout: NormLayout) -> CausalSelfAttention:
    return ATTENTION[cfg.attention](cfg, layout)
