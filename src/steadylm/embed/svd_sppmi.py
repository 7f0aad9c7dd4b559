"""SVD-SPPMI (Levy & Goldberg 2014): the truncated SVD of the shifted positive PMI matrix.

    SPPMI_wc = max(log(#(w,c) |D| / (#(w) #(c))) - log k, 0)     (0 where #(w,c) = 0)

Its rank-d truncation X = U diag(s) V^T is the method's matrix, and the start of RO-SGNS. The SVD is
randomised subspace iteration (Halko, Martinsson & Tropp 2011) with a seeded generator: only (N, q)
blocks besides the matrix, on any device, and deterministic for a given seed and device.
"""

from __future__ import annotations

import math

import torch

from steadylm.embed.counts import Counts
from steadylm.embed.objective import BLOCK


def sppmi(counts: Counts, neg: int, block: int = BLOCK) -> torch.Tensor:
    """The (N, N) float32 SPPMI matrix, built block by block."""
    D = counts.D
    log_w = counts.word_counts.log()
    log_c = counts.context_counts.log()
    shift = math.log(counts.total) - math.log(neg)
    M = torch.empty_like(D)
    for i in range(0, D.shape[0], block):
        rows = slice(i, i + block)
        pmi = D[rows].log() - log_w[rows, None] - log_c[None, :] + shift  # -inf where #(w,c) = 0
        M[rows] = pmi.clamp_(min=0).nan_to_num_(nan=0.0)  # nan: a word with no pairs at all (0 - 0)
    return M


def truncated_svd(M: torch.Tensor, d: int, iters: int = 10, oversample: int | None = None,
                  seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:  # fmt: skip
    """The d leading singular triplets of M (n, m): U (n, d), s (d,), V (m, d)."""
    n, m = M.shape
    q = min(d + (oversample if oversample is not None else max(10, d // 2)), n, m)
    gen = torch.Generator(device=M.device).manual_seed(seed)
    Q = torch.linalg.qr(
        M @ torch.randn(m, q, generator=gen, device=M.device, dtype=M.dtype)
    ).Q  # (n, q)
    for _ in range(iters):
        Q = torch.linalg.qr(M.T @ Q).Q  # (m, q)
        Q = torch.linalg.qr(M @ Q).Q  # (n, q)
    Ub, s, Vt = torch.linalg.svd(Q.T @ M, full_matrices=False)  # (q, q), (q,), (q, m)
    return (Q @ Ub)[:, :d], s[:d], Vt[:d].T


def svd_sppmi(counts: Counts, dim: int, neg: int, iters: int = 10, seed: int = 0
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:  # fmt: skip
    """U (N, d), s (d,), V (N, d) of the rank-d truncation of SPPMI."""
    M = sppmi(counts, neg)
    U, s, V = truncated_svd(M, dim, iters, seed=seed)
    del M
    return U, s, V
