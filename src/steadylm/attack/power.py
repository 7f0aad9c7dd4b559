"""The (p,q)-singular vector of a matrix given only as products, by Boyd's generalised power method.

For a linear map J (here: a layer's Jacobian, never formed) the (p,q)-singular vector maximises

    ||J v||_q / ||v||_p,

and the maximum is the (p,q)-singular value. With ψ_r(z) = sign(z)·|z|^(r−1) applied entrywise
and p' = p/(p−1) the dual exponent, Boyd (1974) iterates

    v <- ψ_p'(Jᵀ ψ_q(J v)),   v <- v / ||v||_p,

which for p = ∞ (p' = 1) is v <- sign(Jᵀ ψ_q(J v)), and for p = q = 2 the ordinary power method
on JᵀJ. Khrulkov & Oseledets (2018) use it with p = ∞ for universal perturbations. It is a local
method: it climbs to a fixed point, usually but not always the global maximum.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

MatVec = Callable[[torch.Tensor], torch.Tensor]


def psi(z: torch.Tensor, r: float) -> torch.Tensor:
    """ψ_r(z) = sign(z)|z|^(r−1); z is first scaled to max |z| = 1 (ψ_r is homogeneous and every
    use is followed by a normalisation, so only the direction matters, and |z|^4 cannot overflow)."""
    if r == 1:
        return torch.sign(z)
    scale = z.abs().max()
    z = z / scale if scale > 0 else z
    return torch.sign(z) * z.abs().pow(r - 1)


def norm(z: torch.Tensor, r: float) -> torch.Tensor:
    return torch.linalg.vector_norm(z.flatten(), ord=r)


def dual(p: float) -> float:
    """p' with 1/p + 1/p' = 1 (∞ -> 1)."""
    return 1.0 if math.isinf(p) else p / (p - 1)


def pq_singular(
    jvp: MatVec,
    vjp: MatVec,
    shape: tuple[int, ...],
    p: float,
    q: float,
    iters: int,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> tuple[torch.Tensor, float]:
    """(v of `shape` with ||v||_p = 1, its value ||J v||_q) after `iters` power iterations.

    `jvp(v)` returns J v and `vjp(w)` returns Jᵀ w; the start is a Gaussian vector drawn from
    `generator` (on the CPU, so the start does not depend on the device or dtype)."""
    v = torch.randn(shape, generator=generator, dtype=torch.float64).to(device, dtype)
    v = v / norm(v, p)
    for _ in range(iters):
        z = vjp(psi(jvp(v), q))
        if not bool((z != 0).any()):  # J v = 0 everywhere: v spans the null space, keep it
            break
        v = psi(z, dual(p))
        v = v / norm(v, p)
    return v, float(norm(jvp(v), q))
