"""Executors: the same two-task study run in this process and as Ray tasks gives the same tables."""

import json
import os
import sys

import pandas as pd
import pytest

from mossa.config import resolve_config
from mossa.errors import MossaError
from mossa.executors import Unit, executor_names, make_executor
from mossa.progress import Reporter
from mossa.study import run_study

# A local Ray instance that reaches nothing: no usage reports, no dashboard, quiet logs.
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_DISABLE_DOCKER_CPU_WARNING", "1")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")


def _config(tiny_model, tiny_tasks, out, **extra):
    return resolve_config({"model": str(tiny_model), "tasks_dir": tiny_tasks, "preset": "quick",
                           "tasks": ["tiny_sentiment", "tiny_struct"], "out": out, "measures": ["linear_cka"],
                           "threads": 1, **extra})


def assert_same_study(local, remote) -> list[dict]:
    """The two runs' tables are equal bit for bit (in memory and on disk), both studies complete, and each
    adapter's losses the same; returns both study.json records."""
    pd.testing.assert_frame_equal(remote.similarity, local.similarity, check_exact=True)
    assert remote.similarity.equals(local.similarity)  # bit for bit, NaNs in the same places
    pd.testing.assert_frame_equal(remote.controls, local.controls, check_exact=True)
    on_disk = [pd.read_parquet(r.root / "results/similarity.parquet") for r in (local, remote)]
    assert on_disk[0].equals(on_disk[1])
    studies = [json.loads((r.root / "study.json").read_text()) for r in (local, remote)]
    assert [s["status"] for s in studies] == ["complete", "complete"]
    for unit in ("control-tiny_sentiment", "control-tiny_struct", "experimental"):
        assert studies[1]["training"][unit]["train_loss"] == studies[0]["training"][unit]["train_loss"], unit
    return studies


def test_ray_executor_gives_the_local_executors_tables(tiny_model, tiny_tasks, tmp_path):
    ray = pytest.importorskip("ray")
    quiet = Reporter(quiet=True)
    local = run_study(_config(tiny_model, tiny_tasks, tmp_path / "local"), reporter=quiet)
    remote = run_study(_config(tiny_model, tiny_tasks, tmp_path / "ray", executor="ray", ray_cpus=2,
                               cpus_per_unit=1), reporter=quiet)
    assert not ray.is_initialized()  # the instance it started is stopped again

    studies = assert_same_study(local, remote)
    assert studies[0]["executor"]["name"] == "local"
    assert studies[1]["executor"] == {"name": "ray", "address": "local instance", "ray": ray.__version__,
                                      "threads": 1, "cpus_per_unit": 1.0, "gpus_per_unit": 0.0,
                                      "units": ["control-tiny_sentiment", "control-tiny_struct", "experimental",
                                                "base"]}
    assert studies[1]["config"]["executor"] == "ray"
    assert (remote.root / "report.html").is_file()
    assert not (remote.root / ".mossa.lock.holder").exists()


def test_unknown_executor_names_the_field(tiny_model, tiny_tasks, tmp_path):
    assert "local" in executor_names() and "ray" in executor_names()
    with pytest.raises(MossaError, match=r"field 'executor': .*unknown executor 'dask'.*local, ray"):
        resolve_config({"executor": "dask"})
    with pytest.raises(MossaError, match=r"field 'executor': unknown executor 'dask'"):
        make_executor("dask")
    with pytest.raises(MossaError, match=r"field 'ray_address': .*only used with executor 'ray'"):
        resolve_config({"ray_address": "auto"})


def test_missing_ray_is_one_clear_error(tiny_model, tiny_tasks, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now fails as if it were not installed
    with pytest.raises(MossaError, match=r"field 'executor': 'ray' needs the ray package.*pip install"):
        run_study(_config(tiny_model, tiny_tasks, tmp_path / "s", executor="ray"), reporter=Reporter(quiet=True))
    assert not (tmp_path / "s").exists()


def test_a_refusal_by_rays_token_authentication_is_one_line(monkeypatch):
    ray = pytest.importorskip("ray")
    from mossa.executors import _auth_refusal

    # What ray.init raises (Ray 2.60) when the cluster turns the driver's token away: the reason is in the cause.
    refused = ConnectionError("Failed to connect to Ray cluster at 10.0.0.1:6379")
    refused.__cause__ = RuntimeError("Failed to connect to GCS. Last connection error: Traceback (most recent call "
                                     "last):\nray.exceptions.AuthenticationError: RPC error: InvalidAuthToken: "
                                     "Authentication token is missing or incorrect. Ensure that ...\n")
    monkeypatch.delenv("RAY_AUTH_MODE", raising=False)
    line = str(_auth_refusal(ray, refused, "head:6379"))
    assert line.startswith("field 'ray_address': the Ray cluster at head:6379 refused this driver: its token "
                           "authentication is on") and "set RAY_AUTH_MODE=token RAY_AUTH_TOKEN=" in line
    assert "\n" not in line
    monkeypatch.setenv("RAY_AUTH_MODE", "token")
    assert "refused this driver's token (it is not the cluster's)" in str(_auth_refusal(ray, refused, "head:6379"))
    refused.__cause__ = RuntimeError(f"{refused.__cause__}. Note: RAY_AUTH_MODE is currently 'disabled' (not 'token').")
    assert "Ray sends a token only with RAY_AUTH_MODE=token" in str(_auth_refusal(ray, refused, "head:6379"))
    unreachable = ConnectionError("Failed to connect to Ray cluster at 10.0.0.1:6379")
    unreachable.__cause__ = RuntimeError("Failed to connect to GCS. Last connection error: ... Deadline Exceeded")
    assert _auth_refusal(ray, unreachable, "head:6379") is None  # any other failure keeps its own message


def _square(x):
    return x * x


def test_local_executor_runs_units_in_order():
    with make_executor("local") as executor:
        assert executor.map([Unit(f"u{i}", _square, (i,)) for i in range(4)]) == [0, 1, 4, 9]


def test_the_progress_line_gives_the_time_left_at_the_rate_measured_so_far():
    from mossa.executors import Unit, progress_line

    units = [Unit("a", print, work=1.0), Unit("b", print, work=3.0), Unit("c", print, work=0.0)]
    assert progress_line(units, [True, False, False], 10.0) == "1 of 3 units done, 0:10 elapsed, about 0:30 left"
    assert progress_line(units, [True, True, False], 40.0) == "2 of 3 units done, 0:40 elapsed, about 0:00 left"
    assert progress_line(units, [True, True, True], 41.0) == "3 of 3 units done, 0:41 elapsed"
    unweighted = [Unit("a", print), Unit("b", print)]
    assert progress_line(unweighted, [True, False], 5.0) == "1 of 2 units done, 0:05 elapsed"  # no estimate, no ETA
