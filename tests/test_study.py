import json

import numpy as np
import pandas as pd

from mossa.config import resolve_config
from mossa.progress import Reporter
from mossa.store import StudyDir
from mossa.study import run_study


def test_ceiling_control_is_a_second_seed_with_its_own_rows(tiny_model, tiny_tasks, tmp_path, monkeypatch):
    """C_t' trains on C_t's examples with another seed, extracts states only, and gives 'ceiling' rows;
    adding a ceiling task to a finished study trains only that unit. (Figures beside ceiling rows are
    drawn in test_cli's held-out study; here they are not saved, to keep the test short.)"""
    import matplotlib.pyplot as plt
    from safetensors.numpy import load_file

    from mossa.report import figures

    monkeypatch.setattr(figures, "save_figure", lambda fig, path: plt.close(fig))
    out = tmp_path / "s"

    def study(ceiling):
        return run_study(resolve_config({
            "model": str(tiny_model), "tasks_dir": tiny_tasks, "preset": "quick", "out": out, "n_boot": 0,
            "tasks": ["tiny_sentiment", "tiny_struct"], "measures": ["linear_cka"], "ceiling_tasks": ceiling,
            "tsne_layers": [1]}), reporter=Reporter(quiet=True))

    result = study(["tiny_struct"])
    sim = result.similarity
    assert set(sim.loc[sim["model"] == "ceiling", "task"]) == {"tiny_struct"}
    assert len(sim[sim["model"] == "ceiling"]) == len(sim[(sim["model"] == "base") & (sim["task"] == "tiny_struct")])
    medians = pd.read_csv(out / "results/medians.csv")
    assert (medians["model"] == "ceiling").any()
    assert "ceiling" not in result.controls.columns  # states only: no test loss to report
    info = json.loads((out / "study.json").read_text())
    assert info["ceiling_tasks"] == ["tiny_struct"] and "ceiling-tiny_struct" in info["executor"]["units"]
    log, control = info["training"]["ceiling-tiny_struct"], info["training"]["control-tiny_struct"]
    assert log["distinct_examples"] == control["distinct_examples"] and log["steps"] == control["steps"]
    assert log["train_loss"] != control["train_loss"]  # another data order and init
    weights = [load_file(out / f"adapters/{u}-tiny_struct/adapter_model.safetensors") for u in ("control", "ceiling")]
    assert weights[0].keys() == weights[1].keys()
    assert not all(np.array_equal(weights[0][k], weights[1][k]) for k in weights[0])
    assert not StudyDir(out).activation_file("ceiling", "tiny_struct").meta["evaluated"]

    stamps = {p: p.stat().st_mtime_ns for p in out.glob("activations/*/*/acts.npy")}
    study(["tiny_sentiment", "tiny_struct"])
    now = {p: p.stat().st_mtime_ns for p in out.glob("activations/*/*/acts.npy")}
    assert {p: now[p] for p in stamps} == stamps  # every unit reused
    assert set(now) - set(stamps) == {out / "activations/ceiling/tiny_sentiment/acts.npy"}


def test_cross_task_states_and_a_second_e_seed(tiny_model, tiny_tasks, tmp_path, monkeypatch):
    """Each control is also read (states only) on the prompts of the tasks it is a reference of; E is trained
    twice under two seeds; study.json records both choices; the long table holds the rows against every
    reference and the specificity rows; the summary opens with E's task specificity; a rerun redoes nothing."""
    import matplotlib.pyplot as plt

    from mossa.report import figures, summarize, summary_sentences
    from mossa.report.html import load_results

    monkeypatch.setattr(figures, "save_figure", lambda fig, path: plt.close(fig))
    out = tmp_path / "s"
    tasks = ["tiny_sentiment", "tiny_struct"]

    def study():
        return run_study(resolve_config({
            "model": str(tiny_model), "tasks_dir": tiny_tasks, "preset": "quick", "out": out, "n_boot": 0,
            "tasks": tasks, "measures": ["debiased_cka"], "experimental_seeds": 2, "cross_tasks": 1,
            "tsne_layers": [1]}), reporter=Reporter(quiet=True))

    study()
    info = json.loads((out / "study.json").read_text())
    chosen = info["cross_tasks"]["chosen"]
    assert info["cross_tasks"]["rule"] == 1 and set(chosen) == set(tasks)
    assert all(len(s) == 1 and t not in s for t, s in chosen.items())
    assert [s["label"] for s in info["experimental_seeds"]] == ["experimental", "experimental_seed2"]
    assert info["experimental_seeds"][0]["seed"] != info["experimental_seeds"][1]["seed"]
    store = StudyDir(out)
    for task, (source,) in chosen.items():
        meta = store.activation_file(f"cross-{source}", task).meta
        assert not meta["evaluated"]
    assert not store.activation_file("experimental_seed2", "tiny_struct").meta["evaluated"]
    assert info["training"]["experimental"]["train_loss"] != info["training"]["experimental_seed2"]["train_loss"]
    full = pd.read_parquet(out / "results/similarity.parquet")
    pairs = set(zip(full["model"], full["reference"]))
    assert {("experimental", "control"), ("experimental_seed2", "control"), ("experimental_seed2", "experimental"),
            ("experimental", "specificity"), ("experimental_seed2", "specificity"), ("base", "specificity")} <= pairs
    for task, (source,) in chosen.items():
        rows = full[(full["task"] == task) & (full["model"] == "experimental")].set_index(["reference", "layer"])
        spec = rows.loc["specificity", "value"] - (rows.loc["control", "value"] - rows.loc[f"cross-{source}", "value"])
        assert np.allclose(spec.dropna(), 0)
    study_json, sim, controls, sections, references = load_results(out)
    assert set(sim["reference"]) == {"control"} and "specificity" in set(references["reference"])
    sentences = summary_sentences(summarize(study_json, sim, controls, sections, references))
    assert sentences[0].startswith("Where E holds each task's own information is not decided: too few tasks")
    assert sentences[1].startswith("Is it each task's own information?") and "E (second seed)" in sentences[1]

    stamps = {p: p.stat().st_mtime_ns for p in out.glob("activations/*/*/acts.npy")}
    study()
    assert {p: p.stat().st_mtime_ns for p in out.glob("activations/*/*/acts.npy")} == stamps
