"""Executors: where a study's independent units run.

Stage: orchestration (runs unit callables; reads and writes nothing itself).

A study is a list of independent units (each control C_t, E, E', the base model's extraction)
followed by the analysis. An executor runs one list of independent units and returns their
results, in the list's order, once all are done; the study calls it once per step (the states
phase's units, the analysis, the sections phase's units, the report), so each step sees every
output of the steps before it.

- ``local`` (default): in this process, one unit after another; the study's loaded model is
  shared and adapters are swapped on it.
- ``ray``: every unit is a Ray task with a resource request (``cpus``, ``gpus``). The worker
  opens the study dir itself (loads the model from the conversion cache, builds the prompts)
  and runs exactly that unit, writing only that unit's files. With an address it connects to
  a running Ray cluster (the study dir and the task folder must then be paths every node
  sees); without one it starts a local Ray instance and stops it afterwards. A cluster whose
  token authentication turns this driver away is one line that says what to set.

Units are module-level callables with picklable arguments (`Unit`), so both executors run the
same list. Ray is imported only when the ray executor is used.
"""

from __future__ import annotations

import abc
import importlib
import logging
import os
import time
from dataclasses import dataclass
from typing import Any, Callable

from mossa.errors import MossaError, unknown_name_error

RAY_REQUIREMENT = "ray>=2.40,<3"
LOCAL_OBJECT_STORE_BYTES = 200 * 1024 * 1024  # units return small dicts and tables; files go to the study dir


@dataclass(frozen=True)
class Unit:
    """One independent piece of a study: `fn(*args)` with what it needs to run (per unit)."""

    name: str
    fn: Callable[..., Any]  # module-level, so Ray pickles it by reference
    args: tuple = ()
    cpus: float = 1.0
    gpus: float = 0.0
    work: float = 0.0  # its estimated cost (any unit of measure shared by a map's units): the ETA's weight


def _clock(seconds: float) -> str:
    minutes, secs = divmod(int(round(seconds)), 60)
    return f"{minutes}:{secs:02d}"


def progress_line(units: list[Unit], finished: list[bool], elapsed: float) -> str:
    """How far a map of `units` is: units done, time elapsed and, when the units carry work estimates, the time
    left at the rate measured so far (work done / elapsed: honest once one unit has run, whatever the
    machine)."""
    n_done = sum(finished)
    line = f"{n_done} of {len(units)} units done, {_clock(elapsed)} elapsed"
    done = sum(u.work for u, f in zip(units, finished) if f)
    left = sum(u.work for u, f in zip(units, finished) if not f)
    if done > 0 and n_done < len(units):
        line += f", about {_clock(left * elapsed / done)} left"
    return line


class Executor(abc.ABC):
    """Runs lists of independent units; a context manager around its setup and teardown."""

    name: str = ""
    in_process: bool = True  # units run in the caller's process (and may share its loaded model)

    def __init__(self, *, log: Callable[[str], None] = print, **_options):
        self.log = log

    def __enter__(self) -> Executor:
        return self

    def __exit__(self, *exc) -> None:
        return None

    @classmethod
    def check(cls) -> None:
        """Raise MossaError when this executor cannot run here (e.g. its package is missing)."""
        return None

    def describe(self) -> dict:
        """What study.json records about where the units ran."""
        return {"name": self.name}

    @abc.abstractmethod
    def map(self, units: list[Unit]) -> list[Any]:
        """Run `units` (no order between them) and return their results in the list's order."""


EXECUTORS: dict[str, type[Executor]] = {}


def register_executor(cls: type[Executor]) -> type[Executor]:
    """Add an executor class under its `name`."""
    EXECUTORS[cls.name] = cls
    return cls


def executor_names() -> list[str]:
    return list(EXECUTORS)


def unknown_executor(name: str) -> MossaError:
    return unknown_name_error("executor", name, executor_names(), "the executor registry")


def check_executor(name: str) -> None:
    """Fail early when the executor is unknown or its package is missing.

    Raises
    ------
    MossaError
        Naming the field 'executor'.
    """
    if name not in EXECUTORS:
        raise MossaError(f"field 'executor': {unknown_executor(name)}")
    EXECUTORS[name].check()


def make_executor(name: str, *, log: Callable[[str], None] = print, **options) -> Executor:
    """The executor `name` with its options (ray: `address`, `num_cpus`); enter it to start it."""
    check_executor(name)
    return EXECUTORS[name](log=log, **options)


@register_executor
class LocalExecutor(Executor):
    """In this process, in order: today's behaviour (one loaded model, adapters swapped)."""

    name = "local"
    in_process = True

    def map(self, units: list[Unit]) -> list[Any]:
        t0, results, finished = time.perf_counter(), [], [False] * len(units)
        for i, unit in enumerate(units):
            results.append(unit.fn(*unit.args))
            finished[i] = True
            if len(units) > 1:
                self.log(f"{unit.name} done: {progress_line(units, finished, time.perf_counter() - t0)}")
        return results


def _import_ray():
    try:
        return importlib.import_module("ray")
    except ImportError:
        raise MossaError(f"field 'executor': 'ray' needs the ray package; install it with "
                         f"`pip install 'mossa[ray]'` (or `pip install '{RAY_REQUIREMENT}'`)") from None


def _auth_refusal(ray, exc: BaseException | None, address: str | None) -> MossaError | None:
    """The one line for a connection that Ray's token authentication refused, else None.

    Ray (2.60) sends a token only under RAY_AUTH_MODE=token (an explicit address never turns it
    on); a cluster with token authentication answers a driver without its token InvalidAuthToken,
    which reaches here as the cause of ray.init's ConnectionError once its retries (about 20 s)
    are spent.
    """
    auth_error = getattr(ray.exceptions, "AuthenticationError", None)
    where = f"the Ray cluster at {address}" if address else "the Ray cluster"
    token = ("RAY_AUTH_TOKEN=<the cluster's token: `ray get-auth-token` on its head node prints it> "
             "(or RAY_AUTH_TOKEN_PATH=<a file holding it>) and rerun, or start the cluster with "
             "RAY_AUTH_MODE=disabled on a trusted network")
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        text = str(exc)
        if "InvalidAuthToken" in text:
            # Ray notes "RAY_AUTH_MODE is currently '...' (not 'token')" when it sent no token.
            if "(not 'token')" not in text and os.environ.get("RAY_AUTH_MODE", "").lower() == "token":
                return MossaError(f"field 'ray_address': {where} refused this driver's token (it is not the "
                                  f"cluster's); set {token}")
            return MossaError(f"field 'ray_address': {where} refused this driver: its token authentication is "
                              f"on and Ray sends a token only with RAY_AUTH_MODE=token; set RAY_AUTH_MODE=token "
                              f"{token}")
        if auth_error is not None and isinstance(exc, auth_error) and "no authentication token" in text:
            return MossaError(f"field 'ray_address': RAY_AUTH_MODE=token but Ray found no token on this machine "
                              f"for {where}; set {token}")
        exc = exc.__cause__ or exc.__context__
    return None


def _call(fn: Callable[..., Any], args: tuple) -> Any:
    """The body of every Ray task: run one unit in the worker."""
    return fn(*args)


@register_executor
class RayExecutor(Executor):
    """Each unit a Ray task with its CPU/GPU request; a local instance unless `address` is given."""

    name = "ray"
    in_process = False

    def __init__(self, *, log: Callable[[str], None] = print, address: str | None = None,
                 num_cpus: int | None = None, **_options):
        super().__init__(log=log)
        self.address, self.num_cpus = address, num_cpus
        self.ray = None
        self.started = False  # we called ray.init, so we call ray.shutdown
        self.reused = False  # Ray was initialized by the caller already

    @classmethod
    def check(cls) -> None:
        _import_ray()

    def __enter__(self) -> RayExecutor:
        ray = self.ray = _import_ray()
        if ray.is_initialized():  # the caller runs Ray already (a notebook, a test): use it, leave it
            self.reused = True
            return self
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # mossa works offline: no usage reports
        # Ray's own notices (token authentication, resources) are not the study's: errors only.
        common = {"log_to_driver": False, "logging_level": logging.ERROR, "include_dashboard": False}
        try:
            if self.address:
                ray.init(address=self.address, **common)
            else:
                ray.init(address="local", num_cpus=self.num_cpus, object_store_memory=LOCAL_OBJECT_STORE_BYTES,
                         **common)
        except (ConnectionError, RuntimeError, ValueError,
                getattr(ray.exceptions, "AuthenticationError", ConnectionError)) as exc:
            refused = _auth_refusal(ray, exc, self.address)
            if refused is not None:
                raise refused from None
            where = f"connect to Ray at {self.address!r}" if self.address else "start a local Ray instance"
            field = "ray_address" if self.address else "executor"
            raise MossaError(f"field '{field}': cannot {where} ({type(exc).__name__}: "
                             f"{str(exc).splitlines()[0] if str(exc) else ''})") from None
        self.started = True
        cpus = ray.cluster_resources().get("CPU", 0)
        self.log(f"ray: {'connected to ' + self.address if self.address else 'started a local instance'}, "
                 f"{cpus:g} CPUs, {ray.cluster_resources().get('GPU', 0):g} GPUs")
        return self

    def __exit__(self, *exc) -> None:
        if self.started:
            self.ray.shutdown()  # stops the local instance; only disconnects from a cluster
            self.started = False

    def describe(self) -> dict:
        where = "initialized by the caller" if self.reused else self.address or "local instance"
        return {"name": self.name, "address": where, "ray": self.ray.__version__}

    def _check_fits(self, units: list[Unit]) -> None:
        """A request no node can meet would wait forever: refuse it instead."""
        nodes = [n.get("Resources", {}) for n in self.ray.nodes() if n.get("Alive")]
        for unit in units:
            if not any(r.get("CPU", 0) >= unit.cpus and r.get("GPU", 0) >= unit.gpus for r in nodes):
                biggest = max(((r.get("CPU", 0), r.get("GPU", 0)) for r in nodes), default=(0, 0))
                raise MossaError(f"field 'cpus_per_unit': unit {unit.name} asks for {unit.cpus:g} CPUs and "
                                 f"{unit.gpus:g} GPUs, but the largest Ray node has {biggest[0]:g} CPUs and "
                                 f"{biggest[1]:g} GPUs; lower --cpus-per-unit / --gpus-per-unit")

    def map(self, units: list[Unit]) -> list[Any]:
        ray = self.ray
        self._check_fits(units)
        task = ray.remote(_call)
        t0 = time.perf_counter()
        index = {task.options(num_cpus=u.cpus, num_gpus=u.gpus, name=f"mossa:{u.name}").remote(u.fn, u.args): i
                 for i, u in enumerate(units)}
        results: list[Any] = [None] * len(units)
        finished = [False] * len(units)
        pending = list(index)
        try:
            while pending:
                done, pending = ray.wait(pending, num_returns=1)
                for ref in done:
                    i = index[ref]
                    results[i] = ray.get(ref)
                    finished[i] = True
                    self.log(f"ray: {units[i].name} done: {progress_line(units, finished, time.perf_counter() - t0)}")
        except BaseException as exc:
            for ref in pending:
                ray.cancel(ref)  # units write atomically: an interrupted one leaves nothing half-written
            cause = getattr(exc, "cause", None)
            if isinstance(exc, ray.exceptions.RayTaskError) and isinstance(cause, MossaError):
                raise type(cause)(str(cause)) from None  # a StorageError stays one
            raise
        return results


__all__ = ["EXECUTORS", "Executor", "LocalExecutor", "RayExecutor", "Unit", "check_executor", "executor_names",
           "make_executor", "progress_line", "register_executor"]
