"""The tied output head in state dicts.

The GPT's `lm_head.weight` is the token embedding `transformer.wte.weight` (one tensor). Files
store it once, as wte: safetensors refuses shared tensors, and Hugging Face GPT-2 re-ties the head
from its config. Loading puts the head back as the same tensor, so `load_state_dict` sees every key.
"""

from __future__ import annotations

import torch

HEAD = "lm_head.weight"
EMBEDDING = "transformer.wte.weight"


def drop_tied_head(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """`sd` without the head (a new dict; the tensors are shared)."""
    return {k: v for k, v in sd.items() if k != HEAD}


def with_tied_head(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """`sd` with the head set to the embedding (a new dict), for `load_state_dict`."""
    return {**sd, HEAD: sd[EMBEDDING]} if EMBEDDING in sd else dict(sd)
