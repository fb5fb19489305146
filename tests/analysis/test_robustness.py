"""Tests for the robustness verdict: the sections and the sign of E - B under each robust CKA variant."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd

from mossa.analysis import median_gain
from mossa.analysis._robustness import robustness
from mossa.analysis._sections import layer_sections

LAYERS = 18
CURVE = np.r_[np.full(7, -0.05), np.linspace(-0.05, 0.3, 5)[1:-1], np.full(LAYERS - 10, 0.3)]


def _rows(measure: str, base: np.ndarray, exp: np.ndarray) -> list[dict]:
    return [{"task": f"t{t}", "cluster": "C", "model": model, "layer": layer, "measure": measure,
             "value": float(values[t, layer])}
            for model, values in (("base", base), ("experimental", exp))
            for t in range(len(base)) for layer in range(LAYERS)]


def _table(variants: dict[str, np.ndarray], seed: int = 0, n_tasks: int = 12, curve: np.ndarray = CURVE
           ) -> pd.DataFrame:
    """debiased_cka with a clear transition, and each variant's experimental values (base shared)."""
    rng = np.random.default_rng(seed)
    base = 0.5 + rng.normal(0, 0.02, (n_tasks, LAYERS))
    exp = base + curve + rng.normal(0, 0.03, (n_tasks, LAYERS))
    rows = _rows("debiased_cka", base, exp)
    for name, make in variants.items():
        rows += _rows(name, base, make(base, exp))
    return pd.DataFrame(rows)


def _outliers() -> pd.DataFrame:
    return pd.DataFrame({"task": "t0", "model": ["base", "experimental", "control", "control"], "layer": [1, 1, 1, 2],
                         "n_outliers": [2, 2, 1, 3], "outlier_dims": ["12;301", "12;301", "12", "12;5;301"],
                         "top_direction_share": 0.5, "outlier_variance_share": 0.4})


def _verdict(sim: pd.DataFrame) -> dict:
    sections = layer_sections(sim, n_boot=200, seed=0)
    assert sections["transition_found"]
    out = robustness(sim, sections, _outliers(), n_boot=200, seed=0)
    json.dumps(out, allow_nan=False)  # plain JSON, no NaN
    return out


def test_a_variant_equal_to_the_original_survives():
    same = lambda base, exp: exp.copy()
    out = _verdict(_table({name: same for name in ("debiased_cka_standardized", "debiased_cka_no_outliers",
                                                   "debiased_cka_random_dims")}))
    for name in ("debiased_cka_standardized", "debiased_cka_no_outliers", "debiased_cka_random_dims"):
        entry = out["variants"][name]
        assert entry["survives"] and entry["verdict"] == "survives" and entry["sections_survive"]
        assert entry["sign"]["flipped_layers"] == [] and entry["sign"]["n_same"] == LAYERS
        assert "the sections are unchanged" in entry["sentence"] and "so the result survives" in entry["sentence"]
        assert entry["sections"]["transition"] == out["original"]["transition"]
        assert all(b["inside"] for b in entry["section_boundaries"].values())
    removal = out["variants"]["debiased_cka_no_outliers"]
    assert removal["against_random_control"]["survives"]
    assert "most often dimensions 12, 301" in removal["sentence"]
    assert "Against removing as many random dimensions, the sections agree" in removal["sentence"]
    assert out["variants"]["linear_cka_standardized"]["verdict"] == "not computed"
    assert out["outliers"]["max_count"] == 3 and out["outliers"]["frequent_dims"][:2] == [12, 301]


def test_a_variant_that_flips_the_sign_does_not_survive():
    flipped = lambda base, exp: base - (exp - base)  # E - B negated at every layer
    late = lambda base, exp: np.where(np.arange(LAYERS) >= 15, base - 0.2, exp)
    out = _verdict(_table({"debiased_cka_standardized": flipped, "debiased_cka_no_outliers": late,
                           "debiased_cka_random_dims": lambda base, exp: exp.copy()}))
    whole = out["variants"]["debiased_cka_standardized"]
    assert not whole["survives"] and whole["verdict"] == "does not survive" and not whole["sections_survive"]
    assert "does not survive" in whole["sentence"]
    assert len(whole["sign"]["flipped_layers"]) >= LAYERS - 3  # all but the layers where the median is near 0
    tail = out["variants"]["debiased_cka_no_outliers"]
    assert tail["sign"]["flipped_layers"] == [15, 16, 17] and tail["verdict"] == "does not survive"
    assert "it flips at layers 15, 16, 17" in tail["sentence"]
    assert tail["against_random_control"]["sign"]["flipped_layers"] == [15, 16, 17]


def test_sections_that_move_outside_the_interval_do_not_survive():
    later = np.r_[np.full(4, -0.05), CURVE[:-4]]  # the same ramp 4 layers later

    def shifted(base, exp):
        return base + later + np.random.default_rng(1).normal(0, 0.03, base.shape)

    out = _verdict(_table({"debiased_cka_standardized": shifted}))
    entry = out["variants"]["debiased_cka_standardized"]
    assert not entry["sections_survive"] and "the sections move" in entry["sentence"]
    assert not all(b["inside"] for b in entry["section_boundaries"].values())


def test_median_gain_is_the_median_over_tasks_of_e_minus_b():
    sim = _table({})
    gain = median_gain(sim, "debiased_cka", n_boot=200, seed=0)
    data = sim.pivot_table(index=["task", "layer"], columns="model", values="value")
    want = (data["experimental"] - data["base"]).groupby("layer").median()
    assert np.allclose(gain["median"].to_numpy(), want.to_numpy()) and list(gain.index) == list(range(LAYERS))
    assert (gain["ci_low"] <= gain["median"]).all() and (gain["median"] <= gain["ci_high"]).all()
    assert median_gain(sim, "debiased_cka")["ci_low"].isna().all()  # no resamples, no interval
    assert median_gain(sim, "rbf_cka").empty


def test_too_few_tasks_is_said_and_not_a_failure():
    sim = _table({"debiased_cka_standardized": lambda base, exp: exp.copy()}, n_tasks=3)
    out = robustness(sim, layer_sections(sim, n_boot=100, seed=0), None, n_boot=100, seed=0)
    entry = out["variants"]["debiased_cka_standardized"]
    assert entry["survives"] and "too few tasks" in entry["sentence"]


def test_a_flip_where_the_original_is_within_noise_of_0_is_listed_but_does_not_count():
    curve = CURVE.copy()
    curve[3] = 0.0  # E - B indistinguishable from 0 at layer 3

    def flip_layer_3(base, exp):
        out = exp.copy()
        out[:, 3] = base[:, 3] - (exp[:, 3] - base[:, 3])
        return out

    out = _verdict(_table({"debiased_cka_standardized": flip_layer_3}, curve=curve))
    entry = out["variants"]["debiased_cka_standardized"]
    lo, hi = (bound[3] for bound in out["original"]["median_gain_ci"])
    assert lo < 0 < hi
    assert entry["sign"]["flipped_layers"] == [3] and entry["sign"]["established_flips"] == []
    assert entry["survives"] and "includes 0" in entry["sentence"]


def test_sections_that_cannot_be_fitted_either_way_are_said_so():
    sim = _table({"debiased_cka_standardized": lambda base, exp: exp.copy()})
    sim = sim[sim["layer"] < 2]  # too few layers for three sections
    out = robustness(sim, layer_sections(sim, n_boot=100, seed=0), None, n_boot=100, seed=0)
    entry = out["variants"]["debiased_cka_standardized"]
    assert entry["survives"] and "no sections can be stated either way" in entry["sentence"]
    assert out["variants"]["debiased_cka_no_outliers"]["verdict"] == "not computed"
    assert "survive 1 of the 1" in out["sentence"]
