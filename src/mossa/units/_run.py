"""Running units: the config every unit runs with, this process's open study, and `run_unit`, the one
function an executor calls for any unit of any kind.

Units are module-level callables with picklable arguments (`mossa.executors.Unit`), so the local
executor and Ray run the same list; a Ray worker opens the study itself (loads the model once and keeps
it for the next unit it is given) and imports the unit's kind with its class.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch

from mossa.config import StudyConfig
from mossa.executors import Unit
from mossa.models import experimental_source, load_model, resolve_model
from mossa.progress import Reporter
from mossa.store import StudyDir
from mossa.tasks import TaskSpec, resolve_tasks_dir, study_tasks
from mossa.units._context import StudyContext, input_digest
from mossa.units._kind import UNIT_KINDS, UnitKind

_DTYPE_NAMES = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}
_OPEN: dict[str, StudyContext] = {}  # the study this process has open (the driver's, or a worker's own)


def unit_config(cfg: StudyConfig, tasks: list[TaskSpec], loaded) -> StudyConfig:
    """The config every unit runs with, pinned so that a fresh process re-derives nothing differently:
    absolute paths, the explicit task list, the dtype and device chosen here, the thread count."""
    source = resolve_model(cfg.model)
    return cfg.model_copy(update={
        "out": Path(cfg.out).resolve(),
        "tasks_dir": _pinned_tasks_dir(cfg),
        "task_files": [f.model_copy(update={"path": Path(f.path).resolve()}) for f in cfg.task_files],
        "tasks": [t.name for t in tasks],
        "model": source.location if source.kind in ("hf_dir", "gguf", "adapter") else cfg.model,
        "experimental_model": _pinned(cfg.experimental_model),
        "dtype": _DTYPE_NAMES[loaded.dtype],
        "device": loaded.device.type,  # a Ray worker sees the GPU it was given as cuda:0
        "threads": cfg.threads or torch.get_num_threads(),
    })


def _pinned_tasks_dir(cfg: StudyConfig) -> Path | None:
    """The task source as every unit must see it: a named source as it is, a folder made absolute."""
    if cfg.tasks_dir is not None and str(cfg.tasks_dir).startswith("hub:"):
        return cfg.tasks_dir
    if cfg.tasks_dir is None and cfg.task_files:
        return None
    return resolve_tasks_dir(cfg.tasks_dir).resolve()


def _pinned(spec: str | None) -> str | None:
    """A given E's spec with local paths made absolute (units may run in other working directories)."""
    given = experimental_source(spec)
    if given is None:
        return None
    kind, where = given
    if kind == "adapter":
        return str(where)
    return where.location if where.kind in ("hf_dir", "gguf", "adapter") else spec


def _study_key(cfg: StudyConfig) -> str:
    return input_digest(cfg.model_dump_json())


@contextlib.contextmanager
def open_study(ctx: StudyContext):
    """Make `ctx` this process's open study for the block: `run_unit` finds it (its loaded model) instead of
    loading another."""
    key = _study_key(ctx.cfg)
    _OPEN[key] = ctx
    try:
        yield ctx
    finally:
        _OPEN.pop(key, None)


def study_reporter(cfg: StudyConfig) -> Reporter:
    """The open study's reporter in this process (the driver's), else a silent one (a worker's)."""
    ctx = _OPEN.get(_study_key(cfg))
    return ctx.rep if ctx is not None else Reporter(enabled=False)


def _context(cfg: StudyConfig, root: Path) -> StudyContext:
    """This process's study for `cfg`: the running one, or one opened here (a Ray worker loads the model
    once and keeps it for the next unit it is given). Never takes the study lock: the driver holds it."""
    key = _study_key(cfg)
    if key not in _OPEN:
        _OPEN.clear()  # a worker keeps one study at a time
        rep = Reporter(enabled=False)
        loaded = load_model(resolve_model(cfg.model), dtype=cfg.dtype, device=cfg.device, progress=rep.log)
        _OPEN[key] = StudyContext(cfg, StudyDir(root), study_tasks(cfg), loaded, rep)
    return _OPEN[key]


@contextlib.contextmanager
def unit_threads(n: int):
    """Run the block with `n` torch and BLAS/OpenMP threads: float results can depend on the thread count,
    so every unit uses the same one whichever executor runs it."""
    from threadpoolctl import threadpool_limits

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        with threadpool_limits(limits=n):
            yield
    finally:
        torch.set_num_threads(before)


def run_unit(cfg: StudyConfig, root: Path, kind: type[UnitKind], unit: str) -> dict:
    """Run unit `unit` of kind `kind` of the study at `root`, unless its outputs are stored with its fingerprint.

    Returns its kind, the fingerprint of its inputs (study.json records it), its training log (None when it
    trained nothing) and its seconds of training and extraction.
    """
    with unit_threads(cfg.threads):
        ctx = _context(cfg, root)
        before = dict(ctx.seconds)
        job = kind(ctx, unit)
        if not job.done():
            job.run()
        return {"unit": unit, "kind": kind.name, "fingerprint": job.fingerprint(), "log": ctx.train_logs.get(unit),
                "seconds": {k: ctx.seconds[k] - before[k] for k in before}}


def plan_units(ctx: StudyContext, phase: str, *, cpus: float, gpus: float) -> list[Unit]:
    """The executor's units of every registered kind of `phase`, in the order of registration: each kind's
    units (`UnitKind.units`) as `run_unit` calls."""
    return [Unit(unit, run_unit, (ctx.cfg, ctx.cfg.out, kind, unit), cpus=cpus, gpus=gpus,
                 work=kind(ctx, unit).work())
            for kind in UNIT_KINDS.values() if kind.phase == phase for unit in kind.units(ctx)]
