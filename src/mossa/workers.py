"""Worker processes for the analysis: independent jobs (a task's tables, a t-SNE panel) on all cores.

Stage: shared by the analysis and the probes (runs job callables; reads and writes nothing itself).

The analysis is NumPy work on small matrices (96 x 640 at the demo's size), where one BLAS
thread is fastest: more threads spin more than they compute. So the cores are used by
running independent jobs side by side, one process each with one BLAS/OpenMP thread.
Workers come from loky (joblib's executor): started fresh (fork + exec), never forked from the
parent, which may hold a loaded model and torch's OpenMP threads that a forked child cannot use
safely; unlike multiprocessing's spawn, a loky worker does not re-run the caller's script, so a
study started from a plain script without a `__main__` guard works too. Workers are reused
across pools and stop after 60 s idle. Start-up (importing NumPy, SciPy, torch) costs about
2 s per worker, so small analyses run in this process (`choose_workers`).

Every job is a module-level function of picklable arguments whose result depends on its
arguments alone (its seeds are among them), so the tables are identical whatever the number
of workers and whichever finishes first.
"""

from __future__ import annotations

import os
from concurrent.futures import Future
from typing import Any, Callable

from joblib.externals.loky import get_reusable_executor
from threadpoolctl import threadpool_limits

from mossa.errors import MossaError

_ONE_THREAD = {name: "1" for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")}
PARALLEL_MIN_WORK = 10_000  # (example, layer) pairs compared below which workers do not pay for their start-up


def usable_cores() -> int:
    """CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def choose_workers(workers: int | str, work: int, jobs: int) -> int:
    """Worker processes for an analysis of `work` (example, layer) pairs in `jobs` jobs.

    `workers` is a count (>= 1) or "auto": one per usable core (at most one per job) when the
    work is at least PARALLEL_MIN_WORK, else 1 (this process).
    """
    if workers == "auto":
        return max(1, min(usable_cores(), jobs)) if work >= PARALLEL_MIN_WORK else 1
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise MossaError(f"field 'analysis_workers': expected 'auto' or an integer >= 1, got {workers!r}")
    return max(1, min(workers, jobs))


class JobPool:
    """Runs jobs in `workers` loky worker processes while entered as a context manager; with one
    worker, or outside the context, each job runs at once in this process (under one BLAS
    thread, as in a worker). `submit(fn, *args)` returns a Future either way.
    """

    def __init__(self, workers: int = 1):
        self.workers = workers
        self._executor = None

    def __enter__(self) -> JobPool:
        if self.workers > 1:
            # one BLAS/OpenMP thread per worker: set in its environment before anything is imported
            self._executor = get_reusable_executor(self.workers, timeout=60, env=_ONE_THREAD)
        return self

    def __exit__(self, *exc) -> None:
        self._executor = None  # the workers stay for the next pool until idle

    def submit(self, fn: Callable[..., Any], *args: Any) -> Future:
        if self._executor is not None:
            return self._executor.submit(fn, *args)
        future: Future = Future()
        try:
            with threadpool_limits(1):
                future.set_result(fn(*args))
        except Exception as exc:  # re-raised by result(), as from a worker
            future.set_exception(exc)
        return future
