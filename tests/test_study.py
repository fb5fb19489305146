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
