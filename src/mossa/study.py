"""One study, end to end: validate, build the list of units, hand them to the executor, run the analysis
and the report. This module only schedules; each stage lives in its own room, each kind of unit in
`mossa.units`.

Everything the user can get wrong is checked before the study folder is created. The units of the states
phase (every registered kind's: the controls, the second-seed controls, E, E', B) are independent of each
other; an executor (`mossa.executors`: in this process, or one Ray task each) runs them, then the analysis
(which finds the sections), then the units of the sections phase (the causal check, the restricted E's),
then the report. Each is a module function with picklable arguments, identical whichever executor runs it.
"""

from __future__ import annotations

import contextlib
import shutil
import time
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path

import yaml

from mossa.analysis import DEFAULT_MEASURES, LEARNED_RULE, analyze_study, check_measures, check_tsne_layers, not_learned
from mossa.causal import section_checks
from mossa.config import StudyConfig, check_layer_ranges
from mossa.errors import MossaError, StorageError
from mossa.executors import Unit, check_executor, make_executor
from mossa.models import (
    check_lora_targets,
    check_model_available,
    experimental_source,
    load_model,
    pick_device,
    resolve_lora_targets,
    resolve_model,
)
from mossa.plan import check_disk
from mossa.progress import Reporter
from mossa.provenance import experimental_info, study_provenance
from mossa.report import plot_section_checks, plot_study
from mossa.report.html import write_report
from mossa.store import StudyDir, atomic_path, read_json, write_json
from mossa.tasks import MODEL_TEMPLATE, TaskSpec, chat_template, check_splits, check_task_choices, study_tasks
from mossa.units import (
    SECTIONS,
    STATES,
    UNIT_KINDS,
    StudyContext,
    open_study,
    plan_units,
    study_reporter,
    unit_config,
    unit_threads,
)

PROMPTS_FILE = "prompts.jsonl"


@dataclass
class StudyResult:
    root: Path
    similarity: object
    controls: object
    timings: dict = field(default_factory=dict)


def validate(cfg: StudyConfig) -> tuple[list[TaskSpec], object]:
    """Everything checkable without loading a model: tasks, splits, every unit kind's settings, model name,
    hub reach.

    Raises
    ------
    MossaError
        For invalid tasks, models or settings, before anything is written.
    """
    check_measures(tuple(cfg.measures or DEFAULT_MEASURES))
    check_executor(cfg.executor)
    if cfg.chat_template not in (None, MODEL_TEMPLATE):
        chat_template(cfg.chat_template, None)  # a registered name or a readable file
    tasks = study_tasks(cfg)
    check_splits(tasks, cfg)
    check_task_choices(cfg, tasks)
    for kind in UNIT_KINDS.values():
        kind.check(cfg, tasks)
    source = resolve_model(cfg.model)
    check_model_available(source)
    pick_device(cfg.device)
    given = experimental_source(cfg.experimental_model)
    if given is not None and given[0] == "model":
        check_model_available(given[1])
    return tasks, source


def default_out() -> Path:
    return Path("runs") / datetime.now().strftime("%Y%m%d-%H%M%S")


def run_study(cfg: StudyConfig, *, reporter: Reporter | None = None, wait: bool = False,
              ignore_disk_space: bool = False) -> StudyResult:
    """Run the whole study described by `cfg`; returns the tables and the study folder. Unless
    `ignore_disk_space`, a study whose activations would not fit its folder's free space is refused before
    any unit runs (`mossa.plan.check_disk`)."""
    rep = reporter or Reporter()
    started = time.time()  # wall clock: the analysis (maybe in another process) computes the total
    tasks, source = validate(cfg)
    root = cfg.out or default_out()
    cfg = cfg.model_copy(update={"out": root})

    study = StudyDir(root)
    created = not root.exists()
    study.create()
    try:
        # The lock before the model loads (a busy folder fails at once); this process holds it for
        # the whole run, Ray workers included: they write only their own unit's files.
        with study.lock(wait=wait):
            swept = study.sweep_temporaries()  # what killed runs left; no unit has started yet
            if swept:
                rep.log(f"removed {len(swept)} temporary files or folders left by an interrupted run")
            with make_executor(cfg.executor, address=cfg.ray_address, num_cpus=cfg.ray_cpus,
                               log=rep.log) as executor:
                return _run(cfg, study, tasks, source, executor, rep, started, ignore_disk_space)
    except MossaError as exc:
        if created and not isinstance(exc, StorageError):  # a full disk keeps the finished units
            shutil.rmtree(root, ignore_errors=True)
        raise


def _open(cfg: StudyConfig, study: StudyDir, tasks: list[TaskSpec], source, rep: Reporter,
          timings: dict[str, float], ignore_disk_space: bool) -> StudyContext:
    """Load B, check what needs the model (the disk's free space among it), and build every prompt: the study's
    context, its config pinned."""
    t0 = time.perf_counter()
    loaded = load_model(source, dtype=cfg.dtype, device=cfg.device, progress=rep.log)
    timings["load_model"] = time.perf_counter() - t0
    targets = resolve_lora_targets(cfg.lora.targets, loaded.model)  # pinned: provenance, reruns and units
    cfg = cfg.model_copy(update={"lora": cfg.lora.model_copy(update={"targets": targets})})
    check_lora_targets(loaded.model, targets)
    check_layer_ranges(cfg, loaded.n_layers)
    if cfg.tsne_layers:
        check_tsne_layers(cfg.tsne_layers, loaded.n_layers)
    t0 = time.perf_counter()
    ctx = StudyContext(unit_config(cfg, tasks, loaded), study, tasks, loaded, rep)  # every prompt: checked here
    timings["prompts"] = time.perf_counter() - t0
    if not ignore_disk_space:
        check_disk(ctx)
    # Logged only now: every check that needs the model has passed, so a user error stays one line.
    rep.log(f"study {study.root}: {len(tasks)} tasks in {len({t.cluster for t in tasks})} clusters, "
            f"model {cfg.model}")
    rep.log(f"loaded {loaded.name}: {loaded.n_layers} layers, d={loaded.hidden_size}, "
            f"{loaded.dtype} on {loaded.device} ({loaded.dtype_reason})")
    return ctx


def _run(cfg: StudyConfig, study: StudyDir, tasks: list[TaskSpec], source, executor, rep: Reporter,
         started: float, ignore_disk_space: bool) -> StudyResult:
    timings: dict[str, float] = {}
    ctx = _open(cfg, study, tasks, source, rep, timings, ignore_disk_space)
    unit_cfg = ctx.cfg
    cpus = unit_cfg.cpus_per_unit or float(unit_cfg.threads)
    gpus = unit_cfg.gpus_per_unit if unit_cfg.gpus_per_unit is not None else float(unit_cfg.device == "cuda")
    units = plan_units(ctx, STATES, cpus=cpus, gpus=gpus)
    provenance = {**study_provenance(ctx, source, cfg.model_copy(update={"lora": unit_cfg.lora})),
                  "executor": {**executor.describe(), "threads": unit_cfg.threads, "cpus_per_unit": cpus,
                               "gpus_per_unit": gpus, "units": [u.name for u in units]}}
    write_json(study.path("study.json"), {**provenance, "status": "running"})
    ctx.write_prompts(study.path(PROMPTS_FILE))
    with atomic_path(study.path("config.yaml")) as tmp:  # `mossa run --config` reruns the study
        tmp.write_text(yaml.safe_dump(provenance["config"], sort_keys=False), encoding="utf-8")
    if not executor.in_process:
        ctx.release()  # the units run elsewhere and load their own
    with open_study(ctx) if executor.in_process else contextlib.nullcontext():
        t0 = time.perf_counter()
        results = executor.map(units)
        timings["units"] = time.perf_counter() - t0
        for stage in ("train", "extract"):
            timings[stage] = sum(r["seconds"][stage] for r in results)
        [tables] = executor.map([Unit("analysis", analysis_unit, (unit_cfg, unit_cfg.out, provenance), cpus=cpus)])
        later = plan_units(ctx, SECTIONS, cpus=cpus, gpus=gpus)
        if later:
            t0 = time.perf_counter()
            results += executor.map(later)
            timings["causal"] = time.perf_counter() - t0
        training = {r["unit"]: r["log"] for r in results if r["log"] is not None}
        provenance = {**provenance, "units": {r["unit"]: {"kind": r["kind"], "fingerprint": r["fingerprint"]}
                                              for r in results}}
        finish = Unit("report", finish_study, (unit_cfg, unit_cfg.out, provenance, training,
                                               {**timings, **tables.timings}, started, tables), cpus=cpus)
        [result] = executor.map([finish])
    return replace(result, root=study.root)


def analysis_unit(cfg: StudyConfig, root: Path, provenance: dict) -> StudyResult:
    """Every table and figure the stored activations give (the sections among them), before the units
    that need the sections run."""
    with unit_threads(cfg.threads):
        provenance = {**provenance, "experimental": experimental_info(StudyDir(root), provenance)}
        return analyze_and_report(root, measures=tuple(cfg.measures or DEFAULT_MEASURES), n_boot=cfg.n_boot,
                                  n_permutations=cfg.n_permutations, tsne_layers=cfg.tsne_layers,
                                  provenance=provenance, reporter=study_reporter(cfg), checks=False)


def finish_study(cfg: StudyConfig, root: Path, provenance: dict, training: dict, timings: dict,
                 started: float, analysis: StudyResult) -> StudyResult:
    """The last unit: the causal check's and the restricted E's tables and figure, study.json marked
    complete, the report."""
    with unit_threads(cfg.threads):
        study = StudyDir(root)
        provenance = {**provenance, "experimental": experimental_info(study, provenance)}
        t0 = time.perf_counter()
        plot_section_checks(root, section_checks(root, provenance))
        timings = {**timings, "causal_tables": time.perf_counter() - t0, "total": time.time() - started}
        missed = not_learned(analysis.controls)
        if missed:
            study_reporter(cfg).log(f"controls that did not learn their task ({LEARNED_RULE}): {', '.join(missed)}")
        write_json(study.path("study.json"), {
            **provenance, "status": "complete", "finished": datetime.now().isoformat(timespec="seconds"),
            "seconds": {k: round(v, 2) for k, v in timings.items()}, "training": training,
            "controls_learned": {"rule": LEARNED_RULE, "not_learned": missed,
                                 "learned": [t for t in analysis.controls["task"] if t not in missed]}})
        write_report(root)
        return StudyResult(root=study.root, similarity=analysis.similarity, controls=analysis.controls,
                           timings=timings)


def analyze_and_report(root: Path, *, provenance: dict | None = None, reporter: Reporter | None = None,
                       checks: bool = True, **options) -> StudyResult:
    """The analysis stage's tables of a study (`mossa.analysis.analyze_study`, with `options`), then its
    figures (`mossa.report.plot_study`) and, with `checks`, the causal check's tables and figure from its
    stored records (`mossa.causal.section_checks`; a run computes them once its causal unit is done). The
    HTML report is the caller's (it reads study.json)."""
    rep = reporter or Reporter()
    tables = analyze_study(root, provenance=provenance, log=rep.log, **options)
    t0 = time.perf_counter()
    plot_study(tables)
    if checks:
        plot_section_checks(root, section_checks(root, provenance or read_json(StudyDir(root).path("study.json")),
                                                 n_boot=options.get("n_boot")))
    timings = {**tables.timings, "figures": time.perf_counter() - t0}
    return StudyResult(root=tables.root, similarity=tables.similarity, controls=tables.controls, timings=timings)


__all__ = ["StudyResult", "analyze_and_report", "analysis_unit", "finish_study", "run_study", "validate"]
