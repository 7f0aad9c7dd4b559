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
