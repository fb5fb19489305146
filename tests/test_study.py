import json

import numpy as np
import pandas as pd
import pytest

from mossa.config import DEMO_TASKS, resolve_config
from mossa.errors import MossaError
from mossa.progress import Reporter
from mossa.store import StudyDir
from mossa.study import resolve_ceiling, resolve_holdout, run_study
from mossa.tasks import load_tasks
from tests.conftest import FLAN_MINI


@pytest.mark.skipif(not FLAN_MINI.is_dir(), reason="flan-mini not beside the checkout")
def test_auto_holdout_takes_one_task_from_each_of_seven_clusters():
    tasks = load_tasks(FLAN_MINI)
    cluster = {t.name: t.cluster for t in tasks}
    held = resolve_holdout(resolve_config({"seed": 0}), tasks)
    assert len(held) == 7 and len({cluster[t] for t in held}) == 7
    assert held == resolve_holdout(resolve_config({"seed": 0}), tasks)
    assert held != resolve_holdout(resolve_config({"seed": 1}), tasks)
    assert resolve_holdout(resolve_config({"holdout": "none"}), tasks) == ()


def test_auto_holdout_never_takes_every_task(tiny_tasks):
    tasks = load_tasks(tiny_tasks)
    assert len(resolve_holdout(resolve_config({"preset": "demo"}), tasks)) == 1


@pytest.mark.skipif(not FLAN_MINI.is_dir(), reason="flan-mini not beside the checkout")
def test_auto_holdout_takes_at_most_half_the_tasks():
    held = resolve_holdout(resolve_config({}), load_tasks(FLAN_MINI, DEMO_TASKS))
    assert len(held) == len(DEMO_TASKS) // 2 == 2


TWELVE_CLUSTERS = ["snli", "openbookqa", "arc_easy", "copa", "winogrande", "sst2", "glue_mrpc", "e2e_nlg",
                   "tatoeba_translate_deen", "ag_news_subset", "cosmos_qa", "trec"]  # one task per cluster


@pytest.mark.skipif(not FLAN_MINI.is_dir(), reason="flan-mini not beside the checkout")
def test_auto_ceiling_takes_four_tasks_of_different_clusters():
    tasks = load_tasks(FLAN_MINI, TWELVE_CLUSTERS)
    cluster = {t.name: t.cluster for t in tasks}
    picked = resolve_ceiling(resolve_config({}), tasks)
    assert picked == ("snli", "winogrande", "e2e_nlg", "trec") and len({cluster[t] for t in picked}) == 4
    assert resolve_ceiling(resolve_config({"ceiling_tasks": ["trec", "sst2"]}), tasks) == ("sst2", "trec")
    assert resolve_ceiling(resolve_config({"preset": "quick"}), tasks) == ()
    with pytest.raises(MossaError, match=r"^field 'ceiling_tasks': nope not among the study's tasks"):
        resolve_ceiling(resolve_config({"ceiling_tasks": ["nope"]}), tasks)


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
