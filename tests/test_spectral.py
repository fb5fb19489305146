"""Tests for mossa.spectral: slow oracles, invariances, known-rank data, degenerate inputs."""

from __future__ import annotations

import doctest
import math
import warnings

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import mossa.spectral as spectral
from mossa.errors import MossaError
from mossa.spectral import (
    SPECTRUM_COLUMNS,
    DegenerateSpectrumWarning,
    dims_for_variance,
    effective_rank,
    layer_spectrum,
)

# ----------------------------------------------------------------------------------------------
# Slow, textbook oracles


def ref_spectrum(X):
    """Squared singular values of explicitly centred float64 data, descending."""
    X = np.asarray(X, dtype=np.float64)
    Xc = X - X.mean(axis=0)
    return np.linalg.svd(Xc, compute_uv=False) ** 2


def ref_dims(X, threshold):
    lam = ref_spectrum(X)
    cum = 0.0
    for k, v in enumerate(lam, start=1):
        cum += v
        if cum / lam.sum() >= threshold:
            return k
    return len(lam)


def ref_effective_rank(X):
    s = np.sqrt(ref_spectrum(X))
    s = s[s > 1e-10 * s[0]]
    p = s / s.sum()
    return math.exp(-sum(pi * math.log(pi) for pi in p))


def random_data(rng, n, d, *, decay=0.7):
    """Anisotropic data: features with geometrically decaying scales, randomly rotated."""
    Z = rng.normal(size=(n, d)) * decay ** np.arange(d)
    Q, _ = np.linalg.qr(rng.normal(size=(d, d)))
    return Z @ Q.T + rng.normal(size=d)


def low_rank(rng, n, d, rank):
    return rng.normal(size=(n, rank)) @ rng.normal(size=(rank, d)) + rng.normal(size=d)


# ----------------------------------------------------------------------------------------------
# Agreement with oracles


@pytest.mark.parametrize("n,d", [(40, 10), (10, 40), (25, 25), (3, 2), (2, 7)])
@pytest.mark.parametrize("threshold", [0.5, 0.9, 0.99, 0.999])
def test_dims_matches_svd_oracle(n, d, threshold):
    X = random_data(np.random.default_rng(n * 100 + d), n, d)
    assert dims_for_variance(X, threshold) == ref_dims(X, threshold)


@pytest.mark.parametrize("n,d", [(60, 12), (12, 60)])
def test_dims_matches_sklearn_pca(n, d):
    PCA = pytest.importorskip("sklearn.decomposition").PCA
    X = random_data(np.random.default_rng(7), n, d)
    ratio = np.cumsum(PCA().fit(X).explained_variance_ratio_)
    for threshold in (0.6, 0.9, 0.99):
        expected = int(np.searchsorted(ratio, threshold)) + 1
        assert dims_for_variance(X, threshold) == expected
        # sklearn's own rule for a float n_components gives the same count
        assert PCA(n_components=threshold, svd_solver="full").fit(X).n_components_ == expected


@pytest.mark.parametrize("n,d", [(40, 10), (10, 40), (30, 30)])
def test_effective_rank_matches_oracle(n, d):
    X = random_data(np.random.default_rng(n + d), n, d)
    assert effective_rank(X) == pytest.approx(ref_effective_rank(X), rel=1e-10)


def test_layer_spectrum_columns_match_oracles():
    rng = np.random.default_rng(3)
    acts = np.stack([random_data(rng, 30, 12, decay=dec) for dec in (0.3, 0.7, 0.95)])
    df = layer_spectrum(acts, threshold=0.95)
    assert list(df.columns) == SPECTRUM_COLUMNS
    assert df["layer"].tolist() == [0, 1, 2]
    assert df["dims_for_variance"].dtype == np.int64
    for layer, X in enumerate(acts):
        row = df.iloc[layer]
        lam = ref_spectrum(X)
        assert row["dims_for_variance"] == ref_dims(X, 0.95)
        assert row["effective_rank"] == pytest.approx(ref_effective_rank(X), rel=1e-10)
        assert row["total_variance"] == pytest.approx(X.var(axis=0, ddof=1).sum(), rel=1e-12)
        assert row["top1_variance_fraction"] == pytest.approx(lam[0] / lam.sum(), rel=1e-12)
    # slower decay spreads variance over more directions
    assert df["dims_for_variance"].is_monotonic_increasing
    assert df["top1_variance_fraction"].is_monotonic_decreasing


def test_top1_fraction_flags_a_dominant_direction():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(200, 20))
    X[:, 3] *= 10.0  # one feature with variance 100 against 19 with variance 1
    frac = layer_spectrum(X[None])["top1_variance_fraction"].iloc[0]
    assert 0.75 < frac < 0.9


# ----------------------------------------------------------------------------------------------
# Gram path (n < d) and SVD path (n >= d) agree


@pytest.mark.parametrize("n,d", [(15, 40), (40, 15), (20, 20), (5, 200)])
def test_gram_and_svd_paths_agree(n, d):
    X = random_data(np.random.default_rng(n * d), n, d)
    gram = spectral._spectrum(X, method="gram")
    svd = spectral._spectrum(X, method="svd")
    assert gram.shape == svd.shape == (min(n, d),)
    np.testing.assert_allclose(gram, svd, rtol=1e-9, atol=1e-12 * svd[0])
    lam_eff = {m: spectral._effective_rank_from_spectrum(spectral._spectrum(X, method=m))
               for m in ("gram", "svd")}
    assert lam_eff["gram"] == pytest.approx(lam_eff["svd"], rel=1e-9)


def test_gram_path_rank_deficient_zeros_are_floored():
    # rank 3 with n < d: the Gram path's round-off must not inflate the effective rank
    X = low_rank(np.random.default_rng(1), 30, 100, 3)
    gram = spectral._spectrum(X, method="gram")
    svd = spectral._spectrum(X, method="svd")
    assert np.count_nonzero(gram) == np.count_nonzero(svd) == 3
    assert spectral._effective_rank_from_spectrum(gram) == pytest.approx(
        spectral._effective_rank_from_spectrum(svd), rel=1e-9)


# ----------------------------------------------------------------------------------------------
# Known-rank and isotropic data, bounds


@pytest.mark.parametrize("n", [20, 200])
def test_rank_5_in_d_50(n):
    X = low_rank(np.random.default_rng(n), n, 50, 5)
    assert dims_for_variance(X, threshold=0.999999) == 5
    assert dims_for_variance(X, threshold=1.0) == 5
    assert 1.0 <= effective_rank(X) <= 5.0 + 1e-9


def test_equal_singular_values_give_exact_rank():
    # orthonormal columns scaled equally, centred: k equal singular values -> erank = k
    rng = np.random.default_rng(0)
    Q, _ = np.linalg.qr(rng.normal(size=(40, 40)))
    Q = Q[:, 1:7] - Q[:, 1:7].mean(axis=0)
    U, _, Vt = np.linalg.svd(Q, full_matrices=False)
    X = U @ Vt * 3.0
    X -= X.mean(axis=0)
    assert effective_rank(X) == pytest.approx(6.0, rel=1e-9)
    assert dims_for_variance(X, threshold=1.0) == 6


@pytest.mark.parametrize("n,d", [(4000, 20), (3000, 40)])
def test_isotropic_effective_rank_close_to_d(n, d):
    X = np.random.default_rng(d).normal(size=(n, d))
    er = effective_rank(X)
    assert 0.98 * d < er <= d


def test_isotropic_dims_close_to_d():
    X = np.random.default_rng(5).normal(size=(3000, 30))
    assert dims_for_variance(X, 0.99) >= 28
    assert dims_for_variance(X, 1.0) == 30


def test_one_dimensional_data():
    x = np.array([[1.0], [2.0], [4.0]])
    assert dims_for_variance(x) == 1
    assert effective_rank(x) == 1.0
    row = layer_spectrum(x[None]).iloc[0]
    assert row["top1_variance_fraction"] == 1.0
    assert row["total_variance"] == pytest.approx(np.var([1.0, 2.0, 4.0], ddof=1))


def test_two_examples_have_one_direction():
    X = np.random.default_rng(0).normal(size=(2, 30))
    assert dims_for_variance(X, 1.0) == 1
    assert effective_rank(X) == 1.0


@settings(max_examples=40, deadline=None)
@given(n=st.integers(2, 12), d=st.integers(1, 12), seed=st.integers(0, 2**32 - 1),
       threshold=st.sampled_from([0.3, 0.8, 0.99, 1.0]))
def test_bounds(n, d, seed, threshold):
    X = np.random.default_rng(seed).normal(size=(n, d))
    k = dims_for_variance(X, threshold)
    er = effective_rank(X)
    assert 1 <= k <= min(n - 1, d)
    assert 1.0 <= er <= min(n - 1, d) + 1e-9
    df = layer_spectrum(X[None], threshold)
    assert 0.0 < df["top1_variance_fraction"].iloc[0] <= 1.0
    # the top direction alone carries at least an even share
    assert df["top1_variance_fraction"].iloc[0] >= 1.0 / min(n - 1, d) - 1e-12


def test_dims_monotone_in_threshold():
    X = random_data(np.random.default_rng(2), 50, 20, decay=0.85)
    counts = [dims_for_variance(X, t) for t in np.linspace(0.05, 1.0, 40)]
    assert counts == sorted(counts)
    assert counts[-1] == 20


# ----------------------------------------------------------------------------------------------
# Invariances (hypothesis)


@settings(max_examples=40, deadline=None)
@given(n=st.integers(3, 14), d=st.integers(2, 10), seed=st.integers(0, 2**32 - 1),
       log_scale=st.floats(-3.0, 3.0), shift=st.floats(-1e3, 1e3),
       threshold=st.sampled_from([0.5, 0.9, 0.99]))
def test_invariance_rotation_translation_scaling(n, d, seed, log_scale, shift, threshold):
    rng = np.random.default_rng(seed)
    X = random_data(rng, n, d)
    Q, _ = np.linalg.qr(rng.normal(size=(d, d)))
    Y = (X @ Q) * 10.0 ** log_scale + shift * rng.normal(size=d)
    assert dims_for_variance(Y, threshold) == dims_for_variance(X, threshold)
    assert effective_rank(Y) == pytest.approx(effective_rank(X), rel=1e-6)
    fx, fy = (layer_spectrum(Z[None])["top1_variance_fraction"].iloc[0] for Z in (X, Y))
    assert fy == pytest.approx(fx, rel=1e-6)


def test_invariance_to_row_order_and_embedding_in_more_features():
    rng = np.random.default_rng(4)
    X = random_data(rng, 20, 6)
    padded = np.hstack([X, np.full((20, 5), 7.0)])  # constant extra features add no variance
    perm = rng.permutation(20)
    for Y in (X[perm], padded):
        assert dims_for_variance(Y, 0.9) == dims_for_variance(X, 0.9)
        assert effective_rank(Y) == pytest.approx(effective_rank(X), rel=1e-10)


# ----------------------------------------------------------------------------------------------
# dtypes and torch


def test_float32_and_int_inputs_computed_in_float64():
    X = random_data(np.random.default_rng(9), 30, 8)
    X32 = X.astype(np.float32)
    assert dims_for_variance(X32, 0.99) == ref_dims(X32.astype(np.float64), 0.99)
    assert effective_rank(X32) == pytest.approx(ref_effective_rank(X32.astype(np.float64)), rel=1e-10)
    Xi = np.array([[1, 2], [3, 5], [0, 0], [4, 1]], dtype=np.int32)
    assert effective_rank(Xi) == pytest.approx(ref_effective_rank(Xi), rel=1e-12)


def test_torch_inputs_bfloat16_included():
    torch = pytest.importorskip("torch")
    X = random_data(np.random.default_rng(11), 25, 10)
    t = torch.tensor(X, dtype=torch.bfloat16)
    as_np = t.to(torch.float64).numpy()
    assert dims_for_variance(t, 0.95) == ref_dims(as_np, 0.95)
    assert effective_rank(t) == pytest.approx(ref_effective_rank(as_np), rel=1e-10)
    acts = torch.tensor(np.stack([X, 2 * X]), dtype=torch.float32)
    df = layer_spectrum(acts)
    assert df["effective_rank"].iloc[0] == pytest.approx(df["effective_rank"].iloc[1], rel=1e-6)
    assert df["total_variance"].iloc[1] == pytest.approx(4 * df["total_variance"].iloc[0], rel=1e-6)


# ----------------------------------------------------------------------------------------------
# Degenerate cases


@pytest.mark.parametrize("value", [0.0, 3.5, -1e6])
def test_constant_representation(value):
    X = np.full((10, 6), value)
    assert dims_for_variance(X) == 0
    with pytest.warns(DegenerateSpectrumWarning, match="does not vary"):
        assert math.isnan(effective_rank(X))


def test_constant_up_to_roundoff_is_constant():
    X = np.full((10, 6), 0.1) + np.array([0.0, 1e-17, 0.0, 0.0, 0.0, 0.0])  # noise at 1e-16
    X[3, 2] = 0.1 * (1 + 2e-16)
    assert dims_for_variance(X) == 0


def test_layer_spectrum_constant_layer():
    rng = np.random.default_rng(0)
    acts = np.stack([np.ones((8, 5)), rng.normal(size=(8, 5)), np.zeros((8, 5))])
    with pytest.warns(DegenerateSpectrumWarning, match=r"layer\(s\) \[0, 2\]"):
        df = layer_spectrum(acts)
    assert df["dims_for_variance"].tolist()[0::2] == [0, 0]
    assert df["total_variance"].tolist()[0::2] == [0.0, 0.0]
    assert df[["effective_rank", "top1_variance_fraction"]].iloc[[0, 2]].isna().all().all()
    assert df.iloc[1].notna().all()


def test_no_warning_for_varying_layers():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        layer_spectrum(np.random.default_rng(0).normal(size=(2, 6, 4)))


@pytest.mark.parametrize("threshold", [0, 0.0, -0.1, 1.0001, 99, float("nan"), float("inf"), True, "0.99", None])
def test_bad_threshold(threshold):
    X = np.random.default_rng(0).normal(size=(5, 3))
    with pytest.raises(MossaError, match=r"threshold: expected .*\(0, 1\].*Fix"):
        dims_for_variance(X, threshold)
    with pytest.raises(MossaError, match="threshold"):
        layer_spectrum(X[None], threshold)


@pytest.mark.parametrize("X,match", [
    (np.zeros(5), r"expected a 2-D array.*got 1-D.*Fix"),
    (np.zeros((2, 3, 4)), r"expected a 2-D array.*got 3-D.*Fix: select one layer"),
    (np.zeros((1, 4)), r"at least 2 examples.*got 1.*Fix"),
    (np.zeros((4, 0)), r"at least 1 feature.*Fix"),
    (np.array([[1.0, np.nan], [2.0, 3.0], [0.0, np.inf]]), r"expected finite values, got 2 of 3 rows.*\[0, 2\].*Fix"),
    (np.array([[1 + 1j, 2], [3, 4]]), r"real numbers.*got dtype complex"),
    ([[1.0, 2.0], [3.0, 4.0]], r"expected a numpy.ndarray or torch.Tensor, got builtins.list.*Fix"),
])
def test_bad_matrix(X, match):
    with pytest.raises(MossaError, match=match):
        dims_for_variance(X)
    with pytest.raises(MossaError, match=match):
        effective_rank(X)


@pytest.mark.parametrize("acts,match", [
    (np.zeros((4, 3)), r"acts: expected a 3-D array.*got shape \(4, 3\).*Fix"),
    (np.zeros((0, 4, 3)), r"at least one layer.*Fix"),
    (np.zeros((2, 1, 3)), r"acts\[0\]: expected at least 2 examples"),
    ([[[1.0]]], r"acts: expected a numpy.ndarray or torch.Tensor"),
])
def test_bad_stack(acts, match):
    with pytest.raises(MossaError, match=match):
        layer_spectrum(acts)


def test_bad_stack_names_the_layer_with_nan():
    acts = np.random.default_rng(0).normal(size=(3, 5, 4))
    acts[2, 1, 0] = np.nan
    with pytest.raises(MossaError, match=r"acts\[2\]: expected finite values"):
        layer_spectrum(acts)


def test_mossa_error_is_value_error():
    with pytest.raises(ValueError):
        dims_for_variance(np.zeros((1, 3)))


def test_doctests():
    result = doctest.testmod(spectral, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted >= 3 and result.failed == 0


def test_returns_plain_python_types():
    X = np.random.default_rng(0).normal(size=(6, 4))
    assert type(dims_for_variance(X)) is int
    assert type(effective_rank(X)) is float
    assert isinstance(layer_spectrum(X[None]), pd.DataFrame)


# ----------------------------------------------------------------------------------------------
# The cap min(n - 1, d), and the selection of layers


def test_cap_is_reported_and_flagged():
    rng = np.random.default_rng(4)
    df = layer_spectrum(np.stack([rng.normal(size=(8, 20)), low_rank(rng, 8, 20, 2)]), threshold=0.99)
    assert df["max_dims"].tolist() == [7, 7]
    assert df["dims_for_variance"].tolist() == [7, 2]
    assert df["at_cap"].tolist() == [True, False]
    wide = layer_spectrum(rng.normal(size=(1, 30, 5)), threshold=1.0)  # d < n - 1: d is the cap
    assert wide[["max_dims", "dims_for_variance", "at_cap"]].iloc[0].tolist() == [5, 5, True]


def test_selected_layers_are_named_by_their_model_layer():
    rng = np.random.default_rng(5)
    acts = rng.normal(size=(1, 6, 4))
    assert layer_spectrum(acts, layers=[7])["layer"].tolist() == [7]
    acts[0, 2, 1] = np.nan
    with pytest.raises(MossaError, match=r"\(layer 7\): expected finite values"):
        layer_spectrum(acts, layers=[7])
    with pytest.raises(MossaError, match="layers: expected one int per entry"):
        layer_spectrum(acts, layers=[1, 2])


# ----------------------------------------------------------------------------------------------
# spectral_table: the study's Fig 5 table


def _write(study, model, task, ids, acts):
    from mossa.store import Activations

    n = len(ids)
    study.write_activations(model, task, Activations(ids=list(ids), acts=acts.astype(np.float32),
                                                     target_nll=np.ones(n), target_tokens=np.ones(n, np.int64),
                                                     meta={}), inputs="x")


def _study(tmp_path, sizes, *, layers=3, d=16, decay=0.8, seed=0):
    from mossa.store import StudyDir

    rng = np.random.default_rng(seed)
    study = StudyDir(tmp_path)
    states = {}
    for task, n in sizes.items():
        ids = [f"{task}:test:{i}" for i in range(n)]
        for model in ("base", "experimental", "control"):
            states[model, task] = rng.normal(size=(layers, n, d)) * decay ** np.arange(d)
        states["control", task] = states["base", task].copy()  # the same states: spectra must match
        for model in ("base", "experimental", "control"):
            _write(study, model, task, ids, states[model, task])
    return study, states


def test_spectral_table_drops_non_finite_rows_jointly_and_counts_them(tmp_path):
    from mossa.analysis import spectral_table

    study, states = _study(tmp_path, {"t": 20})
    ctl = states["control", "t"].copy()
    ctl[2, 4, 0] = np.nan  # one example, last layer, control only
    _write(study, "control", "t", [f"t:test:{i}" for i in range(20)], ctl)
    table = spectral_table(study, {"t": "C"})
    assert (table["n_dropped"] == 1).all() and (table["n_examples"] == 19).all()
    keep = [i for i in range(20) if i != 4]
    base = table[table["model"] == "base"].set_index("layer")
    ref = layer_spectrum(states["base", "t"][:, keep].astype(np.float32))
    assert base["dims_for_variance"].tolist() == ref["dims_for_variance"].tolist()
    np.testing.assert_allclose(base["effective_rank"], ref["effective_rank"], rtol=1e-10)


def test_spectral_table_refuses_a_task_without_two_finite_examples(tmp_path):
    from mossa.analysis import spectral_table

    study, states = _study(tmp_path, {"a": 10, "b": 3})
    exp = states["experimental", "b"].copy()
    exp[1, :2] = np.inf
    _write(study, "experimental", "b", [f"b:test:{i}" for i in range(3)], exp)
    with pytest.raises(MossaError, match=r"task 'b' has 1 examples finite in B, E and C_t \(2 dropped"):
        spectral_table(study, {"a": "A", "b": "B"})


def test_spectral_table_uses_a_common_n_and_flags_the_cap(tmp_path):
    from mossa.analysis import spectral_table

    study, _ = _study(tmp_path, {"big": 60, "small": 10}, decay=1.0)
    table = spectral_table(study, {"big": "A", "small": "B"}, seed=3)
    assert (table["n_examples"] == 10).all()
    assert table.groupby("task")["n_available"].first().to_dict() == {"big": 60, "small": 10}
    assert (table["max_dims"] == 9).all() and (table["dims_for_variance"] <= 9).all()
    assert table["at_cap"].any()  # 99% of isotropic data often needs every one of the 9 directions
    assert table["at_cap"].equals(table["dims_for_variance"] == table["max_dims"])
    # one subsample per task, shared by its models (control holds the base states)
    by_model = table.set_index(["model", "task", "layer"])
    pd.testing.assert_frame_equal(by_model.loc["base"], by_model.loc["control"])
    # seeded: the same table again; another seed draws another subsample of the big task only
    pd.testing.assert_frame_equal(table, spectral_table(study, {"big": "A", "small": "B"}, seed=3))
    other = spectral_table(study, {"big": "A", "small": "B"}, seed=4)
    small = table["task"] == "small"
    pd.testing.assert_frame_equal(table[small], other[small])
    assert not np.allclose(table.loc[~small, "total_variance"], other.loc[~small, "total_variance"])
