import numpy as np
import pandas as pd

from mossa.analysis._bootstrap import _gram_cka, _kernel, example_bootstrap, median_over_tasks
from mossa.similarity import linear_cka, rbf_cka


def _pair(rng, n=40):
    X = rng.normal(size=(n, 12))
    Y = X @ rng.normal(size=(12, 20)) + 0.5 * rng.normal(size=(n, 20))
    return X, Y


def _explicit(K, L, rows, debiased):
    """CKA of the resampled Grams built by indexing: double-centred, or Song's U-statistic with
    the resample's diagonal zeroed (copies of a repeated row stay off the diagonal)."""
    Kr, Lr = K[rows][:, rows], L[rows][:, rows]
    n = len(rows)
    if not debiased:
        H = np.eye(n) - 1.0 / n
        Kc, Lc = H @ Kr @ H, H @ Lr @ H
        return (Kc * Lc).sum() / np.sqrt((Kc * Kc).sum() * (Lc * Lc).sum())

    def song(A, B):
        A, B = A - np.diag(np.diag(A)), B - np.diag(np.diag(B))
        one = np.ones(n)
        return (np.trace(A @ B) + one @ A @ one * (one @ B @ one) / ((n - 1) * (n - 2))
                - 2 / (n - 2) * one @ A @ B @ one)
    return song(Kr, Lr) / np.sqrt(song(Kr, Kr) * song(Lr, Lr))


def test_weighted_path_equals_explicit_resampling():
    rng = np.random.default_rng(0)
    X, Y = _pair(rng)
    idx = rng.integers(0, len(X), size=(6, len(X)))
    for kind, debiased, ref in (("linear", False, linear_cka), ("rbf", False, None), ("linear", True, None)):
        K, L = _kernel(X, kind), _kernel(Y, kind)
        fast = _gram_cka(K, L, idx, debiased=debiased)
        slow = [_explicit(K, L, rows, debiased) for rows in idx]
        if ref is not None:  # the resampled rows themselves, through the public measure
            assert all(abs(ref(X[rows], Y[rows]) - v) < 1e-9 for rows, v in zip(idx, slow))
        np.testing.assert_allclose(fast, slow, atol=1e-10)


def test_identity_resample_gives_the_point_estimate():
    rng = np.random.default_rng(1)
    X, Y = _pair(rng)
    idx = np.arange(len(X))[None]
    assert abs(_gram_cka(_kernel(X, "linear"), _kernel(Y, "linear"), idx, False)[0] - linear_cka(X, Y)) < 1e-10
    assert abs(_gram_cka(_kernel(X, "rbf"), _kernel(Y, "rbf"), idx, False)[0] - rbf_cka(X, Y)) < 1e-10
    deb = _gram_cka(_kernel(X, "linear"), _kernel(Y, "linear"), idx, True)[0]
    assert abs(deb - linear_cka(X, Y, debiased=True)) < 1e-10


def test_intervals_contain_the_estimate_and_shrink_with_n():
    rng = np.random.default_rng(2)
    widths = []
    for n in (30, 300):
        X, Y = _pair(rng, n)
        (lo, hi), = example_bootstrap("linear_cka", X[None], Y[None], n_boot=200, rng=np.random.default_rng(0))
        assert lo <= linear_cka(X, Y) <= hi
        widths.append(hi - lo)
    assert widths[1] < widths[0]


def test_generic_path_for_other_measures_and_determinism():
    rng = np.random.default_rng(3)
    X, Y = _pair(rng)
    a = example_bootstrap("procrustes_distance", X[None], Y[None], n_boot=20, rng=np.random.default_rng(5))
    b = example_bootstrap("procrustes_distance", X[None], Y[None], n_boot=20, rng=np.random.default_rng(5))
    assert a == b and a[0][0] < a[0][1]


def test_constant_layer_gives_no_interval():
    X = np.ones((20, 4))
    Y = np.random.default_rng(0).normal(size=(20, 4))
    (lo, hi), = example_bootstrap("linear_cka", X[None], Y[None], n_boot=50, rng=np.random.default_rng(0))
    assert np.isnan(lo) and np.isnan(hi)


def test_median_over_tasks_and_one_task_clusters():
    rows = []
    for t, (cluster, v) in enumerate([("A", 0.2), ("A", 0.4), ("A", 0.9), ("B", 0.5)]):
        rows.append({"task": f"t{t}", "cluster": cluster, "model": "base", "layer": 1, "measure": "linear_cka",
                     "value": v, "ci_low": v - 0.1, "ci_high": v + 0.1})
    sim = pd.DataFrame(rows)
    overall = median_over_tasks(sim, n_boot=500, seed=0, by_cluster=False).iloc[0]
    assert overall["median"] == np.median([0.2, 0.4, 0.9, 0.5]) and overall["ci_source"] == "tasks"
    assert overall["ci_low"] <= overall["median"] <= overall["ci_high"]
    per = median_over_tasks(sim, n_boot=500, seed=0, by_cluster=True).set_index("group")
    assert per.loc["B", "ci_source"] == "examples" and per.loc["B", "ci_low"] == 0.4
    assert per.loc["A", "median"] == 0.4
    none = median_over_tasks(sim, n_boot=0, seed=0, by_cluster=False).iloc[0]  # no resamples: no interval
    assert none["median"] == overall["median"] and np.isnan(none["ci_low"]) and none["ci_source"] == "none"
