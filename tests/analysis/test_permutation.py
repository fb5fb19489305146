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


def test_permutations_within_groups_keep_each_row_in_its_group():
    rng = np.random.default_rng(5)
    groups = np.repeat([2, 0, 1], [10, 7, 13])[rng.permutation(30)]
    perms = permutations(30, 50, np.random.default_rng(0), groups)
    assert all(np.array_equal(np.sort(p), np.arange(30)) for p in perms)  # each a permutation
    assert (groups[perms] == groups).all()  # no row leaves its group
    assert not (perms == np.arange(30)).all(axis=1).any()  # and they do move
    one = permutations(30, 50, np.random.default_rng(0), np.zeros(30))
    assert np.array_equal(one, permutations(30, 50, np.random.default_rng(0)))  # one group: the plain draws


def _template_only_pair(rng, n=96, d=40, n_templates=4):
    """Two representations that share nothing but the template each example was written in: each template
    moves both sides along a direction of its own; everything example-specific is independent."""
    groups = np.arange(n) % n_templates
    shift_x, shift_y = rng.standard_normal((n_templates, d)) * 3, rng.standard_normal((n_templates, d)) * 3
    X = shift_x[groups] + rng.standard_normal((n, d))
    Y = shift_y[groups] + rng.standard_normal((n, d))
    return X[None], Y[None], groups


@pytest.mark.parametrize("measure", DEFAULT)
def test_a_template_only_pair_is_significant_only_under_the_plain_null(measure):
    """The plain re-pairing calls a shared template significant; re-pairing within templates does not, and
    says how many strata it kept (null_strata)."""
    rng = np.random.default_rng(7)
    p_plain, p_within = [], []
    for _ in range(30):
        X, Y, groups = _template_only_pair(rng)
        v = get_measure(measure)(X[0], Y[0]).value
        plain, = permutation_nulls(measure, X, Y, [v], perms=permutations(96, 99, rng), rng=rng)
        within, = permutation_nulls(measure, X, Y, [v], perms=permutations(96, 99, rng, groups), rng=rng,
                                    groups=groups)
        p_plain.append(plain["p_value"])
        p_within.append(within["p_value"])
        assert plain["null_strata"] == 1 and within["null_strata"] == 4
    assert max(p_plain) == 1 / 100  # every replicate at the floor: the template looks like shared information
    assert np.mean(np.array(p_within) < 0.05) <= 0.15  # at chance: about 5% of replicates below 0.05
    assert stats.kstest(p_within, "uniform").pvalue > 0.01


def test_within_template_null_still_finds_example_specific_information():
    """A pair that shares each example's own content beyond its template stays significant within templates."""
    rng = np.random.default_rng(8)
    X, Y, groups = _template_only_pair(rng)
    Y = Y + 2 * X  # Y now carries X's example-specific part too
    for measure in DEFAULT:
        v = get_measure(measure)(X[0], Y[0]).value
        out, = permutation_nulls(measure, X, Y, [v], perms=permutations(96, 99, rng, groups), rng=rng, groups=groups)
        assert out["p_value"] == 1 / 100, measure


def test_the_subsample_of_a_large_null_keeps_the_groups():
    rng = np.random.default_rng(9)
    n = 2400  # above NULL_MAX_N: value and null on a subsample, its permutations redrawn within templates
    groups = np.arange(n) % 3
    X = rng.standard_normal((1, n, 8)) + np.eye(8)[groups][None] * 4
    Y = rng.standard_normal((1, n, 8)) + np.eye(8)[groups][None] * 4
    v = get_measure("linear_cka")(X[0], Y[0]).value
    out, = permutation_nulls("linear_cka", X, Y, [v], perms=permutations(n, 19, rng, groups), rng=rng, groups=groups)
    assert out["null_n"] == 2000 and out["null_strata"] == 3 and out["p_value"] > 1 / 20
