import numpy as np
import pandas as pd
import pytest

from mossa.errors import MossaError
from mossa.evaluation import (
    CONTROL_COLUMNS,
    PERFORMANCE_COLUMNS,
    control_check,
    performance_table,
)

WORDS = ["the", "cat", "sat", "on", "a", "mat", "dog", "ran", "fast", "house", "red", "blue", "tree", "big"]


def option_record(rng, n, p_right, *, rows=None):
    gold = rng.integers(0, 3, n).tolist()
    loglik = []
    for g in gold:
        x = rng.normal(-5, 1, 3)
        x[g] = x.max() + 1 if rng.random() < p_right else x.min() - 1
        loglik.append(x.tolist())
    return {"rows": rows if rows is not None else list(range(n)), "target": ["x"] * n,
            "nll": rng.gamma(2, 1, n).tolist(), "nll_tokens": [3] * n, "nll_no_end": rng.gamma(2, 1, n).tolist(),
            "nll_no_end_tokens": [2] * n, "gold": gold, "option_loglik": loglik, "option_tokens": [[1] * 3] * n,
            "option_chars": [[4, 5, 6]] * n, "generated": [None] * n, "lens": {}}


def generation_record(rng, n, keep):
    targets = [" ".join(rng.choice(WORDS, 8)) for _ in range(n)]
    generated = [" ".join(w if rng.random() < keep else str(rng.choice(WORDS)) for w in t.split()) for t in targets]
    return {"rows": list(range(n)), "target": targets, "nll": rng.gamma(2, 1, n).tolist(), "nll_tokens": [9] * n,
            "nll_no_end": rng.gamma(2, 1, n).tolist(), "nll_no_end_tokens": [8] * n, "gold": [None] * n,
            "option_loglik": [None] * n, "option_chars": [None] * n, "option_tokens": [None] * n,
            "generated": generated, "lens": {}}


def empty_record():
    return {k: [] for k in ("rows", "target", "nll", "nll_tokens", "nll_no_end", "nll_no_end_tokens", "gold",
                            "option_loglik", "option_tokens", "option_chars", "generated")} | {"lens": {}}


@pytest.fixture(scope="module")
def study():
    rng = np.random.default_rng(0)
    clusters = {"nli": "NLI", "same": "NLI", "wmt": "Translation", "e2e": "Struct-to-text", "qa": "QA"}
    records = {("nli", "base"): option_record(rng, 48, 0.3), ("nli", "control"): option_record(rng, 48, 0.9),
               ("nli", "multi"): empty_record(),
               ("wmt", "base"): generation_record(rng, 48, 0.3), ("wmt", "control"): generation_record(rng, 48, 0.8),
               ("e2e", "base"): generation_record(rng, 48, 0.5), ("e2e", "control"): None,
               ("qa", "base"): generation_record(rng, 48, 0.5)}
    same = option_record(rng, 48, 0.6)
    records[("same", "base")], records[("same", "control")] = same, same
    return records, clusters


def test_performance_table_columns_rows_and_degenerate_records(study):
    records, clusters = study
    table = performance_table(records, clusters, n_boot=100, seed=0)
    assert list(table.columns) == PERFORMANCE_COLUMNS
    counts = table.groupby(["task", "model"]).size().to_dict()
    assert counts == {("nli", "base"): 4, ("nli", "control"): 4, ("nli", "multi"): 4, ("same", "base"): 4,
                      ("same", "control"): 4, ("wmt", "base"): 6, ("wmt", "control"): 6, ("e2e", "base"): 6,
                      ("qa", "base"): 4}  # e2e/control is missing: no rows
    empty = table[table.model == "multi"]
    assert (empty.n_examples == 0).all() and empty.value.isna().all() and (empty.interval == "no examples").all()
    full = table[table.model != "multi"]
    assert (full.n_examples == 48).all() and (full.ci_low <= full.value).all() and (full.value <= full.ci_high).all()
    by = table.set_index(["task", "model", "metric"])
    assert by.loc[("nli", "base", "accuracy"), "interval"] == "wilson"
    assert by.loc[("wmt", "base", "chrf"), "interval"] == "bootstrap percentile"


def test_tables_are_reproducible_and_independent_of_order(study):
    records, clusters = study
    a = performance_table(records, clusters, n_boot=50, seed=3)
    shuffled = dict(reversed(list(records.items())))
    pd.testing.assert_frame_equal(a, performance_table(shuffled, clusters, n_boot=50, seed=3))
    alone = performance_table({("wmt", "base"): records[("wmt", "base")]}, clusters, n_boot=50, seed=3)
    pd.testing.assert_frame_equal(alone, a[(a.task == "wmt") & (a.model == "base")].reset_index(drop=True))
    assert not a.equals(performance_table(records, clusters, n_boot=50, seed=4))


def test_no_intervals_with_n_boot_zero(study):
    records, clusters = study
    table = performance_table(records, clusters, n_boot=0)
    assert table.ci_low.isna().all() and table.ci_high.isna().all()
    assert set(table.interval) == {"none", "no examples"}


def test_control_check(study):
    records, clusters = study
    check = control_check(records, clusters, n_boot=200, seed=0).set_index("task")
    assert list(check.reset_index().columns) == CONTROL_COLUMNS
    assert check.loc["nli", "metric"] == "accuracy" and check.loc["nli", "learned"]
    assert check.loc["nli", "gain"] == pytest.approx(check.loc["nli", "control"] - check.loc["nli", "base"])
    assert check.loc["wmt", "metric"] == "chrf" and check.loc["wmt", "learned"] and check.loc["wmt", "ci_low"] > 0
    assert check.loc["same", "gain"] == 0 and not check.loc["same", "learned"]
    assert check.loc["same", "interval"] == "constant"
    for task in ("e2e", "qa"):  # a missing record: a row of NaN, never dropped
        assert np.isnan(check.loc[task, "gain"]) and not check.loc[task, "learned"]
        assert check.loc[task, "n_examples"] == 0 and check.loc[task, "interval"].startswith("missing record")
    assert check.loc["e2e", "metric"] == "rougeL"


def test_control_check_pairs_shared_rows_and_n_boot_zero():
    rng = np.random.default_rng(1)
    records = {("t", "base"): option_record(rng, 40, 0.2), ("t", "control"): option_record(rng, 30, 0.8,
                                                                                     rows=list(range(10, 40)))}
    check = control_check(records, {"t": "NLI"}, n_boot=0).iloc[0]
    assert check.n_examples == 30 and np.isnan(check.ci_low) and check.interval == "none"
    assert check.learned == (check.gain > 0)
    table = performance_table(records, {"t": "NLI"}, n_boot=0).set_index(["model", "metric"])
    assert table.loc[("base", "accuracy"), "n_examples"] == 40  # the table uses every row of each record


def test_all_correct_models():
    rng = np.random.default_rng(2)
    base, control = option_record(rng, 48, 1.0), option_record(rng, 48, 1.0)
    check = control_check({("t", "base"): base, ("t", "control"): control}, {"t": "NLI"}, n_boot=100).iloc[0]
    assert check.gain == 0 and check.interval == "constant" and not check.learned
    table = performance_table({("t", "base"): base}, {"t": "NLI"}, n_boot=100).set_index("metric")
    assert table.loc["accuracy", "value"] == 1 and table.loc["accuracy", "ci_low"] < 1  # Wilson, not a point


@pytest.mark.parametrize("call, message", [
    (lambda r: performance_table(r, {}), "cluster for every task"),
    (lambda r: performance_table({"t": None}, {"t": "NLI"}), "tuple keys"),
    (lambda r: control_check(r, {"t": "NLI"}, n_boot=-1), "n_boot"),
    (lambda r: performance_table(r, {"t": "NLI"}, seed=1.5), "seed")])
def test_bad_inputs(call, message):
    records = {("t", "base"): option_record(np.random.default_rng(0), 4, 0.5)}
    with pytest.raises(MossaError, match=message):
        call(records)
