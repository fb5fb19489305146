import numpy as np
import pandas as pd
import pytest

from mossa.analysis import analyze, tsne_embeddings
from mossa.workers import JobPool, choose_workers
from mossa.errors import MossaError
from mossa.store import Activations, StudyDir


def _study(root, rng, tasks=("a", "b", "c"), n=30, layers=4, d=12):
    study = StudyDir(root)
    for task in tasks:
        ids = [f"{task}:test:{i}" for i in range(n)]
        ctl = rng.normal(size=(layers, n, d)).astype(np.float32)
        models = {"control": ctl, "base": ctl + rng.normal(scale=0.8, size=ctl.shape),
                  "experimental": ctl + rng.normal(scale=0.3, size=ctl.shape)}
        if task == "a":  # a held-out task with a ceiling: the costliest job
            models["heldout"] = ctl + rng.normal(scale=0.5, size=ctl.shape)
            models["ceiling"] = ctl + rng.normal(scale=0.1, size=ctl.shape)
        for name, acts in models.items():
            study.write_activations(name, task, Activations(
                ids=ids, acts=acts.astype(np.float32), target_nll=rng.uniform(1, 2, n),
                target_tokens=np.ones(n, dtype=np.int64), meta={}), inputs="x")
    return study


def test_tables_do_not_depend_on_the_workers(tmp_path):
    """Two spawned workers give exactly the tables of one process, rows in study order."""
    tasks = {"a": "A", "b": "B", "c": "A"}
    one = _study(tmp_path / "one", np.random.default_rng(0))
    two = _study(tmp_path / "two", np.random.default_rng(0))
    kw = dict(measures=("linear_cka", "rbf_cka", "procrustes_distance"), heldout=("a",), ceiling=("a",),
              n_boot=20, n_permutations=20)
    serial = analyze(one, tasks, **kw)
    with JobPool(2) as pool:
        parallel = analyze(two, tasks, pool=pool, **kw)
    for a, b in zip(serial, parallel):
        pd.testing.assert_frame_equal(a, b)
    assert list(dict.fromkeys(serial[0]["task"])) == ["a", "b", "c"]
    assert set(serial[0]["model"]) == {"base", "experimental", "heldout", "ceiling"}


def test_tsne_panels_in_workers_match_one_process():
    rng = np.random.default_rng(1)
    reps = {m: {t: rng.normal(size=(3, 20, 6)) for t in ("a", "b")} for m in ("base", "experimental")}
    reps["base"]["a"][0] = reps["base"]["b"][0] = 1.0  # a constant layer: skipped with its reason, in order
    serial = tsne_embeddings(reps, {"a": "A", "b": "B"}, [0, 2], max_iter=250)
    with JobPool(2) as pool:
        parallel = tsne_embeddings(reps, {"a": "A", "b": "B"}, [0, 2], max_iter=250, pool=pool)
    pd.testing.assert_frame_equal(serial, parallel)
    assert serial.attrs["skipped"] == parallel.attrs["skipped"] and serial.attrs["skipped"][0][:2] == ("base", 0)


def test_a_job_error_reaches_the_caller(tmp_path):
    with JobPool(2) as pool, pytest.raises(MossaError, match="activations missing"):
        analyze(StudyDir(tmp_path), {"missing": "A"}, pool=pool)


def test_choose_workers(monkeypatch):
    import mossa.workers as pool

    monkeypatch.setattr(pool, "usable_cores", lambda: 4)
    assert choose_workers("auto", pool.PARALLEL_MIN_WORK, jobs=12) == 4
    assert choose_workers("auto", pool.PARALLEL_MIN_WORK, jobs=3) == 3  # never more workers than jobs
    assert choose_workers("auto", pool.PARALLEL_MIN_WORK - 1, jobs=12) == 1  # small: start-up costs more
    assert choose_workers(2, 10, jobs=12) == 2 and choose_workers(8, 10, jobs=2) == 2
    for bad in (0, -1, True, 1.5, "two"):
        with pytest.raises(MossaError, match="analysis_workers"):
            choose_workers(bad, 10, jobs=2)
