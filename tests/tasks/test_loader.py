import json

import pytest

from mossa.errors import MossaError
from mossa.tasks import load_tasks, read_task_file
from mossa.tasks._loader import field_text


def _write(path, lines):
    path.write_bytes(b"".join((ln if isinstance(ln, bytes) else ln.encode()) + b"\n" for ln in lines))
    return path


GOOD = json.dumps({"input": {"sentence": "fine"}, "target": "yes", "split": "train"})


@pytest.mark.parametrize("bad, message", [
    ("{not json", r":2: not valid JSON"),
    (json.dumps({"target": "x", "split": "train"}), r":2: field 'input' is missing"),
    (json.dumps({"input": {"a": "b"}, "split": "train"}), r":2: field 'target'"),
    (json.dumps({"input": {"a": "b"}, "target": "x", "split": "dev"}), r":2: field 'split'"),
    (json.dumps({"input": {"a": "b", "options": ["p", "q"]}, "target": "x", "split": "test"}),
     r":2: field 'target' 'x' is not one of input.options"),
    (json.dumps({"input": {"a": {"b": 1}}, "target": "x", "split": "test"}), r":2: field 'input.a'"),
    (json.dumps([1, 2]), r":2: expected a JSON object"),
])
def test_malformed_rows_name_file_line_and_field(tmp_path, bad, message):
    path = _write(tmp_path / "t.jsonl", [GOOD, bad])
    with pytest.raises(MossaError, match=r"t\.jsonl" + message):
        read_task_file(path, "t")


def test_non_utf8_is_reported(tmp_path):
    path = _write(tmp_path / "t.jsonl", [GOOD, b'{"input": "\xff\xfe", "target": "a", "split": "train"}'])
    with pytest.raises(MossaError, match=r"t\.jsonl:2: not valid UTF-8"):
        read_task_file(path, "t")


def test_duplicate_ids(tmp_path):
    row = json.dumps({"id": 7, "input": "x", "target": "y", "split": "train"})
    with pytest.raises(MossaError, match=r":2: duplicate example id 't:7' \(first at line 1\)"):
        read_task_file(_write(tmp_path / "t.jsonl", [row, row]), "t")


def test_ids_are_stable_and_splits_grouped(tmp_path):
    rows = [json.dumps({"input": {"s": f"x{i}"}, "target": "y", "split": s}) for i, s in
            enumerate(["train", "test", "train"])]
    splits = read_task_file(_write(tmp_path / "t.jsonl", rows), "t")
    assert [e.id for e in splits["train"]] == ["t:train:1", "t:train:3"]
    assert [e.id for e in splits["test"]] == ["t:test:2"]


def test_string_input_and_list_fields():
    assert field_text([["a", "b", "c"], ["d", "e", "f"]]) == "a | b | c; d | e | f"
    assert field_text(["x", "y"]) == "x; y"
    assert field_text({"k": 1}) is None and field_text(True) is None


def test_unknown_task_lists_close_names(tiny_tasks):
    with pytest.raises(MossaError, match=r"unknown task 'tiny_sentimnt'.*did you mean tiny_sentiment"):
        load_tasks(tiny_tasks, ["tiny_sentimnt"])


def test_missing_folder(tmp_path):
    with pytest.raises(MossaError, match=r"nope: task folder not found"):
        load_tasks(tmp_path / "nope")


def test_manifest_clusters_and_missing_manifest(tiny_tasks):
    tasks = {t.name: t for t in load_tasks(tiny_tasks)}
    assert tasks["tiny_sentiment"].cluster == "Sentiment"
    (tiny_tasks / "MANIFEST.json").unlink()
    assert {t.cluster for t in load_tasks(tiny_tasks)} == {"Unclustered"}


def test_template_field_missing_from_row(tiny_tasks):
    path = tiny_tasks / "tiny_sentiment.jsonl"
    lines = path.read_text().splitlines()
    lines.append(json.dumps({"input": {"other": "x"}, "target": "y", "split": "test"}))
    path.write_text("\n".join(lines) + "\n")
    # tiny tasks use the generic template built from the first row's fields
    with pytest.raises(MossaError, match=rf"tiny_sentiment\.jsonl:{len(lines)}: field 'input.sentence' is missing"):
        load_tasks(tiny_tasks, ["tiny_sentiment"])
