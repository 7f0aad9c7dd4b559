"""Where a model keeps what the monitors watch: input embedding, untied output head, blocks.

Works on steadylm's GPT and on Hugging Face models (GPT-2, Llama, BERT, ...) without knowing
their class. The input embedding comes from `get_input_embeddings()` (else the first
`nn.Embedding`); it is either a table with a (V, d) `.weight` or a factorised embedding (such as
steadylm's tensor-train one) that yields its rows through `row_blocks()`. The blocks are the
`nn.ModuleList` of same-typed modules holding the most parameters (`transformer.h`,
`model.layers`, `encoder.layer`). Blocks are named `h.N` whatever
the model calls them, so metric keys (`grad_norm/h.3`) read the same across model families.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch
import torch.nn as nn


@dataclass
class ModelLayout:
    embedding: nn.Module  # has .weight of shape (V, d), or is factorised (`is_factorised`)
    head: torch.Tensor | None  # an untied output head's (V, d) weight; None when tied or absent
    blocks: list[nn.Module]

    def groups(self) -> dict[str, list[nn.Parameter]]:
        """Trainable parameters per group: "embed" then "h.0", "h.1", ... (each listed once)."""
        out = {"embed": [p for p in self.embedding.parameters() if p.requires_grad]}
        for i, block in enumerate(self.blocks):
            out[block_name(i)] = [p for p in block.parameters() if p.requires_grad]
        return out


@runtime_checkable
class Factorised(Protocol):
    """What a factorised embedding offers in place of a (V, d) `.weight` (see `is_factorised`)."""

    num_embeddings: int
    embedding_dim: int

    def row_blocks(self, n_rows: int) -> Iterator[torch.Tensor]: ...


@runtime_checkable
class HasInputEmbeddings(Protocol):
    """A model that names its input embedding: steadylm's GPT, Hugging Face models."""

    def get_input_embeddings(self) -> nn.Module: ...


def is_factorised(embedding: nn.Module) -> bool:
    """An embedding without a stored (V, d) table, whose rows come from `row_blocks(n_rows)`."""
    has_rows = callable(getattr(embedding, "row_blocks", None))
    return has_rows and getattr(embedding, "weight", None) is None


def embedding_shape(embedding: nn.Module) -> tuple[int, int]:
    """(V, d) of a table or a factorised embedding."""
    if is_factorised(embedding):
        assert isinstance(embedding, Factorised)
        return embedding.num_embeddings, embedding.embedding_dim
    weight = embedding.weight
    assert isinstance(weight, torch.Tensor)
    V, d = weight.shape
    return V, d


def block_name(i: int) -> str:
    return f"h.{i}"


def unwrap(model: nn.Module) -> nn.Module:
    """The module under DDP (`.module`) and torch.compile (`._orig_mod`) wrappers."""
    while True:
        for attr in ("_orig_mod", "module"):
            inner = getattr(model, attr, None)
            if isinstance(inner, nn.Module):
                model = inner
                break
        else:
            return model


def model_layout(model: nn.Module, blocks: nn.ModuleList | None = None) -> ModelLayout:
    """Find the embedding, an untied head and the blocks of `model` (wrappers are looked through).

    Pass `blocks` when the model keeps its blocks somewhere the heuristic does not find.
    """
    model = unwrap(model)
    embedding = _input_embedding(model)
    head = _untied_head(model, embedding)
    return ModelLayout(embedding, head, list(blocks) if blocks is not None else _blocks(model))


def _input_embedding(model: nn.Module) -> nn.Module:
    get = getattr(model, "get_input_embeddings", None)
    emb = get() if callable(get) else None
    if emb is None:
        emb = next((m for m in model.modules() if isinstance(m, nn.Embedding)), None)
    if emb is not None and is_factorised(emb):
        return emb
    if emb is None or getattr(emb, "weight", None) is None or emb.weight.dim() != 2:
        raise ValueError(
            f"{type(model).__name__} has no input embedding (no get_input_embeddings(), no nn.Embedding)"
        )
    return emb


def _untied_head(model: nn.Module, embedding: nn.Module) -> torch.Tensor | None:
    get = getattr(model, "get_output_embeddings", None)
    head = get() if callable(get) else getattr(model, "lm_head", None)
    w = getattr(head, "weight", None)
    if not isinstance(w, torch.Tensor) or w is getattr(embedding, "weight", None):
        return None
    return w if tuple(w.shape) == embedding_shape(embedding) else None


def _blocks(model: nn.Module) -> list[nn.Module]:
    best, best_n = [], 0
    for m in model.modules():
        if isinstance(m, nn.ModuleList) and len(m) and len({type(c) for c in m}) == 1:
            n = sum(p.numel() for p in m.parameters())
            if n > best_n:
                best, best_n = list(m), n
    return best
