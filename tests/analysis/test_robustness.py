"""Tests for the robustness verdict: the sections and the sign of E - B under each robust CKA variant."""

from __future__ import annotations

import json
import re

import numpy as np
import pandas as pd
import pytest
from threadpoolctl import threadpool_limits

from mossa.analysis import median_gain
from mossa.analysis._robustness import robustness
from mossa.analysis._sections import layer_sections
from mossa.report._summary import robustness_sentence
from mossa.similarity import get_measure

LAYERS = 18
CURVE = np.r_[np.full(7, -0.05), np.linspace(-0.05, 0.3, 5)[1:-1], np.full(LAYERS - 10, 0.3)]


def _rows(measure: str, base: np.ndarray, exp: np.ndarray) -> list[dict]:
    return [{"task": f"t{t}", "cluster": "C", "model": model, "layer": layer, "measure": measure,
             "value": float(values[t, layer])}
            for model, values in (("base", base), ("experimental", exp))
            for t in range(len(base)) for layer in range(LAYERS)]


def _table(variants: dict, seed: int = 0, n_tasks: int = 12, curve: np.ndarray = CURVE) -> pd.DataFrame:
    """debiased_cka with a clear transition, and each variant's values: make(base, exp) gives the variant's
    experimental values (base kept) or its (base, experimental) pair."""
    rng = np.random.default_rng(seed)
    base = 0.5 + rng.normal(0, 0.02, (n_tasks, LAYERS))
    exp = base + curve + rng.normal(0, 0.03, (n_tasks, LAYERS))
    rows = _rows("debiased_cka", base, exp)
    for name, make in variants.items():
        made = make(base, exp)
        rows += _rows(name, *(made if isinstance(made, tuple) else (base, made)))
    return pd.DataFrame(rows)


def moved(base: np.ndarray, exp: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Both values lowered by 0.3 per task: far beyond the noise of E - B, which stays as it was."""
    return base - 0.3, exp - 0.3


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


def test_a_variant_that_moves_the_values_and_keeps_e_minus_b_survives():
    out = _verdict(_table({name: moved for name in ("debiased_cka_standardized", "debiased_cka_no_outliers",
                                                    "debiased_cka_random_dims")}))
    for name in ("debiased_cka_standardized", "debiased_cka_no_outliers", "debiased_cka_random_dims"):
        entry = out["variants"][name]
        assert entry["survives"] and entry["verdict"] == "survives" and entry["sections_survive"]
        assert entry["sign"]["flipped_layers"] == [] and entry["sign"]["n_same"] == LAYERS
        assert entry["power"]["can_move"] and entry["power"]["n_able"] == LAYERS
        assert entry["power"]["median_reach"] == pytest.approx(0.6)
        assert "the sections are unchanged" in entry["sentence"] and "so the result survives" in entry["sentence"]
        assert f"reaching that noise at {LAYERS} of {LAYERS} layers" in entry["sentence"]
        assert entry["sections"]["transition"] == out["original"]["transition"]
        assert all(b["inside"] for b in entry["section_boundaries"].values())
    removal = out["variants"]["debiased_cka_no_outliers"]
    assert removal["against_random_control"]["survives"]
    assert "most often dimensions 12, 301" in removal["sentence"]
    assert "Against removing as many random dimensions, the sections agree" in removal["sentence"]
    assert out["variants"]["linear_cka_standardized"]["verdict"] == "not computed"
    assert out["outliers"]["max_count"] == 3 and out["outliers"]["frequent_dims"][:2] == [12, 301]
    assert out["original"]["something_to_test"] and "survive 3 of the 3 robust CKA variants" in out["sentence"]


def test_a_variant_that_changes_nothing_does_not_test_the_result():
    """Equal values (no outlier dimension to remove, say) cannot overturn anything: not "survives"."""
    same = lambda base, exp: exp.copy()
    slight = lambda base, exp: (base + 0.001, exp - 0.001)
    out = _verdict(_table({"debiased_cka_no_outliers": same, "debiased_cka_random_dims": same,
                           "debiased_cka_standardized": slight}))
    for name in ("debiased_cka_no_outliers", "debiased_cka_random_dims", "debiased_cka_standardized"):
        entry = out["variants"][name]
        assert entry["verdict"] == "not tested" and entry["survives"] is None and entry["sections_survive"]
        assert entry["power"]["n_able"] == 0 and not entry["power"]["can_move"]
        assert "so its agreement does not test the result" in entry["sentence"]
    removal = out["variants"]["debiased_cka_no_outliers"]["sentence"]
    assert "whether they carry the result is not tested" in removal
    assert "are not tested by" in out["sentence"]
    said = robustness_sentence(out)
    assert "change the compared CKA values by less than the noise of E - B" in said and "survive" not in said


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


def test_too_few_tasks_leave_nothing_to_test_and_a_missing_interval_establishes_no_sign():
    """3 tasks: no sections, no interval over tasks; a variant that flips E - B everywhere flips no established
    sign (a missing interval used to count as established) and there is nothing to test."""
    flipped = lambda base, exp: base - (exp - base)
    sim = _table({"debiased_cka_standardized": flipped}, n_tasks=3)
    out = robustness(sim, layer_sections(sim, n_boot=100, seed=0), None, n_boot=100, seed=0)
    entry = out["variants"]["debiased_cka_standardized"]
    assert len(entry["sign"]["flipped_layers"]) >= LAYERS - 3 and entry["sign"]["established_flips"] == []
    assert entry["verdict"] == "nothing to test" and entry["survives"] is None
    assert "there is nothing to test" in entry["sentence"] and "3 tasks, at least 10 needed" in entry["sentence"]
    assert not entry["power"]["n_layers"] and "its power cannot be checked" in entry["sentence"]


def test_a_flip_where_the_original_is_within_noise_of_0_is_listed_but_does_not_count():
    curve = CURVE.copy()
    curve[3] = 0.0  # E - B indistinguishable from 0 at layer 3

    def flip_layer_3(base, exp):
        out = exp.copy()
        out[:, 3] = base[:, 3] - (exp[:, 3] - base[:, 3])
        return moved(base, out)

    out = _verdict(_table({"debiased_cka_standardized": flip_layer_3}, curve=curve))
    entry = out["variants"]["debiased_cka_standardized"]
    lo, hi = (bound[3] for bound in out["original"]["median_gain_ci"])
    assert lo < 0 < hi
    assert entry["sign"]["flipped_layers"] == [3] and entry["sign"]["established_flips"] == []
    assert entry["survives"] and "includes 0" in entry["sentence"]


def test_sections_that_cannot_be_fitted_either_way_are_said_so():
    sim = _table({"debiased_cka_standardized": moved})
    sim = sim[sim["layer"] < 2]  # too few layers for three sections
    out = robustness(sim, layer_sections(sim, n_boot=100, seed=0), None, n_boot=100, seed=0)
    entry = out["variants"]["debiased_cka_standardized"]
    assert out["original"]["beyond_noise"]["layers"] == [0, 1]  # E - B = -0.05 at 12 tasks: something to test
    assert entry["survives"] and "no sections can be stated either way" in entry["sentence"]
    assert out["variants"]["debiased_cka_no_outliers"]["verdict"] == "not computed"
    assert "survive 1 of the 1" in out["sentence"]


def test_a_pure_noise_gain_without_sections_leaves_nothing_to_test():
    """The issue's case: 5 tasks, no sections, E - B pure noise. Per-layer 95% intervals put some layer off 0 in
    most such studies (1 - (15/16)^18 = 69% at 5 tasks), so "beyond noise somewhere" is judged over the whole
    curve; no seed here has anything to test, though some per-layer interval excludes 0 in most of them."""
    per_layer_off_zero = 0
    for seed in range(5):
        sim = _table({name: moved for name in ("debiased_cka_standardized", "debiased_cka_no_outliers",
                                               "debiased_cka_top_pcs_removed")}, seed=seed, n_tasks=5,
                     curve=np.zeros(LAYERS))
        sections = layer_sections(sim, n_boot=200, seed=0)
        assert not sections["transition_found"]
        out = robustness(sim, sections, _outliers(), n_boot=200, seed=0)
        json.dumps(out, allow_nan=False)
        lo, hi = (np.array(bound, dtype=float) for bound in out["original"]["median_gain_ci"])
        per_layer_off_zero += bool(((lo > 0) | (hi < 0)).any())
        assert not out["original"]["something_to_test"] and out["original"]["beyond_noise"]["layers"] == []
        for entry in (out["variants"][n] for n in ("debiased_cka_standardized", "debiased_cka_no_outliers",
                                                   "debiased_cka_top_pcs_removed")):
            assert entry["verdict"] == "nothing to test" and entry["survives"] is None
            assert entry["power"]["can_move"]  # the variants could have moved it: there was nothing to move
            assert "there is nothing to test: the original finds no transition" in entry["sentence"]
        assert out["sentence"].startswith("There is nothing to test for debiased_cka_standardized")
        said = robustness_sentence(out)
        assert "survive" not in said and "there is nothing to test for debiased CKA on standardised features" in said
        assert "95% interval over tasks that includes 0 at" in said and "(5 tasks; at least 10 are needed)" in said
        assert "(95% intervals over tasks: " in said  # the largest change is stated with both intervals
    assert per_layer_off_zero >= 3


def test_a_variant_that_finds_a_transition_where_the_original_has_nothing_changes_the_answer():
    flat = np.zeros(LAYERS)

    def revealed(base, exp):  # the variant shows the ramp the original does not
        return base - 0.2, exp - 0.2 + CURVE

    sim = _table({"debiased_cka_top_pcs_removed": revealed}, curve=flat)
    out = robustness(sim, layer_sections(sim, n_boot=200, seed=0), None, n_boot=200, seed=0)
    entry = out["variants"]["debiased_cka_top_pcs_removed"]
    assert not out["original"]["something_to_test"] and entry["verdict"] == "does not survive"
    assert "the variant finds a transition where the original finds no transition" in entry["sentence"]


def _states_table(n_tasks: int = 12, n: int = 48, d: int = 64, seed: int = 0) -> pd.DataFrame:
    """Similarity rows computed from planted states. Per task one direction u (random: spread over every
    coordinate) carries 60% of the variance of C_t, B and E, each with its own signal along it, except that E's
    signal along u turns into C_t's over the layers of CURVE's ramp: E's gain over B is all in u."""
    rng = np.random.default_rng(seed)
    share = np.clip((CURVE - CURVE.min()) / (CURVE.max() - CURVE.min()), 0, 1)
    scale = np.sqrt(1.5 * d)
    measures = ("debiased_cka", "debiased_cka_standardized", "debiased_cka_no_outliers", "debiased_cka_random_dims",
                "debiased_cka_top_pcs_removed")
    rows = []
    for t in range(n_tasks):  # one BLAS thread, as the study computes them: small products run faster
        u = rng.standard_normal(d)
        u /= np.linalg.norm(u)
        z, z_b, z_e = rng.standard_normal((3, n))
        for layer in range(LAYERS):
            w = share[layer]
            C = rng.standard_normal((n, d)) + scale * np.outer(z, u)
            states = {"base": rng.standard_normal((n, d)) + scale * np.outer(z_b, u),
                      "experimental": rng.standard_normal((n, d))
                      + scale * np.outer(np.sqrt(w) * z + np.sqrt(1 - w) * z_e, u)}
            for model, X in states.items():
                with threadpool_limits(1, user_api="blas"):
                    values = {measure: get_measure(measure)(X, C).value for measure in measures}
                rows += [{"task": f"t{t}", "cluster": "C", "model": model, "layer": layer, "measure": measure,
                          "value": value} for measure, value in values.items()]
    return pd.DataFrame(rows)


def test_a_planted_gain_in_one_rotated_direction_does_not_survive_its_projection():
    """E - B lives in one direction spread over all coordinates. The coordinate variants find no outlier to
    remove: their values are the original's, so they cannot test it. Projecting C_t's dominant direction out
    removes the gain, and the transition with it."""
    sim = _states_table()
    out = _verdict(sim)
    top = out["variants"]["debiased_cka_top_pcs_removed"]
    assert top["verdict"] == "does not survive" and not top["sections_survive"]
    assert "no transition is found where the original has one" in top["sentence"]
    assert top["power"]["can_move"] and top["sign"]["established_flips"]
    for name in ("debiased_cka_no_outliers", "debiased_cka_random_dims"):
        entry = out["variants"][name]
        assert entry["median_gain"] == out["original"]["median_gain"]  # nothing was removed
        assert entry["verdict"] == "not tested" and entry["power"]["n_able"] == 0
    said = robustness_sentence(out)
    assert "do not survive debiased CKA with C_t's dominant principal directions projected out" in said
    assert "debiased CKA with the outlier dimensions removed, debiased CKA with as many random dimensions removed " \
           "change the compared CKA values by less than the noise of E - B" in said
    assert re.search(r"from \+0\.9\d to -0\.0\d under debiased CKA with C_t's dominant principal directions projected "
                     r"out \(95% intervals over tasks: \+0\.9\d to \+0\.9\d and -0\.\d\d to [+-]0\.\d\d\)", said)
