import stat

import numpy as np
import pytest

from mossa.errors import MossaError
from mossa.store import Activations, StudyDir, atomic_path, write_json


def test_atomic_path_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "a" / "x.json"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed")
    assert not target.exists()
    assert list(target.parent.iterdir()) == []


def test_written_files_are_readable_by_others(tmp_path):
    write_json(tmp_path / "s.json", {"a": 1})
    mode = stat.S_IMODE((tmp_path / "s.json").stat().st_mode)
    assert mode & stat.S_IRGRP


def test_activation_roundtrip_and_fingerprint(tmp_path):
    study = StudyDir(tmp_path)
    acts = Activations(ids=["t:1", "t:2"], acts=np.arange(12, dtype=np.float32).reshape(2, 2, 3),
                       target_nll=np.array([1.0, 2.0]), target_tokens=np.array([1, 2]), meta={"last_layer": "x"})
    study.write_activations("base", "t", acts, inputs="fp1")
    assert study.activations_done("base", "t", "fp1") and not study.activations_done("base", "t", "fp2")
    back = study.read_activations("base", "t")
    assert back.ids == acts.ids and np.array_equal(back.acts, acts.acts) and back.meta == {"last_layer": "x"}


def test_corrupt_activation_file_is_not_done(tmp_path):
    study = StudyDir(tmp_path)
    study.write_activations("base", "t", _acts(), inputs="fp")
    (study.activation_dir("base", "t") / "acts.npy").write_bytes(b"garbage")
    assert not study.activations_done("base", "t", "fp")
    with pytest.raises(MossaError, match="unreadable activation folder"):
        study.read_activations("base", "t")


def test_truncated_activation_file_is_named(tmp_path):
    study = StudyDir(tmp_path)
    study.write_activations("base", "t", _acts(), inputs="fp")
    path = study.activation_dir("base", "t") / "acts.npy"
    path.write_bytes(path.read_bytes()[:-8])
    with pytest.raises(MossaError, match="truncated"):
        study.read_activations("base", "t")


def test_streamed_blocks_in_any_order_equal_one_write(tmp_path):
    rng = np.random.default_rng(0)
    acts = rng.normal(size=(4, 50, 7)).astype(np.float32)
    ids = [f"t:{i}" for i in range(50)]
    study = StudyDir(tmp_path)
    with study.activation_writer("m", "t", ids=ids, n_states=4, hidden=7, inputs="x", meta={"k": 1}) as sink:
        order = rng.permutation(50)
        for block in np.array_split(order, 7):  # scattered rows, several pwrite runs each
            sink.put(block, acts[:, block])
        sink.finish(np.arange(50.0), np.ones(50, dtype=np.int64))
    file = study.activation_file("m", "t")
    assert file.ids == ids and file.shape == (4, 50, 7) and file.meta == {"k": 1}
    np.testing.assert_array_equal(file.read(), acts)
    rows = np.array([9, 3, 4, 5, 40, 0])
    np.testing.assert_array_equal(file.read(rows, layers=[3, 1]), acts[[3, 1]][:, rows])
    np.testing.assert_array_equal(np.concatenate(list(file.chunks(16)), axis=1), acts)
    np.testing.assert_array_equal(np.load(file.folder / "acts.npy"), acts)  # a plain .npy file
    file.prefetch(rows, [3, 1])  # readahead hint only: the reads are unchanged
    np.testing.assert_array_equal(file.read(rows, layers=[3, 1]), acts[[3, 1]][:, rows])


def test_unwritten_rows_or_a_failure_publish_nothing(tmp_path):
    study = StudyDir(tmp_path)
    with pytest.raises(RuntimeError, match="1 of 3 rows were never written"):
        with study.activation_writer("m", "t", ids=["a", "b", "c"], n_states=1, hidden=2, inputs="x") as sink:
            sink.put([0, 2], np.zeros((1, 2, 2), dtype=np.float32))
    with pytest.raises(KeyError):
        with study.activation_writer("m", "t", ids=["a"], n_states=1, hidden=2, inputs="x") as sink:
            sink.put([0], np.zeros((1, 1, 2), dtype=np.float32))
            raise KeyError("killed")
    assert not study.activation_dir("m", "t").exists()
    assert list(study.path("activations", "m").iterdir()) == []


def test_out_that_is_a_file_is_refused(tmp_path):
    f = tmp_path / "f"
    f.write_text("x")
    with pytest.raises(MossaError, match="not a folder"):
        StudyDir(f).create()


def _acts():
    return Activations(ids=["t:1", "t:2"], acts=np.arange(12, dtype=np.float32).reshape(2, 2, 3),
                       target_nll=np.array([1.0, 2.0]), target_tokens=np.array([1, 2]), meta={})


def test_flipped_bytes_are_detected(tmp_path):
    study = StudyDir(tmp_path)
    study.write_activations("base", "t", _acts(), inputs="fp")
    path = study.activation_dir("base", "t") / "acts.npy"
    data = bytearray(path.read_bytes())
    data[-20] ^= 0xFF  # inside the array data, past the header
    path.write_bytes(bytes(data))
    assert not study.activations_done("base", "t", "fp")
    with pytest.raises(MossaError, match="does not match its hash"):
        study.read_activations("base", "t")


def test_second_run_on_the_same_folder_is_refused(tmp_path):
    study = StudyDir(tmp_path)
    with study.lock():
        with pytest.raises(MossaError, match="another mossa run is using this study folder.*--wait"):
            with StudyDir(tmp_path).lock():
                pass
    with study.lock():  # released: free again
        pass


def test_lock_of_a_killed_process_is_not_stale(tmp_path):
    import subprocess
    import sys

    code = ("import os, sys; sys.path.insert(0, 'src'); from mossa.store import StudyDir; "
            f"cm = StudyDir({str(tmp_path)!r}).lock(); cm.__enter__(); os._exit(9)")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 9  # died holding the lock
    with StudyDir(tmp_path).lock():  # the kernel released it
        pass


def test_hash_check_is_skipped_only_for_an_unchanged_file(tmp_path, monkeypatch):
    import mossa.store as store

    study = StudyDir(tmp_path)
    study.write_activations("base", "t", _acts(), inputs="fp")
    calls = []
    real = store._content_hash
    monkeypatch.setattr(store, "_content_hash", lambda *a: calls.append(1) or real(*a))
    study.activation_file("base", "t")
    assert calls == []  # the writer's stamp holds
    path = study.activation_dir("base", "t") / "acts.npy"
    path.write_bytes(path.read_bytes())  # same bytes, rewritten: new mtime, so hashed again
    study.activation_file("base", "t")
    assert calls == [1]
    study.activation_file("base", "t", verify=True)
    assert len(calls) == 2  # a check begun right after a write is racy: hashed until a tick has passed


def test_prompt_templates_are_read_per_task_and_a_bad_line_names_file_and_line(tmp_path):
    from mossa.errors import MossaError
    from mossa.store import read_prompt_templates

    path = tmp_path / "prompts.jsonl"
    assert read_prompt_templates(path) == {}  # no prompts file: no templates
    path.write_text('{"task": "a", "id": "a:1", "template": 2}\n\n{"task": "b", "id": "b:1", "template": 0}\n')
    assert read_prompt_templates(path) == {"a": {"a:1": 2}, "b": {"b:1": 0}}
    path.write_text('{"task": "a", "id": "a:1", "template": 2}\n{"task": "a", "id": "a:2"}\n')
    with pytest.raises(MossaError, match=r"prompts.jsonl:2: expected a JSON object with task, id and an integer"):
        read_prompt_templates(path)
