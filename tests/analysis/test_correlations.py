"""Fig 6's table: Pearson r across tasks, Benjamini-Hochberg adjusted over the whole table, and
no correlation on fewer than 5 tasks."""

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from mossa.analysis import PROPERTIES
from mossa.analysis._correlations import correlations


def _tables(n_tasks, *, layers=4, seed=0):
    """A linear-CKA table (layer 0 undefined) and task properties; base tracks the FK grade."""
    rng = np.random.default_rng(seed)
    tasks = [f"t{i}" for i in range(n_tasks)]
    props = pd.DataFrame({"flesch_kincaid_grade": rng.uniform(2, 12, n_tasks),
                          "coleman_liau_index": rng.uniform(2, 12, n_tasks),
                          "train_size": np.arange(n_tasks) * 10 + 50}, index=tasks)
    rows = []
    for task in tasks:
        for model in ("base", "experimental"):
            for layer in range(layers):
                value = np.nan if layer == 0 else (
                    0.05 * props.loc[task, "flesch_kincaid_grade"] + rng.normal(scale=0.01) if model == "base"
                    else rng.uniform(0.2, 0.9))
                rows.append({"task": task, "model": model, "layer": layer, "measure": "linear_cka", "value": value})
    return pd.DataFrame(rows), props


def _bh(p):
    """Textbook Benjamini-Hochberg: p_(i) m / i, made monotone from the largest down, capped at 1."""
    p = np.asarray(p, dtype=float)
    order = np.argsort(p)
    scaled = p[order] * len(p) / np.arange(1, len(p) + 1)
    adjusted = np.minimum(np.minimum.accumulate(scaled[::-1])[::-1], 1.0)
    out = np.empty_like(p)
    out[order] = adjusted
    return out


def test_p_values_are_bh_adjusted_over_every_test_of_the_table():
    sim, props = _tables(12)
    corr = correlations(sim, props)
    tested = corr[corr["p_value"].notna()]
    assert len(tested) == 2 * 3 * len(PROPERTIES)  # layers 1-3 of two models, all three properties
    np.testing.assert_allclose(tested["p_adjusted"], _bh(tested["p_value"]), rtol=1e-12)
    assert (tested["p_adjusted"] >= tested["p_value"]).all()
    row = tested.iloc[0]
    task_values = sim[(sim["model"] == row["model"]) & (sim["layer"] == row["layer"])].set_index("task")["value"]
    r, p = stats.pearsonr(task_values[props.index], props[row["property"]])
    assert row["r"] == pytest.approx(r) and row["p_value"] == pytest.approx(p)
    fk = tested[(tested["model"] == "base") & (tested["property"] == "flesch_kincaid_grade")]
    assert (fk["p_adjusted"] < 0.05).all()  # a real association survives the correction
    layer0 = corr[corr["layer"] == 0]
    assert layer0[["r", "p_value", "p_adjusted"]].isna().all().all()
    assert (layer0["reason"] == "no task with a defined value, fewer than the 5 a correlation across tasks needs").all()


def test_fewer_than_five_tasks_are_refused_with_a_reason():
    sim, props = _tables(4)
    corr = correlations(sim, props)
    assert corr[["r", "p_value", "p_adjusted"]].isna().all().all()
    upper = corr[corr["layer"] > 0]
    assert (upper["n_tasks"] == 4).all()
    assert upper["reason"].eq("only 4 tasks with a defined value, fewer than the 5 a correlation across tasks "
                              "needs").all()
    at_five = correlations(*_tables(5))
    assert at_five.loc[at_five["layer"] > 0, "r"].notna().all()
    assert (at_five.loc[at_five["layer"] > 0, "reason"] == "").all()


def test_a_side_that_does_not_vary_is_named():
    sim, props = _tables(8)
    props["train_size"] = 100
    sim.loc[sim["model"] == "experimental", "value"] = sim.loc[sim["model"] == "experimental", "layer"] * 0.1
    corr = correlations(sim, props).set_index(["model", "layer", "property"])
    assert corr.loc[("base", 2, "train_size"), "reason"] == "train_size is the same for every task"
    assert corr.loc[("experimental", 2, "coleman_liau_index"), "reason"] == "linear_cka is the same for every task"
    assert np.isnan(corr.loc[("base", 2, "train_size"), "p_adjusted"])
    tested = corr[corr["p_value"].notna()]
    assert len(tested) == 3 * 2  # base, layers 1-3, the two readability scores
    np.testing.assert_allclose(tested["p_adjusted"], _bh(tested["p_value"]), rtol=1e-12)
