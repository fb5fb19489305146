"""Tests for the CKA variants robust to outlier dimensions, against textbook references written here in
plain NumPy (z-scores by hand, then the HSIC formulas of Kornblith et al. 2019 and Song et al. 2012 on
explicit n x n Gram matrices), never through mossa's own CKA code."""

from __future__ import annotations

import math

import numpy as np
import pytest

from mossa.similarity import ROBUST_MEASURES, available_measures, get_measure, outlier_dims, random_dims

TOL = 1e-6


def zscore(X: np.ndarray) -> np.ndarray:
    """Columns centred and divided by their standard deviation; constant columns dropped."""
    X = np.asarray(X, dtype=np.float64)
    sd = X.std(axis=0)
    keep = sd > 1e-12 * np.maximum(np.abs(X).max(axis=0), 1e-300)
    return (X[:, keep] - X[:, keep].mean(axis=0)) / sd[keep]


def hsic_biased(K: np.ndarray, L: np.ndarray) -> float:
    """Kornblith et al. (2019), eq. 3: tr(K H L H) / (n - 1)^2."""
    n = len(K)
    H = np.eye(n) - np.ones((n, n)) / n
    return float(np.trace(K @ H @ L @ H)) / (n - 1) ** 2


def hsic_unbiased(K: np.ndarray, L: np.ndarray) -> float:
    """Song et al. (2012), eq. 5, with the Grams' diagonals set to 0."""
    n = len(K)
    K, L = K - np.diag(np.diag(K)), L - np.diag(np.diag(L))
    one = np.ones(n)
    return float(np.trace(K @ L) + (one @ K @ one) * (one @ L @ one) / ((n - 1) * (n - 2))
                 - 2.0 / (n - 2) * one @ K @ L @ one) / (n * (n - 3))


def cka_reference(X: np.ndarray, Y: np.ndarray, *, debiased: bool) -> float:
    hsic = hsic_unbiased if debiased else hsic_biased
    K, L = X @ X.T, Y @ Y.T
    return hsic(K, L) / math.sqrt(hsic(K, K) * hsic(L, L))


def related(rng: np.random.Generator, n: int, d1: int, d2: int) -> tuple[np.ndarray, np.ndarray]:
    """X with columns of very different scales and offsets, Y a noisy read-out of it."""
    X = rng.standard_normal((n, d1)) * np.exp(rng.normal(0, 1.5, d1)) + rng.normal(0, 3, d1)
    Y = X @ rng.standard_normal((d1, d2)) + rng.standard_normal((n, d2)) * 5
    return X, Y


def planted(rng: np.random.Generator, n: int, d: int, dims: list[int], *, offset: bool = False) -> np.ndarray:
    X = rng.standard_normal((n, d))
    if offset:
        X[:, dims] += 40.0 + rng.standard_normal((n, len(dims)))
    else:
        X[:, dims] *= 20.0
    return X


def test_the_variants_are_registered():
    assert set(ROBUST_MEASURES) <= set(available_measures())
    for name in ROBUST_MEASURES:
        measure = get_measure(name)
        assert measure.higher_is_similar and not measure.rotation_invariant
        assert measure.symmetric == (name != "debiased_cka_top_pcs_removed")  # its basis is Y's alone
        assert measure.origin.startswith("mossa.similarity._robust:")


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("shape", [(96, 640, 640), (40, 7, 12), (60, 30, 5)])
def test_standardised_cka_matches_the_textbook_reference(seed, shape):
    n, d1, d2 = shape
    X, Y = related(np.random.default_rng(seed), n, d1, d2)
    for name, debiased in (("debiased_cka_standardized", True), ("linear_cka_standardized", False)):
        got = get_measure(name)(X, Y)
        assert got.reason is None and got.n_examples == n
        assert got.value == pytest.approx(cka_reference(zscore(X), zscore(Y), debiased=debiased), abs=TOL)


def test_standardised_cka_drops_constant_columns_and_ignores_each_columns_scale():
    rng = np.random.default_rng(7)
    X, Y = related(rng, 50, 9, 6)
    X[:, 3] = 2.5  # does not vary: dropped, not divided by 0
    for name, debiased in (("debiased_cka_standardized", True), ("linear_cka_standardized", False)):
        measure = get_measure(name)
        value = measure(X, Y).value
        assert value == pytest.approx(cka_reference(zscore(np.delete(X, 3, axis=1)), zscore(Y), debiased=debiased),
                                      abs=TOL)
        scales = rng.uniform(-100, 100, X.shape[1])
        assert measure(X * scales + rng.normal(0, 50, X.shape[1]), Y).value == pytest.approx(value, abs=1e-9)
        res = measure(np.tile(rng.standard_normal(4), (50, 1)), Y)
        assert math.isnan(res.value) and res.reason == "X does not vary across examples (0/0)"


@pytest.mark.parametrize("seed", range(3))
def test_outlier_removal_equals_debiased_cka_without_those_columns(seed):
    rng = np.random.default_rng(seed)
    shared = rng.standard_normal((96, 640))
    X, Y = shared.copy(), shared + planted(rng, 96, 640, [301, 77], offset=True)
    X[:, [12, 301, 500]] *= 20.0
    assert outlier_dims(X).tolist() == [12, 301, 500] and outlier_dims(Y).tolist() == [77, 301]
    got = get_measure("debiased_cka_no_outliers")(X, Y)
    want = cka_reference(np.delete(X, [12, 301, 500], axis=1) - np.delete(X, [12, 301, 500], axis=1).mean(axis=0),
                         np.delete(Y, [77, 301], axis=1) - np.delete(Y, [77, 301], axis=1).mean(axis=0),
                         debiased=True)
    assert got.reason is None and got.value == pytest.approx(want, abs=TOL)


def test_random_removal_is_reproducible_and_removes_as_many_other_dimensions():
    rng = np.random.default_rng(11)
    shared = rng.standard_normal((96, 640))
    X, Y = shared.copy(), shared[:, :320] + planted(rng, 96, 320, [5], offset=True)
    X[:, [12, 301, 500]] *= 20.0
    drop_x, drop_y = random_dims(640, outlier_dims(X)), random_dims(320, outlier_dims(Y))
    assert len(drop_x) == 3 and not set(drop_x) & {12, 301, 500} and drop_y.tolist() != [5] and len(drop_y) == 1
    order = np.random.default_rng([3, 640]).permutation(640)  # seeded by (count, width) only
    assert drop_x.tolist() == sorted(order[~np.isin(order, [12, 301, 500])][:3])
    assert random_dims(640, np.array([1, 2, 3])).tolist() == sorted(order[~np.isin(order, [1, 2, 3])][:3])
    assert not random_dims(640, np.array([], dtype=int)).size
    measure = get_measure("debiased_cka_random_dims")
    first, again = measure(X, Y), measure(X.copy(), Y.copy())
    assert first.value == again.value
    Xr, Yr = np.delete(X, drop_x, axis=1), np.delete(Y, drop_y, axis=1)
    want = cka_reference(Xr - Xr.mean(axis=0), Yr - Yr.mean(axis=0), debiased=True)
    assert first.value == pytest.approx(want, abs=TOL)


def test_without_outliers_both_removals_are_plain_debiased_cka():
    rng = np.random.default_rng(12)
    X = rng.standard_normal((80, 200))
    Y = X[:, :50] @ rng.standard_normal((50, 90)) + rng.standard_normal((80, 90))
    plain = get_measure("debiased_cka")(X, Y).value
    for name in ("debiased_cka_no_outliers", "debiased_cka_random_dims"):
        assert get_measure(name)(X, Y).value == plain


def test_outliers_dominate_plain_cka_but_not_the_variants():
    """Two representations that share only their outlier dimensions: plain debiased CKA is high, the
    variants that weigh every dimension alike (or drop the outliers) are near 0; removing random
    dimensions instead changes nothing."""
    rng = np.random.default_rng(13)
    n, d = 96, 640
    shared = rng.standard_normal((n, 2)) * 30
    X, Y = rng.standard_normal((n, d)), rng.standard_normal((n, d))
    X[:, [40, 41]] = shared
    Y[:, [40, 41]] = shared
    plain = get_measure("debiased_cka")(X, Y).value
    assert plain > 0.8
    for name in ("debiased_cka_standardized", "debiased_cka_no_outliers"):
        assert abs(get_measure(name)(X, Y).value) < 0.1
    assert get_measure("debiased_cka_random_dims")(X, Y).value == pytest.approx(plain, abs=0.02)
