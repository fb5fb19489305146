"""Tests for linear CKA (mossa.similarity._cka) against slow textbook oracles written here."""

from __future__ import annotations

import itertools
import math
import warnings

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mossa.errors import MossaError
from mossa.similarity import (
    SimilarityResult,
    UndefinedSimilarityWarning,
    layerwise_linear_cka,
    linear_cka,
    linear_cka_result,
)
from mossa.similarity import _cka

TOL = 1e-6
FAST = settings(max_examples=25, deadline=None)

# ---------------------------------------------------------------------------------------------
# Slow, independent oracles: explicit centring matrix, uncentred linear kernels.
# ---------------------------------------------------------------------------------------------


def slow_hsic(K: np.ndarray, L: np.ndarray) -> float:
    """Biased HSIC, Gretton et al. 2005: trace(K H L H) / (n - 1)^2 with H = I - 11^T / n."""
    n = K.shape[0]
    H = np.eye(n) - np.ones((n, n)) / n
    return float(np.trace(K @ H @ L @ H)) / (n - 1) ** 2


def slow_cka(X: np.ndarray, Y: np.ndarray) -> float:
    X = np.asarray(X, dtype=np.float64)
    Y = np.asarray(Y, dtype=np.float64)
    K, L = X @ X.T, Y @ Y.T
    return slow_hsic(K, L) / math.sqrt(slow_hsic(K, K) * slow_hsic(L, L))


def slow_unbiased_hsic(K: np.ndarray, L: np.ndarray) -> float:
    """Song et al. 2012, JMLR, eq. (5), with explicitly zeroed diagonals."""
    n = K.shape[0]
    Kt = K.copy()
    Lt = L.copy()
    np.fill_diagonal(Kt, 0.0)
    np.fill_diagonal(Lt, 0.0)
    one = np.ones(n)
    term1 = np.trace(Kt @ Lt)
    term2 = (one @ Kt @ one) * (one @ Lt @ one) / ((n - 1) * (n - 2))
    term3 = 2.0 / (n - 2) * (one @ Kt @ Lt @ one)
    return float(term1 + term2 - term3) / (n * (n - 3))


def loop_unbiased_hsic(K: np.ndarray, L: np.ndarray) -> float:
    """The same estimator as a U-statistic over all ordered 4-tuples of distinct indices."""
    n = K.shape[0]
    total = 0.0
    for i, j, q, r in itertools.permutations(range(n), 4):
        total += K[i, j] * L[i, j] + K[i, j] * L[q, r] - 2.0 * K[i, j] * L[i, q]
    return total / math.perm(n, 4)


def slow_debiased_cka(X: np.ndarray, Y: np.ndarray) -> float:
    X = np.asarray(X, dtype=np.float64)
    Y = np.asarray(Y, dtype=np.float64)
    K, L = X @ X.T, Y @ Y.T
    return slow_unbiased_hsic(K, L) / math.sqrt(
        slow_unbiased_hsic(K, K) * slow_unbiased_hsic(L, L)
    )


def correlated_pair(rng: np.random.Generator, n: int, d1: int, d2: int, noise: float = 1.0):
    """X random; Y a noisy linear read-out of X, so CKA is well inside (0, 1)."""
    X = rng.standard_normal((n, d1)) + rng.standard_normal(d1)  # non-zero column means
    Y = X @ rng.standard_normal((d1, d2)) + noise * rng.standard_normal((n, d2))
    return X, Y


def random_orthogonal(rng: np.random.Generator, d: int) -> np.ndarray:
    Q, R = np.linalg.qr(rng.standard_normal((d, d)))
    return Q * np.sign(np.diag(R))


# ---------------------------------------------------------------------------------------------
# The oracles themselves
# ---------------------------------------------------------------------------------------------


def test_song_formula_oracle_equals_explicit_u_statistic():
    rng = np.random.default_rng(1)
    X, Y = correlated_pair(rng, 7, 3, 2)
    K, L = X @ X.T, Y @ Y.T
    assert slow_unbiased_hsic(K, L) == pytest.approx(loop_unbiased_hsic(K, L), rel=1e-10)
    assert slow_unbiased_hsic(K, K) == pytest.approx(loop_unbiased_hsic(K, K), rel=1e-10)


def test_biased_oracle_equals_kornblith_feature_space_formula():
    rng = np.random.default_rng(2)
    X, Y = correlated_pair(rng, 30, 4, 6)
    Xc, Yc = X - X.mean(0), Y - Y.mean(0)
    feature = np.linalg.norm(Xc.T @ Yc) ** 2 / (
        np.linalg.norm(Xc.T @ Xc) * np.linalg.norm(Yc.T @ Yc)
    )
    assert slow_cka(X, Y) == pytest.approx(feature, rel=1e-10)


# ---------------------------------------------------------------------------------------------
# Fast path against the oracles, in both regimes
# ---------------------------------------------------------------------------------------------

SHAPES = [(10, 50, 30), (12, 7, 40), (200, 5, 7), (150, 12, 3), (40, 30, 30)]


@pytest.mark.parametrize("n,d1,d2", SHAPES)
@pytest.mark.parametrize("debiased", [False, True])
def test_fast_path_matches_slow_oracle(n, d1, d2, debiased):
    rng = np.random.default_rng(n * 1000 + d1 * 10 + d2)
    X, Y = correlated_pair(rng, n, d1, d2)
    oracle = slow_debiased_cka if debiased else slow_cka
    assert linear_cka(X, Y, debiased=debiased) == pytest.approx(oracle(X, Y), abs=TOL)


@pytest.mark.parametrize("n,d1,d2", SHAPES)
@pytest.mark.parametrize("debiased", [False, True])
def test_gram_and_feature_forms_agree_with_oracle(n, d1, d2, debiased):
    rng = np.random.default_rng(7 + n + d1 + d2)
    X, Y = correlated_pair(rng, n, d1, d2, noise=3.0)
    oracle = (slow_debiased_cka if debiased else slow_cka)(X, Y)
    for form in ("gram", "feature"):
        (res,) = _cka._cka_stack(X[None], Y[None], debiased=debiased, form=form)
        assert res.reason is None
        assert res.value == pytest.approx(oracle, abs=TOL), form


def test_cheaper_form_is_selected_by_regime():
    assert _cka.select_form(10, 50, 50) == "gram"  # n < d
    assert _cka.select_form(1000, 64, 64) == "feature"  # n > d
    assert _cka.select_form(10, 4096, 2) == "gram"
    assert _cka.select_form(8000, 4096, 4096) == "feature"


# ---------------------------------------------------------------------------------------------
# Properties
# ---------------------------------------------------------------------------------------------

seeds = st.integers(0, 2**32 - 1)
ns = st.integers(5, 60)
ds = st.integers(1, 40)


@FAST
@given(seed=seeds, n=ns, d=ds, debiased=st.booleans())
def test_self_similarity_is_one(seed, n, d, debiased):
    X = np.random.default_rng(seed).standard_normal((n, d))
    res = linear_cka_result(X, X, debiased=debiased)
    if debiased and res.reason is not None:
        # Only allowed when the debiased self-HSIC is not positive (tiny n).
        assert "debiased self-HSIC" in res.reason
        assert slow_unbiased_hsic(X @ X.T, X @ X.T) <= 1e-9 * np.linalg.norm(X) ** 4
        return
    assert res.value == pytest.approx(1.0, abs=1e-9)


@FAST
@given(seed=seeds, n=ns, d1=ds, d2=ds, debiased=st.booleans(),
       log_scale=st.floats(-6, 6), shift=st.floats(-100, 100))
def test_invariant_to_rotation_isotropic_scaling_and_translation(
    seed, n, d1, d2, debiased, log_scale, shift
):
    rng = np.random.default_rng(seed)
    n = max(n, 8)
    X, Y = correlated_pair(rng, n, d1, d2)
    base = linear_cka_result(X, Y, debiased=debiased)
    X2 = (10.0**log_scale) * X @ random_orthogonal(rng, d1) + shift
    Y2 = Y @ random_orthogonal(rng, d2) * 0.5 - shift
    moved = linear_cka_result(X2, Y2, debiased=debiased)
    if base.reason is not None:
        assert moved.reason is not None
        return
    assert moved.value == pytest.approx(base.value, abs=TOL)


@pytest.mark.parametrize("debiased", [False, True])
def test_not_invariant_to_invertible_non_orthogonal_map(debiased):
    rng = np.random.default_rng(3)
    X, Y = correlated_pair(rng, 200, 10, 10)
    # invertible: orthogonal times a strongly anisotropic diagonal (condition number 1e3)
    A = random_orthogonal(rng, 10) @ np.diag(np.logspace(-1.5, 1.5, 10))
    assert np.linalg.matrix_rank(A) == 10
    base = linear_cka(X, Y, debiased=debiased)
    mapped = linear_cka(X @ A, Y, debiased=debiased)
    assert abs(mapped - base) > 0.05
    assert linear_cka(X, X @ A, debiased=debiased) < 0.9
    # and the oracle agrees on the mapped value
    oracle = slow_debiased_cka if debiased else slow_cka
    assert mapped == pytest.approx(oracle(X @ A, Y), abs=TOL)


@FAST
@given(seed=seeds, n=ns, d1=ds, d2=ds, debiased=st.booleans())
def test_symmetric(seed, n, d1, d2, debiased):
    X, Y = correlated_pair(np.random.default_rng(seed), n, d1, d2)
    xy = linear_cka_result(X, Y, debiased=debiased)
    yx = linear_cka_result(Y, X, debiased=debiased)
    if xy.reason is not None:
        assert yx.reason is not None
        return
    assert xy.value == pytest.approx(yx.value, abs=1e-12)


@FAST
@given(seed=seeds, n=st.integers(2, 60), d1=ds, d2=ds, noise=st.floats(0.0, 10.0))
def test_biased_in_unit_interval(seed, n, d1, d2, noise):
    rng = np.random.default_rng(seed)
    X, Y = correlated_pair(rng, n, d1, d2, noise=noise)
    if rng.random() < 0.5:
        Y = rng.standard_normal((n, d2))  # independent too
    value = linear_cka(X, Y)
    assert 0.0 <= value <= 1.0 + 1e-12


def test_debiased_is_not_clamped():
    """Independent small samples give debiased values on both sides of 0, as the oracle does."""
    rng = np.random.default_rng(4)
    values = []
    for _ in range(30):
        X, Y = rng.standard_normal((12, 3)), rng.standard_normal((12, 3))
        value = linear_cka(X, Y, debiased=True)
        assert value == pytest.approx(slow_debiased_cka(X, Y), abs=TOL)
        values.append(value)
    assert min(values) < 0.0 < max(values)


def test_huge_and_tiny_scales_do_not_overflow():
    rng = np.random.default_rng(5)
    X, Y = correlated_pair(rng, 50, 6, 4)
    expected = slow_cka(X, Y)
    assert linear_cka(X * 1e200, Y * 1e-200) == pytest.approx(expected, abs=TOL)
    assert linear_cka(X * 1e200, Y * 1e-200, debiased=True) == pytest.approx(
        slow_debiased_cka(X, Y), abs=TOL
    )


# ---------------------------------------------------------------------------------------------
# Dtypes and torch
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
@pytest.mark.parametrize("debiased", [False, True])
def test_numpy_dtypes_use_float64_of_upcast_values(dtype, debiased):
    rng = np.random.default_rng(6)
    X, Y = correlated_pair(rng, 60, 20, 9)
    Xl, Yl = X.astype(dtype), Y.astype(dtype)
    oracle = slow_debiased_cka if debiased else slow_cka
    expected = oracle(Xl.astype(np.float64), Yl.astype(np.float64))
    assert linear_cka(Xl, Yl, debiased=debiased) == pytest.approx(expected, abs=TOL)


@pytest.mark.parametrize(
    "dtype", [torch.bfloat16, torch.float16, torch.float32, torch.float64]
)
@pytest.mark.parametrize("debiased", [False, True])
def test_torch_dtypes_use_float64_of_upcast_values(dtype, debiased):
    gen = torch.Generator().manual_seed(7)
    X = torch.randn(40, 64, generator=gen) + 3.0  # offset: centring must happen in float64
    Y = X[:, :16] @ torch.randn(16, 24, generator=gen) + torch.randn(40, 24, generator=gen)
    Xl, Yl = X.to(dtype).requires_grad_(True), Y.to(dtype)
    oracle = slow_debiased_cka if debiased else slow_cka
    # float64 CKA of the rounded (e.g. bf16) values themselves
    expected = oracle(Xl.detach().double().numpy(), Yl.double().numpy())
    assert linear_cka(Xl, Yl, debiased=debiased) == pytest.approx(expected, abs=TOL)
    # Mixed inputs are fine too.
    assert linear_cka(Xl, Yl.double().numpy(), debiased=debiased) == pytest.approx(
        expected, abs=TOL
    )


def test_bf16_rounding_changes_the_value_a_float32_computation_would_miss():
    """Guard that the bf16 test above can fail: rounding really moves the value."""
    gen = torch.Generator().manual_seed(8)
    X = torch.randn(40, 64, generator=gen, dtype=torch.float64)
    Y = X[:, :8] + 0.3 * torch.randn(40, 8, generator=gen, dtype=torch.float64)
    exact = slow_cka(X.numpy(), Y.numpy())
    rounded = linear_cka(X.bfloat16(), Y.bfloat16())
    assert abs(rounded - exact) > 1e-6
    assert rounded == pytest.approx(
        slow_cka(X.bfloat16().double().numpy(), Y.bfloat16().double().numpy()), abs=TOL
    )


# ---------------------------------------------------------------------------------------------
# Undefined cases: NaN with a reason, never silently
# ---------------------------------------------------------------------------------------------


def test_constant_x_is_undefined_with_reason_and_warning():
    rng = np.random.default_rng(9)
    row = rng.standard_normal(16) * 1e3 + 0.1  # not exactly representable: centring rounds
    X = np.tile(row, (3001, 1))
    Y = rng.standard_normal((3001, 5))
    res = linear_cka_result(X, Y)
    assert math.isnan(res.value)
    assert res.reason is not None and "X does not vary" in res.reason
    assert res.n_examples == 3001
    with pytest.warns(UndefinedSimilarityWarning, match="X does not vary across examples"):
        value = linear_cka(X, Y)
    assert math.isnan(value)
    with pytest.warns(UndefinedSimilarityWarning, match="X does not vary"):
        assert math.isnan(linear_cka(X, Y, debiased=True))


@pytest.mark.parametrize("n", [7, 200_000])
def test_constant_rows_centre_to_undefined_at_any_n(n):
    """Plain one-pass centring of a constant column leaves ~n * 1e-16 relative residue."""
    row = np.random.default_rng(20).standard_normal(4) * 1e3 + 0.1
    X = np.tile(row, (n, 1))
    Y = np.random.default_rng(21).standard_normal((n, 2))
    res = linear_cka_result(X, Y)
    assert math.isnan(res.value) and "X does not vary" in res.reason


def test_rows_equal_up_to_float_round_off_count_as_constant():
    """Rows a few ulps apart are round-off, not variation: CKA is still 0/0 (no tolerance 0)."""
    rng = np.random.default_rng(22)
    row = rng.standard_normal(16) * 1e3 + 0.1
    eps = np.finfo(np.float64).eps
    X = row * (1.0 + 4 * eps * rng.choice([-1.0, 0.0, 1.0], size=(50, 16)))
    assert np.unique(X, axis=0).shape[0] > 1  # the rows really differ in the last bits
    res = linear_cka_result(rng.standard_normal((50, 3)), X)
    assert math.isnan(res.value) and res.reason == "Y does not vary across examples (0/0)"
    res = linear_cka_result(X, rng.standard_normal((50, 3)), debiased=True)
    assert math.isnan(res.value) and "X does not vary" in res.reason


def test_zero_y_is_undefined_with_reason_and_warning():
    X = np.random.default_rng(10).standard_normal((20, 4))
    Y = np.zeros((20, 3))
    res = linear_cka_result(X, Y)
    assert math.isnan(res.value) and "Y does not vary" in res.reason and "X" not in res.reason
    with pytest.warns(UndefinedSimilarityWarning, match="Y does not vary across examples"):
        assert math.isnan(linear_cka(X, Y))


def test_both_constant_names_both():
    res = linear_cka_result(np.ones((5, 2)), torch.full((5, 3), 0.7, dtype=torch.bfloat16))
    assert math.isnan(res.value) and res.reason.startswith("X and Y do not vary")


def test_defined_result_has_no_reason_and_does_not_warn():
    X, Y = correlated_pair(np.random.default_rng(11), 20, 4, 4)
    res = linear_cka_result(X, Y)
    assert res.reason is None and math.isfinite(res.value) and res.n_examples == 20
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        linear_cka(X, Y)


def test_tiny_but_real_variation_on_a_large_offset_stays_defined():
    rng = np.random.default_rng(12)
    noise = rng.standard_normal((50, 6))
    X = 1e3 + 1e-6 * noise  # relative variation 1e-9: far above round-off
    Y = noise @ rng.standard_normal((6, 4)) + 0.1 * rng.standard_normal((50, 4))
    res = linear_cka_result(X, Y)
    assert res.reason is None
    assert res.value == pytest.approx(slow_cka(noise, Y), abs=1e-5)


def test_debiased_non_positive_self_hsic_is_undefined_not_nan_from_sqrt():
    # n=4, one feature, one outlier: the unbiased self-HSIC is exactly 0 (oracle agrees).
    X = np.array([[4.0], [0.0], [0.0], [0.0]])
    Y = np.random.default_rng(13).standard_normal((4, 2))
    assert abs(slow_unbiased_hsic(X @ X.T, X @ X.T)) < 1e-12
    res = linear_cka_result(X, Y, debiased=True)
    assert math.isnan(res.value)
    assert "debiased self-HSIC of X is not positive" in res.reason
    with pytest.warns(UndefinedSimilarityWarning, match="not positive"):
        linear_cka(X, Y, debiased=True)
    assert linear_cka_result(X, Y).reason is None  # biased is fine


@FAST
@given(seed=seeds, n=st.integers(4, 7), d1=st.integers(1, 4), d2=st.integers(1, 4))
def test_debiased_tiny_n_never_returns_silent_nan(seed, n, d1, d2):
    rng = np.random.default_rng(seed)
    X, Y = rng.standard_normal((n, d1)), rng.standard_normal((n, d2))
    res = linear_cka_result(X, Y, debiased=True)
    assert math.isfinite(res.value) or res.reason is not None
    if res.reason is None:
        assert res.value == pytest.approx(slow_debiased_cka(X, Y), abs=1e-5)


def test_similarity_result_is_frozen_and_consistent():
    res = SimilarityResult(0.5, None, 10)
    with pytest.raises(AttributeError):
        res.value = 0.1  # type: ignore[misc]
    with pytest.raises(ValueError):
        SimilarityResult(math.nan, None, 10)


# ---------------------------------------------------------------------------------------------
# Validation errors
# ---------------------------------------------------------------------------------------------


def test_debiased_needs_four_examples():
    X = np.random.default_rng(14).standard_normal((3, 5))
    with pytest.raises(MossaError, match=r"at least 4 examples.*got n=3"):
        linear_cka(X, X, debiased=True)
    with pytest.raises(MossaError, match="at least 4 examples"):
        layerwise_linear_cka(X[None], X[None], debiased=True)
    assert linear_cka(X, X) == pytest.approx(1.0)  # biased is fine with n=3


def test_mismatched_rows():
    rng = np.random.default_rng(15)
    with pytest.raises(
        MossaError, match=r"\(10, 3\).*\(11, 3\).*same examples in the same order"
    ):
        linear_cka(rng.standard_normal((10, 3)), rng.standard_normal((11, 3)))


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_input(bad):
    rng = np.random.default_rng(16)
    X, Y = rng.standard_normal((10, 3)), rng.standard_normal((10, 2))
    X[2, 0] = bad
    X[7, :] = bad
    with pytest.raises(MossaError, match=r"X: .*got 2 of 10 rows .*NaN or Inf.*drop"):
        linear_cka(X, Y)
    with pytest.raises(MossaError, match=r"Y: .*got 2 of 10 rows"):
        linear_cka(Y, torch.from_numpy(X))


@pytest.mark.parametrize(
    "X, match",
    [
        ([[1.0, 2.0], [3.0, 4.0]], "expected a numpy.ndarray or torch.Tensor, got builtins.list"),
        (np.ones(5), r"expected a 2-D array .* got 1-D"),
        (np.ones((2, 5, 3)), r"expected a 2-D array .* got 3-D"),
        (np.ones((5, 3), dtype=complex), "real numbers"),
        (np.array([["a"]] * 5), "real numbers"),
        (np.ones((5, 0)), "at least 1 feature"),
    ],
)
def test_rejects_malformed_input(X, match):
    with pytest.raises(MossaError, match=match):
        linear_cka(X, np.ones((5, 2)))


def test_rejects_single_example():
    with pytest.raises(MossaError, match=r"at least 2 examples.*got 1"):
        linear_cka(np.ones((1, 3)), np.ones((1, 2)))


def test_error_messages_carry_expected_got_fix():
    with pytest.raises(MossaError) as info:
        linear_cka(np.ones((4, 3)), np.ones((5, 3)))
    message = str(info.value)
    assert "expected" in message and "got" in message and "Fix:" in message


# ---------------------------------------------------------------------------------------------
# Layerwise
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("debiased", [False, True])
@pytest.mark.parametrize("n,d1,d2", [(12, 40, 30), (90, 6, 9)])
def test_layerwise_equals_per_layer_calls(debiased, n, d1, d2, monkeypatch):
    rng = np.random.default_rng(17)
    n_layers = 5
    A = rng.standard_normal((n_layers, n, d1)) + 2.0
    B = np.einsum("lnd,de->lne", A, rng.standard_normal((d1, d2)))
    B += rng.standard_normal(B.shape) * np.arange(n_layers)[:, None, None]
    A[3] = A[3, 0]  # a constant layer
    per_layer = [linear_cka_result(A[i], B[i], debiased=debiased) for i in range(n_layers)]
    for batch_bytes in (None, 1):  # one batch for all layers, then one layer per batch
        if batch_bytes is not None:
            monkeypatch.setattr(_cka, "_BATCH_BYTES", batch_bytes)
        results = layerwise_linear_cka(A, B, debiased=debiased)
        assert len(results) == n_layers
        for i, (got, want) in enumerate(zip(results, per_layer)):
            assert got.n_examples == n
            if i == 3:
                assert math.isnan(got.value) and "A does not vary" in got.reason
                assert math.isnan(want.value)
                continue
            assert got.reason is None
            assert got.value == pytest.approx(want.value, abs=1e-12)
            oracle = slow_debiased_cka if debiased else slow_cka
            assert got.value == pytest.approx(oracle(A[i], B[i]), abs=TOL)
    # values differ across layers, so a layer mix-up would be caught
    values = [r.value for i, r in enumerate(per_layer) if i != 3]
    assert len({round(v, 6) for v in values}) == len(values)


def test_layerwise_accepts_bf16_torch():
    gen = torch.Generator().manual_seed(18)
    A = torch.randn(3, 20, 32, generator=gen).bfloat16()
    B = torch.randn(3, 20, 8, generator=gen).bfloat16()
    results = layerwise_linear_cka(A, B)
    for i, res in enumerate(results):
        expected = slow_cka(A[i].double().numpy(), B[i].double().numpy())
        assert res.value == pytest.approx(expected, abs=TOL)


def test_layerwise_validation():
    rng = np.random.default_rng(19)
    with pytest.raises(MossaError, match="same number of layers"):
        layerwise_linear_cka(rng.standard_normal((3, 5, 2)), rng.standard_normal((4, 5, 2)))
    with pytest.raises(MossaError, match="same examples in the same order"):
        layerwise_linear_cka(rng.standard_normal((3, 5, 2)), rng.standard_normal((3, 6, 2)))
    with pytest.raises(MossaError, match=r"A: expected a 3-D array"):
        layerwise_linear_cka(rng.standard_normal((5, 2)), rng.standard_normal((3, 5, 2)))
    A = rng.standard_normal((3, 5, 2))
    A[1, 4, 0] = np.nan
    with pytest.raises(MossaError, match=r"A: .*1 of 5 rows .*in at least one layer"):
        layerwise_linear_cka(A, rng.standard_normal((3, 5, 2)))
