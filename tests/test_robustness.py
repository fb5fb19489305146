"""Crash safety of `mossa run`: SIGKILL at random moments, then a rerun; a full or read-only disk mid-study.

Every rerun must finish with the similarity table of an uninterrupted run, bit for bit, and leave no
temporary file behind. A temporary is anything hidden in the study dir other than the lock file and
the hash stamps: the store names its temporaries '.<final name>.<8 random characters>.tmp' (the
temp files of `atomic_path`/`write_json`, the temp folders of `adapter_writer` and
`activation_writer`, the set-aside old folder a republished unit replaces), and the lock's
'.mossa.lock.holder' must be gone once a run ends.
"""

from __future__ import annotations

import errno
import json
import os
import random
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from mossa.cli import main
from mossa.store import MARKER, StudyDir, is_temporary
from tests.conftest import write_tiny_tasks

# Every unit runs (controls, E, E' on a held-out task, the base) and the analysis writes every table,
# figure and the report; one measure, few bootstrap draws and one t-SNE layer keep the analysis short,
# and one thread per run lets two runs share two cores without oversubscribing them.
FLAGS = ["--preset", "quick", "--tasks", "tiny_sentiment,tiny_struct", "--holdout", "tiny_struct",
         "--measures", "linear_cka", "--n-boot", "10", "--tsne-layers", "2", "--threads", "1"]
PERMANENT_HIDDEN = {".mossa.lock", ".verified.json"}
TABLE = "results/similarity.parquet"
N_KILLS = 20


def _argv(model: Path, tasks: Path, out: Path) -> list[str]:
    return ["run", "--model", str(model), "--tasks-dir", str(tasks), "--out", str(out), *FLAGS]


def leftovers(root: Path) -> list[str]:
    """Every hidden file or folder under `root` that is not the lock file or a hash stamp."""
    found = []
    for folder, dirs, files in os.walk(root):
        for name in [*dirs, *files]:
            if name.startswith(".") and name not in PERMANENT_HIDDEN:
                found.append(str(Path(folder, name).relative_to(root)))
    return sorted(found)


def check_units_whole(root: Path) -> None:
    """Every published adapter has its marker and every published activation folder its content."""
    study = StudyDir(root)
    for unit in study.path("adapters").iterdir() if study.path("adapters").is_dir() else []:
        assert (unit / MARKER).is_file() and (unit / "adapter_model.safetensors").is_file(), unit
    for folder in study.path("activations").glob("*/*"):
        study.activation_file(folder.parent.name, folder.name, verify=False).verify(full=True)


def assert_same_table(out: Path, reference: pd.DataFrame) -> None:
    table = pd.read_parquet(out / TABLE)
    pd.testing.assert_frame_equal(table, reference, check_exact=True)
    assert table.equals(reference)  # NaNs in the same places too


def _test_env(tmp_path_factory) -> dict[str, str]:
    """The environment the autouse fixture gives every test (module fixtures are set up before it)."""
    env = {k: v for k, v in os.environ.items() if k != "MOSSA_TASKS_DIR"}
    env["MOSSA_CACHE"] = str(os.environ.get("MOSSA_TEST_CACHE") or tmp_path_factory.getbasetemp() / "mossa-cache")
    return env


@pytest.fixture(scope="module")
def reference(tiny_model, tmp_path_factory):
    """The tasks and the similarity table of one uninterrupted run, in this process."""
    tasks = write_tiny_tasks(tmp_path_factory.mktemp("robust-tasks"))
    out = tmp_path_factory.mktemp("robust-reference") / "study"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MOSSA_CACHE", _test_env(tmp_path_factory)["MOSSA_CACHE"])
        mp.delenv("MOSSA_TASKS_DIR", raising=False)
        assert main(_argv(tiny_model, tasks, out)) == 0
    assert leftovers(out) == []
    return tasks, pd.read_parquet(out / TABLE)


# A fork server: it pays the imports and the CMU dictionary (~2 s a run) once, then forks one
# `mossa run` per request into a process group of its own (so the whole group can be killed) and
# reports its pid and, when it ends, its exit code. The server itself never computes with torch,
# so forking it is safe (no thread pool exists yet).
FORK_SERVER = r"""
import json, os, sys, traceback
import filelock, matplotlib.pyplot, peft, sklearn.decomposition, sklearn.manifold, threadpoolctl
import transformers.models.llama.modeling_llama
import mossa.cli, mossa.report.html, mossa.study
from mossa.analysis import _readability
_readability._cmu(), _readability._hyphenator()
os.write(1, b"ready\n")
for line in sys.stdin:
    argv, log = json.loads(line)
    pid = os.fork()
    if pid == 0:
        os.setsid()
        null = os.open(os.devnull, os.O_RDWR)
        os.dup2(null, 0)
        os.dup2(null, 1)
        os.dup2(os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644), 2)
        try:
            code = mossa.cli.main(argv)
        except BaseException:
            traceback.print_exc()
            code = 1
        sys.stderr.flush()
        os._exit(code)
    os.write(1, f"started {pid}\n".encode())
    _, status = os.waitpid(pid, 0)
    os.write(1, f"ended {os.waitstatus_to_exitcode(status)}\n".encode())
"""


class ForkServer:
    """Starts importing at once; the first `start` waits until it is ready."""

    def __init__(self, env: dict[str, str]):
        self.proc = subprocess.Popen([sys.executable, "-c", FORK_SERVER], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, bufsize=0, env=env)
        self.ready = False

    def _line(self, timeout: float) -> str | None:
        """The server's next line, or None when none comes within `timeout` seconds."""
        line = b""
        deadline = time.monotonic() + timeout
        while not line.endswith(b"\n"):
            if not select.select([self.proc.stdout], [], [], max(0.0, deadline - time.monotonic()))[0]:
                return None
            byte = self.proc.stdout.read(1)
            assert byte, "the fork server died"
            line += byte
        return line.decode().strip()

    def start(self, argv: list[str], log: Path) -> int:
        """Fork a `mossa` run with these arguments, stderr to `log`; returns its pid once it runs."""
        if not self.ready:
            assert self._line(timeout=120) == "ready"
            self.ready = True
        self.proc.stdin.write((json.dumps([argv, str(log)]) + "\n").encode())
        return int(self._line(timeout=30).split()[1])

    def wait(self, timeout: float) -> int | None:
        """The exit code of the run in progress, or None while it is still running after `timeout`."""
        line = self._line(timeout)
        return None if line is None else int(line.split()[1])

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.terminate()  # idle between runs: nothing to finish
        self.proc.wait(timeout=30)


def _kill_and_rerun(server: ForkServer, moments: list[float], model: Path, tasks: Path, table: pd.DataFrame,
                    folder: Path) -> int:
    """For each moment: start a fresh study, SIGKILL its process group at that moment, rerun it to the
    end and check the rerun. Returns how many runs were killed (a run may end before its moment)."""
    folder.mkdir()
    killed = 0
    for i, moment in enumerate(moments):
        out, log = folder / f"kill{i}", folder / f"kill{i}.log"
        pid = server.start(_argv(model, tasks, out), folder / f"kill{i}.killed.log")
        code = server.wait(timeout=moment)
        if code is None:
            os.killpg(pid, signal.SIGKILL)
            code = server.wait(timeout=60)
            killed += code == -signal.SIGKILL
        assert code in (0, -signal.SIGKILL), (folder / f"kill{i}.killed.log").read_text()
        server.start(_argv(model, tasks, out), log)
        assert server.wait(timeout=300) == 0, f"rerun after a kill at {moment:.2f} s: {log.read_text()}"
        assert_same_table(out, table)
        assert leftovers(out) == [], f"kill at {moment:.2f} s"
        check_units_whole(out)
    return killed


@pytest.fixture(scope="module")
def lanes(tmp_path_factory):
    """Two fork servers, one per core; asked for before `reference`, they import while it runs."""
    servers = [ForkServer(_test_env(tmp_path_factory)), ForkServer(_test_env(tmp_path_factory))]
    yield servers
    for server in servers:
        server.close()


def _timed_run(server: ForkServer, argv: list[str], out: Path, table: pd.DataFrame) -> float:
    """Seconds of one uninterrupted forked run, checked against the in-process reference."""
    server.start(argv, out.with_suffix(".log"))  # returns once forked (timed from there, like the kills)
    t0 = time.monotonic()
    assert server.wait(timeout=300) == 0, out.with_suffix(".log").read_text()
    seconds = time.monotonic() - t0
    assert_same_table(out, table)
    return seconds


@pytest.mark.skipif(not hasattr(os, "fork"), reason="the fork server needs os.fork")
def test_sigkill_at_random_moments_then_rerun_gives_the_same_table(lanes, tiny_model, reference, tmp_path):
    """20 seeded moments, uniform over an uninterrupted run's duration, on two lanes at once (the
    duration is measured with both lanes busy)."""
    from concurrent.futures import ThreadPoolExecutor

    tasks, table = reference
    with ThreadPoolExecutor(len(lanes)) as pool:
        timed = [pool.submit(_timed_run, lane, _argv(tiny_model, tasks, tmp_path / f"timed{i}"), tmp_path / f"timed{i}",
                             table) for i, lane in enumerate(lanes)]
        duration = sum(run.result() for run in timed) / len(lanes)
        rng = random.Random(20240607)
        moments = [rng.uniform(0, duration) for _ in range(N_KILLS)]
        runs = [pool.submit(_kill_and_rerun, lane, moments[i::len(lanes)], tiny_model, tasks, table,
                            tmp_path / f"lane{i}") for i, lane in enumerate(lanes)]
        killed = sum(run.result() for run in runs)
    assert killed >= N_KILLS // 2, f"only {killed} of {N_KILLS} moments fell inside a {duration:.1f} s run"


def _fail(code: int):
    raise OSError(code, os.strerror(code))


def _activations_full(mp):
    """Every row write of an activation file fails with ENOSPC."""
    mp.setattr(os, "pwrite", lambda *args: _fail(errno.ENOSPC))


def _adapter_full(mp):
    """Saving an adapter fails as safetensors does on a full disk (its own error type, not an OSError)."""
    from safetensors import SafetensorError

    from mossa.models import AdapterHost

    def failing(self, name, path):
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    mp.setattr(AdapterHost, "save", failing)


def _results_read_only(mp):
    """No file can be created in results/ (EROFS)."""
    import tempfile

    real = tempfile.mkstemp
    mp.setattr(tempfile, "mkstemp", lambda *a, **kw: _fail(errno.EROFS) if str(kw.get("dir", "")).endswith("results")
               else real(*a, **kw))


def _figures_denied(mp):
    """No file can be renamed into figures/ (EACCES)."""
    real = os.replace
    mp.setattr(os, "replace", lambda src, dst, **kw: _fail(errno.EACCES) if Path(dst).parent.name == "figures"
               else real(src, dst, **kw))


NO_SPACE = r"cannot write: No space left on device \(ENOSPC\); free some space"
# case -> (patch, the error line, a file finished before the failure that must be kept)
STORAGE_CASES = {
    "activations_enospc": (_activations_full, f"activations/control/tiny_sentiment: {NO_SPACE}",
                           "adapters/control-tiny_sentiment/done.json"),
    "adapter_enospc": (_adapter_full, f"adapters/control-tiny_sentiment: {NO_SPACE}", "config.yaml"),
    "results_erofs": (_results_read_only, r"results/\S+: cannot write: Read-only file system \(EROFS\); choose a",
                      "activations/base/tiny_struct/acts.npy"),
    "figures_eacces": (_figures_denied, r"figures/\S+\.png: cannot write: Permission denied \(EACCES\); make it",
                       "results/similarity.parquet"),
}


@pytest.mark.parametrize("case", list(STORAGE_CASES))
def test_failed_write_is_one_line_and_a_rerun_completes(case, tiny_model, reference, tmp_path, monkeypatch, capsys):
    import re

    tasks, table = reference
    out = tmp_path / "study"
    patch, message, kept = STORAGE_CASES[case]
    with monkeypatch.context() as mp:
        patch(mp)
        assert main(_argv(tiny_model, tasks, out)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("mossa: error:") and re.search(message, err[-1]), err[-1]
    assert not any(line.startswith("mossa: error:") for line in err[:-1]) and "Traceback" not in "".join(err)
    assert (out / kept).is_file() and leftovers(out) == []  # finished work is kept, nothing half-written
    check_units_whole(out)
    assert main(_argv(tiny_model, tasks, out)) == 0
    assert_same_table(out, table)
    assert leftovers(out) == []


def test_sweep_removes_only_temporaries(tmp_path):
    study = StudyDir(tmp_path)
    keep = [tmp_path / "results" / "similarity.csv", tmp_path / "activations" / "base" / "t" / ".verified.json",
            tmp_path / ".mossa.lock", tmp_path / "notes.tmp", tmp_path / ".hidden.tmp"]
    drop = [tmp_path / "results" / ".similarity.csv.k3_9abcd.tmp",
            tmp_path / "activations" / "base" / "t" / "..verified.json.a1b2c3d4.tmp",
            tmp_path / "adapters" / ".control-x.zzzzzzzz.tmp" / "adapter_model.safetensors",
            tmp_path / "activations" / "base" / ".t.0a1b2c3d.tmp" / "acts.npy"]
    for path in keep + drop:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("x")
    removed = study.sweep_temporaries()
    assert sorted(p.name for p in removed) == sorted([".similarity.csv.k3_9abcd.tmp", "..verified.json.a1b2c3d4.tmp",
                                                      ".control-x.zzzzzzzz.tmp", ".t.0a1b2c3d.tmp"])
    assert all(p.exists() for p in keep) and not any(p.exists() for p in drop)
    assert not (tmp_path / "adapters" / ".control-x.zzzzzzzz.tmp").exists()
    assert all(is_temporary(p.name) for p in removed)
