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


# --- half-size stores (activation_dtype) ---------------------------------------------------------------------------

DTYPES = ["float32", "float16", "bfloat16"]
ROW_ERROR = {"float32": 0.0, "float16": 2.0**-11, "bfloat16": 2.0**-8}  # of the row's largest |x - c| (bf16: each)


def _bound(file, acts):
    """The largest error the store's encoding allows for each value of `acts`: 2**-11 of its row's largest
    |x - c| (float16), 2**-8 of its own |x - c| (bfloat16), c the layer's centre; plus float32's rounding of
    x - c and of the decoded sum."""
    if file.dtype == "float32":
        return np.zeros_like(acts)
    spread = np.abs(acts - file.centre()[:, None, :])
    if file.dtype == "float16":
        spread = np.where(np.isfinite(spread), spread, 0).max(axis=-1, keepdims=True)
    return ROW_ERROR[file.dtype] * spread + 2.0**-23 * (np.abs(acts) + spread)


def _stream(study, dtype, acts, *, model="m", task="t", seed=0):
    """Write `acts` [n_states, n, d] in scattered blocks through the writer, stored as `dtype`."""
    rng = np.random.default_rng(seed)
    n_states, n, d = acts.shape
    with study.activation_writer(model, task, ids=[f"t:{i}" for i in range(n)], n_states=n_states, hidden=d,
                                 inputs="x", dtype=dtype) as sink:
        for block in np.array_split(rng.permutation(n), min(5, n)):
            sink.put(block, acts[:, block])
        sink.finish(np.arange(float(n)), np.ones(n, dtype=np.int64))
    return study.activation_file(model, task)


def _realistic(n=60, d=33, n_states=4, seed=0):
    """Heavy-tailed states whose rows differ in scale by orders of magnitude, with a massive coordinate."""
    rng = np.random.default_rng(seed)
    acts = rng.standard_t(3, size=(n_states, n, d)) * 10.0 ** rng.uniform(-3, 3, size=(n_states, n, 1))
    acts[:, :, d // 2] += 3e4 * (1 + 0.01 * rng.normal(size=(n_states, n)))  # gemma's massive activations
    return acts.astype(np.float32)


@pytest.mark.parametrize("dtype", DTYPES)
def test_each_dtype_round_trips_within_its_error(tmp_path, dtype):
    acts = _realistic()
    acts[2, 7] = 0.0  # an all-zero row
    file = _stream(StudyDir(tmp_path), dtype, acts)
    assert file.dtype == dtype and file.shape == acts.shape
    back = file.read()
    assert back.dtype == np.float32
    if dtype == "float32":
        np.testing.assert_array_equal(back, acts)
    else:
        assert np.all(np.abs(back - acts) <= _bound(file, acts))
        assert np.abs(back - acts).max() > 0  # it is a lossy encoding: the bound above is what is tested
        # the centre: each layer's coordinate-wise median of the first block's rows (the writer sorts a block)
        first = np.sort(np.array_split(np.random.default_rng(0).permutation(60), 5)[0])
        np.testing.assert_array_equal(file.centre(), np.median(acts[:, first], axis=1).astype(np.float32))
    rows = np.array([9, 3, 4, 5, 40, 0])
    np.testing.assert_array_equal(file.read(rows, layers=[3, 1]), back[[3, 1]][:, rows])
    buffer = np.full(10_000, np.nan, dtype=np.float32)  # a reused read buffer
    np.testing.assert_array_equal(file.read(rows[::-1], layers=[2], out=buffer), back[[2]][:, rows[::-1]])
    np.testing.assert_array_equal(np.concatenate(list(file.chunks(16)), axis=1), back)
    file.prefetch(rows, [3, 1])
    view = file.view(np.arange(10, 20), 1)
    if dtype == "float32":
        np.testing.assert_array_equal(view, acts[1, 10:20])
    else:
        assert view is None  # decoded values only come from read()


def test_float16_store_keeps_huge_and_tiny_rows_finite_and_accurate(tmp_path):
    acts = np.zeros((2, 5, 8), dtype=np.float32)  # the median of the 5 rows, the centre, is 0 at each layer
    acts[0, 0] = np.linspace(-1e6, 1e6, 8)  # past float16's 65504: overflows without the row's scale
    acts[1, 1] = np.linspace(1e-8, 3e-8, 8)  # below float16's 6e-8 smallest subnormal: underflows without it
    acts[0, 2] = 7e4  # a massive activation, as in gemma
    study = StudyDir(tmp_path)
    with study.activation_writer("m", "t", ids=list("abcde"), n_states=2, hidden=8, inputs="x",
                                 dtype="float16") as sink:
        sink.put(np.arange(5), acts)
    file = study.activation_file("m", "t")
    back = file.read()
    assert not file.centre().any() and np.isfinite(back).all()
    assert np.all(np.abs(back - acts) <= 2.0**-11 * np.abs(acts).max(axis=-1, keepdims=True))
    assert np.all(np.abs(back[1, 1] - acts[1, 1]) <= 2.0**-11 * acts[1, 1])  # each tiny value to 11 bits


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_size_stores_keep_the_spread_of_states_with_a_large_common_part(tmp_path, dtype):
    """Last-token states share a large common part; what the measures read is the spread around it, which
    the store keeps to 16 bits' precision of the spread, not of the common part."""
    rng = np.random.default_rng(1)
    common = rng.normal(size=(3, 1, 40)) * 1e4
    acts = (common + rng.normal(size=(3, 200, 40))).astype(np.float32)  # spread 1e-4 of the states' size
    back = _stream(StudyDir(tmp_path), dtype, acts).read()
    spread = acts - acts.mean(axis=1, keepdims=True)
    error = (back - acts) - (back - acts).mean(axis=1, keepdims=True)
    rel = np.sqrt((error.astype(np.float64) ** 2).sum() / (spread.astype(np.float64) ** 2).sum())
    assert rel < {"float16": 2e-3, "bfloat16": 1e-2}[dtype]  # whole states in 16 bits: ~0.5 (f16), ~4 (bf16)


@pytest.mark.parametrize("dtype", DTYPES)
def test_non_finite_rows_are_recorded_and_stay_non_finite(tmp_path, dtype):
    acts = _realistic(n=6, d=5, n_states=2)
    acts[1, 2, 3] = np.nan
    acts[0, 4, 0] = np.inf
    acts[1, 4, 1] = -np.inf
    file = _stream(StudyDir(tmp_path), dtype, acts)
    assert file.finite_rows().tolist() == [True, True, False, True, False, True]
    back = file.read()
    assert np.isnan(back[1, 2, 3]) and back[0, 4, 0] == np.inf and back[1, 4, 1] == -np.inf
    assert np.isfinite(back[:, [0, 1, 3, 5]]).all() and np.isfinite(np.delete(back[1, 2], 3)).all()


def _flip(path, at):
    data = bytearray(path.read_bytes())
    data[at] ^= 0x10
    path.write_bytes(bytes(data))


STORED_FILES = [("float32", "acts.npy"), ("float16", "acts.npy"), ("float16", "scales.npy"),
                ("float16", "centre.npy"), ("bfloat16", "acts.npy"), ("bfloat16", "centre.npy")]


@pytest.mark.parametrize("dtype, target", STORED_FILES)
def test_corruption_of_any_stored_byte_is_detected(tmp_path, dtype, target):
    study = StudyDir(tmp_path)
    _stream(study, dtype, _realistic(n=10, d=4, n_states=2)).verify(full=True)
    path = study.activation_dir("m", "t") / target
    _flip(path, -3)  # inside the array data, past the header
    assert not study.activations_done("m", "t", "x")
    with pytest.raises(MossaError, match="does not match its hash"):
        study.activation_file("m", "t")


@pytest.mark.parametrize("dtype, target", STORED_FILES)
def test_truncated_store_is_named(tmp_path, dtype, target):
    study = StudyDir(tmp_path)
    _stream(study, dtype, _realistic(n=10, d=4, n_states=2))
    path = study.activation_dir("m", "t") / target
    path.write_bytes(path.read_bytes()[:-2])  # 2 bytes short
    with pytest.raises(MossaError, match="truncated"):
        study.activation_file("m", "t", verify=False)
    assert not study.activations_done("m", "t", "x")


@pytest.mark.parametrize("dtype, target", [f for f in STORED_FILES if f[1] != "acts.npy"])
def test_a_missing_side_file_is_named(tmp_path, dtype, target):
    study = StudyDir(tmp_path)
    _stream(study, dtype, _realistic(n=10, d=4, n_states=2))
    (study.activation_dir("m", "t") / target).unlink()
    with pytest.raises(MossaError, match=f"{dtype} store's {target} is missing"):
        study.activation_file("m", "t", verify=False)
    assert not study.activations_done("m", "t", "x")


def test_a_dtype_meta_json_contradicts_is_refused(tmp_path):
    import json

    study = StudyDir(tmp_path)
    _stream(study, "bfloat16", _realistic(n=10, d=4, n_states=2))
    meta = study.activation_dir("m", "t") / "meta.json"
    info = json.loads(meta.read_text())
    assert info["dtype"] == "bfloat16"
    meta.write_text(json.dumps({**info, "dtype": "float16"}))
    with pytest.raises(MossaError, match="meta.json says float16"):
        study.activation_file("m", "t", verify=False)


@pytest.mark.parametrize("shape", [(1, 1, 1), (2, 10, 4), (19, 48, 640), (5, 1000, 3)])
def test_activation_bytes_is_the_size_written(tmp_path, shape):
    from mossa.store import activation_bytes

    acts = np.random.default_rng(0).normal(size=shape).astype(np.float32)
    sizes = {}
    for dtype in DTYPES:
        folder = _stream(StudyDir(tmp_path / dtype), dtype, acts).folder
        assert {p.name for p in folder.iterdir()} == {".verified.json", "meta.json", "acts.npy"} | (
            {"centre.npy"} if dtype != "float32" else set()) | ({"scales.npy"} if dtype == "float16" else set())
        sizes[dtype] = sum((folder / name).stat().st_size for name in ("acts.npy", "scales.npy", "centre.npy")
                           if (folder / name).exists())
        assert activation_bytes(*shape, dtype) == sizes[dtype]
    assert sizes["bfloat16"] < sizes["float16"]
    if shape[1] > 10 and shape[1] * shape[2] > 100:  # below, the side files' headers and centre outweigh it
        assert sizes["float16"] < sizes["float32"]
    with pytest.raises(ValueError, match="not one of float32, float16, bfloat16"):
        activation_bytes(*shape, "int8")


def test_float32_store_is_what_it_always_was(tmp_path):
    """A float32 folder holds exactly the bytes and hash of the store before half-size stores existed (pinned)."""
    import hashlib
    import json

    study = StudyDir(tmp_path)
    study.write_activations("base", "t", _acts(), inputs="fp")
    folder = study.activation_dir("base", "t")
    assert sorted(p.name for p in folder.iterdir()) == [".verified.json", "acts.npy", "meta.json"]
    assert hashlib.sha256((folder / "acts.npy").read_bytes()).hexdigest() == (
        "b7ab79c679c362dba832f494f6c7bac8e18ea52269df542a5dfa87a6d0b66346")
    info = json.loads((folder / "meta.json").read_text())
    assert "dtype" not in info and info["sha256"] == (
        "c6b79d479f4dc6f7cf56c797f8d65e7c8aeac4193080499c73a48a40fec909a5")


def test_states_key_changes_with_the_store_dtype_and_not_for_float32():
    from types import SimpleNamespace

    from mossa.config import resolve_config
    from mossa.units import StudyContext

    def key(dtype, evaluated=True, which=StudyContext.states_key):
        ctx = SimpleNamespace(cfg=resolve_config({"preset": "quick", "activation_dtype": dtype}),
                              evaluated=lambda label: evaluated)
        ctx.eval_key = lambda label: StudyContext.eval_key(ctx, label)
        return which(ctx, "base")

    assert key("float32") == ("evaluation v1", None)  # the key every float32 study was run with
    assert key("float32", evaluated=False) == ("states only",)
    keys = {dtype: key(dtype) for dtype in DTYPES} | {f"{dtype} states": key(dtype, False) for dtype in DTYPES}
    assert len(set(keys.values())) == len(keys)
    # the causal check's records (eval_key) do not depend on how the states are stored
    assert len({key(dtype, which=StudyContext.eval_key) for dtype in DTYPES}) == 1
