"""The tied output head in state dicts.

The GPT's `lm_head.weight` is the token embedding `transformer.wte.weight` (one tensor). Files
store it once, as wte: safetensors refuses shared tensors, and Hugging Face GPT-2 re-ties the head
from its config. Loading puts the head back as the same tensor, so `load_state_dict` sees every key.
A TT model stores cores instead of `transformer.wte.weight`; its separate head, if any, is a
parameter of its own and is always kept.
"""

from __future__ import annotations

import torch

HEAD = "lm_head.weight"
EMBEDDING = "transformer.wte.weight"


def is_tied(sd: dict[str, torch.Tensor]) -> bool:
    """Whether `sd`'s head is the embedding: the same storage, or equal values (a copy made on the
    way to the CPU or to fp32). A separate head (an untied TT model's) is never equal to it."""
    head, emb = sd.get(HEAD), sd.get(EMBEDDING)
    if head is None or emb is None or head.shape != emb.shape:
        return False
    return head.data_ptr() == emb.data_ptr() or torch.equal(head, emb)


def drop_tied_head(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """`sd` without a tied head (a new dict; the tensors are shared). A separate head stays."""
    return {k: v for k, v in sd.items() if k != HEAD} if is_tied(sd) else dict(sd)


def with_tied_head(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """`sd` with the head set to the embedding where it has none (a new dict), for
    `load_state_dict`; a separate head in `sd` is kept."""
    return {HEAD: sd[EMBEDDING], **sd} if EMBEDDING in sd else dict(sd)
