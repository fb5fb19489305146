"""Tests for mossa.analysis._sections: the shared / transition / refinement criterion."""

from __future__ import annotations

import doctest
import itertools
import json
import time

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mossa.analysis import _sections
from mossa.analysis._sections import find_sections
from mossa.errors import MossaError

TRUE_START, TRUE_END = 8, 12  # transition layers of the synthetic curve


def ramp_curve(n_layers=24, start=TRUE_START, end=TRUE_END, low=-0.05, high=0.3):
    """Shared 0..start-1 at `low`, a linear rise over start..end, refinement end+1.. at `high`."""
    x = np.arange(n_layers, dtype=float)
    return low + (high - low) * np.clip((x - (start - 1)) / ((end + 1) - (start - 1)), 0, 1)


def noisy(curve, n_tasks=30, sd=0.05, seed=0):
    rng = np.random.default_rng(seed)
    return curve[None, :] + rng.normal(0, sd, (n_tasks, len(curve)))


def brute_force_split(m, x, min_size):
    """Textbook oracle: lstsq of the plateau-ramp-plateau model for every split, loops only."""
    n = len(m)
    best = None
    for i in range(min_size, n):
        for j in range(i + min_size - 1, n - min_size):
            lo, hi = x[i - 1], x[j + 1]
            r = np.clip((x - lo) / (hi - lo), 0, 1)
            design = np.column_stack([1 - r, r])
            coef, *_ = np.linalg.lstsq(design, m, rcond=None)
            rss = float(((design @ coef - m) ** 2).sum())
            if best is None or rss < best[0] - 1e-12:
                best = (rss, i, j, coef[1] - coef[0])
    return best


# ---------------------------------------------------------------------------- recovery


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_recovers_known_boundaries_and_ci_covers_truth(seed):
    out = find_sections(noisy(ramp_curve(), seed=seed), n_boot=500, seed=seed)
    assert out["transition_found"] is True
    start, end = out["transition"]
    assert abs(start - TRUE_START) <= 1 and abs(end - TRUE_END) <= 1
    assert out["shared"] == [0, start - 1] and out["refinement"] == [end + 1, 23]
    lo, hi = out["ci"]["transition_start"]
    assert lo <= TRUE_START <= hi
    lo, hi = out["ci"]["transition_end"]
    assert lo <= TRUE_END <= hi
    assert out["jump_ci"][0] <= 0.35 <= out["jump_ci"][1]
    assert out["segment_means"][0] < 0 < out["segment_means"][2]
    assert out["segment_means_ci"][0][1] < 0  # shared: E at or below B
    assert 0 < out["boundary_agreement"]["exact"] <= out["boundary_agreement"]["within_one_layer"] <= 1
    assert out["p_value"] < 0.01


@pytest.mark.parametrize("seed", [0, 1])
def test_noisier_tasks_give_wider_intervals_that_still_cover(seed):
    quiet = find_sections(noisy(ramp_curve(), sd=0.02, seed=seed), n_boot=300, seed=seed)
    loud = find_sections(noisy(ramp_curve(), sd=0.15, seed=seed), n_boot=300, seed=seed)

    def width(out):
        return sum(hi - lo for lo, hi in out["ci"].values())

    assert width(loud) > width(quiet) and width(loud) >= 3
    assert loud["boundary_agreement"]["exact"] < quiet["boundary_agreement"]["exact"]
    for out in (quiet, loud):
        (s_lo, s_hi), (e_lo, e_hi) = out["ci"]["transition_start"], out["ci"]["transition_end"]
        assert s_lo <= out["transition"][0] <= s_hi and e_lo <= out["transition"][1] <= e_hi
        assert s_lo <= TRUE_START <= s_hi and e_lo <= TRUE_END <= e_hi


def test_ramp_model_does_not_shorten_a_long_ramp():
    # A piecewise-constant fit would cut a 9-layer ramp near its middle; the ramp fit must not.
    curve = ramp_curve(n_layers=30, start=6, end=14, low=0.0, high=0.4)
    out = find_sections(noisy(curve, n_tasks=40, sd=0.03), n_boot=200)
    start, end = out["transition"]
    assert abs(start - 6) <= 1 and abs(end - 14) <= 1


def test_median_over_tasks_resists_an_outlier_task_in_fit_and_bootstrap():
    gain = noisy(ramp_curve())
    gain[0] = 3.0 - 10 * ramp_curve()  # one wild task, falling steeply where the others rise
    out = find_sections(gain, n_boot=300)
    assert out["transition_found"] is True
    assert abs(out["transition"][0] - TRUE_START) <= 1 and abs(out["transition"][1] - TRUE_END) <= 1
    assert 0.3 < out["jump"] < 0.4 and 0.3 < out["jump_ci"][0] <= out["jump_ci"][1] < 0.4


def test_falling_curve_is_not_a_transition():
    out = find_sections(noisy(ramp_curve()[::-1].copy()), n_boot=200)
    assert out["transition_found"] is False
    assert "does not rise" in out["reason"]
    assert out["jump"] < 0
    assert "transition" not in out and "candidate" in out


# ---------------------------------------------------------------------------- no transition


@pytest.mark.parametrize("seed", [3, 4, 5])
def test_flat_noise_reports_no_transition(seed):
    gain = np.random.default_rng(seed).normal(0.0, 0.05, (30, 24))
    out = find_sections(gain, n_boot=300, seed=seed)
    assert out["transition_found"] is False
    assert out["reason"]
    assert "shared" not in out and set(out["candidate"]) == {"shared", "transition", "refinement",
                                                            "segment_means"}
    assert out["p_value"] >= 0.05


def test_false_positive_rate_is_near_alpha_with_correlated_noise():
    # Per-task random walks across layers plus a per-task offset: noise correlated across layers,
    # which a test assuming independent layers would mistake for structure.
    hits = 0
    for rep in range(40):
        rng = np.random.default_rng(100 + rep)
        gain = rng.normal(0, 0.05, (20, 1)) + np.cumsum(rng.normal(0, 0.02, (20, 24)), axis=1)
        hits += find_sections(gain, n_boot=200, seed=rep)["transition_found"]
    assert hits <= 8  # alpha = 0.05: ~2 expected in 40; 8 would be very unlikely if calibrated


def test_straight_drift_is_not_a_transition():
    # The old flat null called a gain of 0.01 x layer a transition with p = 0.003.
    gain = 0.01 * np.arange(19) + np.random.default_rng(6).normal(0, 0.05, (12, 19))
    out = find_sections(gain, n_boot=500)
    assert out["transition_found"] is False and out["jump"] > 0
    assert "straight line" in out["reason"] and out["p_value"] > 0.05
    assert "transition" not in out and "ci" not in out


def test_bend_ignores_any_straight_line_added_to_the_curve():
    x = np.arange(19)
    design = _sections._design(x, 2)
    curves = np.random.default_rng(7).normal(0, 1, (50, 19))
    tilted = curves + np.random.default_rng(8).normal(0, 5, (50, 1)) * x + 3.0
    np.testing.assert_allclose(_sections._bend(tilted, design.perp), _sections._bend(curves, design.perp),
                               rtol=1e-9, atol=1e-9)
    assert _sections._bend(0.3 * x[None, :] - 1.0, design.perp)[0] == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("n_tasks", range(1, _sections.MIN_SECTION_TASKS))
def test_too_few_tasks_is_said_instead_of_a_finding(n_tasks):
    out = find_sections(noisy(ramp_curve(), n_tasks=n_tasks, sd=0.01), n_boot=100)
    assert out["transition_found"] is False and out["too_few_tasks"] is True
    assert out["reason"].startswith(f"too few tasks: {n_tasks} task")
    assert f"at least {_sections.MIN_SECTION_TASKS}" in out["reason"]
    assert out["n_tasks"] == n_tasks and out["min_tasks"] == _sections.MIN_SECTION_TASKS
    assert not {"jump", "p_value", "candidate", "transition", "ci"} & set(out)
    assert json.loads(json.dumps(out)) == out


def test_minimum_number_of_tasks_is_enough_to_test():
    out = find_sections(noisy(ramp_curve(), n_tasks=_sections.MIN_SECTION_TASKS, sd=0.01), n_boot=300)
    assert out["too_few_tasks"] is False and out["transition_found"] is True


def test_find_sections_decides_as_the_vectorised_test():
    # The calibration below runs the vectorised _decide; find_sections must be that decision.
    for seed, curve in enumerate([ramp_curve(), np.zeros(24), 0.01 * np.arange(24)]):
        gain = noisy(curve, n_tasks=8, sd=0.1, seed=seed)
        out = find_sections(gain, n_boot=200, seed=seed)
        res = _sections._decide(gain[None], _sections._design(np.arange(24), 2), n_boot=200, alpha=0.05,
                                min_jump=None, rng=np.random.default_rng(seed))
        assert out["transition_found"] == bool(res["found"][0]) and out["p_value"] == res["p_value"][0]
        assert out["statistic"] == res["statistic"][0] and out["rss_line"] == res["rss_line"][0]


# ---------------------------------------------------------------------------- calibration


def task_noise(rng, reps, n_tasks, n_layers, sd=0.1, rho=0.7, df=4, offset_sd=0.05):
    """[reps, n_tasks, n_layers] per-task noise: AR(1) across layers with Student-t innovations
    (heavy tails), marginal sd `sd`, plus a per-task offset."""
    e = rng.standard_t(df, size=(reps, n_tasks, n_layers)) / np.sqrt(df / (df - 2))
    out = np.empty_like(e)
    out[..., 0] = e[..., 0]
    for layer in range(1, n_layers):
        out[..., layer] = rho * out[..., layer - 1] + np.sqrt(1 - rho ** 2) * e[..., layer]
    return sd * out + offset_sd * rng.normal(size=(reps, n_tasks, 1))


def found_rate(tables, rng, n_boot=200):
    """Fraction of gain tables [reps, n_tasks, n_layers] in which a transition is found."""
    if tables.shape[1] < _sections.MIN_SECTION_TASKS:  # answered "too few tasks": never a finding
        outs = [find_sections(t, n_boot=n_boot) for t in tables]
        assert all(o["too_few_tasks"] and not o["transition_found"] for o in outs)
        return 0.0
    design = _sections._design(np.arange(tables.shape[2]), 2)
    return float(_sections._decide(tables, design, n_boot=n_boot, alpha=0.05, min_jump=None, rng=rng)["found"].mean())


@pytest.mark.parametrize("n_tasks", [3, 5, 12, 30])
def test_false_positive_rate_on_noise_and_on_straight_drift(n_tasks):
    rng = np.random.default_rng(1000 + n_tasks)
    noise = task_noise(rng, 200, n_tasks, 19)
    for drift in (0.0, 0.01):
        assert found_rate(noise + drift * np.arange(19), rng) <= 0.07, drift


def test_known_transition_is_found_at_twelve_tasks_with_its_boundaries():
    start, end, reps = 7, 9, 100
    rng = np.random.default_rng(2024)
    tables = ramp_curve(n_layers=18, start=start, end=end, low=0.0, high=0.3) + task_noise(rng, reps, 12, 18)
    design = _sections._design(np.arange(18), 2)
    res = _sections._decide(tables, design, n_boot=200, alpha=0.05, min_jump=None, rng=rng)
    first, last = design.pairs[res["best"]].T
    assert res["found"].mean() >= 0.9
    assert (res["found"] & (np.abs(first - start) <= 2) & (np.abs(last - end) <= 2)).mean() >= 0.9
    assert (res["found"] & (np.abs(first - start) <= 1) & (np.abs(last - end) <= 1)).mean() >= 0.8


def test_min_jump_can_veto_a_significant_but_small_rise():
    gain = noisy(ramp_curve(low=0.0, high=0.05), n_tasks=60, sd=0.01)
    assert find_sections(gain, n_boot=200)["transition_found"] is True
    out = find_sections(gain, n_boot=200, min_jump=0.1)
    assert out["transition_found"] is False
    assert "min_jump" in out["reason"] and out["jump_threshold"] == pytest.approx(0.1)


# ---------------------------------------------------------------------------- NaN and layers


def test_nan_layer_zero_is_excluded_and_reported():
    gain = noisy(ramp_curve())
    gain[:, 0] = np.nan
    out = find_sections(gain, n_boot=200)
    assert out["excluded_layers"] == [0]
    assert out["layers"] == list(range(1, 24))
    assert out["shared"][0] == 1
    assert abs(out["transition"][0] - TRUE_START) <= 1 and abs(out["transition"][1] - TRUE_END) <= 1


def test_partial_nan_column_warns_and_is_excluded():
    gain = noisy(ramp_curve())
    gain[3, 20] = np.nan
    with pytest.warns(UserWarning, match=r"layers \[20\] are NaN for some tasks"):
        out = find_sections(gain, n_boot=100)
    assert out["excluded_layers"] == [20]


def test_layer_numbers_label_the_sections():
    gain = noisy(ramp_curve())
    out = find_sections(gain, layers=np.arange(24) + 1, n_boot=100)
    base = find_sections(gain, n_boot=100)
    assert out["transition"] == [base["transition"][0] + 1, base["transition"][1] + 1]
    assert out["ci"]["transition_start"] == [v + 1 for v in base["ci"]["transition_start"]]


# ---------------------------------------------------------------------------- exactness, output


@pytest.mark.parametrize("seed", range(5))
def test_fit_matches_brute_force_oracle(seed):
    rng = np.random.default_rng(seed)
    x = np.sort(rng.choice(40, size=15, replace=False))
    m = rng.normal(0, 1, 15)
    _, i, j, jump = brute_force_split(m, x.astype(float), 2)
    pairs, _, centred, norm2 = _sections._ramp_design(x, 2)
    best, fast_jump = _sections._fit(m[None, :], centred, norm2)
    assert tuple(pairs[best[0]]) == (i, j)
    assert fast_jump[0] == pytest.approx(jump)


def test_every_admissible_split_is_tried():
    n, min_size = 12, 3
    pairs, *_ = _sections._ramp_design(np.arange(n), min_size)
    expected = [(i, j) for i, j in itertools.product(range(n), repeat=2)
                if i >= min_size and j - i + 1 >= min_size and n - 1 - j >= min_size]
    assert sorted(map(tuple, pairs.tolist())) == expected


def test_output_is_plain_json_and_deterministic():
    gain = noisy(ramp_curve())
    gain[:, 0] = np.nan
    a = find_sections(gain, n_boot=300, seed=7)
    b = find_sections(gain, n_boot=300, seed=7)
    assert a == b
    assert json.loads(json.dumps(a)) == a

    def plain(obj):
        if isinstance(obj, dict):
            return all(isinstance(k, str) and plain(v) for k, v in obj.items())
        if isinstance(obj, list):
            return all(plain(v) for v in obj)
        return type(obj) in (int, float, bool, str)

    assert plain(a)
    assert all(type(v) is int for v in a["transition"] + a["ci"]["transition_start"])
    assert "min_size" not in a["criterion"] and "at least 2 layers" in a["criterion"]


def test_seed_changes_bootstrap_not_point_estimate():
    gain = noisy(ramp_curve(), sd=0.15)
    a = find_sections(gain, n_boot=200, seed=1)
    b = find_sections(gain, n_boot=200, seed=2)
    assert a["transition"] == b["transition"] and a["jump"] == b["jump"]
    assert a["jump_ci"] != b["jump_ci"]


def test_fast_enough():
    gain = noisy(ramp_curve(n_layers=33, start=10, end=15), n_tasks=60)
    gain[:, 0] = np.nan
    t0 = time.perf_counter()
    find_sections(gain, n_boot=1000)
    assert time.perf_counter() - t0 < 2.0


def test_docstring_example():
    results = doctest.testmod(_sections, optionflags=doctest.ELLIPSIS)
    assert results.attempted > 0 and results.failed == 0


# ---------------------------------------------------------------------------- properties


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(shift=st.floats(-5, 5), scale=st.floats(0.1, 10), seed=st.integers(0, 10_000))
def test_boundaries_invariant_to_shift_and_positive_scale(shift, scale, seed):
    gain = noisy(ramp_curve(), n_tasks=15, seed=seed)
    a = find_sections(gain, n_boot=50, seed=seed)
    b = find_sections(scale * gain + shift, n_boot=50, seed=seed)
    assert b["transition_found"] == a["transition_found"]
    assert b.get("transition", b.get("candidate", {}).get("transition")) == a.get(
        "transition", a.get("candidate", {}).get("transition"))
    assert b["jump"] == pytest.approx(scale * a["jump"], rel=1e-6, abs=1e-9)


@settings(max_examples=25, deadline=None)
@given(perm_seed=st.integers(0, 10_000))
def test_task_order_does_not_change_the_point_estimate(perm_seed):
    gain = noisy(ramp_curve(), n_tasks=12, sd=0.1)
    perm = np.random.default_rng(perm_seed).permutation(12)
    a = find_sections(gain, n_boot=20)
    b = find_sections(gain[perm], n_boot=20)
    assert a["jump"] == pytest.approx(b["jump"]) and a["rss"] == pytest.approx(b["rss"])
    assert a.get("transition") == b.get("transition")


# ---------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("gain", "kwargs", "match"),
    [
        (np.zeros(24), {}, r"expected gain as a 2-D array .*got ndim=1"),
        (np.zeros((2, 3, 4)), {}, r"expected gain as a 2-D array .*got ndim=3"),
        (np.zeros((0, 24)), {}, r"expected at least one task \(row\), got 0; fix"),
        (np.zeros((5, 5)), {}, r"expected at least 3 \* min_size = 6 layers without NaN, got 5"),
        (np.c_[np.full((3, 1), np.nan), np.zeros((3, 5))], {}, r"got 5 \(excluded as NaN: \[0\]\).*fix"),
        (np.zeros((4, 12)), {"min_size": 5}, r"3 \* min_size = 15 .*got 12"),
        (np.zeros((4, 12)), {"layers": np.arange(11)}, r"expected layers as a 1-D array of 12 .*got shape \(11,\)"),
        (np.zeros((4, 12)), {"layers": np.arange(12)[::-1]}, r"strictly increasing integers.*fix"),
        (np.zeros((4, 12)), {"layers": np.arange(12) + 0.5}, r"strictly increasing integers"),
        (np.zeros((4, 12)), {"n_boot": 0}, r"expected n_boot to be an integer >= 1, got 0"),
        (np.zeros((4, 12)), {"min_size": 0}, r"expected min_size to be an integer >= 1"),
        (np.zeros((4, 12)), {"min_jump": -0.1}, r"expected min_jump to be None or a finite number >= 0"),
        (np.zeros((4, 12)), {"alpha": 1.5}, r"expected alpha in \(0, 1\)"),
        (np.full((4, 12), np.inf), {}, r"expected finite gains or NaN .*got inf.*fix"),
    ],
)
def test_errors(gain, kwargs, match):
    with pytest.raises(MossaError, match=match):
        find_sections(gain, **kwargs)


def test_error_is_a_value_error_for_old_callers():
    with pytest.raises(ValueError):
        find_sections(np.zeros(24))


def test_constant_gain_has_no_transition():
    out = find_sections(np.full((5, 12), 0.2), n_boot=50)
    assert out["transition_found"] is False and out["jump"] == 0.0 and out["rss_flat"] == pytest.approx(0.0, abs=1e-20)


def test_report_says_too_few_tasks_plainly():
    from mossa.report._summary import _section_sentence

    out = find_sections(noisy(ramp_curve(), n_tasks=3), n_boot=50)
    text = _section_sentence({**out, "measure": "debiased_cka"}, "E' on the held-out tasks", model="E'")
    assert text == ("For E' on the held-out tasks, no layer sections are stated: too few tasks (3; the test of a "
                    f"transition needs at least {_sections.MIN_SECTION_TASKS}).")
    found = find_sections(noisy(ramp_curve()), n_boot=100)
    assert "the median debiased CKA gain of E over B rises by" in _section_sentence({**found, "measure":
                                                                                     "debiased_cka"}, "E")


def test_layer_sections_reads_the_gain_from_the_similarity_table():
    """layer_sections pivots the long table into the per-task gain of E over B and finds the same
    sections as find_sections on that gain; a table without the measure says so."""
    import pandas as pd

    from mossa.analysis._sections import layer_sections

    gain = noisy(ramp_curve(), n_tasks=12, sd=0.03, seed=4)
    rows = []
    for t, curve in enumerate(gain):
        for layer, g in enumerate(curve):
            rows += [{"task": f"t{t}", "layer": layer, "measure": "debiased_cka", "model": "base", "value": 0.5},
                     {"task": f"t{t}", "layer": layer, "measure": "debiased_cka", "model": "experimental",
                      "value": 0.5 + g}]
    sim = pd.DataFrame(rows)
    out = layer_sections(sim, n_boot=200, seed=0)
    direct = find_sections(gain, layers=np.arange(gain.shape[1]), n_boot=200, seed=0)
    assert out["transition_found"] and out["model"] == "experimental" and out["measure"] == "debiased_cka"
    assert out["transition"] == direct["transition"]
    missing = layer_sections(sim.assign(measure="linear_cka"), n_boot=200, seed=0)
    assert not missing["transition_found"] and "no debiased_cka values" in missing["reason"]
