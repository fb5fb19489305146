"""Task specificity (CKA with C_t minus the mean with other tasks' controls on t's prompts): it fires on a
planted task signal and stays at 0 within noise when the controls are B plus changes with no task in them,
when every control shares one fine-tuning change, and when E differs from B by its spectrum alone."""

import numpy as np
import pandas as pd
import pytest

from mossa.analysis._specificity import (
    CROSS,
    SPECIFICITY,
    cross_label,
    cross_task_means,
    references,
    specificity_rows,
)
from mossa.errors import MossaError
from mossa.similarity import layerwise_linear_cka
from mossa.analysis._jackknife import contrast_intervals
from mossa.report._summary import specificity_sentences, summarize

N, D, R, LAYERS, TASKS, SOURCES = 64, 48, 4, 4, 12, 3  # LAYERS states: embeddings + 3 layers


def _base(rng):
    """B's states on one task's prompts: heavy tails (Student t, 3 df) and a few dominant directions."""
    scales = 1.0 / np.arange(1, D + 1) ** 0.8
    scales[:3] *= 6
    return rng.standard_t(3, (N, D)) * scales


def _change(rng, X, rank=8, size=0.5):
    """A random low-rank linear change of X (what an adapter with no task in it does)."""
    W = rng.standard_normal((D, rank)) @ rng.standard_normal((rank, D)) / np.sqrt(D * rank)
    return X @ W * size / np.std(X @ W) * np.std(X)


def _signal(rng, z, size=1.0):
    """A task's latent `z` [N, R] written into D dimensions."""
    return z @ rng.standard_normal((R, D)) * size


def _task_states(rng, kind):
    """Every model's states on one task's prompts ([LAYERS, N, D] each), by scenario."""
    out = {m: [] for m in ("control", "base", "experimental", "experimental_seed2", "ceiling",
                           *(cross_label(f"s{j}") for j in range(SOURCES)))}
    for layer in range(LAYERS):
        X = _base(rng)
        z = rng.standard_normal((N, R))  # what task t's examples hold that its specialist learns
        s = np.std(X)
        if kind == "planted" or kind == "planted_late" and layer >= 2:  # late: in layers 2-3 only
            out["control"].append(X + s * _signal(rng, z))
            out["ceiling"].append(X + s * _signal(rng, z) + _change(rng, X, size=0.3))
            for j in range(SOURCES):  # another task's specialist writes its own latent, unrelated to z
                out[cross_label(f"s{j}")].append(X + s * _signal(rng, rng.standard_normal((N, R))))
            for m in ("experimental", "experimental_seed2"):
                out[m].append(X + s * _signal(rng, z, 0.7) + _change(rng, X, size=0.3))
        else:  # planted_late below layer 2 is as "random"
            common = _change(rng, X, size=0.8) if kind == "shared" else 0.0  # one change every adapter makes
            out["control"].append(X + common + _change(rng, X))
            out["ceiling"].append(X + common + _change(rng, X))
            for j in range(SOURCES):
                out[cross_label(f"s{j}")].append(X + common + _change(rng, X))
            for m in ("experimental", "experimental_seed2"):
                if kind == "spectrum":  # E = B squeezed onto a few dominant directions, nothing else
                    U, sv, Vt = np.linalg.svd(X, full_matrices=False)
                    out[m].append((U[:, :4] * sv[:4] * 3) @ Vt[:4] + X * 0.2)
                else:
                    out[m].append(X + common + _change(rng, X))
        out["base"].append(X)
    return {m: np.stack(v) for m, v in out.items()}


MODELS = ["base", "experimental", "experimental_seed2", "ceiling"]


def _rows(kind, seed=0, tasks=TASKS, against_control=None, intervals=True):
    """The specificity rows of `tasks` synthetic tasks; the rows against C_t are appended to `against_control`."""
    rng = np.random.default_rng(seed)
    rows = []
    for t in range(tasks):
        states = _task_states(rng, kind)
        models = MODELS
        for m in models if against_control is not None else ():
            for layer, r in enumerate(layerwise_linear_cka(states[m], states["control"], debiased=True)):
                against_control.append({"task": f"t{t}", "cluster": f"c{t % 6}", "model": m, "layer": layer,
                                        "measure": "debiased_cka", "value": r.value, "undefined_reason": ""})
        rows += specificity_rows(f"t{t}", f"c{t % 6}", states.__getitem__, models, [f"s{j}" for j in range(SOURCES)],
                                 ("debiased_cka",), intervals=intervals, seed=seed,
                                 base_row={"n_examples": N, "n_dropped": 0})
    return pd.DataFrame(rows)


def _summary(kind, seed, intervals=True):
    rows = []
    refs = _rows(kind, seed=seed, against_control=rows, intervals=intervals)
    sim = pd.DataFrame(rows)
    study = {"model": {"name": "toy", "n_layers": LAYERS - 1},
             "cross_tasks": {"chosen": {f"t{t}": [f"s{j}" for j in range(SOURCES)] for t in range(TASKS)}}}
    s = summarize(study, sim, pd.DataFrame({"task": sim["task"].unique()}), {"transition_found": False}, refs)
    return s.specificity, " ".join(specificity_sentences(s.specificity, "layer 3", "debiased CKA"))


def test_a_planted_task_signal_is_specific_for_e_and_for_the_controls():
    spec, text = _summary("planted", 0)
    for m in ("experimental", "experimental_seed2"):
        assert spec["models"][m]["mean"] > 0.05 and spec["models"][m]["p_value"] < 0.001
        assert spec["gain"][m]["p_value"] < 0.001  # E moved towards t's specialist beyond B
    assert "E's task specificity is above 0 beyond noise (both E seeds show it)" in text
    assert spec["models"]["ceiling"]["p_value"] < 0.001
    assert all(c["value"] > 0.05 and c["layers_above"] == c["n_layers"] == 1 for c in spec["controls"].values())


@pytest.mark.parametrize("kind", ["random", "shared", "spectrum"])
def test_no_task_in_the_change_gives_specificity_within_noise_of_0(kind):
    """Controls that are B plus a random change (each its own, or one shared by all), and an E that differs from
    B by its spectrum: E's, B's and the controls' own specificity stay within noise of 0."""
    spec, text = _summary(kind, 1)
    for m in ("experimental", "experimental_seed2", "base", "ceiling"):
        assert abs(spec["models"][m]["mean"]) < 0.02, (m, spec["models"][m])
    assert "E's task specificity is above 0 beyond noise" not in text
    assert "the gain in specificity is above 0 beyond noise" not in text
    assert spec["models"]["experimental"]["p_value"] > 0.05


def test_the_swap_test_holds_its_level_where_a_median_over_tasks_does_not():
    """Exchangeable controls with skewed values (CKA near 1 has a long lower tail): the per-task specificity has
    mean 0 but a positive median. The swap test rejects at its level; the median's interval over tasks, which
    assumes nothing of symmetry but targets the median, excludes 0 far more often."""
    from mossa.analysis import median_interval, swap_test

    rng = np.random.default_rng(7)
    swap, median = 0, 0
    reps = 400
    for _ in range(reps):
        tables = [1 - rng.gamma(0.5, 0.02, size=SOURCES + 1) for _ in range(30)]
        swap += swap_test(tables, n_draws=2000, seed=1)["p_value"] <= 0.05
        lo, hi, _ = median_interval(np.array([t[0] - t[1:].mean() for t in tables]))
        median += not lo <= 0 <= hi
    assert 0.02 <= swap / reps <= 0.08
    assert median / reps > 0.15


def test_too_few_assignments_give_no_p_value():
    from mossa.analysis import swap_test

    few = swap_test([np.array([0.9, 0.5])] * 4)  # 2^4 = 16 assignments: p could not reach 0.05 with room
    assert np.isnan(few["p_value"]) and few["n_tasks"] == 4 and few["n_above"] == 4
    exact = swap_test([np.array([0.9, 0.5, 0.5, 0.5])] * 4)  # 256 assignments, enumerated
    assert exact["p_value"] == pytest.approx(1 / 256)


def test_the_same_change_in_every_control_is_not_specific_but_raises_cka_with_c_t():
    """Sharing one fine-tuning change makes every control close to E (high CKA with C_t) without specificity."""
    refs = _rows("shared", seed=2)
    cross = cross_task_means(refs)
    spec = refs[(refs["reference"] == SPECIFICITY) & (refs["model"] == "experimental")
                & (refs["measure"] == "debiased_cka")]
    assert cross[(cross["model"] == "experimental") & (cross["measure"] == "debiased_cka")]["value"].median() > 0.5
    assert abs(spec["value"].median()) < 0.05


def test_the_contrast_interval_is_the_single_interval_for_one_pair_and_needs_a_kernel_cka():
    rng = np.random.default_rng(3)
    A, B, C = (rng.standard_normal((2, 30, 10)) for _ in range(3))
    one = contrast_intervals("debiased_cka", A, [B], [1.0], rng=np.random.default_rng(0))
    pair = contrast_intervals("debiased_cka", A, [B, C], [1.0, 0.0], rng=np.random.default_rng(0))
    np.testing.assert_allclose([r[:2] for r in one], [r[:2] for r in pair])
    with pytest.raises(MossaError, match="kernel CKA"):
        contrast_intervals("procrustes_distance", A, [B, C], [1.0, -1.0], rng=np.random.default_rng(0))


def test_the_null_swaps_which_control_plays_c_t():
    refs = _rows("planted", seed=4, tasks=2)
    rows = refs[(refs["reference"] == SPECIFICITY) & (refs["model"] == "experimental")]
    assert set(rows["n_permutations"]) == {SOURCES + 1}
    assert (rows["p_value"] == 1 / (SOURCES + 1)).all()  # C_t is the most like E of the 4 controls
    assert np.allclose(rows["null_mean"], 0)


def test_references_of_each_model():
    models = ["base", "experimental", "experimental_seed2", "ceiling"]
    assert references("experimental", models, ["a"]) == [CROSS + "a", "ceiling"]
    assert references("experimental_seed2", models, ["a"]) == [CROSS + "a", "ceiling", "experimental"]
    assert references("ceiling", models, ["a"]) == [CROSS + "a"]
    assert references("heldout_seed2", ["heldout", "heldout_seed2"], []) == ["heldout"]


def test_a_verdict_needs_both_e_seeds():
    from mossa.report._summary import seed_verdict

    above = {"mean": 0.2, "p_value": 0.01}
    within = {"mean": 0.1, "p_value": 0.3}
    below = {"mean": -0.2, "p_value": 0.01}
    assert seed_verdict([above, above], "x") == "x is above 0 beyond noise (both E seeds show it)"
    assert "only one of the two E seeds puts it above 0 beyond noise" in seed_verdict([above, within], "x")
    assert "opposite signs" in seed_verdict([above, below], "x")
    assert seed_verdict([above], "x").endswith("(one E seed: its seed variation is not measured)")
    assert seed_verdict([within, within], "x") == "x is within noise of 0"


def _where_verdicts(kind, seed):
    from mossa.report._summary import _range_verdict

    spec, text = _summary(kind, seed, intervals=False)  # the swap tests need no interval over examples
    where = spec["where"]
    return {r: _range_verdict([where["specificity"][m][r] for m in spec["seeds"]]) for r in where["ranges"]}, spec


def test_where_e_holds_task_information_follows_the_layers_it_was_planted_in():
    """The toy's 3 layers carry the paper's sections by relative depth: layer 1 is the transition (Llama-2's
    10-15 of 32), layers 2-3 the refinement. A task signal planted in layers 2-3 only is found there alone."""
    from mossa.report._summary import paper_sections, where_sentences

    assert paper_sections(3) == {"transition": [1], "refinement": [2, 3]}
    assert paper_sections(18) == {"shared": [1, 2, 3, 4, 5], "transition": [6, 7, 8], "refinement": list(range(9, 19))}
    assert paper_sections(32) == {"shared": list(range(1, 10)), "transition": list(range(10, 16)),
                                  "refinement": list(range(16, 33))}
    verdicts, spec = _where_verdicts("planted_late", 0)
    assert verdicts == {"transition": "within", "refinement": "holds"}
    text = " ".join(where_sentences(spec, "debiased CKA", 3))
    assert text.startswith("Where E holds each task's own information: in layers 2-3 (the refinement section)")
    assert "another pattern: beyond noise in the refinement section, against the paper's transition and refinement" \
        in text
    verdicts, spec = _where_verdicts("planted", 0)
    assert verdicts == {"transition": "holds", "refinement": "holds"}
    assert "shows the same pattern" in " ".join(where_sentences(spec, "debiased CKA", 3))


@pytest.mark.parametrize("kind", ["random", "shared", "spectrum"])
def test_where_stays_silent_without_a_task_in_the_change(kind):
    """No task signal: over 10 studies, Holm over the ranges and both E seeds keep "E holds it in a range" at most
    at the 5% family-wise level (2 of 10 allowed for chance); the null sentence says what could have been
    detected."""
    from mossa.report._summary import where_sentences

    fired = 0
    for seed in range(10):
        verdicts, spec = _where_verdicts(kind, 20 + seed)
        fired += "holds" in verdicts.values()
    assert fired <= 2
    text = " ".join(where_sentences(_where_verdicts(kind, 40)[1], "debiased CKA", 3))
    if "nowhere beyond noise" in text:
        assert "the test could have detected a mean specificity of" in text


def test_each_control_is_specific_when_it_learned_its_task_and_not_when_its_change_holds_none():
    """Per task the flag reads the paired interval over examples, given these controls (with 3 other tasks' controls
    no exact test per task can reach 5%): every control of a planted signal is specific; without one, not every
    control is, and the controls as a group are not (the swap test over tasks, exact)."""
    planted, _ = _summary("planted", 3)
    assert all(c["specific"] for c in planted["controls"].values()) and len(planted["controls"]) == TASKS
    for kind in ("random", "shared"):
        null, text = _summary(kind, 3)
        assert sum(c["specific"] for c in null["controls"].values()) < TASKS / 2
        assert abs(null["models"]["ceiling"]["mean"]) < 0.02  # its swap test holds its level: the test above
        assert "controls are specific to their task" in text


def test_a_range_holds_only_when_every_e_seed_shows_it():
    """Noise common to all tasks in one E seed can put that seed beyond 0; the range is then "mixed", never
    "holds", and the sentence says only one seed shows it."""
    from mossa.report._summary import _range_verdict

    above, within = {"mean": 0.2, "p_value": 0.01}, {"mean": 0.05, "p_value": 0.4}
    assert _range_verdict([above, above]) == "holds"
    assert _range_verdict([above, within]) == "mixed" and _range_verdict([within, within]) == "within"
    assert _range_verdict([above, {}]) == "too few"


@pytest.mark.parametrize("kind", ["planted_late", "random", "shared", "spectrum"])
def test_where_verdicts_are_the_same_from_a_float16_store(kind, tmp_path, monkeypatch):
    """Every model's states written to the study store in float16 (the default) and read back: the where-verdicts
    of a planted signal and of the three nulls are those of the float32 states, their means within 1e-3."""
    import tests.analysis.test_specificity as here
    from mossa.store import Activations, StudyDir

    exact = _where_verdicts(kind, 7)
    study, made, tasks = StudyDir(tmp_path), _task_states, []

    def stored(rng, kind):
        tasks.append(f"t{len(tasks)}")
        out = {}
        for model, acts in made(rng, kind).items():
            study.write_activations(model, tasks[-1], Activations(
                ids=[str(i) for i in range(N)], acts=acts.astype(np.float32), target_nll=np.zeros(N),
                target_tokens=np.zeros(N, np.int64), meta={}), "synthetic", dtype="float16")
            file = study.activation_file(model, tasks[-1])
            assert file.dtype == "float16"
            out[model] = file.read()
        return out

    monkeypatch.setattr(here, "_task_states", stored)
    half = _where_verdicts(kind, 7)
    assert len(tasks) == TASKS  # every task's states came from the store
    assert half[0] == exact[0]
    assert ("holds" in exact[0].values()) == (kind == "planted_late")  # it fired on the signal alone
    for m in exact[1]["seeds"]:
        for r in exact[1]["where"]["ranges"]:
            a, b = exact[1]["where"]["specificity"][m][r], half[1]["where"]["specificity"][m][r]
            assert abs(a["mean"] - b["mean"]) < 1e-3, (m, r)
