"""Studies on tasks mossa has never seen: a new task folder, one custom JSONL file, an SNI folder."""

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest

from mossa.cli import main
from mossa.config import resolve_config
from mossa.tasks import study_tasks
from tests.conftest import FLAN_MINI

FIXTURES = Path(__file__).parent / "tasks" / "fixtures"


def _run(tiny_model, out, *extra):
    return main(["run", "--model", str(tiny_model), "--preset", "quick", "--out", str(out),
                 "--measures", "linear_cka", "--n-boot", "0", *extra])


@pytest.mark.skipif(not FLAN_MINI.is_dir(), reason="flan-mini not beside the checkout")
def test_study_on_a_task_folder_it_has_never_seen(tiny_model, tmp_path):
    """Real rows under new task names, no MANIFEST.json, no written template: every task of the
    folder is studied (the preset's list does not apply to it), with the generic template."""
    folder = tmp_path / "new-tasks"
    folder.mkdir()
    shutil.copy(FLAN_MINI / "sst2.jsonl", folder / "movie_mood.jsonl")
    shutil.copy(FLAN_MINI / "trec.jsonl", folder / "question_kind.jsonl")
    out = tmp_path / "study"
    assert _run(tiny_model, out, "--tasks-dir", str(folder)) == 0
    study = json.loads((out / "study.json").read_text())
    assert sorted(study["tasks"]) == ["movie_mood", "question_kind"]
    assert {info["cluster"] for info in study["tasks"].values()} == {"Unclustered"}
    assert all(info["template"].startswith("generic template") for info in study["tasks"].values())
    sim = pd.read_parquet(out / "results/similarity.parquet")
    assert set(sim["task"]) == {"movie_mood", "question_kind"} and set(sim["model"]) == {"base", "experimental"}


def test_study_on_one_custom_jsonl_task(tiny_model, tmp_path):
    rows = [{"input": {"review": f"w{i} good" if i % 2 else f"w{i} bad"}, "options": ["bad", "good"],
             "target": "good" if i % 2 else "bad"} for i in range(60)]
    path = tmp_path / "my_reviews.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "study"
    assert _run(tiny_model, out, "--task-file", str(path), "--cluster", "Sentiment") == 0
    study = json.loads((out / "study.json").read_text())
    assert list(study["tasks"]) == ["my_reviews"] and study["tasks"]["my_reviews"]["cluster"] == "Sentiment"
    assert study["heldout_tasks"] == []  # a single task: nothing can be held out of E'
    assert study["config"]["task_files"] == [{"path": str(path), "cluster": "Sentiment"}]
    sim = pd.read_parquet(out / "results/similarity.parquet")
    assert set(sim["task"]) == {"my_reviews"}


def test_custom_task_files_join_the_preset_choice(tmp_path):
    if not FLAN_MINI.is_dir():
        pytest.skip("flan-mini not beside the checkout")
    cfg = resolve_config({"preset": "quick", "tasks_dir": FLAN_MINI,
                          "task_files": [{"path": FIXTURES / "custom_reviews.jsonl"}]})
    assert [t.name for t in study_tasks(cfg)] == ["sst2", "e2e_nlg", "custom_reviews"]
    assert study_tasks(cfg)[-1].cluster == "Custom"


def test_sni_folder_is_a_task_source():
    cfg = resolve_config({"tasks_dir": FIXTURES / "sni"})
    tasks = study_tasks(cfg)
    assert tasks and all(t.split("train") and t.split("test") for t in tasks)


@pytest.mark.parametrize("flags, message", [
    (["--cluster", "X"], "--cluster: names the cluster of a --task-file"),
    (["--task-file", "a.jsonl", "--task-file", "b.jsonl", "--cluster", "X", "--cluster", "Y", "--cluster", "Z"],
     "--cluster: given 3 times for 2 --task-file"),
    (["--task-file", "missing.jsonl"], "missing.jsonl"),
])
def test_task_file_errors_exit_2(tiny_model, tmp_path, capsys, flags, message):
    assert _run(tiny_model, tmp_path / "s", *flags) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "s").exists()


@pytest.mark.parametrize("flags, message", [
    (["--tasks-dir", "hub:flan2021", "--tasks", "sst2"], "flan2021 task 'sst2' needs the hub dataset"),
    (["--model", "some-org/some-model"], "model 'some-org/some-model': cannot load it from the hub"),
    (["--experimental", "some-org/some-instruct"], "model 'some-org/some-instruct': cannot load it from the hub"),
])
def test_offline_hub_tasks_and_models_exit_2_with_what_to_do(tiny_model, tiny_tasks, tmp_path, flags, message):
    """Hub sources need a network: offline, one line on stderr says what to do, and no folder is left."""
    import os
    import subprocess
    import sys

    out = tmp_path / "s"
    args = ["run", "--model", str(tiny_model), "--tasks-dir", str(tiny_tasks), "--preset", "quick",
            "--tasks", "tiny_sentiment,tiny_struct", "--out", str(out), *flags]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"),
           "MOSSA_CACHE": str(tmp_path / "cache"), "COLUMNS": "400"}
    proc = subprocess.run([sys.executable, "-m", "mossa.cli", *args], capture_output=True, text=True, env=env)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith("mossa: error:"), proc.stderr
    assert message in lines[0] and ("online" in lines[0] or "download" in lines[0]), lines[0]
    assert not out.exists()
