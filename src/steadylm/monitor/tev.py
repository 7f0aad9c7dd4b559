"""Token Embedding Variability (Chung et al., EMNLP 2024).

TEV_i is the population standard deviation of embedding row i across the hidden dimension;
mu_TEV and sigma_TEV are the mean and population std of TEV_i over the real vocabulary rows.
Everything is computed in fp32 on the tensor's own device, so the trainer can call it every
step without a host sync.
"""

from __future__ import annotations

import torch


def tev_per_row(weight: torch.Tensor, n_rows: int | None = None) -> torch.Tensor:
    """TEV_i for the first `n_rows` rows (all by default): (V, d) -> (V,), fp32."""
    w = weight.detach()
    if n_rows is not None:
        w = w[:n_rows]
    return w.float().std(dim=1, correction=0)


def tev_summary(weight: torch.Tensor, n_rows: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(mu_TEV, sigma_TEV) as 0-d fp32 tensors on the weight's device."""
    t = tev_per_row(weight, n_rows)
    return t.mean(), t.std(correction=0)
