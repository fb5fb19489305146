"""A two-node Ray cluster on this machine (a head and one worker node, each `ray start`ed with its own
temp dir, ports and home): a study run on it gives the local executor's tables, and a driver that
Ray's token authentication turns away gets one line that says what to set.

Authentication is as Ray (2.60) does it for a head that finds a token in its ~/.ray/auth_token
(`ray get-auth-token --generate` writes it): on. The worker node and the driver get the token as
a user gives it, RAY_AUTH_MODE=token and RAY_AUTH_TOKEN. Every node is killed by its process group
at the end, whatever happened.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from mossa.errors import MossaError
from mossa.progress import Reporter
from mossa.study import run_study
from tests.test_executors import _config, assert_same_study

ray = pytest.importorskip("ray")
if not hasattr(ray.exceptions, "AuthenticationError"):
    pytest.skip("this Ray has no token authentication", allow_module_level=True)

AUTH_VARS = ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")
NODE_PORTS = ("--node-manager-port", "--object-manager-port", "--dashboard-agent-listen-port",
              "--dashboard-agent-grpc-port", "--runtime-env-agent-port", "--metrics-export-port")


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


class _Cluster:
    """Ray nodes started on this machine, each in a session of its own: what is killed at the end."""

    def __init__(self, root: Path):
        self.root, self.sessions, self.address, self.token = root, [], "", ""

    def _ray(self, name: str, args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
        home = self.root / name
        home.mkdir(exist_ok=True)
        clean = {k: v for k, v in os.environ.items() if k not in AUTH_VARS and k != "RAY_ADDRESS"}
        proc = subprocess.Popen([sys.executable, "-m", "ray.scripts.scripts", *args], env={
            **clean, "HOME": str(home), "RAY_USAGE_STATS_ENABLED": "0", **env}, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True, start_new_session=True)
        if args[0] == "start":
            self.sessions.append(proc.pid)  # the daemons `ray start` leaves, and their workers, stay in its session
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, f"ray {' '.join(args)} failed:\n{out[-2000:]}\n{err[-2000:]}"
        return subprocess.CompletedProcess(args, proc.returncode, out, err)

    def _start(self, name: str, args: list[str], env: dict[str, str]) -> None:
        ports = [str(p) for pair in zip(NODE_PORTS, _free_ports(len(NODE_PORTS))) for p in pair]
        self._ray(name, ["start", *args, "--node-ip-address", "127.0.0.1", "--num-cpus", "1", "--num-gpus", "0",
                         "--object-store-memory", str(100 * 1024 * 1024), "--disable-usage-stats",
                         "--temp-dir", str(self.root / name / "ray"), *ports], env)

    def start_head(self) -> None:
        """A head that finds a token in its ~/.ray/auth_token: Ray turns token authentication on."""
        self.token = self._ray("head", ["get-auth-token", "--generate"], {}).stdout.strip()  # the token alone
        port, dashboard = _free_ports(2)
        self._start("head", ["--head", "--port", str(port), "--include-dashboard=false", "--dashboard-port",
                             str(dashboard)], {})
        self.address = f"127.0.0.1:{port}"

    def add_worker(self, name: str) -> None:
        """A node joining with the head's token, in its own home (as on another machine)."""
        self._start(name, [f"--address={self.address}"], {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": self.token})

    def stop(self) -> None:
        """Kill every process of the nodes' sessions (`ray stop` has no per-node choice: it stops every
        Ray process of the machine); Ray's workers have process groups of their own, not sessions."""
        for session in self.sessions:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(session, signal.SIGKILL)  # the daemons `ray start` left: the group it led
        deadline = time.monotonic() + 15
        while (left := _in_sessions(set(self.sessions))) and time.monotonic() < deadline:
            for pid in left:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.2)
        shutil.rmtree(self.root, ignore_errors=True)


def _in_sessions(sessions: set[int]) -> list[int]:
    """The live (not zombie) processes of these sessions, from /proc (none where there is no /proc)."""
    pids = []
    for entry in os.listdir("/proc") if os.path.isdir("/proc") else []:
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except (OSError, ValueError):
            continue
        fields = stat[stat.rindex(")") + 2:].split()  # state, ppid, pgrp, session, ...
        if fields[0] != "Z" and int(fields[3]) in sessions:
            pids.append(int(entry))
    return pids


@pytest.fixture()
def cluster():
    # Short: Ray's socket paths under the temp dir must stay within the 107 characters of a Unix socket.
    made = _Cluster(Path(tempfile.mkdtemp(prefix="mossa-ray-")))
    try:
        made.start_head()
        yield made
    finally:
        made.stop()


@pytest.fixture()
def driver_auth():
    """Set this process's Ray authentication variables; Ray reads them again (it caches the mode and the
    token per process, and a local ray.init earlier in the session sets RAY_AUTH_MODE=token)."""
    from ray._raylet import AuthenticationTokenLoader, Config

    saved = {k: os.environ.get(k) for k in (*AUTH_VARS, "HOME", "RAY_gcs_server_port_wait_time_s")}

    def use(**values: str | None) -> None:
        for key, value in values.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        Config.initialize("")
        AuthenticationTokenLoader.instance().reset_cache()

    yield use
    use(**saved)


def test_a_two_node_cluster_gives_the_local_executors_tables(tiny_model, tiny_tasks, tmp_path, cluster,
                                                             driver_auth):
    cluster.add_worker("worker")
    driver_auth(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=cluster.token, RAY_AUTH_TOKEN_PATH=None)
    lines: list[str] = []
    heard = Reporter(quiet=True)
    heard.log = lines.append
    local = run_study(_config(tiny_model, tiny_tasks, tmp_path / "local"), reporter=Reporter(quiet=True))
    remote = run_study(_config(tiny_model, tiny_tasks, tmp_path / "ray", executor="ray",
                               ray_address=cluster.address, cpus_per_unit=1), reporter=heard)
    assert not ray.is_initialized()  # disconnected again; the cluster stays up

    assert f"ray: connected to {cluster.address}, 2 CPUs, 0 GPUs" in lines  # both nodes, one CPU each
    studies = assert_same_study(local, remote)
    assert studies[1]["executor"]["address"] == cluster.address

    # Each node ran units: its workers' logs name the tasks they ran.
    for node in ("head", "worker"):
        logs = (cluster.root / node / "ray" / "session_latest" / "logs").glob("worker-*.out")
        assert any("mossa:" in f.read_text(errors="replace") for f in logs), node


def test_a_driver_without_the_clusters_token_gets_one_line(tiny_model, tiny_tasks, tmp_path, cluster, driver_auth):
    quiet = Reporter(quiet=True)
    cases = {  # what the driver sets -> what the line says
        "no mode": ({}, r"refused this driver: its token authentication is on and Ray sends a token only with "
                        r"RAY_AUTH_MODE=token; set RAY_AUTH_MODE=token RAY_AUTH_TOKEN=<the cluster's token"),
        "wrong token": ({"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": "0" * 64},
                        r"refused this driver's token \(it is not the cluster's\); set RAY_AUTH_TOKEN="),
        "no token": ({"RAY_AUTH_MODE": "token", "HOME": str(tmp_path)},
                     r"RAY_AUTH_MODE=token but Ray found no token on this machine for the Ray cluster at"),
    }
    for case, (env, line) in cases.items():
        # One connection attempt instead of ray.init's 20 (a second apart): a refusal is final.
        driver_auth(**{**dict.fromkeys(AUTH_VARS), "RAY_gcs_server_port_wait_time_s": "1", **env})
        out = tmp_path / case.replace(" ", "-")
        with pytest.raises(MossaError) as caught:
            run_study(_config(tiny_model, tiny_tasks, out, executor="ray", ray_address=cluster.address), reporter=quiet)
        message = str(caught.value)
        assert "\n" not in message, case
        assert message.startswith("field 'ray_address': "), case
        assert re.search(line, message), (case, message)
        assert "RAY_AUTH_MODE=disabled" in message and "`ray get-auth-token`" in message, case
        assert not out.exists() and not ray.is_initialized(), case
