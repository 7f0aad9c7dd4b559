"""The SGNS objective of a low-rank matrix X = L R^T and its Euclidean gradient.

    F(X)      = sum_{w,c} #(w,c) log sigma(x_wc) + B_wc log sigma(-x_wc),   B_wc = k #(w) #(c) / |D|
    dF/dx_wc  = #(w,c) sigma(-x_wc) - B_wc sigma(x_wc)

(Levy & Goldberg 2014; Fonarev et al. 2017). X is never held whole: it is formed `block` rows at a
time from its factors, so besides the counts the memory is one (N, N) gradient when asked for and a
few (block, N) temporaries. F is summed in float64: it is a sum of ~1e8 terms of mixed sign.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as nnf

from steadylm.embed.counts import Counts

# Rows of X formed at once: (256, N) float32 is 10 MB at N = 10k. Temporaries under glibc's 32 MB
# mmap ceiling are reused from the heap; 40 MB blocks were mapped and zeroed afresh every time,
# which doubled a pass's CPU time in system calls.
BLOCK = 256


@dataclass
class Evaluation:
    """F at X = L R^T and, when asked for, the gradient G (N, N) and G R (N, d)."""

    F: float
    G: torch.Tensor | None = None
    GR: torch.Tensor | None = None

    def gradients(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(G, G R) of an evaluation made with grad=True."""
        assert self.G is not None and self.GR is not None, "evaluated without grad=True"
        return self.G, self.GR


def negative_weights(counts: Counts, neg: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Row and column factors of B = k #(w) #(c) / |D| (a rank-one matrix): (N,), (N,)."""
    return counts.word_counts * (neg / counts.total), counts.context_counts


def sgns_objective(counts: Counts, L: torch.Tensor, R: torch.Tensor, neg: int, grad: bool = False,
                   block: int = BLOCK, out: torch.Tensor | None = None) -> Evaluation:  # fmt: skip
    """F(L R^T) for L (N, d), R (N, d) on the counts' device; with `grad`, also G and G R.

    `out`, an (N, N) tensor like the counts, receives G instead of a new allocation."""
    D = counts.D
    n = D.shape[0]
    b_row, b_col = negative_weights(counts, neg)
    L, R = L.to(D), R.to(D)
    F = torch.zeros((), dtype=torch.float64, device=D.device)
    G = (out if out is not None else torch.empty_like(D)) if grad else None
    for i in range(0, n, block):
        rows = slice(i, min(i + block, n))
        X = L[rows] @ R.T  # (b, N)
        B = b_row[rows, None] * b_col[None, :]  # (b, N)
        P = D[rows]  # (b, N) positive counts
        # log sigma(-x) = log sigma(x) - x, so one logsigmoid serves both terms.
        ls = nnf.logsigmoid(X)
        F += (P * ls).sum(dtype=torch.float64) + (B * (ls - X)).sum(dtype=torch.float64)
        if G is not None:  # i.e. grad
            s = torch.sigmoid(X)
            G[rows] = P * (1 - s) - B * s  # #(w,c) sigma(-x) - B sigma(x)
    return Evaluation(float(F), G, G @ R if G is not None else None)
