"""Permutation nulls: exact against recomputation, calibrated on independent data, minimal p on identity."""

import numpy as np
import pytest
from scipy import stats

from mossa.analysis._permutation import NULL_COLUMNS, _kernel_null, _registered_null, permutation_nulls, permutations
from mossa.similarity import get_measure

DEFAULT = ("linear_cka", "debiased_cka", "rbf_cka")


def _pair(rng, n=40, d=50):
    X = rng.standard_normal((n, d))
    return X, X @ rng.standard_normal((d, 45)) * 0.3 + rng.standard_normal((n, 45))


@pytest.mark.parametrize("measure", [*DEFAULT, "procrustes_distance", "mutual_knn", "svcca", "pwcca"])
def test_null_values_equal_the_measure_on_re_paired_rows(measure):
    rng = np.random.default_rng(0)
    cca = measure in ("svcca", "pwcca")  # defined only with more examples than kept directions
    X, Y = _pair(rng, n=120 if cca else 40, d=30 if cca else 50)
    perms = permutations(len(X), 6, rng)
    compute = _kernel_null if measure in DEFAULT else _registered_null
    value, null = compute(measure, X, Y, perms)
    m = get_measure(measure)
    assert abs(value - m(X, Y).value) < 1e-12
    np.testing.assert_allclose(null, [m(X, Y[p]).value for p in perms], atol=1e-12)


@pytest.mark.parametrize("measure", DEFAULT)
def test_on_independent_data_the_adjusted_score_is_zero_and_p_is_uniform(measure):
    rng = np.random.default_rng(1)
    adjusted, p = [], []
    for _ in range(120):
        X, Y = rng.standard_normal((1, 30, 40)), rng.standard_normal((1, 30, 40))
        v = get_measure(measure)(X[0], Y[0]).value
        out, = permutation_nulls(measure, X, Y, [v], perms=permutations(30, 99, rng), rng=rng)
        adjusted.append(out["adjusted"])
        p.append(out["p_value"])
    assert abs(np.mean(adjusted)) < 0.02
    # add-one p-values on a grid of 1/100: uniform up to that grid
    assert stats.kstest(np.array(p) - rng.uniform(0, 0.01, len(p)), "uniform").pvalue > 0.01


@pytest.mark.parametrize("measure", [*DEFAULT, "procrustes_distance", "mutual_knn"])
def test_identical_data_get_the_smallest_p_and_an_adjusted_score_of_one(measure):
    rng = np.random.default_rng(2)
    X = rng.standard_normal((1, 40, 20))
    v = get_measure(measure)(X[0], X[0]).value
    out, = permutation_nulls(measure, X, X, [v], perms=permutations(40, 49, rng), rng=rng)
    assert out["p_value"] == 1 / 50 and abs(out["adjusted"] - 1) < 1e-9 and set(NULL_COLUMNS) <= set(out)


def test_undefined_values_and_no_permutations_give_nan_summaries():
    rng = np.random.default_rng(3)
    X, Y = np.ones((1, 20, 4)), rng.standard_normal((1, 20, 4))
    out, = permutation_nulls("linear_cka", X, Y, [np.nan], perms=permutations(20, 9, rng), rng=rng)
    assert np.isnan(out["p_value"]) and out["n_permutations"] == 9
    out, = permutation_nulls("linear_cka", Y, Y, [1.0], perms=permutations(20, 0, rng), rng=rng)
    assert out["n_permutations"] == 0 and np.isnan(out["null_mean"])


def test_large_n_uses_one_subsample_for_value_and_null(monkeypatch):
    import mossa.analysis._permutation as permutation

    monkeypatch.setattr(permutation, "NULL_MAX_N", 50)
    rng = np.random.default_rng(4)
    X, Y = _pair(rng, n=200)
    v = get_measure("linear_cka")(X, Y).value
    out, = permutation_nulls("linear_cka", X[None], Y[None], [v], perms=permutations(200, 19, rng), rng=rng)
    assert out["null_n"] == 50 and out["p_value"] == 1 / 20
