"""Tests for the measure registry and the non-linear-CKA measures (RBF CKA, SVCCA, PWCCA,
Procrustes, mutual kNN), each against a slow textbook oracle written here.

SciPy is not a dependency of mossa, so the oracles use NumPy only: CCA by covariance whitening
(inverse square roots from ``numpy.linalg.eigh``), Procrustes by Schonemann's SVD solution (what
``scipy.linalg.orthogonal_procrustes`` computes) and an explicit residual, RBF Grams and kNN
sets by explicit Python loops.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mossa.errors import MossaError
from mossa.similarity import (
    Measure,
    SimilarityResult,
    UndefinedSimilarityWarning,
    available_measures,
    get_measure,
    linear_cka,
    mutual_knn,
    mutual_knn_result,
    procrustes_distance,
    pwcca,
    rbf_cka,
    rbf_cka_result,
    register_measure,
    svcca,
    svcca_result,
)
from mossa.similarity import _registry

# Oracle agreement. The fast paths and the oracles agree to ~1e-12 on these well-conditioned
# inputs; 1e-6 is the project-wide tolerance (anchors.md).
TOL = 1e-6
# Invariance checks compare the fast path with itself after an exact-in-theory transform;
# round-off through SVDs of well-conditioned matrices stays far below this.
INV_TOL = 1e-8
FAST = settings(max_examples=15, deadline=None)
seeds = st.integers(0, 2**32 - 1)

ALL_MEASURES = [
    "debiased_cka",
    "debiased_cka_no_outliers",
    "debiased_cka_random_dims",
    "debiased_cka_standardized",
    "debiased_cka_top_pcs_removed",
    "linear_cka",
    "linear_cka_standardized",
    "mutual_knn",
    "procrustes_distance",
    "pwcca",
    "rbf_cka",
    "svcca",
]

# ---------------------------------------------------------------------------------------------
# Helpers and slow oracles
# ---------------------------------------------------------------------------------------------


def correlated_pair(rng: np.random.Generator, n: int, d1: int, d2: int, noise: float = 1.0):
    """X random with non-zero column means; Y a noisy linear read-out of X."""
    X = rng.standard_normal((n, d1)) + rng.standard_normal(d1)
    Y = X @ rng.standard_normal((d1, d2)) + noise * rng.standard_normal((n, d2))
    return X, Y


def random_orthogonal(rng: np.random.Generator, d: int) -> np.ndarray:
    Q, R = np.linalg.qr(rng.standard_normal((d, d)))
    return Q * np.sign(np.diag(R))


def well_conditioned(rng: np.random.Generator, d: int) -> np.ndarray:
    """An invertible, non-orthogonal map with singular values in [0.3, 3]."""
    s = np.exp(rng.uniform(np.log(0.3), np.log(3.0), size=d))
    return random_orthogonal(rng, d) @ np.diag(s) @ random_orthogonal(rng, d)


def centring_matrix(n: int) -> np.ndarray:
    return np.eye(n) - np.ones((n, n)) / n


def slow_hsic(K: np.ndarray, L: np.ndarray) -> float:
    """Biased HSIC, Gretton et al. 2005: tr(K H L H) / (n - 1)^2."""
    H = centring_matrix(K.shape[0])
    return float(np.trace(K @ H @ L @ H)) / (K.shape[0] - 1) ** 2


def slow_unbiased_hsic(K: np.ndarray, L: np.ndarray) -> float:
    """Song et al. 2012, JMLR, eq. (5), with explicitly zeroed diagonals."""
    n = K.shape[0]
    Kt, Lt = K.copy(), L.copy()
    np.fill_diagonal(Kt, 0.0)
    np.fill_diagonal(Lt, 0.0)
    one = np.ones(n)
    term1 = np.trace(Kt @ Lt)
    term2 = (one @ Kt @ one) * (one @ Lt @ one) / ((n - 1) * (n - 2))
    term3 = 2.0 / (n - 2) * (one @ Kt @ Lt @ one)
    return float(term1 + term2 - term3) / (n * (n - 3))


def slow_rbf_gram(A: np.ndarray, sigma_frac: float) -> np.ndarray:
    """Gaussian Gram with sigma = sigma_frac * median distance over pairs i < j, by loops."""
    n = A.shape[0]
    sq = [[float(np.sum((A[i] - A[j]) ** 2)) for j in range(n)] for i in range(n)]
    median = float(np.median([math.sqrt(sq[i][j]) for i in range(n) for j in range(i + 1, n)]))
    sigma = sigma_frac * median
    return np.array([[math.exp(-sq[i][j] / (2 * sigma**2)) for j in range(n)] for i in range(n)])


def slow_rbf_cka(X, Y, sigma_frac=0.5, debiased=False) -> float:
    K, L = slow_rbf_gram(X, sigma_frac), slow_rbf_gram(Y, sigma_frac)
    hsic = slow_unbiased_hsic if debiased else slow_hsic
    return hsic(K, L) / math.sqrt(hsic(K, K) * hsic(L, L))


def slow_inv_sqrt(S: np.ndarray) -> np.ndarray:
    w, V = np.linalg.eigh(S)
    assert w.min() > 1e-10 * w.max(), "the oracle needs a full-rank covariance"
    return V @ np.diag(w**-0.5) @ V.T


def slow_pca_reduce(A: np.ndarray, variance: float) -> np.ndarray:
    """Project the centred A on the top eigenvectors of its covariance explaining `variance`."""
    Ac = A - A.mean(axis=0)
    w, V = np.linalg.eigh(Ac.T @ Ac / (len(A) - 1))
    w, V = w[::-1], V[:, ::-1]  # descending
    share = np.cumsum(w) / np.sum(w)
    k = next(i + 1 for i, s in enumerate(share) if s >= variance - 1e-12)
    return Ac @ V[:, :k]


def slow_cca(A: np.ndarray, B: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Textbook CCA by covariance whitening: correlations and X-side canonical weights."""
    n = len(A)
    A, B = A - A.mean(0), B - B.mean(0)
    Saa, Sbb, Sab = A.T @ A / (n - 1), B.T @ B / (n - 1), A.T @ B / (n - 1)
    Wa, Wb = slow_inv_sqrt(Saa), slow_inv_sqrt(Sbb)
    U, rho, _ = np.linalg.svd(Wa @ Sab @ Wb)
    m = min(A.shape[1], B.shape[1])
    return rho[:m], Wa @ U[:, :m]


def slow_svcca(X, Y, variance) -> float:
    rho, _ = slow_cca(slow_pca_reduce(X, variance), slow_pca_reduce(Y, variance))
    return float(np.mean(rho))


def slow_pwcca(X, Y, variance) -> float:
    Xr = slow_pca_reduce(X, variance)
    rho, weights = slow_cca(Xr, slow_pca_reduce(Y, variance))
    Xc = X - X.mean(0)
    alpha = []
    for i in range(len(rho)):
        h = Xr @ weights[:, i]
        h = h / np.linalg.norm(h)
        alpha.append(sum(abs(float(h @ Xc[:, j])) for j in range(Xc.shape[1])))
    return float(np.dot(alpha, rho) / np.sum(alpha))


def slow_procrustes(X, Y) -> float:
    """Zero-pad, centre, normalise, rotate by Schonemann's solution, measure the residual."""
    d = max(X.shape[1], Y.shape[1])
    A = np.zeros((len(X), d))
    B = np.zeros((len(Y), d))
    A[:, : X.shape[1]] = X - X.mean(0)
    B[:, : Y.shape[1]] = Y - Y.mean(0)
    A /= np.linalg.norm(A)
    B /= np.linalg.norm(B)
    U, _, Vt = np.linalg.svd(A.T @ B)
    R = U @ Vt  # argmin_R ||A R - B||_F over orthogonal R
    return float(np.sum((A @ R - B) ** 2))


def slow_knn_sets(A: np.ndarray, k: int) -> list[set[int]]:
    n = len(A)
    out = []
    for i in range(n):
        sims = []
        for j in range(n):
            if j != i:
                cos = float(A[i] @ A[j]) / (np.linalg.norm(A[i]) * np.linalg.norm(A[j]))
                sims.append((-cos, j))
        out.append({j for _, j in sorted(sims)[:k]})
    return out


def slow_mutual_knn(X, Y, k) -> float:
    sx, sy = slow_knn_sets(X, k), slow_knn_sets(Y, k)
    return sum(len(a & b) / k for a, b in zip(sx, sy)) / len(X)


# ---------------------------------------------------------------------------------------------
# The oracles themselves
# ---------------------------------------------------------------------------------------------


def test_procrustes_oracle_rotation_is_optimal():
    rng = np.random.default_rng(0)
    X, Y = correlated_pair(rng, 20, 4, 4)
    best = slow_procrustes(X, Y)
    A = (X - X.mean(0)) / np.linalg.norm(X - X.mean(0))
    B = (Y - Y.mean(0)) / np.linalg.norm(Y - Y.mean(0))
    for _ in range(200):
        assert np.sum((A @ random_orthogonal(rng, 4) - B) ** 2) >= best - 1e-12


def test_cca_oracle_first_correlation_is_a_pearson_correlation():
    rng = np.random.default_rng(1)
    X, Y = correlated_pair(rng, 40, 3, 2)
    rho, W = slow_cca(X, Y)
    h = (X - X.mean(0)) @ W[:, 0]
    # the best linear combination of Y correlates with h at rho[0]
    Yc = Y - Y.mean(0)
    beta, *_ = np.linalg.lstsq(Yc, h, rcond=None)
    assert abs(np.corrcoef(h, Yc @ beta)[0, 1]) == pytest.approx(rho[0], abs=1e-10)


# ---------------------------------------------------------------------------------------------
# Fast paths against the oracles
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("n,d1,d2", [(15, 4, 7), (12, 30, 5)])
@pytest.mark.parametrize("sigma_frac", [0.5, 2.0])
@pytest.mark.parametrize("debiased", [False, True])
def test_rbf_cka_matches_oracle(n, d1, d2, sigma_frac, debiased):
    X, Y = correlated_pair(np.random.default_rng(n + d1 + d2), n, d1, d2)
    expected = slow_rbf_cka(X, Y, sigma_frac, debiased)
    assert rbf_cka(X, Y, sigma_frac=sigma_frac, debiased=debiased) == pytest.approx(
        expected, abs=TOL
    )


def test_rbf_cka_with_some_duplicate_rows_matches_oracle():
    """Duplicates sit at distance exactly 0, not at Gram-formula round-off."""
    rng = np.random.default_rng(2)
    X, Y = correlated_pair(rng, 14, 5, 3)
    X[3] = X[0] * 1.0000000001  # a near-duplicate (distance far below Gram round-off of 1e-8)
    X[7] = X[5]
    Y[9] = Y[2]
    assert rbf_cka(X, Y) == pytest.approx(slow_rbf_cka(X, Y), abs=TOL)
    assert rbf_cka(X, Y, debiased=True) == pytest.approx(slow_rbf_cka(X, Y, debiased=True), abs=TOL)


def test_rbf_cka_tends_to_linear_cka_for_wide_kernels():
    """exp(-t) - 1 ~ -t: the deviation is O((median / sigma)^2) = O(1e-8) here, hence TOL."""
    X, Y = correlated_pair(np.random.default_rng(3), 30, 6, 4)
    assert rbf_cka(X, Y, sigma_frac=1e4) == pytest.approx(linear_cka(X, Y), abs=TOL)
    assert rbf_cka(X, Y, sigma_frac=1e4, debiased=True) == pytest.approx(
        linear_cka(X, Y, debiased=True), abs=TOL
    )


@pytest.mark.parametrize("variance", [0.5, 0.9, 0.99, 1.0])
@pytest.mark.parametrize("n,d1,d2", [(60, 6, 9), (40, 8, 3)])
def test_svcca_and_pwcca_match_oracle(variance, n, d1, d2):
    rng = np.random.default_rng(int(variance * 100) + n + d1)
    X, Y = correlated_pair(rng, n, d1, d2, noise=2.0)
    X[:, 0] *= 4.0  # unequal variances, so the truncation really drops directions
    assert svcca(X, Y, variance=variance) == pytest.approx(slow_svcca(X, Y, variance), abs=TOL)
    assert pwcca(X, Y, variance=variance) == pytest.approx(slow_pwcca(X, Y, variance), abs=TOL)
    assert pwcca(Y, X, variance=variance) == pytest.approx(slow_pwcca(Y, X, variance), abs=TOL)


@pytest.mark.parametrize("n,d1,d2", [(20, 3, 7), (10, 25, 40), (15, 5, 5), (30, 1, 2)])
def test_procrustes_matches_oracle(n, d1, d2):
    X, Y = correlated_pair(np.random.default_rng(n * d1 + d2), n, d1, d2)
    assert procrustes_distance(X, Y) == pytest.approx(slow_procrustes(X, Y), abs=TOL)


@pytest.mark.parametrize("k", [1, 3, 7])
@pytest.mark.parametrize("n,d1,d2", [(20, 3, 6), (12, 30, 2)])
def test_mutual_knn_matches_oracle(k, n, d1, d2):
    X, Y = correlated_pair(np.random.default_rng(k + n), n, d1, d2, noise=0.5)
    assert mutual_knn(X, Y, k=k) == pytest.approx(slow_mutual_knn(X, Y, k), abs=TOL)


def test_mutual_knn_ties_go_to_the_lower_index():
    # Example 0 has examples 1 and 2 at the same cosine similarity; 1 wins.
    X = np.array([[1.0, 0.0], [1.0, 1.0], [1.0, -1.0], [-1.0, 0.2]])
    Y = np.array([[1.0, 0.0], [0.9, 0.1], [-1.0, 0.0], [0.0, 1.0]])
    res = mutual_knn_result(X, Y, k=1)
    assert res.value == pytest.approx(slow_mutual_knn(X, Y, 1), abs=TOL)


# ---------------------------------------------------------------------------------------------
# Promised invariances (property tests) and documented non-invariances
# ---------------------------------------------------------------------------------------------

shapes = st.tuples(st.integers(16, 30), st.integers(1, 5), st.integers(1, 5))
scales = st.floats(-3, 3).map(lambda e: 10.0**e)
shifts = st.floats(-50, 50)


@FAST
@given(seed=seeds, shape=shapes, c1=scales, c2=scales, b=shifts)
@pytest.mark.parametrize("name", ["rbf_cka", "svcca", "procrustes_distance", "debiased_cka"])
def test_rotation_scaling_translation_invariance(name, seed, shape, c1, c2, b):
    n, d1, d2 = shape
    rng = np.random.default_rng(seed)
    X, Y = correlated_pair(rng, n, d1, d2)
    measure = get_measure(name)
    base = measure(X, Y).value
    X2 = c1 * X @ random_orthogonal(rng, d1) + b
    Y2 = c2 * Y @ random_orthogonal(rng, d2) - b
    moved = measure(X2, Y2)
    assert moved.value == pytest.approx(base, abs=INV_TOL)


@FAST
@given(seed=seeds, shape=shapes, c=scales, b=shifts)
def test_pwcca_invariances(seed, shape, c, b):
    """X: feature permutations, sign flips, scaling, translation. Y: rotations too."""
    n, d1, d2 = shape
    rng = np.random.default_rng(seed)
    X, Y = correlated_pair(rng, n, d1, d2)
    base = pwcca(X, Y)
    signs = rng.choice([-1.0, 1.0], size=d1)
    X2 = c * X[:, rng.permutation(d1)] * signs + b
    Y2 = Y @ random_orthogonal(rng, d2) / c - b
    assert pwcca(X2, Y2) == pytest.approx(base, abs=INV_TOL)


@FAST
@given(seed=seeds, shape=shapes)
def test_cca_family_invariant_to_invertible_maps_at_full_rank(seed, shape):
    n, d1, d2 = shape
    rng = np.random.default_rng(seed)
    X, Y = correlated_pair(rng, n, d1, d2)
    A, B = well_conditioned(rng, d1), well_conditioned(rng, d2)
    assert svcca(X @ A, Y @ B, variance=1.0) == pytest.approx(
        svcca(X, Y, variance=1.0), abs=INV_TOL
    )
    assert pwcca(X, Y @ B, variance=1.0) == pytest.approx(pwcca(X, Y, variance=1.0), abs=INV_TOL)


@FAST
@given(seed=seeds, shape=shapes, k=st.integers(1, 8))
def test_mutual_knn_invariant_to_rotation_and_per_example_scaling(seed, shape, k):
    n, d1, d2 = shape
    d1, d2 = d1 + 1, d2 + 1  # one feature gives cosines of +-1 only: all ties
    rng = np.random.default_rng(seed)
    X, Y = correlated_pair(rng, n, d1, d2)
    base = mutual_knn(X, Y, k=k)
    row_scale = np.exp(rng.uniform(-3, 3, size=(n, 1)))
    moved = mutual_knn(row_scale * X @ random_orthogonal(rng, d1), Y * 7.0, k=k)
    assert moved == base  # neighbour sets are discrete: no round-off to tolerate


@FAST
@given(seed=seeds, shape=shapes)
@pytest.mark.parametrize("name", ALL_MEASURES)
def test_joint_permutation_of_examples_invariance(name, seed, shape):
    n, d1, d2 = shape
    d1, d2 = d1 + 1, d2 + 1  # one feature would make every kNN cosine +-1: ties by index
    rng = np.random.default_rng(seed)
    X, Y = correlated_pair(rng, n, d1, d2)
    perm = rng.permutation(n)
    measure = get_measure(name)
    assert measure(X[perm], Y[perm]).value == pytest.approx(measure(X, Y).value, abs=INV_TOL)


def test_documented_non_invariances_are_real():
    rng = np.random.default_rng(4)
    X, Y = correlated_pair(rng, 80, 6, 6)
    A = random_orthogonal(rng, 6) @ np.diag(np.logspace(-1, 1, 6))  # invertible, anisotropic
    # RBF CKA and Procrustes: not invariant to invertible non-orthogonal maps.
    assert abs(rbf_cka(X @ A, Y) - rbf_cka(X, Y)) > 0.01
    assert abs(procrustes_distance(X @ A, Y) - procrustes_distance(X, Y)) > 0.01
    # SVCCA below full variance: a stretch changes which directions are kept.
    assert abs(svcca(X @ A, Y, variance=0.9) - svcca(X, Y, variance=0.9)) > 0.01
    # PWCCA: not invariant to a rotation of X (L1 weights over X's features), not symmetric.
    Q = random_orthogonal(rng, 6)
    assert abs(pwcca(X @ Q, Y) - pwcca(X, Y)) > 1e-4
    assert abs(pwcca(X, Y) - pwcca(Y, X)) > 1e-4
    # Mutual kNN: cosine of uncentred rows is not invariant to translation.
    assert mutual_knn(X + 3.0, Y) != mutual_knn(X, Y)


# ---------------------------------------------------------------------------------------------
# Degenerate inputs: documented values or clear errors
# ---------------------------------------------------------------------------------------------

FLOAT_FUNCTIONS = {
    "RBF CKA": rbf_cka,
    "SVCCA": svcca,
    "PWCCA": pwcca,
    "the Procrustes distance": procrustes_distance,
    "mutual kNN alignment": mutual_knn,
}


@pytest.mark.parametrize("label", list(FLOAT_FUNCTIONS))
def test_float_functions_warn_on_constant_input(label):
    func = FLOAT_FUNCTIONS[label]
    rng = np.random.default_rng(5)
    X = np.tile(rng.standard_normal(4) * 1e3 + 0.1, (20, 1))
    Y = rng.standard_normal((20, 3))
    with pytest.warns(UndefinedSimilarityWarning, match=f"{label} is undefined.*X does not vary"):
        assert math.isnan(func(X, Y))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert math.isfinite(func(rng.standard_normal((20, 4)), Y))


def test_rbf_zero_median_distance_is_undefined():
    rng = np.random.default_rng(6)
    X = np.vstack([np.tile(rng.standard_normal(3), (8, 1)), rng.standard_normal((2, 3))])
    res = rbf_cka_result(X, rng.standard_normal((10, 2)))  # 28 of 45 pairs coincide
    assert math.isnan(res.value) and "median pairwise distance of X is 0" in res.reason


def test_rbf_bandwidth_too_wide_for_float64_is_undefined():
    X, Y = correlated_pair(np.random.default_rng(7), 10, 3, 3)
    res = rbf_cka_result(X, Y, sigma_frac=1e200)
    assert math.isnan(res.value) and "rounds to 1" in res.reason


@FAST
@given(seed=seeds, n=st.integers(4, 7), d1=st.integers(1, 3), d2=st.integers(1, 3))
def test_rbf_debiased_tiny_n_never_returns_silent_nan(seed, n, d1, d2):
    rng = np.random.default_rng(seed)
    X, Y = rng.standard_normal((n, d1)), rng.standard_normal((n, d2))
    res = rbf_cka_result(X, Y, debiased=True)
    assert math.isfinite(res.value) or res.reason is not None
    if res.reason is None:
        assert res.value == pytest.approx(slow_rbf_cka(X, Y, debiased=True), abs=1e-5)
        assert -1.0 - 1e-12 <= res.value <= 1.0 + 1e-12


def test_rbf_debiased_needs_four_examples():
    with pytest.raises(MossaError, match=r"at least 4 examples.*got n=3"):
        rbf_cka(np.eye(3), np.eye(3), debiased=True)


def test_cca_rank_deficiency_is_handled_explicitly():
    rng = np.random.default_rng(8)
    Z, Y = correlated_pair(rng, 40, 4, 5)
    X = np.hstack([Z, Z @ rng.standard_normal((4, 3)), Z[:, :1]])  # rank 4, width 8
    # Whitening would divide by zero here; the SVD route keeps the 4 non-null directions.
    assert svcca(X, Y, variance=1.0) == pytest.approx(svcca(Z, Y, variance=1.0), abs=INV_TOL)
    assert svcca(X, Y, variance=1.0) == pytest.approx(slow_svcca(Z, Y, 1.0), abs=TOL)
    value = pwcca(X, Y, variance=1.0)
    assert 0.0 <= value <= 1.0


def test_cca_with_fewer_examples_than_features():
    rng = np.random.default_rng(9)
    X = rng.standard_normal((12, 40))  # centred rank 11
    Y = X[:, :3] + 0.1 * rng.standard_normal((12, 3))
    res = svcca_result(X, Y, variance=0.5)
    assert res.reason is None and 0.0 <= res.value <= 1.0 + 1e-12
    with pytest.raises(MossaError, match=r"k_X \+ k_Y <= n - 1.*got k_X=11 and k_Y=3.*n=12"):
        svcca(X, Y, variance=1.0)


def test_cca_refuses_trivially_perfect_correlations():
    rng = np.random.default_rng(10)
    X, Y = rng.standard_normal((8, 5)), rng.standard_normal((8, 5))  # independent
    with pytest.raises(MossaError) as info:
        pwcca(X, Y, variance=1.0)
    message = str(info.value)
    assert "expected" in message and "got" in message and "Fix:" in message
    assert "at least 3 canonical correlations would be 1" in message


def test_mutual_knn_needs_k_below_n():
    rng = np.random.default_rng(11)
    X, Y = rng.standard_normal((8, 3)), rng.standard_normal((8, 3))
    with pytest.raises(MossaError, match=r"k < n.*got k=8 with n=8.*Fix: pass k <= 7"):
        mutual_knn(X, Y, k=8)
    with pytest.raises(MossaError, match=r"k < n"):
        mutual_knn(X, Y)  # default k=10
    assert mutual_knn(X, Y, k=7) == 1.0  # every other example is a neighbour


def test_mutual_knn_zero_rows_and_parallel_rows_are_undefined():
    rng = np.random.default_rng(12)
    X, Y = rng.standard_normal((15, 3)), rng.standard_normal((15, 3))
    X[4] = 0.0
    res = mutual_knn_result(X, Y, k=3)
    assert math.isnan(res.value) and "X has 1 all-zero rows" in res.reason and "[4]" in res.reason
    parallel = rng.uniform(0.5, 2.0, size=(15, 1)) * rng.standard_normal(3)
    res = mutual_knn_result(Y, parallel, k=3)
    assert math.isnan(res.value) and "Y does not vary across examples in direction" in res.reason


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda X, Y: rbf_cka(X, Y, sigma_frac=0.0), r"sigma_frac: expected .* in \(0.0, inf\)"),
        (lambda X, Y: rbf_cka(X, Y, sigma_frac=math.nan), "sigma_frac: expected"),
        (lambda X, Y: rbf_cka(X, Y, sigma_frac="0.5"), "sigma_frac: expected"),
        (lambda X, Y: svcca(X, Y, variance=0.0), r"variance: expected a real .* \(0.0, 1.0\]"),
        (lambda X, Y: pwcca(X, Y, variance=1.5), "variance: expected.*got 1.5"),
        (lambda X, Y: mutual_knn(X, Y, k=0), r"k: expected an integer in \[1"),
        (lambda X, Y: mutual_knn(X, Y, k=2.5), "k: expected an integer"),
        (lambda X, Y: mutual_knn(X, Y, k=True), "k: expected an integer"),
    ],
)
def test_parameter_validation(call, match):
    rng = np.random.default_rng(13)
    with pytest.raises(MossaError, match=match) as info:
        call(rng.standard_normal((20, 3)), rng.standard_normal((20, 2)))
    assert "Fix:" in str(info.value)


def test_numpy_integer_parameters_are_accepted():
    X, Y = correlated_pair(np.random.default_rng(14), 20, 3, 3)
    assert mutual_knn(X, Y, k=np.int64(3)) == mutual_knn(X, Y, k=3)
    assert svcca(X, Y, variance=np.float32(0.5)) == svcca(X, Y, variance=float(np.float32(0.5)))


# ---------------------------------------------------------------------------------------------
# Common checks over every registered measure (like sklearn's test_estimators)
# ---------------------------------------------------------------------------------------------


def test_registry_holds_every_measure():
    assert available_measures() == ALL_MEASURES  # sorted, nothing missing or extra
    for name in ALL_MEASURES:
        measure = get_measure(name)
        assert isinstance(measure, Measure) and measure.name == name
        assert measure.origin.startswith("mossa.similarity._")


@pytest.mark.parametrize("name", ALL_MEASURES)
def test_common_self_similarity_is_the_best_value(name):
    measure = get_measure(name)
    rng = np.random.default_rng(15)
    for n, d in ((24, 5), (30, 2), (40, 9)):
        X = rng.standard_normal((n, d)) + 2.0
        res = measure(X, X)
        assert isinstance(res, SimilarityResult) and res.reason is None and res.n_examples == n
        assert res.value == pytest.approx(measure.best_value, abs=1e-9)


@pytest.mark.parametrize("name", ALL_MEASURES)
def test_common_symmetry_and_range(name):
    measure = get_measure(name)
    lo, hi = measure.value_range
    rng = np.random.default_rng(16)
    for trial in range(6):
        n, d1, d2 = 24, int(rng.integers(2, 6)), int(rng.integers(2, 6))
        if trial % 2:
            X, Y = rng.standard_normal((n, d1)), rng.standard_normal((n, d2))  # independent
        else:
            X, Y = correlated_pair(rng, n, d1, d2, noise=float(rng.uniform(0.1, 3.0)))
        value = measure(X, Y).value
        assert lo - 1e-12 <= value <= hi + 1e-12, (X.shape, Y.shape, value)
        if measure.symmetric:
            assert measure(Y, X).value == pytest.approx(value, abs=1e-12)


@pytest.mark.parametrize("name", ALL_MEASURES)
def test_common_constant_representation_is_nan_with_reason(name):
    measure = get_measure(name)
    rng = np.random.default_rng(17)
    const = np.tile(rng.standard_normal(4) * 1e3 + 0.1, (24, 1))
    other = rng.standard_normal((24, 3))
    for X, Y, which in ((const, other, "X"), (other, const, "Y")):
        res = measure(X, Y)
        assert math.isnan(res.value) and f"{which} does not vary across examples" in res.reason
    res = measure(const, np.zeros((24, 2)))
    assert math.isnan(res.value) and res.reason is not None


@pytest.mark.parametrize("name", ALL_MEASURES)
def test_common_low_precision_torch_inputs_use_float64(name):
    measure = get_measure(name)
    gen = torch.Generator().manual_seed(18)
    X = torch.randn(24, 6, generator=gen) + 3.0
    Y = X[:, :3] @ torch.randn(3, 4, generator=gen) + torch.randn(24, 4, generator=gen)
    Xb, Yb = X.bfloat16(), Y.to(torch.float16)
    expected = measure(Xb.double().numpy(), Yb.double().numpy()).value
    assert measure(Xb, Yb).value == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("name", ALL_MEASURES)
def test_common_input_validation(name):
    measure = get_measure(name)
    with pytest.raises(MossaError, match="at least 2 examples"):
        measure(np.ones((1, 3)), np.ones((1, 2)))
    with pytest.raises(MossaError, match="same examples in the same order"):
        measure(np.ones((20, 3)), np.ones((21, 3)))


# ---------------------------------------------------------------------------------------------
# The registry itself
# ---------------------------------------------------------------------------------------------


@pytest.fixture
def scratch_registry(monkeypatch):
    """A copy of the registry, so registration tests leave the real one untouched."""
    monkeypatch.setattr(_registry, "_MEASURES", dict(_registry._MEASURES))


def test_unknown_name_lists_close_names():
    with pytest.raises(MossaError, match=r"unknown measure 'svcaa'.*did you mean svcca") as info:
        get_measure("svcaa")
    assert "available: debiased_cka, debiased_cka_no_outliers" in str(info.value)
    with pytest.raises(MossaError, match="did you mean linear_cka"):
        get_measure("linear_ckа")  # Cyrillic a
    with pytest.raises(MossaError, match="unknown measure"):
        get_measure(None)  # type: ignore[arg-type]


META = dict(symmetric=True, value_range=(0.0, 1.0), higher_is_similar=True, description="d")


def test_register_and_get_round_trip(scratch_registry):
    @register_measure("toy_measure", **META)
    def toy_result(X, Y, *, scale=1.0):
        return SimilarityResult(0.25 * scale, None, len(X))

    assert toy_result.__name__ == "toy_result"  # returned unchanged
    measure = get_measure("toy_measure")
    assert measure(np.ones((3, 1)), np.ones((3, 1)), scale=2.0).value == 0.5
    assert "toy_measure" in available_measures()
    assert measure.best_value == 1.0 and measure.origin.endswith("toy_result")


def test_register_refuses_duplicates_and_bad_metadata(scratch_registry):
    with pytest.raises(MossaError, match=r"already registered by .*_cca:svcca_result"):
        register_measure("svcca", **META)(lambda X, Y: None)
    for bad_name in ("SVCCA", "rbf-cka", "2cka", "a__b", "", "cka_"):
        with pytest.raises(MossaError, match="lower_snake"):
            register_measure(bad_name, **META)
    bad_meta = [
        dict(META, symmetric=1),
        dict(META, higher_is_similar="yes"),
        dict(META, value_range=(1.0, 0.0)),
        dict(META, value_range=(0.0, math.nan)),
        dict(META, value_range=(0.0,)),
        dict(META, description="  "),
    ]
    for meta in bad_meta:
        with pytest.raises(MossaError, match="expected"):
            register_measure("fine_name", **meta)
    with pytest.raises(MossaError, match="expected a function"):
        register_measure("fine_name", **META)(42)
    assert "fine_name" not in available_measures()
