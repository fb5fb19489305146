import json
import shutil
from pathlib import Path

import pytest

from mossa.errors import MossaError
from mossa.tasks import (
    TASK_SOURCES,
    TaskSource,
    assign_splits,
    load_sni_task,
    load_task_file,
    load_tasks,
    register_task_source,
    render_body,
    resolve_source,
)

FIXTURES = Path(__file__).parent / "fixtures"
SNI = FIXTURES / "sni"
CUSTOM = FIXTURES / "custom_reviews.jsonl"


def _write(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


# --- custom task files --------------------------------------------------------------------------

def test_custom_file_task_name_cluster_template_and_splits():
    task = load_task_file(CUSTOM)
    assert (task.name, task.cluster, task.path) == ("custom_reviews", "Custom", CUSTOM)
    assert task.template.origin.startswith("generic template")
    assert set(task.examples) == {"train", "test"}
    by_id = {ex.id: ex for exs in task.examples.values() for ex in exs}
    assert len(by_id) == 10
    assert by_id["custom_reviews:r9"].split == "test" and by_id["custom_reviews:r10"].split == "train"
    assert by_id["custom_reviews:r1"].options == ("negative", "positive")
    assert "OPTIONS:" in render_body(task, by_id["custom_reviews:r1"])
    assert load_task_file(CUSTOM, "Sentiment").cluster == "Sentiment"


def test_custom_split_assignment_is_stable_under_reordering(tmp_path):
    rows = CUSTOM.read_text().splitlines()
    first = {ex.id: ex.split for exs in load_task_file(CUSTOM).examples.values() for ex in exs}
    shuffled = _write(tmp_path / "custom_reviews.jsonl", rows[::-1] + [json.dumps(
        {"id": "r11", "input": {"review": "ok"}, "options": ["negative", "positive"], "target": "positive"})])
    second = {ex.id: ex.split for exs in load_task_file(shuffled).examples.values() for ex in exs}
    assert {k: second[k] for k in first} == first
    assert load_task_file(CUSTOM).fingerprint == load_task_file(CUSTOM).fingerprint


def test_rows_without_id_hash_on_their_input(tmp_path):
    rows = [{"input": f"Translate to French: word {i}", "target": f"mot {i}"} for i in range(40)]
    task = load_task_file(_write(tmp_path / "fr.jsonl", rows))
    assert {len(task.split("train")), len(task.split("test"))} != {0}
    assert task.template.text.startswith("Input: {input}")
    again = load_task_file(_write(tmp_path / "fr.jsonl", rows[::-1]))
    key = {ex.fields["input"]: ex.split for exs in task.examples.values() for ex in exs}
    assert key == {ex.fields["input"]: ex.split for exs in again.examples.values() for ex in exs}


def test_assign_splits_fraction_and_both_splits():
    splits = assign_splits([f"k{i}" for i in range(2000)])
    assert 0.17 < splits.count("test") / 2000 < 0.23
    assert assign_splits([f"k{i}" for i in range(2000)]) == splits
    for n in (2, 3, 4):
        assert set(assign_splits([f"x{i}" for i in range(n)])) == {"train", "test"}
    assert assign_splits(["same", "same"]) in (["train", "train"], ["test", "test"])


@pytest.mark.parametrize("row, message", [
    ({"input": {"a": "b", "options": ["p", "q"]}, "options": ["p", "q"], "target": "p"},
     r"x\.jsonl:2: field 'options' is given both"),
    ({"input": {"a": "b"}, "options": ["p", "q"], "target": "z"},
     r"x\.jsonl:2: field 'target' 'z' is not one of options"),
    ({"input": {"a": "b"}, "options": ["p"], "target": "p"}, r"x\.jsonl:2: field 'options' must be a list"),
    ({"input": {"a": "b"}, "target": "p", "split": "dev"}, r"x\.jsonl:2: field 'split'"),
    ({"input": {"a": "b"}, "target": "p", "id": True}, r"x\.jsonl:2: field 'id'"),
])
def test_custom_file_errors_name_file_line_and_field(tmp_path, row, message):
    path = _write(tmp_path / "x.jsonl", [{"input": {"a": "c"}, "target": "p"}, row])
    with pytest.raises(MossaError, match=message):
        load_task_file(path)


def test_custom_file_missing():
    with pytest.raises(MossaError, match=r"nope\.jsonl: task file not found"):
        load_task_file(Path("nope.jsonl"))


# --- Super-NaturalInstructions ------------------------------------------------------------------

def test_sni_task_cluster_template_targets_and_splits():
    task = load_sni_task("task900_fixture_capitals", SNI / "tasks" / "task900_fixture_capitals.json")
    assert task.cluster == "Question Answering"
    assert set(task.examples) == {"train", "test"}
    assert sum(len(v) for v in task.examples.values()) == 10
    ex = next(e for exs in task.examples.values() for e in exs if e.id.endswith("task900-6273c064"))
    assert ex.target == "Santiago" and ex.fields == {"input": "Chile"}
    body = render_body(task, ex)
    assert body.startswith("You are given the name of a country.") and "in the form {City}." in body
    assert "Example 1\nInput: France\nOutput: Paris" in body and "Example 2" in body and "Example 3" not in body
    assert body.endswith("Input: Chile")
    assert task.template.truncate == ("input",)
    assert "Example 2" not in render_body(task, ex, template=task.template.shorter)
    assert "Example 1" not in render_body(task, ex, template=task.template.shorter.shorter)


@pytest.mark.parametrize("edit, message", [
    (lambda d: d.pop("Definition"), r"field 'Definition' must be a non-empty list of strings"),
    (lambda d: d.update(Categories=[]), r"field 'Categories'"),
    (lambda d: d["Instances"][3].update(output=[]), r"Instances\[3\]\.output"),
    (lambda d: d["Instances"][1].update(id=d["Instances"][0]["id"]), r"duplicate id 'task900-0c1f6a0e'"),
])
def test_sni_errors_name_file_and_field(tmp_path, edit, message):
    data = json.loads((SNI / "tasks" / "task900_fixture_capitals.json").read_text())
    edit(data)
    path = tmp_path / "task900_bad.json"
    path.write_text(json.dumps(data))
    with pytest.raises(MossaError, match=r"task900_bad\.json: .*" + message):
        load_sni_task("task900_bad", path)


def test_sni_folder_is_detected_flat_and_as_checkout(tmp_path):
    tasks = load_tasks(SNI)
    assert [t.name for t in tasks] == ["task900_fixture_capitals", "task901_fixture_review_polarity"]
    assert tasks[1].cluster == "Sentiment Analysis"
    flat = tmp_path / "flat"
    flat.mkdir()
    shutil.copy(SNI / "tasks" / "task901_fixture_review_polarity.json", flat)
    assert resolve_source(flat)[0].name == "sni-folder"
    assert [t.name for t in load_tasks(flat, ["task901_fixture_review_polarity"])] == [
        "task901_fixture_review_polarity"]


# --- load_tasks and the source registry ---------------------------------------------------------

def test_folder_detection(tiny_tasks, tmp_path):
    assert resolve_source(tiny_tasks)[0].name == "jsonl-folder"
    assert resolve_source(SNI)[0].name == "sni-folder"
    assert resolve_source("hub:flan2021")[0].name == "hub:flan2021"
    (tmp_path / "empty").mkdir()
    with pytest.raises(MossaError, match=r"empty: no task files here; expected <task>\.jsonl .* task\*\.json"):
        load_tasks(tmp_path / "empty")
    with pytest.raises(MossaError, match=r"unknown task source 'hub:flan2012'.*did you mean hub:flan2021"):
        load_tasks("hub:flan2012")


def test_sources_merge_and_task_files_alone(tiny_tasks):
    tasks = load_tasks(tiny_tasks, task_files=[(CUSTOM, "Sentiment")])
    assert [t.name for t in tasks] == ["tiny_sentiment", "tiny_struct", "custom_reviews"]
    assert tasks[-1].cluster == "Sentiment"
    alone = load_tasks(None, task_files=[(CUSTOM, None)])
    assert [(t.name, t.cluster) for t in alone] == [("custom_reviews", "Custom")]


def test_duplicate_names_across_sources_name_both_origins(tiny_tasks, tmp_path):
    dup = tmp_path / "tiny_sentiment.jsonl"
    shutil.copy(tiny_tasks / "tiny_sentiment.jsonl", dup)
    with pytest.raises(MossaError, match=r"task 'tiny_sentiment' is defined twice: by .*tasks/tiny_sentiment\.jsonl "
                                         r"and by .*/tiny_sentiment\.jsonl"):
        load_tasks(tiny_tasks, task_files=[(dup, None)])


def test_unknown_name_lists_close_names_from_all_sources(tiny_tasks):
    with pytest.raises(MossaError, match=r"unknown task 'custom_review'.*did you mean custom_reviews"):
        load_tasks(tiny_tasks, ["custom_review"], task_files=[(CUSTOM, None)])


def test_register_task_source_is_strict():
    existing = TASK_SOURCES["jsonl-folder"]
    with pytest.raises(ValueError, match="registered already"):
        register_task_source(existing)
    with pytest.raises(ValueError, match="lower-case"):
        register_task_source(TaskSource(name="Bad Name", description="", catalog=lambda _: {}))
    assert list(TASK_SOURCES)[:2] == ["jsonl-folder", "sni-folder"]
