"""The layer-linearity regulariser of Razzhigaev et al. ("Your Transformer is Secretly Linear", §4).

With hidden states h_0 (the embedding output) .. h_L (the output of block L), per token:

    cosine:  (1/L) Σ_{l=1..L} (1 − cos(h_l, h_{l−1}))
    mse:     (1/L) Σ_{l=1..L} ‖h_l − h_{l−1}‖²

The paper sums over layers; the mean keeps λ's meaning fixed across depths (its λ = our λ / L).
`penalty_sum` returns the sum over tokens, so that the trainer, which divides its summed token
loss by the global token count, adds λ times the *mean over tokens* to the loss, whatever the
micro-batch and world sizes. Computed in fp32 under autocast.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

KINDS = ("cosine", "mse")


def penalty_sum(states: list[torch.Tensor], kind: str) -> torch.Tensor:
    """Σ over tokens of the mean over blocks of the per-token penalty; states: L+1 of (B, T, C)."""
    if kind not in KINDS:
        raise ValueError(
            f"unknown linearity regulariser {kind!r}; choose one of {', '.join(KINDS)}"
        )
    total = torch.zeros(
        (), device=states[0].device, dtype=torch.promote_types(states[0].dtype, torch.float32)
    )
    for prev, cur in zip(states[:-1], states[1:]):
        prev, cur = prev.to(total.dtype), cur.to(total.dtype)
        if kind == "cosine":
            per_token = 1.0 - F.cosine_similarity(cur, prev, dim=-1, eps=1e-8)  # (B, T)
        else:
            per_token = (cur - prev).pow(2).sum(dim=-1)  # (B, T)
        total = total + per_token.sum()
    return total / (len(states) - 1)
