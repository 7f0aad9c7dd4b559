"""The SGNS objective, its gradient, the projector-splitting step and the two matrix methods."""

import itertools

import numpy as np
import pytest
import torch

from steadylm.embed.counts import Counts
from steadylm.embed.objective import sgns_objective
from steadylm.embed.ro_sgns import (
    Factors,
    embeddings,
    projector_splitting_step,
    ro_sgns,
    tangent_norm_sq,
)
from steadylm.embed.svd_sppmi import sppmi, svd_sppmi, truncated_svd


def counts_of(D: torch.Tensor, window: int = 2) -> Counts:
    n = D.shape[0]
    return Counts([f"w{i}" for i in range(n)], np.ones(n, dtype=np.int64), D, [], n, window)


def random_counts(n: int = 7, seed: int = 0) -> Counts:
    g = torch.Generator().manual_seed(seed)
    D = torch.poisson(torch.full((n, n), 3.0, dtype=torch.float64), generator=g)
    return counts_of(D + D.T)  # symmetric like real windows, with some zeros


def brute_force_F(D: np.ndarray, X: np.ndarray, k: int) -> float:
    w, c, total = D.sum(1), D.sum(0), D.sum()
    B = k * np.outer(w, c) / total

    def log_sig(x):
        return -np.log1p(np.exp(-x))

    return float((D * log_sig(X) + B * log_sig(-X)).sum())


def test_objective_matches_the_formula_and_blocking_does_not_change_it():
    counts = random_counts()
    g = torch.Generator().manual_seed(1)
    L, R = (
        torch.randn(7, 3, generator=g, dtype=torch.float64),
        torch.randn(7, 3, generator=g, dtype=torch.float64),
    )
    want = brute_force_F(counts.D.numpy(), (L @ R.T).numpy(), k=5)
    for block in (1, 3, 1024):
        got = sgns_objective(counts, L, R, neg=5, block=block).F
        assert got == pytest.approx(want, rel=1e-12)


def test_gradient_matches_finite_differences():
    counts = random_counts()
    g = torch.Generator().manual_seed(2)
    X = torch.randn(7, 7, generator=g, dtype=torch.float64)
    eye = torch.eye(7, dtype=torch.float64)
    ev = sgns_objective(counts, X, eye, neg=3, grad=True, block=4)
    assert torch.allclose(ev.GR, ev.G @ eye)
    eps = 1e-6
    for _ in range(5):
        E = torch.randn(7, 7, generator=g, dtype=torch.float64)
        f_plus = sgns_objective(counts, X + eps * E, eye, neg=3).F
        f_minus = sgns_objective(counts, X - eps * E, eye, neg=3).F
        numeric = (f_plus - f_minus) / (2 * eps)
        assert numeric == pytest.approx(float((ev.G * E).sum()), rel=1e-6, abs=1e-8)


def test_projector_splitting_step_keeps_rank_orthonormality_and_raises_F():
    counts = random_counts(n=12, seed=3)
    g = torch.Generator().manual_seed(3)
    U, V = (
        torch.linalg.qr(torch.randn(12, 3, generator=g, dtype=torch.float64)).Q for _ in range(2)
    )
    x = Factors(U, torch.randn(3, 3, generator=g, dtype=torch.float64), V)
    ev = sgns_objective(counts, x.left, x.V, neg=5, grad=True)
    new = projector_splitting_step(x, ev.G, ev.GR, lam=1e-3)
    eye = torch.eye(3, dtype=torch.float64)
    assert new.U.shape == (12, 3) and new.V.shape == (12, 3) and new.S.shape == (3, 3)
    assert torch.allclose(new.U.T @ new.U, eye, atol=1e-10) and torch.allclose(
        new.V.T @ new.V, eye, atol=1e-10
    )
    X_new = new.left @ new.V.T
    assert torch.linalg.matrix_rank(X_new) == 3
    # X' is X + lambda G projected on the span of the new U: U' U'^T X_hat.
    X_hat = x.left @ x.V.T + 1e-3 * ev.G
    assert torch.allclose(X_new, new.U @ new.U.T @ X_hat, atol=1e-10)
    assert sgns_objective(counts, new.left, new.V, neg=5).F > ev.F
    # The first-order increase is lambda ||P_T G||^2.
    lam = 1e-6
    tiny = projector_splitting_step(x, ev.G, ev.GR, lam)
    gain = sgns_objective(counts, tiny.left, tiny.V, neg=5).F - ev.F
    assert gain == pytest.approx(lam * tangent_norm_sq(x, ev.G, ev.GR), rel=1e-3)


def test_truncated_svd_matches_the_exact_leading_triplets():
    g = torch.Generator().manual_seed(4)
    A = torch.randn(60, 40, generator=g, dtype=torch.float64) @ torch.diag(
        0.8 ** torch.arange(40.0, dtype=torch.float64)
    )
    A = A @ torch.linalg.qr(torch.randn(40, 40, generator=g, dtype=torch.float64)).Q
    U, s, V = truncated_svd(A, 5, iters=10)
    U0, s0, Vt0 = torch.linalg.svd(A, full_matrices=False)
    assert torch.allclose(s, s0[:5], rtol=1e-8)
    assert torch.allclose((U * s) @ V.T, (U0[:, :5] * s0[:5]) @ Vt0[:5], atol=1e-8)


def test_sppmi_definition():
    D = torch.tensor([[0.0, 4, 1], [4, 2, 0], [1, 0, 6]], dtype=torch.float64)
    M = sppmi(counts_of(D), neg=1)
    total, w = D.sum(), D.sum(1)
    for i in range(3):
        for j in range(3):
            want = (
                0.0 if D[i, j] == 0 else max(float(torch.log(D[i, j] * total / (w[i] * w[j]))), 0.0)
            )
            assert float(M[i, j]) == pytest.approx(want)


def planted(n: int = 40, rank: int = 3, seed: int = 0) -> tuple[Counts, torch.Tensor]:
    """Expected counts D_wc = a_w a_c exp(Z_wc) with Z of rank `rank`: their PMI is Z plus row and
    column terms, so the unconstrained SGNS optimum M* = PMI - log k (k = 1 here) has rank <= rank + 2,
    with entries of both signs."""
    g = torch.Generator().manual_seed(seed)
    Y = torch.randn(n, rank, generator=g, dtype=torch.float64)
    Z = Y @ Y.T * 0.3  # symmetric, like window counts
    a = torch.exp(
        0.3 * torch.randn(n, generator=g, dtype=torch.float64)
    )  # unequal word frequencies
    D = a[:, None] * a[None, :] * torch.exp(Z) * 50
    counts = counts_of(D)
    M_star = torch.log(D * counts.total / (D.sum(1)[:, None] * D.sum(0)[None, :]))
    return counts, M_star


def test_ro_sgns_recovers_a_planted_low_rank_pmi_better_than_svd_sppmi():
    counts, M_star = planted()
    d = 5  # rank + 2
    assert torch.linalg.matrix_rank(M_star, atol=1e-8) <= d
    assert 0.3 < (M_star < 0).float().mean() < 0.7  # SPPMI's clipping discards the negative half
    U, s, V = svd_sppmi(counts, dim=d, neg=1, iters=30)
    X_svd = (U * s) @ V.T
    x, history = ro_sgns(counts, Factors(U, torch.diag(s), V), neg=1, iters=100, step=None)
    X_ro = x.left @ x.V.T

    def error(X):
        return float(torch.linalg.matrix_norm(X - M_star) / torch.linalg.matrix_norm(M_star))

    assert error(X_ro) < 1e-4 and error(X_svd) > 0.5
    F = [row["F"] for row in history]
    assert all(b >= a for a, b in itertools.pairwise(F))  # the line search never lets F fall
    F_star = sgns_objective(counts, M_star, torch.eye(len(M_star), dtype=torch.float64), neg=1).F
    assert F[-1] == pytest.approx(F_star, rel=1e-9) and F[0] < F_star


def test_fixed_step_follows_the_paper_even_when_F_falls():
    counts, _ = planted(n=20)
    U, s, V = svd_sppmi(counts, dim=5, neg=1)
    _, history = ro_sgns(
        counts, Factors(U, torch.diag(s), V), neg=1, iters=3, step=10.0, line_search=False
    )
    assert [row["lambda"] for row in history[1:]] == [10.0] * 3
    assert (
        history[-1]["F"] < history[0]["F"]
    )  # far too large a step: the reason for the line search


def test_embeddings_factor_X_symmetrically():
    counts = random_counts(n=10, seed=5)
    U, s, V = svd_sppmi(counts, dim=4, neg=5)
    x = Factors(U, torch.diag(s) + 0.1 * torch.ones(4, 4, dtype=torch.float64), V)
    W, C = embeddings(x)
    assert torch.allclose(W @ C.T, x.left @ x.V.T, atol=1e-10)
    assert torch.allclose(W.norm(), C.norm())
