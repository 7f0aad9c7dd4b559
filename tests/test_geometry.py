"""Geometry metrics against NumPy references, scikit-dimension, and data of known structure."""

from __future__ import annotations

import numpy as np
import pytest

from steadylm.analysis import geometry


def subspace(n: int, k: int, d: int, seed: int = 0) -> np.ndarray:
    """n points spread over a random k-dimensional linear subspace of R^d."""
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, k)) @ rng.normal(size=(k, d))


def swiss_roll(n: int, seed: int = 0) -> np.ndarray:
    """A 2-d manifold rolled up in R^3."""
    rng = np.random.default_rng(seed)
    t = 1.5 * np.pi * (1 + 2 * rng.random(n))
    return np.stack([t * np.cos(t), 21 * rng.random(n), t * np.sin(t)], axis=1)


def twonn_reference(X: np.ndarray, discard: float = 0.1) -> float:
    """The published algorithm, written plainly: full distance matrix, sort, fit through the origin."""
    X = np.unique(X, axis=0)
    D = np.sqrt(((X[:, None, :] - X[None, :, :]) ** 2).sum(-1))
    np.fill_diagonal(D, np.inf)
    D.sort(axis=1)
    mu = np.sort(D[:, 1] / D[:, 0])
    keep = int(len(mu) * (1 - discard))
    x = np.log(mu[:keep])
    y = -np.log(1 - np.arange(1, keep + 1) / len(mu))
    return float(np.linalg.lstsq(x[:, None], y, rcond=None)[0][0])


def test_anisotropy_matches_svd_and_bounds():
    rng = np.random.default_rng(1)
    X = rng.normal(size=(300, 20)) * np.linspace(0.5, 3, 20) + 5.0  # the offset must not matter
    s = np.linalg.svd(X - X.mean(0), compute_uv=False)
    assert geometry.anisotropy(X) == pytest.approx(s[0] ** 2 / (s**2).sum(), rel=1e-10)
    rank1 = np.outer(rng.normal(size=50), rng.normal(size=8)) + 1.0
    assert geometry.anisotropy(rank1) == pytest.approx(1.0)
    iso = rng.normal(size=(20000, 16))
    assert 1 / 16 <= geometry.anisotropy(iso) < 1.3 / 16
    assert np.isnan(geometry.anisotropy(np.ones((5, 3))))


def test_mean_cosine_matches_pairwise_loop():
    rng = np.random.default_rng(2)
    X = rng.normal(size=(40, 6)) + 0.5
    U = X / np.linalg.norm(X, axis=1, keepdims=True)
    C = U @ U.T
    expected = (C.sum() - np.trace(C)) / (40 * 39)
    assert geometry.mean_cosine(X) == pytest.approx(expected, rel=1e-10)
    assert geometry.mean_cosine(np.tile([1.0, 2.0], (5, 1))) == pytest.approx(1.0)


@pytest.mark.parametrize("data", ["subspace5", "swiss_roll", "duplicates"])
def test_twonn_matches_reference_and_scikit_dimension(data):
    X = {"subspace5": lambda: subspace(800, 5, 50),
         "swiss_roll": lambda: swiss_roll(800),
         "duplicates": lambda: np.concatenate([subspace(600, 3, 20), subspace(600, 3, 20)[:100]])}[data]()
    ours = geometry.twonn_dimension(X)
    assert ours == pytest.approx(twonn_reference(X), rel=1e-8)
    skdim = pytest.importorskip("skdim")
    theirs = skdim.id.TwoNN(discard_fraction=0.1).fit(np.unique(X, axis=0)).dimension_
    assert ours == pytest.approx(theirs, rel=1e-8)


@pytest.mark.parametrize("k, d", [(2, 128), (5, 50), (10, 64)])
def test_twonn_recovers_known_dimension(k, d):
    assert geometry.twonn_dimension(subspace(2000, k, d, seed=k)) == pytest.approx(k, rel=0.1)


def test_twonn_swiss_roll_is_two_dimensional_and_duplicates_do_not_matter():
    X = swiss_roll(2000)
    assert geometry.twonn_dimension(X) == pytest.approx(2.0, rel=0.1)
    assert geometry.twonn_dimension(np.concatenate([X, X[:500]])) == geometry.twonn_dimension(X)


def test_linearity_of_an_exact_linear_map_is_one():
    rng = np.random.default_rng(3)
    X = rng.normal(size=(500, 16))
    Y = X @ rng.normal(size=(16, 16)) + 3.0  # a shift is removed by the centring
    assert geometry.linearity(X, Y) == pytest.approx(1.0, abs=1e-10)
    assert geometry.heldout_linearity(X, Y) == pytest.approx(1.0, abs=1e-10)
    assert geometry.linearity(X, 10 * Y) == pytest.approx(geometry.linearity(X, Y))  # scale-free


@pytest.mark.parametrize("n, d", [(1000, 10), (2000, 64), (600, 128)])
def test_linearity_of_unrelated_data_sits_at_the_chance_floor(n, d):
    rng = np.random.default_rng(n + d)
    X, Y = rng.normal(size=(n, d)), rng.normal(size=(n, d))
    chance = geometry.chance_linearity(n, d)
    assert chance == d / n
    assert geometry.linearity(X, Y) == pytest.approx(chance, rel=0.25)
    assert geometry.heldout_linearity(X, Y) < 0.02  # held out, chance is about zero (or below)


def test_residual_free_linearity_sees_the_nonlinear_update():
    # The notes' example: Y = X + 0.05 tanh(XB) looks linear (the residual dominates), its update does not.
    rng = np.random.default_rng(4)
    X = rng.normal(size=(4000, 10))
    update = np.tanh(X @ rng.normal(size=(10, 10)))
    Y = X + 0.05 * update
    with_res = geometry.linearity(X, Y)
    without = geometry.linearity(X, Y, residual=False)
    assert with_res > 0.999
    assert without == pytest.approx(geometry.linearity(X, update), abs=1e-10)
    assert 0.5 < without < 0.95
    assert geometry.heldout_linearity(X, Y, residual=False) == pytest.approx(without, abs=0.02)


def test_linearity_matches_a_pseudo_inverse_reference():
    rng = np.random.default_rng(5)
    X, Y = rng.normal(size=(200, 8)), rng.normal(size=(200, 8)) + np.tanh(rng.normal(size=(200, 8)))
    Xn = (X - X.mean(0)) / np.linalg.norm(X - X.mean(0))
    Yn = (Y - Y.mean(0)) / np.linalg.norm(Y - Y.mean(0))
    expected = 1 - np.linalg.norm(Xn @ np.linalg.pinv(Xn) @ Yn - Yn) ** 2
    assert geometry.linearity(X, Y) == pytest.approx(expected, rel=1e-10)


def test_norm_ratio():
    X = np.array([[3.0, 4.0], [1.0, 0.0], [0.0, 0.0]])
    Y = X + np.array([[0.0, 5.0], [0.5, 0.0], [1.0, 1.0]])  # the zero row is left out
    assert geometry.norm_ratio(X, Y) == pytest.approx((1.0 + 0.5) / 2)


def test_nearest_neighbours_match_a_full_sort():
    X = subspace(300, 4, 12, seed=6)
    D = np.sqrt(((X[:, None, :] - X[None, :, :]) ** 2).sum(-1))
    np.fill_diagonal(D, np.inf)
    dist, idx = geometry.nearest_neighbours(X, 5)
    assert np.allclose(dist, np.sort(D, axis=1)[:, :5], rtol=1e-9)
    assert np.array_equal(idx, np.argsort(D, axis=1)[:, :5])


@pytest.mark.parametrize("data", ["subspace5", "swiss_roll", "duplicates"])
def test_mle_matches_scikit_dimension(data):
    X = {"subspace5": lambda: subspace(800, 5, 50),
         "swiss_roll": lambda: swiss_roll(800),
         "duplicates": lambda: np.concatenate([subspace(600, 3, 20), subspace(600, 3, 20)[:100]])}[data]()
    ours = geometry.mle_dimension(X)
    combined = geometry.intrinsic_dimensions(X, np.arange(len(X)))
    assert combined["mle"] == pytest.approx(ours, rel=1e-12)
    assert combined["twonn"] == pytest.approx(geometry.twonn_dimension(X), rel=1e-12)
    skdim = pytest.importorskip("skdim")
    assert ours == pytest.approx(skdim.id.MLE().fit(np.unique(X, axis=0)).dimension_, rel=1e-8)


@pytest.mark.parametrize("k, d", [(2, 128), (5, 50), (10, 64)])
def test_mle_recovers_known_dimension(k, d):
    assert geometry.mle_dimension(subspace(2000, k, d, seed=k)) == pytest.approx(k, rel=0.15)


def test_nn_same_token_counts_neighbours_with_the_same_id():
    # Five tight clusters of four points; ids repeat within a cluster for the first two clusters.
    rng = np.random.default_rng(7)
    centres = rng.normal(size=(5, 8)) * 10
    X = np.repeat(centres, 4, axis=0) + rng.normal(size=(20, 8)) * 0.01
    ids = np.array([0] * 4 + [1] * 4 + list(range(2, 14)))
    assert geometry.intrinsic_dimensions(X, ids)["nn_same_token"] == pytest.approx(8 / 20)
    # Identical rows are merged first, keeping the first row's id.
    r = geometry.intrinsic_dimensions(np.concatenate([X, X[:3]]), np.concatenate([ids, [99, 99, 99]]))
    assert r["unique"] == 20 and r["nn_same_token"] == pytest.approx(8 / 20)


def planted(n: int = 2000, d: int = 48, dims=(5, 30), rows=(3, 500, 1777), size: float = 500.0, seed: int = 8):
    """Gaussian states with a few massive activations: `rows` carry ±`size` in the dimensions `dims`."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d))
    for r in rows:
        X[r, list(dims)] = size * rng.choice([-1, 1], len(dims))
    return X


def test_massive_activations_finds_the_planted_dimensions_and_tokens():
    X = planted()
    m = geometry.massive_activations(X, ratio=100)
    med = np.median(np.abs(X))
    assert m["max_ratio"] == pytest.approx(500 / med)
    assert sorted(m["dims"]) == [5, 30]
    assert {t["dim"] for t in m["top"][:2]} == {5, 30} and m["top"][0]["row"] in (3, 500, 1777)
    assert m["top"][2]["ratio"] < 10  # the third largest dimension is an ordinary one
    assert geometry.massive_activations(np.random.default_rng(0).normal(size=(2000, 48)))["dims"] == []
    assert geometry.without(X, [30, 5, 5]).shape == (2000, 46)
    # Three points carry nearly all the variance, so anisotropy reads ~1 with them and isotropic without.
    assert geometry.anisotropy(X) > 0.6
    assert geometry.anisotropy(geometry.without(X, m["dims"])) < 1.5 / 46


def test_profile_recomputes_anisotropy_and_linearity_without_massive_dimensions():
    from steadylm.analysis.hidden import HiddenStates
    from steadylm.analysis.profile import layer_profile

    rng = np.random.default_rng(9)
    X = planted(seed=9)
    W = rng.normal(size=(48, 48)) / np.sqrt(48)
    W[[5, 30]] = W[:, [5, 30]] = 0.0  # the update leaves the massive dimensions alone...
    Y = X + 0.3 * X @ W  # ...and is linear elsewhere,
    Y[np.ix_([3, 500, 1777], [5, 30])] *= rng.uniform(0.5, 2.0, size=(3, 1))  # except the massive entries
    ids = np.arange(2000)
    hs = HiddenStates([X, Y], ids, ids % 60, [X, Y], ids, "token", chunks=40, sequences=40)
    p = layer_profile(hs, massive_ratio=100, progress=False)
    assert p["id_tokens"] == 2000 and p["id_sample"] == "token"
    l0, l1 = p["layers"]
    assert l0["massive_dims"] == l1["massive_dims"] and sorted(l1["massive_dims"]) == [5, 30]
    assert l1["anisotropy"] > 0.5 and l1["anisotropy_no_massive"] < 0.2
    # In-sample, a d x d map fits three massive rows whatever they do; held out it cannot predict
    # them, and they dominate the score. Without their dimensions the block is linear again.
    assert l1["linearity_no_residual_heldout"] < 0.5
    assert l1["linearity_no_residual_no_massive"] == pytest.approx(1.0, abs=1e-9)
    assert l1["linearity_no_residual_heldout_no_massive"] == pytest.approx(1.0, abs=1e-9)
    assert l1["intrinsic_dim_all"] == pytest.approx(l1["intrinsic_dim"])  # same rows in both samples here
