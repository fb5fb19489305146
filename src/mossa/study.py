"""One study, end to end: validate, train adapters, extract, analyze, plot, record provenance.

Each unit (an adapter, an activation file) carries the fingerprint of its inputs; a unit whose
output exists with the same fingerprint is skipped, which makes a rerun both a resume and a
cache. Everything the user can get wrong is checked before the study folder is created.
"""

from __future__ import annotations

import hashlib
import json
import platform
import shutil
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime
from importlib import metadata
from pathlib import Path

import torch

from mossa.analysis import analyze
from mossa.config import StudyConfig
from mossa.errors import MossaError
from mossa.extraction import extract
from mossa.models import check_model_available, load_model, resolve_model
from mossa.models._adapters import AdapterHost
from mossa.progress import Reporter
from mossa.report import plot_cka_by_layer
from mossa.store import StudyDir, write_json
from mossa.tasks import PromptBuilder, TaskSpec, load_tasks, sample_split
from mossa.training import mixture, n_steps, train_adapter

EXPERIMENTAL = "experimental"
VERSIONED = ("mossa", "torch", "transformers", "peft", "numpy", "pandas", "safetensors")


def _hash(*parts: object) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


@dataclass
class StudyResult:
    root: Path
    similarity: object
    controls: object
    timings: dict = field(default_factory=dict)


def _versions() -> dict[str, str]:
    out = {"python": sys.version.split()[0], "platform": platform.platform()}
    for name in VERSIONED:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def validate(cfg: StudyConfig) -> tuple[list[TaskSpec], object]:
    """Everything checkable without loading a model: tasks, splits, model name, hub reach.

    Raises
    ------
    MossaError
        For invalid tasks, models or settings, before anything is written.
    """
    tasks = load_tasks(cfg.tasks_dir, cfg.tasks)
    for task in tasks:
        sample_split(task, "train", 1, cfg.seed)
        sample_split(task, "test", 1, cfg.seed)
    source = resolve_model(cfg.model)
    check_model_available(source)
    return tasks, source


def default_out() -> Path:
    return Path("runs") / datetime.now().strftime("%Y%m%d-%H%M%S")


def run_study(cfg: StudyConfig, *, reporter: Reporter | None = None) -> StudyResult:
    """Run the whole study described by `cfg`; returns the tables and the study folder."""
    rep = reporter or Reporter()
    timings: dict[str, float] = {}
    t_start = time.perf_counter()
    tasks, source = validate(cfg)
    root = cfg.out or default_out()
    cfg = cfg.model_copy(update={"out": root})
    clusters = {t.name: t.cluster for t in tasks}
    rep.log(f"study {root}: {len(tasks)} tasks in {len(set(clusters.values()))} clusters, model {cfg.model}")

    t0 = time.perf_counter()
    loaded = load_model(source, dtype=cfg.dtype, device=cfg.device, progress=rep.log)
    timings["load_model"] = time.perf_counter() - t0
    check_lora_targets(loaded.model, cfg.lora.targets)
    study = StudyDir(root)
    created = not root.exists()
    study.create()
    try:
        return _run(cfg, study, tasks, source, loaded, clusters, rep, timings, t_start)
    except MossaError:
        if created:
            shutil.rmtree(root, ignore_errors=True)
        raise


def check_lora_targets(model, targets: list[str]) -> None:
    """Every LoRA target must name modules of the model (peft would fail mid-study otherwise)."""
    leaves = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    missing = [t for t in targets if t not in leaves]
    if missing:
        linear = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)})
        raise MossaError(f"field 'lora.targets': {', '.join(missing)} not found in the model; its linear "
                         f"modules are {', '.join(linear)}")


def _run(cfg, study, tasks, source, loaded, clusters, rep, timings, t_start) -> StudyResult:
    root = study.root
    rep.log(f"loaded {loaded.name}: {loaded.n_layers} layers, d={loaded.hidden_size}, "
            f"{loaded.dtype} on {loaded.device} ({loaded.dtype_reason})")
    builder = PromptBuilder(loaded.tokenizer, cue=cfg.cue, max_prompt_tokens=cfg.max_prompt_tokens,
                            max_target_tokens=cfg.max_target_tokens, use_chat_template=cfg.use_chat_template)
    t0 = time.perf_counter()
    train = {t.name: builder.build_all(t, sample_split(t, "train", cfg.n_train, cfg.seed)) for t in tasks}
    test = {t.name: builder.build_all(t, sample_split(t, "test", cfg.n_test, cfg.seed)) for t in tasks}
    timings["prompts"] = time.perf_counter() - t0
    prompt_key = _hash(cfg.cue, cfg.max_prompt_tokens, cfg.max_target_tokens, builder.mode, cfg.seed,
                       cfg.n_train, cfg.n_test)
    base_key = _hash(loaded.fingerprint, str(loaded.dtype), cfg.last_layer, prompt_key)
    task_fp = {t.name: t.fingerprint for t in tasks}
    provenance = {
        "config": json.loads(cfg.model_dump_json()), "versions": _versions(),
        "model": {"name": loaded.name, "kind": source.kind, "location": source.location,
                  "fingerprint": loaded.fingerprint, "n_layers": loaded.n_layers,
                  "hidden_size": loaded.hidden_size, "dtype": str(loaded.dtype),
                  "dtype_reason": loaded.dtype_reason, "device": str(loaded.device),
                  "prompt_mode": builder.mode},
        "tasks": {t.name: {"cluster": t.cluster, "fingerprint": t.fingerprint, "path": str(t.path),
                           "template": t.template.origin, "n_train": len(train[t.name]),
                           "n_test": len(test[t.name]),
                           "n_test_prompts_cut": sum(p.n_cut_tokens > 0 for p in test[t.name])}
                  for t in tasks},
        "command": " ".join(sys.argv), "started": datetime.now().isoformat(timespec="seconds"),
    }
    write_json(study.path("study.json"), {**provenance, "status": "running"})

    host = AdapterHost(loaded)
    train_logs: dict[str, dict] = {}

    def run_unit(unit: str, prompts, settings, inputs: str) -> None:
        done = study.unit_done(unit, inputs)
        if done is not None:
            train_logs[unit] = done["log"]
            rep.log(f"{unit}: adapter found, not retrained")
            host.load(unit, study.adapter_dir(unit))
            return
        with rep.bar(f"train {unit}", total=n_steps(len(prompts), settings)) as advance:
            log = train_adapter(host, unit, prompts, settings=settings, lora=cfg.lora, seed=cfg.seed,
                                on_step=lambda step, total, loss: advance(1, info=f"loss {loss:.3f}"))
        with study.adapter_writer(unit) as tmp:
            host.save(unit, tmp)
            write_json(tmp / "done.json", {"inputs": inputs, "log": log})
        train_logs[unit] = log
        rep.log(f"{unit}: {log['steps']} steps, loss {log['train_loss'][0]:.3f} -> {log['train_loss'][-1]:.3f}, "
                f"{log['tokens_per_second']:.0f} tokens/s")

    def run_extract(model_label: str, adapter: str | None, task: str, inputs: str) -> bool:
        if study.activations_done(model_label, task, inputs):
            return False
        acts = extract(host, adapter, test[task], token_budget=cfg.extract_token_budget,
                       last_layer=cfg.last_layer)
        study.write_activations(model_label, task, acts, inputs)
        return True

    t_train = t_extract = 0.0
    for task in tasks:
        unit = f"control-{task.name}"
        inputs = _hash(base_key, task_fp[task.name], cfg.lora.model_dump(), cfg.control.model_dump(), "control")
        act_key = _hash(inputs, "acts")
        if study.activations_done("control", task.name, act_key) and study.unit_done(unit, inputs):
            train_logs[unit] = study.unit_done(unit, inputs)["log"]
            continue
        t0 = time.perf_counter()
        run_unit(unit, train[task.name], cfg.control, inputs)
        t_train += time.perf_counter() - t0
        t0 = time.perf_counter()
        run_extract("control", unit, task.name, act_key)
        host.remove(unit)
        t_extract += time.perf_counter() - t0

    mix = mixture(train, clusters, cap=cfg.cluster_cap, seed=cfg.seed)
    e_inputs = _hash(base_key, task_fp, cfg.lora.model_dump(), cfg.experimental.model_dump(), cfg.cluster_cap,
                     "experimental")
    e_key = _hash(e_inputs, "acts")
    need_e = [t.name for t in tasks if not study.activations_done(EXPERIMENTAL, t.name, _hash(e_key, task_fp[t.name]))]
    if need_e or study.unit_done(EXPERIMENTAL, e_inputs) is None:
        t0 = time.perf_counter()
        rep.log(f"experimental mixture: {len(mix)} examples from {len(tasks)} tasks")
        run_unit(EXPERIMENTAL, mix, cfg.experimental, e_inputs)
        t_train += time.perf_counter() - t0
    else:
        train_logs[EXPERIMENTAL] = study.unit_done(EXPERIMENTAL, e_inputs)["log"]

    t0 = time.perf_counter()
    total = sum(len(test[t.name]) for t in tasks)
    for label, adapter in ((EXPERIMENTAL, EXPERIMENTAL), ("base", None)):
        key = e_key if label == EXPERIMENTAL else _hash(base_key, "base-acts")
        with rep.bar(f"extract {label}", total=total) as advance:
            for task in tasks:
                run_extract(label, adapter, task.name, _hash(key, task_fp[task.name]))
                advance(len(test[task.name]), info=task.name)
    t_extract += time.perf_counter() - t0
    timings["train"], timings["extract"] = t_train, t_extract

    t0 = time.perf_counter()
    sim, controls = analyze(study, clusters)
    timings["analyze"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    plot_cka_by_layer(sim, study.path("figures", "cka_by_layer.png"), title=loaded.name)
    timings["figures"] = time.perf_counter() - t0
    timings["total"] = time.perf_counter() - t_start
    write_json(study.path("study.json"), {
        **provenance, "status": "complete", "finished": datetime.now().isoformat(timespec="seconds"),
        "seconds": {k: round(v, 2) for k, v in timings.items()}, "training": train_logs})
    return StudyResult(root=root, similarity=sim, controls=controls, timings=timings)


__all__ = ["StudyResult", "run_study", "validate"]
