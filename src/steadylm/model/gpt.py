"""GPT-2, in one file, with Hugging Face GPT-2 parameter names, and the stability variants.

Names match `transformers.GPT2LMHeadModel` (`transformer.wte`, `transformer.h.0.attn.c_attn`, ...)
so weights map one to one. The only difference is layout: Hugging Face stores the Conv1D weights
of `c_attn`, `c_proj` and `c_fc` as (in, out); here they are `nn.Linear` weights (out, in), and
`steadylm.model.hf` transposes them on the way in and out.

The variants (docs/variants.md) are chosen by name in the config and resolved in one place each:
attention in `attention.build_attention`, norm layout and embedding recipe in `norms`, σReparam
in `reparam.linear`, the token embedding (dense or tensor-train, docs/tt-embeddings.md) in
`token_embedding`. With the defaults (mha, pre_ln, no embed_norm, reparam or qk_norm) the model
is exactly GPT-2; variant parameters have names of their own (`attn.c_attn_down`, `attn.q_norm`,
`attn.ln_sub`, `mlp.ln_sub`, `transformer.ln_emb`, `*.sigma.gamma`, ...).

Given targets, the forward pass returns the training objective as sums over tokens (cross-entropy
plus the optional z-loss, see `lm_head_loss`); the model knows nothing of optimizers, logging or
parallelism. A training loop calls `after_optimizer_step()` after every update that changed the
weights: σReparam's power iteration, a no-op for the other variants.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import cast

import torch
import torch.nn as nn
import torch.nn.functional as F

from steadylm.config import ModelConfig
from steadylm.model import reparam
from steadylm.model.attention import build_attention
from steadylm.model.lm_head_loss import lm_head_loss
from steadylm.model.norms import INIT_STD, NormLayout, embedding_recipe, layer_norm, norm_layout
from steadylm.model.tt_embedding import TTEmbedding, resolve_shape


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig, layout: NormLayout):
        super().__init__()
        self.c_fc = reparam.linear(cfg, cfg.n_embd, 4 * cfg.n_embd, bias=cfg.bias)
        self.ln_sub = (
            layer_norm(cfg, 4 * cfg.n_embd) if layout.sub_ln else None
        )  # Magneto's, before c_proj
        self.c_proj = reparam.linear(cfg, 4 * cfg.n_embd, cfg.n_embd, bias=cfg.bias)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # GPT-2 uses the tanh approximation of GELU ("gelu_new" in Hugging Face).
        h = F.gelu(self.c_fc(x), approximate="tanh")  # (B, T, 4C)
        if self.ln_sub is not None:
            h = self.ln_sub(h)
        return self.dropout(self.c_proj(h))

    @torch.no_grad()
    def init_weights(self, layout: NormLayout) -> None:
        C = self.c_fc.in_features
        self.c_fc.weight.normal_(0.0, layout.weight_std("mlp_in", C, 4 * C))
        self.c_proj.weight.normal_(0.0, layout.weight_std("mlp_out", 4 * C, C))
        for lin in (self.c_fc, self.c_proj):
            if lin.bias is not None:
                lin.bias.zero_()


class Block(nn.Module):
    """Pre-norm (pre_ln, sub_ln): x + attn(ln_1(x)), then + mlp(ln_2(x)).
    Post-norm (post_ln, deepnorm): ln_1(α·x + attn(x)), then ln_2(α·x + mlp(x))."""

    def __init__(self, cfg: ModelConfig, layout: NormLayout):
        super().__init__()
        self.ln_1 = layer_norm(cfg, cfg.n_embd)
        self.attn = build_attention(cfg, layout)
        self.ln_2 = layer_norm(cfg, cfg.n_embd)
        self.mlp = MLP(cfg, layout)
        self.post_norm = layout.post_norm
        self.alpha = layout.residual_scale  # DeepNorm's α; 1 otherwise

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, T, C) -> (B, T, C)
        if self.post_norm:
            x = self.ln_1(self.alpha * x + self.attn(x))
            x = self.ln_2(self.alpha * x + self.mlp(x))
        else:
            x = x + self.attn(self.ln_1(x))
            x = x + self.mlp(self.ln_2(x))
        return x


class Blocks(nn.ModuleList):
    """`transformer.h`: an `nn.ModuleList` that holds only `Block`s, so iterating it is typed."""

    def __iter__(self) -> Iterator[Block]:
        return cast(Iterator[Block], super().__iter__())  # the stubs' Iterator[Module]


class Transformer(nn.ModuleDict):
    """`GPT.transformer`: an `nn.ModuleDict` (the parameter names stay `transformer.wte.weight`,
    ...) with its entries' types declared; `nn.Module.__getattr__` alone types them all as
    `Tensor | Module`. The annotations create no class attributes: lookups still reach the
    modules through `__getattr__`."""

    wte: nn.Embedding | TTEmbedding
    wpe: nn.Embedding
    ln_emb: nn.LayerNorm  # only with the embedding recipe's layer norm (`"ln_emb" in ...`)
    drop: nn.Dropout
    h: Blocks
    ln_f: nn.LayerNorm | nn.Identity


class GPT(nn.Module):
    """GPT-2 language model mapping token ids (B, T) to logits (B, T, V), with a tied head."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        if cfg.vocab_size <= 0:
            raise ValueError(
                "model.vocab_size must be set (from the tokenizer) before building the model"
            )
        self.config = cfg
        self.layout = norm_layout(cfg)
        embedding = embedding_recipe(cfg)
        self.embed_scale = embedding.scale
        modules: dict[str, nn.Module] = dict(
            wte=token_embedding(cfg),
            wpe=nn.Embedding(cfg.block_size, cfg.n_embd),
        )
        if embedding.layer_norm:
            modules["ln_emb"] = layer_norm(cfg, cfg.n_embd)
        modules.update(
            drop=nn.Dropout(cfg.dropout),
            h=Blocks([Block(cfg, self.layout) for _ in range(cfg.n_layer)]),
            # Post-norm layouts end every block in a LayerNorm already.
            ln_f=layer_norm(cfg, cfg.n_embd) if self.layout.final_norm else nn.Identity(),
        )
        self.transformer = Transformer(modules)
        # Built directly, never through reparam.linear: σReparam excludes the tied embedding.
        # A TT embedding with the tied head has no lm_head: `head_weight()` reconstructs it.
        self.lm_head: nn.Linear | None = None
        if cfg.embedding == "dense" or cfg.tt_head == "separate":
            self.lm_head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        if cfg.embedding == "dense":
            assert self.lm_head is not None and isinstance(self.transformer.wte, nn.Embedding)
            self.lm_head.weight = self.transformer.wte.weight  # tied, as in GPT-2
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Embeddings N(0, 0.02²) (a TT embedding: cores drawn so its entries have that variance),
        a separate head N(0, 0.02²), norms 1 and 0, block weights by the layout's rule (GPT-2
        init, or Xavier with DeepNorm's β / Magneto's γ; `norms.NormLayout.weight_std`), MLRA
        factors by `model.mlra_init`; then σReparam's γ = σ(W₀)."""
        for module in self.modules():
            if isinstance(module, nn.Embedding):
                nn.init.normal_(module.weight, mean=0.0, std=INIT_STD)
            elif isinstance(module, TTEmbedding):
                module.reset_parameters()
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        for block in self.transformer.h:
            block.attn.init_weights(self.layout)
            block.mlp.init_weights(self.layout)
        if self.config.embedding == "tt" and self.lm_head is not None:  # the separate head
            nn.init.normal_(self.lm_head.weight, mean=0.0, std=INIT_STD)
        reparam.reset_sigma_(self)

    @torch.no_grad()
    def after_optimizer_step(self) -> None:
        """Call once after every optimizer step that changed the weights (not on skipped steps).
        With σReparam it takes one power-iteration step on every reparametrised weight; otherwise
        it does nothing. The forward pass never changes the model's state."""
        reparam.power_iteration_(self)

    def get_input_embeddings(self) -> nn.Embedding | TTEmbedding:
        return self.transformer.wte

    def head_weight(self) -> torch.Tensor:
        """The output layer's (V, C) weight: the tied wte, a separate head's, or (TT, tied) the
        matrix reconstructed from the cores, once per call."""
        if self.lm_head is None:
            wte = self.transformer.wte
            assert isinstance(wte, TTEmbedding)  # only a TT embedding goes without a head
            return wte.full()
        return self.lm_head.weight

    def num_parameters(self, exclude_position: bool = False) -> int:
        """Parameter count with the tied head counted once."""
        n = sum(p.numel() for p in self.parameters())  # parameters() yields the tied weight once
        return n - self.transformer.wpe.weight.numel() if exclude_position else n

    def flops_per_token(self) -> float:
        """Training FLOPs per token, forward and backward: 6·N (N without position embeddings,
        the head's V·d matmul counted once: the tied table, or a separate head; a TT
        embedding's cores only feed lookups and the reconstruction, not counted) plus 12·L·d·T
        for attention (T = block size)."""
        cfg = self.config
        embedding_and_head = ("transformer.wte", "transformer.wpe", "lm_head")
        params = self.named_parameters()
        n = sum(p.numel() for name, p in params if not name.startswith(embedding_and_head))
        return (
            6 * (n + cfg.vocab_size * cfg.n_embd) + 12 * cfg.n_layer * cfg.n_embd * cfg.block_size
        )

    def embed(self, idx: torch.Tensor) -> torch.Tensor:
        """The embedding output (B, T, C) that enters block 0 (before dropout)."""
        B, T = idx.shape
        if self.config.block_size < T:
            raise ValueError(f"sequence length {T} exceeds block_size {self.config.block_size}")
        pos = torch.arange(T, device=idx.device)
        x = self.transformer.wte(idx) + self.transformer.wpe(pos)  # (B, T, C)
        if self.embed_scale != 1.0:
            x = x * self.embed_scale
        if "ln_emb" in self.transformer:
            x = self.transformer.ln_emb(x)
        return x

    def hidden_states(self, idx: torch.Tensor) -> torch.Tensor:
        """Final hidden states (B, T, C), after ln_f."""
        x = self.transformer.drop(self.embed(idx))
        for block in self.transformer.h:
            x = block(x)
        return self.transformer.ln_f(x)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None, z_loss: float = 0.0):
        """Logits (B, T, V); or, given targets (B, T), the summed loss without materialising the
        logits: (Σ CE + z_loss·Σ log²Z, Σ log²Z), see `lm_head_loss`."""
        h = self.hidden_states(idx)  # (B, T, C)
        w = self.head_weight()  # (V, C)
        if targets is None:
            return F.linear(h, w)  # (B, T, V)
        return lm_head_loss(h, w, targets, z_loss)


def token_embedding(cfg: ModelConfig) -> nn.Embedding | TTEmbedding:
    """`model.embedding`: a dense (V, C) table, or a tensor train (`tt_embedding`) whose entries
    start with the dense table's variance."""
    if cfg.embedding == "tt":
        return TTEmbedding(cfg.vocab_size, resolve_shape(cfg), cfg.tt_rank, init_std=INIT_STD)
    return nn.Embedding(cfg.vocab_size, cfg.n_embd)
