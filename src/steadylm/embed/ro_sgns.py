"""RO-SGNS (Fonarev et al., ACL 2017): maximise the SGNS objective F over rank-d matrices
X = U S V^T by projector-splitting steps (Lubich & Oseledets 2014):

    X_hat = X + lambda G,   G = grad F(X)
    (U', R1) = QR(X_hat V)        X_hat V   = U S + lambda G V           (V^T V = I)
    (V', R2) = QR(X_hat^T U')     X_hat^T U' = V S^T (U^T U') + lambda G^T U'
    X' = U' R2^T V'^T             (= U' U'^T X_hat: X_hat projected on the new column space)

Everything is done on the factors and the gradient; X_hat is never formed. The paper uses a fixed
lambda, which diverges easily since the gradient's scale grows with the corpus; by default lambda is
chosen by Armijo backtracking on F instead: a step is kept when
F(X') >= F(X) + c lambda ||P_T G||^2, where P_T G is the gradient projected on the tangent space,
else lambda is halved; after a step accepted at its first trial the next trial doubles lambda.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from steadylm.embed.counts import Counts
from steadylm.embed.objective import Evaluation, sgns_objective

ARMIJO_C = 1e-4
MAX_HALVINGS = 30  # 2^-30: a step this small that still fails means no ascent direction is left


@dataclass
class Factors:
    """X = U S V^T with U, V (N, d) orthonormal columns and S (d, d)."""

    U: torch.Tensor
    S: torch.Tensor
    V: torch.Tensor

    @property
    def left(self) -> torch.Tensor:
        """U S, so that X = left @ V^T."""
        return self.U @ self.S


def projector_splitting_step(x: Factors, G: torch.Tensor, GV: torch.Tensor, lam: float) -> Factors:
    """One step from X = U S V^T along the Euclidean gradient G (N, N), GV = G V (N, d)."""
    U1, _ = torch.linalg.qr(x.U @ x.S + lam * GV)  # (N, d)
    V1, R2 = torch.linalg.qr(x.V @ (x.S.T @ (x.U.T @ U1)) + lam * (G.T @ U1))  # (N, d), (d, d)
    return Factors(U1, R2.T, V1)


def tangent_norm_sq(x: Factors, G: torch.Tensor, GV: torch.Tensor) -> float:
    """||P_T G||^2 = ||U^T G||^2 + ||G V||^2 - ||U^T G V||^2 (the Riemannian gradient's norm)."""
    UtG = x.U.T @ G  # (d, N)
    UtGV = UtG @ x.V  # (d, d)
    return float(UtG.square().sum(dtype=torch.float64) + GV.square().sum(dtype=torch.float64)
                 - UtGV.square().sum(dtype=torch.float64))  # fmt: skip


def auto_step(x: Factors, grad_norm: float) -> float:
    """A first lambda that moves X by a tenth of its norm: scale-free, unlike the paper's 5e-5."""
    return 0.1 * float(torch.linalg.matrix_norm(x.S)) / max(grad_norm, 1e-30)


def ro_sgns(counts: Counts, start: Factors, neg: int, iters: int, step: float | None, line_search: bool = True,
            on_iter: Callable[[dict], None] | None = None) -> tuple[Factors, list[dict]]:  # fmt: skip
    """Run `iters` projector-splitting iterations from `start`; returns the last point and one
    record per iteration (0 = start): F, lambda, trials, Riemannian gradient norm, seconds."""
    x = start
    ev: Evaluation = sgns_objective(counts, x.left, x.V, neg, grad=True)
    t0 = time.perf_counter()
    gnorm = tangent_norm_sq(x, *ev.gradients()) ** 0.5
    lam = step if step is not None else auto_step(x, gnorm)
    history = [
        {"iter": 0, "F": ev.F, "lambda": None, "trials": 0, "grad_norm": gnorm, "seconds": 0.0}
    ]
    if on_iter:
        on_iter(history[-1])
    spare = torch.empty_like(
        ev.gradients()[0]
    )  # the candidates' gradients go here; swapped with ev.G on accept
    for it in range(1, iters + 1):
        trials, accepted = 0, False
        while True:
            trials += 1
            cand = projector_splitting_step(x, *ev.gradients(), lam)
            new = sgns_objective(counts, cand.left, cand.V, neg, grad=True, out=spare)
            if not line_search or ev.F + ARMIJO_C * lam * gnorm**2 <= new.F:
                accepted = True
                break
            if trials > MAX_HALVINGS:
                break
            lam /= 2
        if not accepted:  # converged to the precision F can tell: stop rather than spin
            history[-1]["stopped"] = "no ascent step found"
            break
        spare = ev.gradients()[0]
        x, ev = cand, new
        gnorm = tangent_norm_sq(x, *ev.gradients()) ** 0.5
        history.append({"iter": it, "F": ev.F, "lambda": lam, "trials": trials, "grad_norm": gnorm,
                        "seconds": time.perf_counter() - t0})  # fmt: skip
        if on_iter:
            on_iter(history[-1])
        if line_search and trials == 1:
            lam *= 2
    return x, history


def embeddings(x: Factors) -> tuple[torch.Tensor, torch.Tensor]:
    """W = U_X sqrt(Sigma), C = V_X sqrt(Sigma) from the SVD X = U_X Sigma V_X^T (Levy et al. 2015)."""
    P, sigma, Qt = torch.linalg.svd(x.S)  # S = P diag(sigma) Q^T, (d, d)
    root = sigma.sqrt()
    return (x.U @ P) * root, (x.V @ Qt.T) * root
