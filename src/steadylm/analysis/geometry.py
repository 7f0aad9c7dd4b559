"""Geometry of hidden states: anisotropy, intrinsic dimension, layer linearity, norm ratio, massive
activations.

Every function takes (n, d) matrices of the same n tokens (rows) and works in float64 NumPy,
whatever the model's precision: the figures are ratios of sums over thousands of tokens, and
float32 loses digits exactly where the interesting values sit (linearity 0.999x, anisotropy near 1).

Sources (docs/geometry.md has the full definitions and caveats):
- anisotropy and TwoNN intrinsic dimension: Razzhigaev et al., "The Shape of Learning" (EACL 2024
  Findings); TwoNN: Facco et al. (Sci. Rep. 2017), fitted as `scikit-dimension`'s `TwoNN` does;
- the second dimension estimator: Levina and Bickel, "Maximum Likelihood Estimation of Intrinsic
  Dimension" (NeurIPS 2004), pooled as MacKay and Ghahramani suggest; fitted as `scikit-dimension`'s
  `MLE` does;
- linearity with and without the residual: Razzhigaev et al., "Your Transformer is Secretly
  Linear" (ACL 2024);
- massive activations: Sun et al., "Massive Activations in Large Language Models" (COLM 2024).
"""

from __future__ import annotations

import numpy as np

# A dimension is "massive" when its largest |activation| exceeds this many times the median
# |activation| of the layer (docs/geometry.md explains the choice).
MASSIVE_RATIO = 100.0

# Rows of the pairwise-distance matrix computed at once in the neighbour search: 1024 x n float64 (32 MB at n=4096).
_DIST_CHUNK = 1024


def _f64(X) -> np.ndarray:
    X = np.asarray(X, dtype=np.float64)
    if X.ndim != 2:
        raise ValueError(f"expected an (n, d) matrix, got shape {X.shape}")
    return X


def centred(X) -> np.ndarray:
    """X − mean over rows; (n, d) -> (n, d) float64."""
    X = _f64(X)
    return X - X.mean(axis=0, keepdims=True)


def anisotropy(X) -> float:
    """σ₁² / Σᵢ σᵢ² of the centred X: the share of variance on the first principal direction.

    σᵢ are the singular values of X − mean(X), so σᵢ² are the eigenvalues of the (d, d) scatter
    matrix; the ratio lies in [1/min(n−1, d), 1], and is 1 when all points lie on one line.
    NaN when X has no variance.
    """
    Xc = centred(X)  # (n, d)
    eig = np.linalg.eigvalsh(Xc.T @ Xc)  # (d,) ascending, = σᵢ²
    eig = np.clip(eig, 0.0, None)  # rounding can leave tiny negatives
    total = eig.sum()
    return float(eig[-1] / total) if total > 0 else float("nan")


def mean_cosine(X) -> float:
    """Mean cosine similarity over all pairs i ≠ j of (uncentred) rows (Ethayarajh's anisotropy).

    With uᵢ = xᵢ/‖xᵢ‖: Σ_{i≠j} uᵢ·uⱼ = ‖Σᵢ uᵢ‖² − n, divided by n(n−1). Zero rows are left out.
    """
    X = _f64(X)
    norms = np.linalg.norm(X, axis=1)
    U = X[norms > 0] / norms[norms > 0, None]  # (m, d) unit rows
    m = len(U)
    if m < 2:
        return float("nan")
    s = U.sum(axis=0)
    return float((s @ s - m) / (m * (m - 1)))


def nearest_neighbours(X, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Distances and row indices (n, k), (n, k) of each row's k nearest other rows, nearest first.

    Exact Euclidean distances, computed `_DIST_CHUNK` rows at a time (O(n²d) time, O(n·_DIST_CHUNK)
    memory). Ties are broken arbitrarily.
    """
    X = _f64(X)
    n = len(X)
    k = min(k, n - 1)
    sq = np.einsum("ij,ij->i", X, X)  # (n,)
    dist, idx = np.empty((n, k)), np.empty((n, k), dtype=np.int64)
    for start in range(0, n, _DIST_CHUNK):
        block = X[start : start + _DIST_CHUNK]  # (c, d)
        rows = np.arange(len(block))
        d2 = (
            sq[start : start + len(block), None] + sq[None, :] - 2.0 * block @ X.T
        )  # (c, n) squared distances
        d2[rows, rows + start] = np.inf  # not its own neighbour
        near = np.argpartition(d2, k - 1, axis=1)[:, :k]  # (c, k), unordered
        near_d2 = np.take_along_axis(d2, near, axis=1)
        order = np.argsort(near_d2, axis=1)
        idx[start : start + len(block)] = np.take_along_axis(near, order, axis=1)
        dist[start : start + len(block)] = np.sqrt(
            np.clip(np.take_along_axis(near_d2, order, axis=1), 0.0, None)
        )
    return dist, idx


def _twonn_fit(r1: np.ndarray, r2: np.ndarray, discard_fraction: float) -> float:
    """TwoNN's line through the origin, from each point's first and second neighbour distances."""
    with np.errstate(divide="ignore", invalid="ignore"):
        mu = r2 / r1
    mu = np.sort(mu[np.isfinite(mu)])  # a near-duplicate pair can still round to r1 = 0
    N = len(mu)
    keep = int(N * (1 - discard_fraction))
    if keep < 2:
        return float("nan")
    x = np.log(mu[:keep])
    y = -np.log(1.0 - np.arange(1, keep + 1) / N)
    return float((x @ y) / (x @ x)) if x @ x > 0 else float("nan")


def twonn_dimension(X, discard_fraction: float = 0.1) -> float:
    """Intrinsic dimension by TwoNN (Facco et al. 2017), the standard fit.

    1. Identical rows are merged first: a duplicate has r₁ = 0 and an infinite ratio.
    2. μᵢ = r₂/r₁, the distances to the second and first nearest neighbours; under the model,
       P(μ ≤ x) = 1 − x^(−ID).
    3. Sort μ, keep the smallest ⌊N(1 − discard_fraction)⌋ (the largest ratios are the noisiest),
       empirical CDF Fⱼ = j/N for j = 1..kept.
    4. ID = Σ xy / Σ x², the least-squares line through the origin of y = −log(1 − F) on x = log μ.

    Matches `skdim.id.TwoNN(discard_fraction=0.1)` on deduplicated data. NaN with under 3 unique rows.
    """
    X = np.unique(_f64(X), axis=0)  # (N, d), unique rows
    if len(X) < 3:
        return float("nan")
    dist, _ = nearest_neighbours(X, 2)
    return _twonn_fit(dist[:, 0], dist[:, 1], discard_fraction)


def _mle_fit(dist: np.ndarray) -> float:
    """Levina–Bickel MLE from (N, k) sorted neighbour distances, pooled as MacKay and Ghahramani do."""
    k = dist.shape[1]
    with np.errstate(divide="ignore"):
        logs = np.log(dist[:, -1:] / dist).sum(axis=1)  # (N,) Σⱼ log(r_k / r_j)
    logs = logs[np.isfinite(logs)]
    return float((k - 1) / logs.mean()) if len(logs) and logs.mean() > 0 else float("nan")


def mle_dimension(X, k: int = 20) -> float:
    """Intrinsic dimension by maximum likelihood (Levina and Bickel 2004) over k neighbours.

    Identical rows are merged first. Per point, m̂ᵢ = (k − 1) / Σⱼ₌₁..ₖ log(r_k / r_j), with r_j the
    distance to the j-th nearest neighbour; the points are pooled by the harmonic mean
    ID = 1 / mean(1/m̂ᵢ) (MacKay and Ghahramani's correction of the plain mean). Matches
    `skdim.id.MLE()` (k = 20, its default) on deduplicated data. NaN with under 3 unique rows.
    """
    X = np.unique(_f64(X), axis=0)
    if len(X) < 3:
        return float("nan")
    return _mle_fit(nearest_neighbours(X, k)[0])


def intrinsic_dimensions(X, ids, k: int = 20, discard_fraction: float = 0.1) -> dict:
    """TwoNN and MLE dimension of X (one neighbour search for both), with the duplicate diagnostic.

    `ids` (n,) are the rows' token ids. After identical rows are merged (each keeps the id of its
    first occurrence), `nn_same_token` is the share of points whose nearest neighbour carries the
    same token id: near 0 for a sample without repeated tokens; a large share means the same
    token, seen in several contexts, forms tight clusters whose small first-neighbour distances
    pull TwoNN towards 1 (docs/geometry.md, "The repeated-token artefact").
    """
    X = _f64(X)
    X, first = np.unique(X, axis=0, return_index=True)  # (N, d)
    ids = np.asarray(ids)[first]
    nan = {
        "twonn": float("nan"),
        "mle": float("nan"),
        "nn_same_token": float("nan"),
        "unique": len(X),
    }
    if len(X) < 3:
        return nan
    dist, idx = nearest_neighbours(X, k)
    return {
        "twonn": _twonn_fit(dist[:, 0], dist[:, 1], discard_fraction),
        "mle": _mle_fit(dist),
        "nn_same_token": float(np.mean(ids[idx[:, 0]] == ids)),
        "unique": len(X),
    }


def massive_activations(X, ratio: float = MASSIVE_RATIO, top: int = 3) -> dict:
    """Where the largest |activation| sits, next to the typical one.

    With m = median |xᵢⱼ| over all entries of X (n, d):
    - `max_ratio`: max |xᵢⱼ| / m;
    - `dims`: the dimensions j whose max over rows of |xᵢⱼ| exceeds `ratio` · m, largest first
      (the "massive" dimensions that `without` removes);
    - `top`: the `top` dimensions with the largest max |xᵢⱼ| (flagged or not), each as
      {"dim", "ratio" (its max over m), "row" (the row that carries it)}.
    """
    A = np.abs(_f64(X))  # (n, d)
    med = float(np.median(A))
    col_max = A.max(axis=0)  # (d,)
    order = np.argsort(-col_max)
    if med <= 0:
        return {"max_ratio": float("nan"), "dims": [], "top": []}
    return {
        "max_ratio": float(col_max[order[0]] / med),
        "dims": [int(j) for j in order if col_max[j] > ratio * med],
        "top": [
            {"dim": int(j), "ratio": float(col_max[j] / med), "row": int(A[:, j].argmax())}
            for j in order[:top]
        ],
    }


def without(X, dims) -> np.ndarray:
    """X with the columns `dims` removed (n, d) -> (n, d − len(dims))."""
    X = _f64(X)
    return np.delete(X, np.asarray(sorted(set(dims)), dtype=np.int64), axis=1)


def _normalised(X: np.ndarray) -> np.ndarray | None:
    """Centred and divided by its Frobenius norm; None if X is constant."""
    Xc = centred(X)
    norm = np.linalg.norm(Xc)
    return Xc / norm if norm > 0 else None


def linearity(X, Y, residual: bool = True) -> float:
    """1 − min_A ‖X̃A − Ỹ‖²_F, how well one linear map takes layer X to layer Y.

    X̃, Ỹ are X and Y centred and divided by their Frobenius norms (so the score is in [0, 1] and
    scale-free); A (d, d) is the float64 least-squares solution (no truncation or ridge).
    `residual=False` scores Y − X instead of Y: the block's own update, without the identity path
    that makes the residual stream look linear. For unrelated data the score is about d/n
    (`chance_linearity`), so it is only meaningful with n ≫ d. NaN if either side is constant.
    """
    X, Y = _f64(X), _f64(Y)
    if not residual:
        Y = Y - X
    Xn, Yn = _normalised(X), _normalised(Y)
    if Xn is None or Yn is None:
        return float("nan")
    A = np.linalg.lstsq(Xn, Yn, rcond=None)[0]  # (d, d)
    return float(1.0 - np.sum((Xn @ A - Yn) ** 2))


def heldout_linearity(X, Y, residual: bool = True, seed: int = 0) -> float:
    """`linearity` with A fitted on a random half of the tokens and scored on the other half.

    A is the least-squares map between the fit half's centred states; the score is
    1 − ‖(Xₜ − x̄_f)A − (Yₜ − ȳ_f)‖² / ‖Yₜ − ȳ_f‖² on the test half t, centred by the fit half's
    means f (with t = f this is exactly `linearity`). Unlike the in-sample score it does not rise
    with d/n: for unrelated data it is about 0 or below (overfitting shows as a negative score),
    while a true linear relation keeps it near the in-sample value.
    """
    X, Y = _f64(X), _f64(Y)
    if not residual:
        Y = Y - X
    perm = np.random.default_rng(seed).permutation(len(X))
    fit, test = perm[: len(X) // 2], perm[len(X) // 2 :]
    x_mean, y_mean = X[fit].mean(axis=0), Y[fit].mean(axis=0)  # (d,), (d,)
    A = np.linalg.lstsq(X[fit] - x_mean, Y[fit] - y_mean, rcond=None)[0]  # (d, d)
    target = Y[test] - y_mean  # (n_test, d)
    total = np.sum(target**2)
    if total == 0:
        return float("nan")
    return float(1.0 - np.sum(((X[test] - x_mean) @ A - target) ** 2) / total)


def chance_linearity(n: int, d: int) -> float:
    """The in-sample linearity of unrelated data, about min(d, n)/n: a d-parameter-per-output
    least-squares fit explains that share of any target's variance by chance."""
    return min(d, n) / n


def norm_ratio(X, Y) -> float:
    """Mean over tokens of ‖yᵢ − xᵢ‖ / ‖xᵢ‖: the size of a block's update next to the residual
    stream it is added to (rows with ‖xᵢ‖ = 0 are left out)."""
    X, Y = _f64(X), _f64(Y)
    nx = np.linalg.norm(X, axis=1)  # (n,)
    ok = nx > 0
    if not ok.any():
        return float("nan")
    return float(np.mean(np.linalg.norm(Y - X, axis=1)[ok] / nx[ok]))
