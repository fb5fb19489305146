"""Tests for mossa.analysis._sections: the shared / transition / refinement criterion."""

from __future__ import annotations

import doctest
import itertools
import json
import time

import numpy as np
import pandas as pd
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
        (np.zeros((4, 12)), {"alpha": 0.6}, r"expected alpha below 0.5.*1 - 2 alpha"),
        (np.zeros((4, 12)), {"plateau_ratio": 0.0}, r"expected plateau_ratio in \(0, 1\], got 0.0; fix"),
        (np.zeros((4, 12)), {"plateau_ratio": 1.5}, r"expected plateau_ratio in \(0, 1\]"),
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


# ---------------------------------------------------------------------------- plateaus


X18 = np.arange(18, dtype=float)
SMOOTH = {  # rising gain curves that bend but have no plateau on one side or both (amplitude 0.3, 18 layers)
    "saturating": 0.3 * (1 - np.exp(-X18 / 3)),
    "cubic": 0.3 * (X18 / 17) ** 3,
    "hinge_rise": 0.3 * np.clip((X18 - 6) / 11, 0, 1),  # flat, then a straight rise to the last layer
    "hinge_level": 0.3 * np.clip(X18 / 11, 0, 1),  # a straight rise, then flat
}


@pytest.mark.parametrize("n_tasks", [12, 30])
@pytest.mark.parametrize("shape", sorted(SMOOTH))
def test_smooth_curves_without_plateaus_give_no_three_sections(shape, n_tasks):
    # The bend test alone states three sections in many of these tables; the plateau test must not.
    rng = np.random.default_rng(300 + n_tasks + len(shape))
    tables = SMOOTH[shape] + task_noise(rng, 40, n_tasks, 18)
    res = _sections._decide(tables, _sections._design(np.arange(18), 2), n_boot=200, alpha=0.05, min_jump=None,
                            rng=rng)
    assert res["bends"].mean() >= 0.3
    assert res["found"].mean() <= 0.05


@pytest.mark.parametrize("shape", sorted(SMOOTH))
def test_a_smooth_curve_is_rejected_for_its_sloping_section_with_the_reason(shape):
    # The first table (of seeds 0, 1, ...) in which the bend test alone would state three sections.
    for seed in range(20):
        out = find_sections(SMOOTH[shape] + task_noise(np.random.default_rng(seed), 1, 30, 18)[0], n_boot=300)
        if out["p_value"] <= 0.05 and out["rss"] < out["rss_line"] and out["jump"] > 0:
            break
    else:
        pytest.fail(f"the bend test never passed on {shape}")
    assert out["transition_found"] is False
    assert "not shown to be plateaus" in out["reason"] and "times the transition's slope" in out["reason"]
    assert not (out["shared_flat"] and out["refinement_flat"])
    bad = [s for s in ("shared", "refinement") if not out["plateaus"][s]["flat"]]
    assert all(f"the {s} section changes by" in out["reason"] for s in bad)
    for s in bad:  # the interval of the slope ratio leaves [-0.5, 0.5]
        lo, hi = out["plateaus"][s]["slope_ratio_ci"]
        assert (lo is None or lo < -0.5) or (hi is None or hi > 0.5)
    assert "transition" not in out and "candidate" in out and json.loads(json.dumps(out)) == out


def test_planted_plateaus_are_flat_and_their_slopes_reported():
    out = find_sections(noisy(ramp_curve(), n_tasks=30, sd=0.05), n_boot=500)
    assert out["transition_found"] and out["shared_flat"] and out["refinement_flat"]
    plateaus = out["plateaus"]
    assert plateaus["max_ratio"] == _sections.PLATEAU_RATIO and plateaus["level"] == pytest.approx(0.9)
    assert plateaus["transition_slope"] == pytest.approx(out["jump"] / (out["transition"][1] + 1 - (
        out["transition"][0] - 1)))
    for s in ("shared", "refinement"):
        lo, hi = plateaus[s]["slope_ratio_ci"]
        assert -0.5 <= lo <= plateaus[s]["slope_ratio"] <= hi <= 0.5
        assert plateaus[s]["slope_ratio"] == pytest.approx(plateaus[s]["slope"] / plateaus["transition_slope"])
    assert "plateaus" in out["criterion"] and "+-0.5" in out["criterion"] and "90% bootstrap" in out["criterion"]


def test_planted_plateau_ramp_plateau_is_still_found_with_a_six_layer_ramp_at_thirty_tasks():
    rng = np.random.default_rng(77)
    tables = ramp_curve(n_layers=18, start=6, end=11, low=0.0, high=0.3) + task_noise(rng, 60, 30, 18)
    res = _sections._decide(tables, _sections._design(np.arange(18), 2), n_boot=200, alpha=0.05, min_jump=None,
                            rng=rng)
    assert res["found"].mean() >= 0.75


def test_a_refinement_that_keeps_rising_is_not_a_plateau():
    # A ramp of 0.05 per layer whose last section climbs on at 0.04 per layer: a kink, not a plateau.
    curve = ramp_curve(n_layers=24, low=0.0, high=0.3) + 0.04 * np.clip(np.arange(24) - 12, 0, None)
    out = find_sections(noisy(curve, n_tasks=30, sd=0.03), n_boot=300)
    assert out["transition_found"] is False and out["refinement_flat"] is False and out["shared_flat"] is True
    assert "the refinement section changes by" in out["reason"]
    loose = find_sections(noisy(curve, n_tasks=30, sd=0.03), n_boot=300, plateau_ratio=1.0)
    assert loose["plateaus"]["max_ratio"] == 1.0 and "+-1" in loose["criterion"]


def test_a_one_layer_section_cannot_be_shown_level():
    curve = np.r_[0.0, 0.1, 0.2, np.full(9, 0.3)]  # best split with min_size=1: shared = layer 0 alone
    out = find_sections(noisy(curve, n_tasks=20, sd=0.01), n_boot=200, min_size=1)
    assert out["candidate"]["shared"] == [0, 0]
    assert out["transition_found"] is False and out["shared_flat"] is False
    assert out["plateaus"]["shared"]["slope"] is None and "has one layer" in out["reason"]
    assert json.loads(json.dumps(out)) == out


# ---------------------------------------------------------------------------- E against B in the shared section


@pytest.mark.parametrize(("low", "verdict", "at_or_below"), [(-0.08, "at or below B", True), (0.1, "above B", False),
                                                            (0.0, "within noise of B", False)])
def test_shared_section_says_whether_e_is_at_or_below_b(low, verdict, at_or_below):
    out = find_sections(noisy(ramp_curve(low=low, high=low + 0.35), n_tasks=30, sd=0.05, seed=3), n_boot=500)
    assert out["transition_found"]
    lo, hi = out["shared_gain_ci"]
    assert out["shared_gain"] == out["segment_means"][0] and [lo, hi] == out["segment_means_ci"][0]
    assert lo <= out["shared_gain"] <= hi and abs(out["shared_gain"] - low) < 0.03
    assert out["shared_e_vs_b"] == verdict and out["shared_e_at_or_below_b"] is at_or_below


# ---------------------------------------------------------------------------- two E seeds


def similarity_table(gains: dict[str, np.ndarray]) -> pd.DataFrame:
    """Long debiased_cka rows: base at 0.5 for every task and layer, each model at 0.5 + its gain [tasks, layers]."""
    rows = []
    for model, gain in {"base": np.zeros_like(next(iter(gains.values()))), **gains}.items():
        for t, curve in enumerate(gain):
            rows += [{"task": f"t{t}", "layer": layer, "measure": "debiased_cka", "model": model, "value": 0.5 + g}
                     for layer, g in enumerate(curve)]
    return pd.DataFrame(rows)


def test_one_e_says_seed_variation_is_not_measured():
    from mossa.analysis._sections import layer_sections

    sim = similarity_table({"experimental": noisy(ramp_curve(), n_tasks=12, sd=0.03)})
    for second in (None, "experimental_seed2"):  # not asked for, or asked for but absent
        out = layer_sections(sim, n_boot=200, seed=0, second_seed=second)
        assert out["transition_found"] and out["seed_check"] == _sections.ONE_E == "one E: seed variation not measured"
        assert "seeds" not in out and out["seed_rule"].startswith("one E")


def test_both_seeds_showing_the_sections_state_them_with_each_seeds_result():
    from mossa.analysis._sections import layer_sections

    task = noisy(ramp_curve(), n_tasks=12, sd=0.03, seed=1)
    sim = similarity_table({"experimental": task + noisy(np.zeros(24), 1, 0.02, seed=2),
                            "experimental_seed2": task + noisy(np.zeros(24), 1, 0.02, seed=3)})
    out = layer_sections(sim, n_boot=200, seed=0, second_seed="experimental_seed2")
    assert out["transition_found"] and out["seed_check"] == "both E seeds show it"
    assert set(out["seeds"]) == {"experimental", "experimental_seed2"}
    assert all(s["transition_found"] for s in out["seeds"].values())
    assert out["seeds"]["experimental"]["transition"] == out["transition"]
    assert "experimental_seed2" in out["seed_rule"] and "at most 2 layers" in out["seed_rule"]
    assert json.loads(json.dumps(out)) == out


def test_a_transition_in_one_seed_only_is_not_stated():
    from mossa.analysis._sections import layer_sections

    sim = similarity_table({"experimental": noisy(ramp_curve(), n_tasks=12, sd=0.03, seed=4),
                            "experimental_seed2": noisy(0.01 * np.arange(24), n_tasks=12, sd=0.03, seed=5)})
    out = layer_sections(sim, n_boot=200, seed=0, second_seed="experimental_seed2")
    assert out["transition_found"] is False and out["seed_check"] == "only experimental shows it"
    assert out["seeds"]["experimental"]["transition_found"] and not out["seeds"]["experimental_seed2"][
        "transition_found"]
    assert out["reason"].startswith("the other E seed (experimental_seed2) shows no three sections")
    assert not {"shared", "transition", "ci", "shared_e_vs_b"} & set(out) and "transition" in out["candidate"]
    swapped = layer_sections(sim, model="experimental_seed2", n_boot=200, seed=0, second_seed="experimental")
    assert swapped["transition_found"] is False and swapped["seed_check"] == "only experimental shows it"


def test_seeds_placing_the_transition_far_apart_are_not_stated():
    from mossa.analysis._sections import layer_sections

    sim = similarity_table({"experimental": noisy(ramp_curve(start=5, end=8), n_tasks=12, sd=0.03, seed=6),
                            "experimental_seed2": noisy(ramp_curve(start=13, end=16), n_tasks=12, sd=0.03, seed=7)})
    out = layer_sections(sim, n_boot=200, seed=0, second_seed="experimental_seed2")
    assert all(s["transition_found"] for s in out["seeds"].values())
    assert out["transition_found"] is False and out["seed_check"] == "the E seeds disagree on the boundaries"
    assert "more than 2 layers apart" in out["reason"]


def common_noise(rng, reps, n_layers, sd=0.05, rho=0.7):
    """[reps, 1, n_layers]: one Gaussian AR(1) curve per replicate (an E run), the same for all its tasks."""
    e = rng.normal(size=(reps, 1, n_layers))
    for layer in range(1, n_layers):
        e[..., layer] = rho * e[..., layer - 1] + np.sqrt(1 - rho ** 2) * e[..., layer]
    return sd * e


def test_common_noise_drawn_per_seed_does_not_make_sections_with_two_seeds():
    # One AR(1) curve per E run (sd 0.05), the same for all tasks: resampling tasks cannot see it, so one E
    # states sections on a straight line; requiring both seeds removes them.
    rng = np.random.default_rng(55)
    reps, n_tasks, design = 100, 30, _sections._design(np.arange(18), 2)
    tables = 0.01 * X18 + task_noise(rng, reps, n_tasks, 18)
    seeds = [_sections._decide(tables + common_noise(rng, reps, 18), design, n_boot=200, alpha=0.05, min_jump=None,
                               rng=rng) for _ in range(2)]
    both = seeds[0]["found"] & seeds[1]["found"] & _sections._seeds_agree(design.pairs[seeds[0]["best"]],
                                                                          design.pairs[seeds[1]["best"]])
    assert seeds[0]["bends"].mean() >= 0.3  # the bend test alone is fooled by the common noise
    assert both.mean() <= 0.03


def test_report_sentence_states_plateaus_e_against_b_and_the_seed_check():
    from mossa.analysis._sections import layer_sections
    from mossa.report._summary import _section_sentence

    one = layer_sections(similarity_table({"experimental": noisy(ramp_curve(), n_tasks=12, sd=0.03)}), n_boot=200,
                         seed=0)
    text = _section_sentence(one, "E")
    lo, hi = one["plateaus"]["shared"]["slope_ratio_ci"]
    assert "Both sections beside the rise are plateaus: each changes at most 0.5 times as steeply" in text
    assert f"shared {lo:.2f} to {hi:.2f}" in text
    assert (f"In the shared section E is at or below B: mean gain {one['shared_gain']:+.2f} (95% CI "
            f"{one['shared_gain_ci'][0]:+.2f} to {one['shared_gain_ci'][1]:+.2f})") in text
    assert text.endswith("One E: seed variation not measured, so noise common to all tasks is not in the test.")
    above = find_sections(noisy(ramp_curve(low=0.1, high=0.45), n_tasks=30, sd=0.05, seed=3), n_boot=300)
    assert "E is above B, unlike the paper's shared layers" in _section_sentence(above, "E")

    task = noisy(ramp_curve(), n_tasks=12, sd=0.03, seed=1)
    two = layer_sections(similarity_table({"experimental": task, "experimental_seed2": task + 0.01}), n_boot=200,
                         seed=0, second_seed="experimental_seed2")
    assert _section_sentence(two, "E").endswith("Seed check: both E seeds show it (experimental, experimental_seed2).")
    hinge = find_sections(SMOOTH["hinge_rise"] + task_noise(np.random.default_rng(0), 1, 30, 18)[0], n_boot=300)
    text = _section_sentence(hinge, "E")
    assert text.startswith("For E, the data show no clear transition section: the curve bends but does not level off")
    assert "not shown to be plateaus" in text and "E seeds" not in text
