import numpy as np
import pandas as pd

from mossa.analysis import analyze
from mossa.analysis._similarity import align, task_similarity
from mossa.similarity import linear_cka
from mossa.store import Activations, StudyDir


def _acts(ids, acts):
    n = len(ids)
    return Activations(ids=list(ids), acts=acts, target_nll=np.ones(n), target_tokens=np.ones(n, dtype=np.int64),
                       meta={})


def _three(rng, n=40, layers=3, d=8):
    ids = [f"t:test:{i}" for i in range(n)]
    ctl = rng.normal(size=(layers, n, d)).astype(np.float32)
    base = (ctl + rng.normal(scale=0.5, size=ctl.shape)).astype(np.float32)
    exp = (ctl + rng.normal(scale=0.2, size=ctl.shape)).astype(np.float32)
    return ids, ctl, base, exp


def test_rows_shuffled_in_one_model_are_aligned_by_id():
    rng = np.random.default_rng(0)
    ids, ctl, base, exp = _three(rng)
    runs = {"control": _acts(ids, ctl), "base": _acts(ids, base), "experimental": _acts(ids, exp)}
    ref = task_similarity("t", "C", runs)
    perm = rng.permutation(len(ids))
    runs["base"] = _acts([ids[i] for i in perm], base[:, perm])
    shuffled = task_similarity("t", "C", runs)
    assert [r["value"] for r in shuffled] == [r["value"] for r in ref]
    assert abs(ref[1]["value"] - linear_cka(base[1], ctl[1])) < 1e-6  # streamed: float32 chunk products
    # positional pairing of the shuffled rows would give a different (wrong) value
    assert abs(linear_cka(base[1][perm], ctl[1]) - ref[1]["value"]) > 1e-3


def test_non_finite_rows_are_dropped_jointly_and_counted():
    rng = np.random.default_rng(1)
    ids, ctl, base, exp = _three(rng)
    base[2, 5, 0] = np.nan
    exp[0, 9, 3] = np.inf
    runs = {"control": _acts(ids, ctl), "base": _acts(ids, base), "experimental": _acts(ids, exp)}
    kept, acts, dropped = align(runs)
    assert dropped == 2 and len(kept) == 38 and "t:test:5" not in kept and "t:test:9" not in kept
    rows = task_similarity("t", "C", runs)
    assert all(r["n_examples"] == 38 and r["n_dropped"] == 2 for r in rows)
    keep = [i for i in range(40) if i not in (5, 9)]
    assert abs(rows[0]["value"] - linear_cka(base[0][keep], ctl[0][keep])) < 1e-6


def test_missing_ids_use_the_intersection():
    rng = np.random.default_rng(2)
    ids, ctl, base, exp = _three(rng)
    runs = {"control": _acts(ids, ctl), "base": _acts(ids[:30], base[:, :30]), "experimental": _acts(ids, exp)}
    kept, _, _ = align(runs)
    assert kept == ids[:30]


def test_constant_layer_is_undefined_with_reason(tmp_path):
    rng = np.random.default_rng(3)
    ids, ctl, base, exp = _three(rng)
    for a in (ctl, base, exp):
        a[0] = 1.0
    study = StudyDir(tmp_path)
    for name, a in (("control", ctl), ("base", base), ("experimental", exp)):
        study.write_activations(name, "t", _acts(ids, a), inputs="x")
    sim, controls, cross, medians, _ = analyze(study, {"t": "C"})
    assert medians[(medians["layer"] == 0)]["ci_source"].eq("undefined").all()
    assert cross[cross["layer"] == 0]["value"].isna().all()
    layer0 = sim[sim["layer"] == 0]
    assert layer0["value"].isna().all() and (layer0["undefined_reason"] != "").all()
    assert sim[sim["layer"] > 0]["value"].notna().all()
    assert pd.read_parquet(tmp_path / "results/similarity.parquet").shape == sim.shape
    assert {"task", "metric", "base", "control"} <= set(controls.columns)


def test_many_examples_stream_from_disk_and_match_memory(tmp_path, monkeypatch):
    """n >> d: values come from the streamed statistics; above EXACT_MAX_N the intervals come from
    a subsample with root-n scaling, labelled as such."""
    import mossa.analysis._jackknife as jackknife

    rng = np.random.default_rng(5)
    ids, ctl, base, exp = _three(rng, n=600, layers=3, d=6)
    study = StudyDir(tmp_path)
    for name, a in (("control", ctl), ("base", base), ("experimental", exp)):
        study.write_activations(name, "t", _acts(ids, a), inputs="x")
    monkeypatch.setattr(jackknife, "EXACT_MAX_N", 200)
    sim, _, cross, _, _ = analyze(study, {"t": "C"}, measures=("linear_cka", "debiased_cka"), n_boot=50,
                               chunk_rows=64)
    row = sim[(sim.model == "base") & (sim.layer == 1) & (sim.measure == "linear_cka")].iloc[0]
    assert abs(row.value - linear_cka(base[1], ctl[1])) < 1e-6
    assert "on 200 of 600 rows, scaled by (m/n)^(" in row.ci_method and row.ci_low < row.value < row.ci_high
    assert row.ci_high - row.ci_low < 0.2
    got = cross[(cross.model == "base") & (cross.layer == 2) & (cross.control_layer == 0)].value.iloc[0]
    assert abs(got - linear_cka(base[2], ctl[0])) < 1e-6


def test_the_null_re_pairs_within_the_templates_of_prompts_jsonl(tmp_path):
    """A study whose prompts use several templates gets nulls within templates (null_strata) from
    prompts.jsonl; a B that shares only the template with C_t is then not significant, as it is under the
    plain re-pairing of a study without the file. One template: the plain null, value for value."""
    import json

    rng = np.random.default_rng(11)
    n, d, layers = 64, 12, 2
    ids = [f"t:test:{i}" for i in range(n)]
    templates = np.arange(n) % 4
    shift = lambda: rng.normal(scale=3, size=(4, d))[templates]  # noqa: E731
    ctl = (shift() + rng.normal(size=(layers, n, d))).astype(np.float32)
    base = (shift() + rng.normal(size=(layers, n, d))).astype(np.float32)  # the template, nothing else
    exp = (ctl + rng.normal(scale=0.3, size=ctl.shape)).astype(np.float32)
    tables = {}
    for case, groups in (("none", None), ("one", np.zeros(n, int)), ("four", templates)):
        study = StudyDir(tmp_path / case)
        for name, a in (("control", ctl), ("base", base), ("experimental", exp)):
            study.write_activations(name, "t", _acts(ids, a), inputs="x")
        if groups is not None:
            (tmp_path / case / "prompts.jsonl").write_text("".join(
                json.dumps({"task": "t", "id": i, "template": int(g)}) + "\n" for i, g in zip(ids, groups)))
        sim, *_ = analyze(study, {"t": "C"}, measures=("linear_cka",), n_boot=0, n_permutations=99)
        tables[case] = sim.set_index(["model", "layer"])
    assert (tables["none"]["null_strata"] == 1).all() and (tables["four"]["null_strata"] == 4).all()
    pd.testing.assert_frame_equal(tables["none"], tables["one"])  # one template: the plain null exactly
    assert (tables["none"].loc["base", "p_value"] == 1 / 100).all()  # plain: the template looks significant
    assert (tables["four"].loc["base", "p_value"] > 0.05).all()  # within templates: it is not
    assert (tables["four"].loc["experimental", "p_value"] == 1 / 100).all()  # example-specific: still found
