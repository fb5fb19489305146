"""Tests for the outlier rule, the top-direction share and the outlier table of a study."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from mossa.analysis._outliers import OUTLIER_COLUMNS, OUTLIER_RULE, outlier_table, top_direction_share
from mossa.similarity import outlier_dims
from mossa.analysis._outliers import layer_outliers
from mossa.store import Activations, StudyDir


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("d", [640, 400, 256])
def test_planted_outlier_dimensions_are_found_and_no_others(seed, d):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((96, d))
    assert outlier_dims(X).size == 0  # Gaussian columns of one scale: none
    dims = np.sort(rng.choice(d, size=3, replace=False))
    scaled, shifted = X.copy(), X.copy()
    scaled[:, dims] *= 20.0
    shifted[:, dims] += 30.0 + rng.standard_normal((96, 3))  # a large offset plus noise, as LLM outliers are
    assert outlier_dims(scaled).tolist() == dims.tolist()
    assert outlier_dims(shifted).tolist() == dims.tolist()
    assert outlier_dims(shifted.astype(np.float32)).tolist() == dims.tolist()


def test_more_large_dimensions_than_the_rule_allows_lift_the_percentile():
    """At most 2% of the dimensions (12.8 of 640) can be outliers: 10 large columns are found, 20 are not."""
    rng = np.random.default_rng(3)
    X = rng.standard_normal((96, 640))
    X[:, :10] *= 20.0
    assert outlier_dims(X).tolist() == list(range(10))
    X[:, 10:20] *= 20.0
    assert outlier_dims(X).size == 0
    assert "99th percentile" in OUTLIER_RULE


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("shape", [(96, 640), (50, 8), (200, 30)])
def test_top_direction_share_matches_an_svd(seed, shape):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal(shape) * np.exp(rng.normal(0, 1, shape[1])) + 5.0
    s = np.linalg.svd(X - X.mean(axis=0), compute_uv=False)
    assert top_direction_share(X) == pytest.approx(s[0] ** 2 / np.sum(s ** 2), abs=1e-12)
    assert np.isnan(top_direction_share(np.ones((10, 4))))


def test_layer_outliers_reports_the_variance_on_the_outlier_dimensions():
    rng = np.random.default_rng(5)
    X = rng.standard_normal((96, 640))
    X[:, [7, 300]] *= 25.0
    row = layer_outliers(X.astype(np.float32))
    var = np.var(X.astype(np.float32).astype(np.float64), axis=0)
    assert row["n_outliers"] == 2 and row["outlier_dims"] == "7;300" and row["undefined_reason"] == ""
    assert row["outlier_variance_share"] == pytest.approx(var[[7, 300]].sum() / var.sum(), rel=1e-9)
    assert row["top_direction_share"] > 0.4  # two dimensions of 625x the variance
    constant = layer_outliers(np.tile(rng.standard_normal(6), (12, 1)))
    assert np.isnan(constant["top_direction_share"]) and np.isnan(constant["outlier_variance_share"])
    assert constant["undefined_reason"]


def _acts(ids, acts):
    n = len(ids)
    return Activations(ids=list(ids), acts=acts.astype(np.float32), target_nll=np.ones(n),
                       target_tokens=np.ones(n, dtype=np.int64), meta={})


def test_outlier_table_covers_every_model_on_the_similarity_rows(tmp_path):
    rng = np.random.default_rng(6)
    n, layers, d = 40, 3, 300
    ids = [f"t:test:{i}" for i in range(n)]
    study = StudyDir(tmp_path)
    states = {}
    for task in ("a", "b"):
        for model in ("control", "base", "experimental", *(("heldout",) if task == "b" else ())):
            acts = rng.standard_normal((layers, n, d))
            acts[:, :, 11] += 50.0
            if model == "base":
                acts[1, 4, 0] = np.nan  # example 4 dropped from every model of its task, and counted
            states[task, model] = acts
            order = rng.permutation(n)  # stored in another order: rows matched by id
            study.write_activations(model, task, _acts([ids[i] for i in order], acts[:, order]), inputs="x")
    table = outlier_table(study, {"a": "C1", "b": "C2"}, heldout=("b",))
    assert list(table.columns) == OUTLIER_COLUMNS
    assert table.groupby("task")["model"].unique().map(set).to_dict() == {
        "a": {"base", "experimental", "control"}, "b": {"base", "experimental", "control", "heldout"}}
    assert len(table) == (3 + 4) * layers
    assert (table["outlier_dims"] == "11").all() and (table["n_outliers"] == 1).all()
    assert (table["n_examples"] == n - 1).all() and (table["n_dropped"] == 1).all()
    assert (table["rule"] == OUTLIER_RULE).all()
    row = table[(table.task == "b") & (table.model == "heldout") & (table.layer == 2)].iloc[0]
    kept = np.delete(states["b", "heldout"][2], 4, axis=0).astype(np.float32)
    assert row["top_direction_share"] == pytest.approx(top_direction_share(kept), abs=1e-12)
    assert isinstance(table, pd.DataFrame)
