"""The statistics behind the report, as plain functions of numbers: rank correlation with a
permutation test that shuffles only inside groups, Student's t, seed-paired differences with a
pooled standard error, and Holm's correction for the number of comparisons.

The Student t distribution is computed here (regularised incomplete beta by Lentz's continued
fraction) rather than taken from SciPy, which steadylm does not otherwise need at run time; the
tests check it against SciPy.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TypeGuard, TypeVar

import numpy as np

PERMUTATIONS = 10_000  # shuffles behind a permutation p-value; its floor is 1 / (PERMUTATIONS + 1)
CONFIDENCE = 0.95
K = TypeVar("K", bound=Hashable)  # a cell key


def finite(x: float | None) -> TypeGuard[float]:
    return x is not None and math.isfinite(x)


def mean_sd(values: Iterable[float | None]) -> dict[str, float | int | None]:
    """Mean and sample standard deviation over the finite values; `n` counts them."""
    v = np.asarray([x for x in values if finite(x)], dtype=float)
    return {
        "mean": float(v.mean()) if len(v) else None,
        "sd": float(v.std(ddof=1)) if len(v) >= 2 else None,
        "n": len(v),
    }


# ----------------------------------------------------------------- rank correlation


def rankdata(x: Iterable[float]) -> np.ndarray:
    """Ranks 1..n, ties given the mean of the ranks they span."""
    x = np.asarray(list(x), dtype=float)
    _, inverse, counts = np.unique(x, return_inverse=True, return_counts=True)
    first = np.cumsum(counts) - counts  # 0-based position of each distinct value's first rank
    return (first + (counts + 1) / 2)[inverse]


def _unit_ranks(v: np.ndarray) -> np.ndarray | None:
    """Ranks centred and scaled to unit length (None when constant): the dot product of two
    such vectors is Spearman's rho."""
    r = rankdata(v)
    r = r - r.mean()
    norm = float(np.linalg.norm(r))
    return r / norm if norm > 0 else None


def spearman(x: Iterable[float], y: Iterable[float]) -> float | None:
    """Spearman's rho: Pearson's correlation of the ranks, over the pairs where both are finite.
    None with fewer than 3 pairs or when either side is constant (rho is undefined)."""
    return grouped_spearman(x, y, None, permutations=0).rho


@dataclass(frozen=True)
class Correlation:
    """Spearman's rho within groups, pooled, and its permutation p-value.

    rho: the mean of the groups' own rhos weighted by their sizes (one group: plain Spearman).
    p: two-sided, the share of shuffles (of y, inside each group only) whose pooled rho is at
    least as far from 0, counting the observation; never below `floor` = 1 / (shuffles + 1).
    """

    rho: float | None
    p: float | None
    n: int  # points in the groups used
    groups: int  # groups with >= 3 points and neither side constant
    floor: float | None


def grouped_spearman(
    x: Iterable[float],
    y: Iterable[float],
    groups: Sequence[Hashable] | None,
    permutations: int = PERMUTATIONS,
    seed: int = 0,
) -> Correlation:
    """Spearman's rho of x and y inside each group (e.g. one depth and learning rate), so that
    whatever differs between groups cannot make a correlation; pooled over groups, tested by
    shuffling y inside each group. `groups` None: one group."""
    x, y = np.asarray(list(x), dtype=float), np.asarray(list(y), dtype=float)
    labels = list(groups) if groups is not None else [0] * len(x)
    members: dict[Hashable, list[int]] = defaultdict(list)
    for i, g in enumerate(labels):
        if math.isfinite(x[i]) and math.isfinite(y[i]):
            members[g].append(i)
    parts = []
    for idx in members.values():
        if len(idx) < 3:
            continue
        ux, uy = _unit_ranks(x[idx]), _unit_ranks(y[idx])
        if ux is not None and uy is not None:
            parts.append((ux, uy))
    if not parts:
        return Correlation(None, None, 0, 0, None)
    n = sum(len(ux) for ux, _ in parts)
    rho = sum(len(ux) * float(ux @ uy) for ux, uy in parts) / n
    if permutations <= 0:
        return Correlation(rho, None, n, len(parts), None)
    rng = np.random.default_rng(seed)
    null = np.zeros(permutations)
    for ux, uy in parts:
        null += len(ux) * (rng.permuted(np.tile(uy, (permutations, 1)), axis=1) @ ux)
    null /= n
    hits = int((np.abs(null) >= abs(rho) - 1e-12).sum())
    return Correlation(rho, (hits + 1) / (permutations + 1), n, len(parts), 1 / (permutations + 1))


# ----------------------------------------------------------------- Student's t


def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the incomplete beta function (modified Lentz)."""
    tiny, eps = 1e-300, 1e-15
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 500):
        for num in (
            m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
            -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1)),
        ):
            d = 1.0 + num * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + num / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < eps:
            break
    return h


def betainc(a: float, b: float, x: float) -> float:
    """The regularised incomplete beta function I_x(a, b)."""
    if x <= 0:
        return 0.0
    if x >= 1:
        return 1.0
    front = math.exp(
        math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    )
    if x < (a + 1) / (a + b + 2):
        return front * _betacf(a, b, x) / a
    return 1.0 - front * _betacf(b, a, 1 - x) / b


def t_sf2(t: float, df: float) -> float:
    """Two-sided tail probability P(|T| >= |t|) of Student's t with `df` degrees of freedom."""
    return betainc(df / 2, 0.5, df / (df + t * t))


def t_quantile(q: float, df: float) -> float:
    """The q-quantile of Student's t (0.5 < q < 1), by bisection on the tail probability."""
    target = 2 * (1 - q)
    lo, hi = 0.0, 1.0
    while t_sf2(hi, df) > target:
        hi *= 2
    for _ in range(200):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if t_sf2(mid, df) > target else (lo, mid)
    return (lo + hi) / 2


# ----------------------------------------------------------------- paired differences


@dataclass(frozen=True)
class Estimate:
    """A mean difference with its standard error, a t-based confidence interval and a two-sided
    p-value against 0. `se`, `lo`, `hi` and `p` are None when there are no degrees of freedom."""

    mean: float
    n: int  # paired seeds
    se: float | None
    df: int
    lo: float | None
    hi: float | None
    p: float | None

    @property
    def excludes_zero(self) -> bool:
        return self.lo is not None and self.hi is not None and (self.lo > 0 or self.hi < 0)


POWER = 0.8  # the power at which the report states the smallest detectable effect


def detectable(
    e: Estimate | None, power: float = POWER, confidence: float = CONFIDENCE
) -> float | None:
    """The smallest true difference this comparison would find (two-sided test at 1 − confidence)
    with probability `power`: (t_{(1+confidence)/2} + t_power) · SE on the same degrees of
    freedom (the usual normal-approximation formula with t quantiles). None without an SE."""
    if e is None or e.se is None or e.df < 1:
        return None
    return (t_quantile(0.5 + confidence / 2, e.df) + t_quantile(power, e.df)) * e.se


def estimate(
    mean: float, n: int, se: float | None, df: int, confidence: float = CONFIDENCE
) -> Estimate:
    if se is None or df < 1 or not math.isfinite(se):
        return Estimate(mean, n, None, df, None, None, None)
    half = t_quantile(0.5 + confidence / 2, df) * se
    p = t_sf2(mean / se, df) if se > 0 else (0.0 if mean != 0 else 1.0)
    return Estimate(mean, n, se, df, mean - half, mean + half, p)


def mean_difference(diffs: Sequence[float], confidence: float = CONFIDENCE) -> Estimate:
    """The mean of paired differences with its own t interval: SE = sd / √n on n − 1 degrees of
    freedom (no SE from a single difference)."""
    n = len(diffs)
    v = np.asarray(diffs, dtype=float)
    se = float(v.std(ddof=1)) / math.sqrt(n) if n > 1 else None
    return estimate(float(v.mean()), n, se, n - 1, confidence)


def paired_differences(a: Mapping[int, float | None], b: Mapping[int, float | None]) -> list[float]:
    """a − b for each seed both have a finite value for, in seed order."""
    out = []
    for s in sorted(set(a) & set(b)):
        x, y = a[s], b[s]
        if finite(x) and finite(y):
            out.append(x - y)
    return out


def pooled_estimates(
    cells: dict[K, list[float]],
    pool: Mapping[K, Hashable] | None = None,
    confidence: float = CONFIDENCE,
) -> dict[K, Estimate]:
    """Mean of each cell's paired differences with a pooled standard error.

    Cells with the same `pool` key share one variance, the within-cell variance of the
    differences pooled over them: s² = Σ_c Σ_i (d_ci − d̄_c)² / Σ_c (n_c − 1); a cell's SE is
    s / √n_c and its t interval has Σ_c (n_c − 1) degrees of freedom. With two or three seeds
    a cell cannot estimate its own spread; pooling assumes the seed noise of the difference is
    the same in the cells pooled. `pool` None: each cell alone."""
    pool = pool or {c: c for c in cells}
    ss: dict[Hashable, float] = defaultdict(float)
    dof: dict[Hashable, int] = defaultdict(int)
    for c, d in cells.items():
        if len(d) >= 2:
            v = np.asarray(d, dtype=float)
            ss[pool[c]] += float(((v - v.mean()) ** 2).sum())
            dof[pool[c]] += len(d) - 1
    out: dict[K, Estimate] = {}
    for c, d in cells.items():
        if not d:
            continue
        k = pool[c]
        se = math.sqrt(ss[k] / dof[k] / len(d)) if dof[k] else None
        out[c] = estimate(float(np.mean(d)), len(d), se, dof[k], confidence)
    return out


def holm(pvalues: Sequence[float | None]) -> list[float | None]:
    """Holm's step-down adjusted p-values over the m non-None p-values (None stays None):
    the i-th smallest becomes max over j <= i of min(1, (m − j + 1) · p_(j))."""
    present = sorted((p, i) for i, p in enumerate(pvalues) if p is not None)
    m = len(present)
    out: list[float | None] = [None] * len(pvalues)
    running = 0.0
    for rank, (p, i) in enumerate(present):
        running = max(running, min(1.0, (m - rank) * p))
        out[i] = running
    return out
