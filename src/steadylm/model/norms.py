"""Where the LayerNorms go, the init each layout prescribes, and the embedding recipes.

`norm_layout(cfg)` and `embedding_recipe(cfg)` are the one place where `model.norm_layout` and
`model.embed_norm` are read; the model only consults the small specs they return.

Layouts (N = model.n_layer):
- `pre_ln` (GPT-2): x + f(LN(x)) and a final LN. GPT-2 init: N(0, 0.02²), the two projections
  that write into the residual stream scaled by 1/sqrt(2N).
- `post_ln` (original Transformer; Xiong et al. 2020): LN(x + f(x)), no final LN (the last block
  already ends in one). GPT-2 init, so the only change from `pre_ln` is where the norms sit.
- `sub_ln` (Magneto, "Foundation Transformers", Wang et al. 2022): `pre_ln` plus a LayerNorm
  before the attention output projection and before the MLP's second linear. Xavier init, with
  the value, attention-output and both MLP weights multiplied by sqrt(log 2N) (as torchscale).
- `deepnorm` (DeepNet, Wang et al. 2022): LN(α·x + f(x)) with α = (2N)^(1/4), no final LN.
  Xavier init with the value, attention-output and both MLP weights multiplied by
  β = (8N)^(-1/4); query and key keep gain 1. No GPT-2 1/sqrt(2N) on top: β replaces it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch.nn as nn

from steadylm.config import ModelConfig
from steadylm.registry import Registry

INIT_STD = 0.02  # GPT-2's N(0, 0.02²), also used for the token and position embeddings

# The weight matrices of a block, by role. The init rules single out two sets of them:
RESIDUAL_WRITERS = ("attn_out", "mlp_out")  # write into the residual stream: GPT-2's 1/sqrt(2N)
DEPTH_SCALED = ("v", "attn_out", "mlp_in", "mlp_out")  # DeepNorm's β and Magneto's γ


def layer_norm(cfg: ModelConfig, dim: int) -> nn.LayerNorm:
    return nn.LayerNorm(dim, eps=cfg.layer_norm_epsilon, bias=cfg.bias)


@dataclass(frozen=True)
class NormLayout:
    n_layer: int
    post_norm: bool  # LN(α·x + f(x)) after each residual sum, instead of x + f(LN(x))
    residual_scale: float  # α
    sub_ln: bool  # the extra LayerNorms inside attention and MLP (Magneto)
    final_norm: bool  # ln_f before the head
    xavier_gain: float | None  # None: GPT-2 init; else Xavier, this gain on DEPTH_SCALED weights

    def weight_std(self, role: str, fan_in: int, fan_out: int) -> float:
        """Init std of a full (fan_out, fan_in) weight of `role` (q, k, v, attn_out, mlp_in,
        mlp_out). MLRA's factors and `qkv_init_scale` are defined relative to this."""
        if self.xavier_gain is None:
            return INIT_STD / math.sqrt(2 * self.n_layer) if role in RESIDUAL_WRITERS else INIT_STD
        gain = self.xavier_gain if role in DEPTH_SCALED else 1.0
        return gain * math.sqrt(2.0 / (fan_in + fan_out))  # Xavier normal


# model.norm_layout -> the layout for N blocks
NORM_LAYOUTS: Registry[Callable[[int], NormLayout]] = Registry(
    "model.norm_layout",
    {
        "pre_ln": lambda N: NormLayout(
            N, post_norm=False, residual_scale=1.0, sub_ln=False, final_norm=True, xavier_gain=None
        ),
        "post_ln": lambda N: NormLayout(
            N, post_norm=True, residual_scale=1.0, sub_ln=False, final_norm=False, xavier_gain=None
        ),
        "sub_ln": lambda N: NormLayout(
            N,
            post_norm=False,
            residual_scale=1.0,
            sub_ln=True,
            final_norm=True,
            xavier_gain=math.sqrt(math.log(2 * N)),
        ),
        "deepnorm": lambda N: NormLayout(
            N,
            post_norm=True,
            residual_scale=(2 * N) ** 0.25,
            sub_ln=False,
            final_norm=False,
            xavier_gain=(8 * N) ** -0.25,
        ),
    },
)


def norm_layout(cfg: ModelConfig) -> NormLayout:
    return NORM_LAYOUTS[cfg.norm_layout](cfg.n_layer)


@dataclass(frozen=True)
class EmbeddingRecipe:
    scale: float  # the embedding output is multiplied by this
    layer_norm: bool  # then layer-normalised (transformer.ln_emb)


# model.embed_norm -> the recipe for width d
EMBEDDING_RECIPES: Registry[Callable[[int], EmbeddingRecipe]] = Registry(
    "model.embed_norm",
    {
        "none": lambda d: EmbeddingRecipe(scale=1.0, layer_norm=False),
        "scaled": lambda d: EmbeddingRecipe(scale=math.sqrt(d), layer_norm=False),
        "layernorm": lambda d: EmbeddingRecipe(scale=1.0, layer_norm=True),
    },
)


def embedding_recipe(cfg: ModelConfig) -> EmbeddingRecipe:
    """`model.embed_norm`, after Takase et al. 2024 ("Spike No More"): `scaled` multiplies the
    embedding output by sqrt(d), `layernorm` layer-normalises it (also BLOOM's embedding LN).
    Both make the shortcut large next to the sub-layers at init. The embedding output is the
    sum token + position embedding, so the position signal keeps its share of it."""
    return EMBEDDING_RECIPES[cfg.embed_norm](cfg.n_embd)
