"""One study, end to end: validate, train adapters, extract (and evaluate), analyze, plot, record
provenance. This module schedules the stages; each lives in its own package.

Each unit (an adapter, an activation file) carries the fingerprint of its inputs; a unit whose
output exists with the same fingerprint is skipped, which makes a rerun both a resume and a
cache. Everything the user can get wrong is checked before the study folder is created.

The units (each control C_t, each second-seed control C_t', E, E', the base extraction) are
independent of each other; an executor (`mossa.executors`: in this process, or one Ray task
each) runs them, then the analysis. Each unit is `run_unit(cfg, root, name)`, the analysis
`finish_study(...)`: module functions with picklable arguments, identical whichever executor
runs them.
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import json
import platform
import shutil
import sys
import time
from dataclasses import dataclass, field, replace
from datetime import datetime
from importlib import metadata
from pathlib import Path

import numpy as np
import torch
import yaml

from mossa.analysis import (
    DEFAULT_MEASURES,
    HELDOUT,
    LEARNED_RULE,
    analyze_study,
    check_measures,
    check_tsne_layers,
    depth_map,
    not_learned,
    readability,
    section_checks,
)
from mossa.causal import masks, run_masks, section_ranges
from mossa.config import LoraSettings, StudyConfig, preset_tasks
from mossa.errors import MossaError, StorageError
from mossa.executors import Unit, check_executor, make_executor
from mossa.extraction import extract
from mossa.models import (
    AdapterHost,
    adapter_digest,
    check_model_available,
    linear_module_names,
    load_model,
    materialize,
    pick_device,
    resolve_lora_targets,
    resolve_model,
)
from mossa.progress import Reporter
from mossa.report import plot_section_checks, plot_study
from mossa.report.html import write_report
from mossa.store import MARKER, StudyDir, atomic_path, read_json, write_json
from mossa.tasks import (
    PromptBuilder,
    MODEL_TEMPLATE,
    PromptFormat,
    TaskSpec,
    chat_template,
    load_tasks,
    prompt_digest,
    resolve_format,
    resolve_tasks_dir,
    sample_split,
    task_catalog,
)
from mossa.training import BUDGET_RULES, examples_seen, mixture, n_steps, parity_stream, train_adapter

EXPERIMENTAL = "experimental"
CEILING = "ceiling"  # C_t': a task's control trained again under another seed (the ceiling of its curves)
PROMPTS_FILE = "prompts.jsonl"
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


MAX_HELDOUT_CLUSTERS = 7  # as in the paper's unseen-task experiment


def resolve_holdout(cfg: StudyConfig, tasks: list[TaskSpec]) -> tuple[str, ...]:
    """The tasks held out of E': named ones, none, or one seeded task from each of up to 7 clusters
    and at most half the tasks (E' learns from at least as many tasks as it is tested on)."""
    names = [t.name for t in tasks]
    if cfg.holdout == "none" or cfg.experimental_model is not None:  # a given E has no E'
        return ()
    if cfg.holdout == "auto":
        rng = np.random.default_rng(cfg.seed)
        clusters = sorted({t.cluster for t in tasks})
        k = min(MAX_HELDOUT_CLUSTERS, len(clusters), len(tasks) // 2)
        picked = sorted(rng.choice(len(clusters), size=k, replace=False)) if k > 0 else []
        chosen = []
        for c in picked:
            members = [t.name for t in tasks if t.cluster == clusters[c]]
            chosen.append(members[int(rng.integers(len(members)))])
        return tuple(n for n in names if n in chosen)
    unknown = [h for h in cfg.holdout if h not in names]
    if unknown:
        raise MossaError(f"field 'holdout': {', '.join(unknown)} not among the study's tasks ({', '.join(names)})")
    if len(set(cfg.holdout)) >= len(names):
        raise MossaError("field 'holdout': holds out every task, leaving E' nothing to train on; keep at least one")
    return tuple(n for n in names if n in cfg.holdout)


MAX_CEILING_CLUSTERS = 4  # each ceiling task costs one more control (training and states)


def resolve_ceiling(cfg: StudyConfig, tasks: list[TaskSpec]) -> tuple[str, ...]:
    """The tasks whose control gets a second seed (C_t', the ceiling CKA(C_t', C_t)), in study order:
    named ones, none, or the first task of each of up to 4 clusters spread evenly over the study's
    clusters in study order (deterministic: different kinds of task, not just the first few)."""
    names = [t.name for t in tasks]
    if cfg.ceiling_tasks == "none":
        return ()
    if cfg.ceiling_tasks == "auto":
        clusters = list(dict.fromkeys(t.cluster for t in tasks))
        k = min(MAX_CEILING_CLUSTERS, len(clusters))
        picked = [clusters[i] for i in np.linspace(0, len(clusters) - 1, k).round().astype(int)]
        return tuple(next(t.name for t in tasks if t.cluster == c) for c in picked)
    unknown = [t for t in cfg.ceiling_tasks if t not in names]
    if unknown:
        raise MossaError(f"field 'ceiling_tasks': {', '.join(unknown)} not among the study's tasks "
                         f"({', '.join(names)})")
    return tuple(n for n in names if n in cfg.ceiling_tasks)


def study_tasks(cfg: StudyConfig) -> list[TaskSpec]:
    """The study's tasks: `cfg.tasks` when given; else the preset's choice when the task source offers
    all of it, else every task the source offers; custom task files are always in."""
    files = [(f.path, f.cluster) for f in cfg.task_files]
    names = cfg.tasks
    if names is None:
        picked = preset_tasks(cfg.preset)
        offered, _ = task_catalog(cfg.tasks_dir, files)
        own = [Path(path).stem for path, _ in files]
        if picked and set(picked) <= set(offered):
            names = list(picked) + [name for name in own if name not in picked]
    return load_tasks(cfg.tasks_dir, names, task_files=files)


def experimental_source(spec: str | None) -> tuple[str, object] | None:
    """What E is: None when it is trained here, ("adapter", folder) for a peft adapter folder applied
    to B, or ("model", ModelSource) for a model of its own (resolved, not loaded)."""
    if spec is None:
        return None
    path = Path(spec).expanduser()
    if path.is_dir() and (path / "adapter_config.json").is_file():
        return "adapter", path.resolve()
    return "model", resolve_model(spec)


def validate(cfg: StudyConfig) -> tuple[list[TaskSpec], object]:
    """Everything checkable without loading a model: tasks, splits, model name, hub reach.

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
    for task in tasks:
        sample_split(task, "train", 1, cfg.seed)
        check_test_prompts(task, len(sample_split(task, "test", cfg.n_test, cfg.seed)))
    resolve_holdout(cfg, tasks)
    resolve_ceiling(cfg, tasks)
    check_causal_tasks(cfg, tasks)
    source = resolve_model(cfg.model)
    check_model_available(source)
    pick_device(cfg.device)
    given = experimental_source(cfg.experimental_model)
    if given is not None and given[0] == "model":
        check_model_available(given[1])
    return tasks, source


def default_out() -> Path:
    return Path("runs") / datetime.now().strftime("%Y%m%d-%H%M%S")


def run_study(cfg: StudyConfig, *, reporter: Reporter | None = None, wait: bool = False) -> StudyResult:
    """Run the whole study described by `cfg`; returns the tables and the study folder."""
    rep = reporter or Reporter()
    timings: dict[str, float] = {}
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
                return _run(cfg, study, tasks, source, executor, rep, timings, started)
    except MossaError as exc:
        if created and not isinstance(exc, StorageError):  # a full disk keeps the finished units
            shutil.rmtree(root, ignore_errors=True)
        raise


MIN_TEST_PROMPTS = 4  # debiased CKA is defined from 4 examples on; fewer make every value meaningless


def check_test_prompts(task: TaskSpec, n: int, left_out: int = 0) -> None:
    """A task needs at least `MIN_TEST_PROMPTS` test prompts; checked on the split before the model
    loads, and on the prompts that fit once they are built."""
    if n < MIN_TEST_PROMPTS:
        why = (f" ({left_out} left out: they cannot fit max_prompt_tokens; raise it)" if left_out else
               "; add test examples")
        raise MossaError(f"{task.path}: task '{task.name}' has {n} test prompt{'s' * (n != 1)}; the similarity "
                         f"measures need at least {MIN_TEST_PROMPTS}{why}")


def check_lora_targets(model, targets: list[str]) -> None:
    """Every LoRA target must name modules of the model (peft would fail mid-study otherwise)."""
    leaves = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    missing = [t for t in targets if t not in leaves]
    if missing:
        raise MossaError(f"field 'lora.targets': {', '.join(missing)} not found in the model; its linear "
                         f"modules are {', '.join(linear_module_names(model))}")


def check_causal_tasks(cfg: StudyConfig, tasks: list[TaskSpec]) -> None:
    """The causal check's tasks must be among the study's."""
    names = [t.name for t in tasks]
    if cfg.causal_tasks != "all":
        unknown = [t for t in cfg.causal_tasks if t not in names]
        if unknown:
            raise MossaError(f"field 'causal_tasks': {', '.join(unknown)} not among the study's tasks "
                             f"({', '.join(names)})")


def check_layer_ranges(cfg: StudyConfig, n_layers: int) -> None:
    """Layer ranges the user names (lora.layers, causal_layers) must lie within the model's layers."""
    named = [("lora.layers", cfg.lora.layers)] if cfg.lora.layers else []
    if isinstance(cfg.causal_layers, list):
        named += [("causal_layers", r) for r in cfg.causal_layers]
    for where, (first, last) in named:
        if last > n_layers:
            raise MossaError(f"field '{where}': [{first}, {last}] reaches past the model's {n_layers} layers; "
                             f"name layers 1 to {n_layers}")


class _Study:
    """A study in progress: the loaded base with its adapters, the prompts, the study dir.

    Every unit checks its input fingerprint against what the study dir holds and is skipped
    when its output is already there.
    """

    def __init__(self, cfg: StudyConfig, study: StudyDir, tasks: list[TaskSpec], loaded, rep: Reporter):
        self.cfg, self.study, self.tasks, self.loaded, self.rep = cfg, study, tasks, loaded, rep
        self.host = AdapterHost(loaded)
        self.clusters = {t.name: t.cluster for t in tasks}
        self.fmt = resolve_format(cfg.prompt_format, cue=cfg.cue, template=cfg.chat_template,
                                  system_prompt=cfg.system_prompt, own_template=loaded.chat_template)
        self.builder = self.prompt_builder(loaded, self.fmt)
        self.samples = {split: {t.name: self.builder.draw(t, split, n, cfg.seed, templates=cfg.templates) for t in tasks}
                        for split, n in (("train", cfg.n_train), ("test", cfg.n_test))}
        for task in tasks:
            sample = self.samples["test"][task.name]
            check_test_prompts(task, len(sample.prompts), len(sample.left_out))
        self.train = {t: sample.prompts for t, sample in self.samples["train"].items()}
        self.test = {t: sample.prompts for t, sample in self.samples["test"].items()}
        self.task_fp = {t.name: t.fingerprint for t in tasks}
        self.prompt_key = _hash(self.fmt.describe(), cfg.max_prompt_tokens, cfg.max_target_tokens,
                                cfg.truncation_floor, cfg.templates, cfg.seed, cfg.n_train, cfg.n_test, "prompts-v2")
        self.base_key = _hash(loaded.fingerprint, str(loaded.dtype), cfg.last_layer, self.prompt_key)
        self.heldout_tasks = resolve_holdout(cfg, tasks)
        self.ceiling_tasks = resolve_ceiling(cfg, tasks)
        self.train_logs: dict[str, dict] = {}
        self.seconds = {"train": 0.0, "extract": 0.0}

    def evaluated(self, label: str) -> bool:
        """Whether `label`'s extraction also evaluates the model on its first `eval_examples` prompts
        (test loss, options, answers, lens): B, E, E' and every C_t always; C_t' with evaluate_ceiling."""
        return label != CEILING or self.cfg.evaluate_ceiling

    def eval_key(self, label: str) -> tuple:
        """What an extraction's cache key adds for its evaluation (or for having none)."""
        if not self.evaluated(label):
            return ("states only",)
        limits = {"generate": self.cfg.generate_examples, "lens": self.cfg.lens_examples}
        return ("evaluation v1", self.cfg.eval_examples, *(f"{k} {v}" for k, v in limits.items() if v))

    def prompt_builder(self, loaded, fmt: PromptFormat) -> PromptBuilder:
        cfg = self.cfg
        return PromptBuilder(loaded.tokenizer, fmt, max_prompt_tokens=cfg.max_prompt_tokens,
                             max_target_tokens=cfg.max_target_tokens, floor=cfg.truncation_floor)

    def write_prompts(self, path: Path) -> None:
        """Every test prompt as every model of the study reads it, one JSON line each."""
        with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as fh:
            fh.writelines(json.dumps(p.record(), ensure_ascii=False) + "\n" for ps in self.test.values() for p in ps)

    def release(self) -> None:
        """Drop the loaded model (the units run elsewhere and load their own)."""
        self.host = self.loaded = None
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def provenance(self, source) -> dict:
        loaded, cfg = self.loaded, self.cfg
        return {
            "config": json.loads(cfg.model_dump_json()), "versions": _versions(),
            "model": {"name": loaded.name, "kind": source.kind, "location": source.location,
                      "fingerprint": loaded.fingerprint, "n_layers": loaded.n_layers,
                      "hidden_size": loaded.hidden_size, "dtype": str(loaded.dtype),
                      "dtype_reason": loaded.dtype_reason, "device": str(loaded.device),
                      "prompt_mode": self.builder.mode},
            "prompt_format": self.fmt.describe(),
            "tasks": {t.name: {"cluster": t.cluster, "fingerprint": t.fingerprint, "path": str(t.path),
                               "template": t.template_note, "n_templates": len(t.templates),
                               "n_train": len(self.train[t.name]), "n_test": len(self.test[t.name]),
                               "prompts": {split: self.samples[split][t.name].stats() for split in self.samples},
                               "properties": self.properties(t)}
                      for t in self.tasks},
            "heldout_tasks": list(self.heldout_tasks),
            "ceiling_tasks": list(self.ceiling_tasks),
            "training_budget": {"rule": cfg.experimental_budget, "statement": BUDGET_RULES[cfg.experimental_budget],
                                "control_examples_seen": {t: examples_seen(len(p), cfg.control)
                                                          for t, p in self.train.items()}},
            "experimental": {"mode": "trained"} if cfg.experimental_model is None
            else {"mode": "given", "spec": cfg.experimental_model},
            "command": " ".join(sys.argv), "started": datetime.now().isoformat(timespec="seconds"),
        }

    def properties(self, task: TaskSpec) -> dict:
        """What Fig 6 correlates with: readability of the test inputs, and the number of training
        examples the task's control saw (distinct examples, the size it was trained on)."""
        inputs = [" ".join(ex.fields.values()) for ex in self.samples["test"][task.name].examples]
        n = len(self.train[task.name])
        return {**readability(inputs), "train_size": min(n, examples_seen(n, self.cfg.control))}

    def _adapter(self, unit: str, prompts, settings, inputs: str, *, lora: LoraSettings | None = None) -> None:
        """Train adapter `unit` (or load it when a finished one with the same inputs exists)."""
        t0 = time.perf_counter()
        done = self.study.unit_done(unit, inputs)
        if done is not None:
            self.rep.log(f"{unit}: adapter found, not retrained")
            self.host.load(unit, self.study.adapter_dir(unit))
            self.train_logs[unit] = done["log"]
            return
        with self.rep.bar(f"train {unit}", total=n_steps(len(prompts), settings)) as advance:
            log = train_adapter(self.host, unit, prompts, settings=settings, lora=lora or self.cfg.lora,
                                seed=self.cfg.seed,
                                on_step=lambda step, total, loss: advance(1, info=f"loss {loss:.3f}"))
        with self.study.adapter_writer(unit) as tmp:  # the marker last; the folder is published whole
            self.host.save(unit, tmp)
            weights = hashlib.sha256((tmp / "adapter_model.safetensors").read_bytes()).hexdigest()
            (tmp / MARKER).write_text(json.dumps({"inputs": inputs, "sha256": weights, "log": log}, indent=2,
                                                 default=str) + "\n", encoding="utf-8")
        self.train_logs[unit] = log
        self.seconds["train"] += time.perf_counter() - t0
        self.rep.log(f"{unit}: {log['steps']} steps, loss {log['train_loss'][0]:.3f} -> "
                     f"{log['train_loss'][-1]:.3f}, {log['tokens_per_second']:.0f} tokens/s")

    def _extract(self, label: str, adapter: str | None, task: str, inputs: str, *, host: AdapterHost | None = None,
                 test: dict | None = None, builder: PromptBuilder | None = None) -> None:
        """States (and evaluation) of `label` on `task`'s test prompts: B + `adapter` by default, or
        another model's `host` with its own encoding `test` of the prompts by its `builder` (a given
        E). The file's meta records the format and a digest of the prompt texts the model read."""
        if self.study.activations_done(label, task, inputs):
            return
        t0 = time.perf_counter()
        host, test, builder = host or self.host, test or self.test, builder or self.builder
        prompts, loaded = test[task], host.loaded
        evaluated = self.evaluated(label)
        meta = {"last_layer": self.cfg.last_layer, "n_layers": loaded.n_layers, "evaluated": evaluated,
                "eval_examples": min(self.cfg.eval_examples or len(prompts), len(prompts)) if evaluated else 0,
                "generate_examples": self.cfg.generate_examples if evaluated else 0,
                "lens_examples": self.cfg.lens_examples if evaluated else 0,
                "prompt_format": builder.fmt.describe(), "prompt_text_sha256": prompt_digest(prompts)}
        with self.study.activation_writer(label, task, ids=[p.id for p in prompts], n_states=loaded.n_layers + 1,
                                          hidden=loaded.hidden_size, inputs=inputs, meta=meta) as sink:
            extract(host, adapter, prompts, token_budget=self.cfg.extract_token_budget,
                    last_layer=self.cfg.last_layer, sink=sink, evaluate=evaluated, eval_rows=self.cfg.eval_examples,
                    generate_rows=self.cfg.generate_examples, lens_rows=self.cfg.lens_examples,
                    answer_end=builder.end_of_answer(), one_line=builder.mode == "plain",
                    max_new_tokens=self.cfg.max_target_tokens)
        self.seconds["extract"] += time.perf_counter() - t0

    def _single_task(self, label: str, task: str) -> None:
        """Unit `label`-<task>: LoRA on task t alone with the control's recipe, then its states on t's
        test prompts as model `label`; the adapter is then dropped."""
        unit = f"{label}-{task}"
        inputs = _hash(self.base_key, self.task_fp[task], self.cfg.lora.key(), self.cfg.control.model_dump(),
                       label)
        acts_key = _hash(inputs, "acts", *self.eval_key(label))
        done = self.study.unit_done(unit, inputs)
        if done is not None and self.study.activations_done(label, task, acts_key):
            self.train_logs[unit] = done["log"]
            return
        self._adapter(unit, self.train[task], self.cfg.control, inputs)
        self._extract(label, unit, task, acts_key)
        self.host.remove(unit)

    def control(self, task: str) -> None:
        """C_t: LoRA on task t alone, then its states on t's test prompts."""
        self._single_task("control", task)

    def ceiling(self, task: str) -> None:
        """C_t': C_t's recipe and training examples under another seed (a unit's seed comes from its
        name, so LoRA init and data order differ); evaluated only with evaluate_ceiling."""
        self._single_task(CEILING, task)

    def experimental(self) -> None:
        """E: LoRA on the capped mixture of all tasks (or the given model), then its states on every task."""
        if self.cfg.experimental_model is None:
            self._mixture_unit(EXPERIMENTAL, [t.name for t in self.tasks], [t.name for t in self.tasks])
        else:
            self._given_experimental()

    def _given_experimental(self) -> None:
        """E given, not trained: an adapter folder applied to B, or a model of its own that reads the
        same test examples through its own tokenizer and chat template."""
        kind, where = experimental_source(self.cfg.experimental_model)
        if kind == "adapter":
            key = _hash(self.base_key, "given adapter", adapter_digest(where))
            keys = {t: _hash(key, fp, *self.eval_key(EXPERIMENTAL)) for t, fp in self.task_fp.items()}
            if not all(self.study.activations_done(EXPERIMENTAL, t, k) for t, k in keys.items()):
                self.host.load(EXPERIMENTAL, where)
                self._extract_tasks(EXPERIMENTAL, EXPERIMENTAL, keys)
                self.host.remove(EXPERIMENTAL)
            return
        _, fingerprint = materialize(where, progress=self.rep.log)
        key = _hash(fingerprint, self.cfg.dtype, self.cfg.last_layer, self.prompt_key, "given model",
                    self.cfg.experimental_prompt_format)
        keys = {t: _hash(key, fp, *self.eval_key(EXPERIMENTAL)) for t, fp in self.task_fp.items()}
        if all(self.study.activations_done(EXPERIMENTAL, t, k) for t, k in keys.items()):
            return
        loaded = load_model(where, dtype=self.cfg.dtype, device=self.cfg.device, progress=self.rep.log)
        self.rep.log(f"experimental E given: {loaded.name}, {loaded.n_layers} layers, d={loaded.hidden_size}")
        own = self.cfg.experimental_prompt_format == "own"
        fmt = resolve_format("auto", cue=self.cfg.cue, template=None, system_prompt=self.cfg.system_prompt,
                             own_template=loaded.chat_template) if own else self.fmt
        builder = self.prompt_builder(loaded, fmt)
        test = {t: [builder.reencode(p, rewrap=own) for p in prompts] for t, prompts in self.test.items()}
        self._extract_tasks(EXPERIMENTAL, None, keys, host=AdapterHost(loaded), test=test, builder=builder)
        del loaded
        gc.collect()

    def heldout(self) -> None:
        """E': the same recipe without the held-out tasks, then its states on the held-out tasks."""
        if self.heldout_tasks:
            seen = [t.name for t in self.tasks if t.name not in self.heldout_tasks]
            self._mixture_unit(HELDOUT, seen, list(self.heldout_tasks))

    def _mixture_unit(self, unit: str, train_on: list[str], evaluate_on: list[str], *,
                      lora: LoraSettings | None = None) -> None:
        cfg = self.cfg
        lora = lora or cfg.lora
        fps = {t: self.task_fp[t] for t in train_on}
        budget = cfg.control.model_dump() if cfg.experimental_budget == "parity" else None
        inputs = _hash(self.base_key, fps, lora.key(), cfg.experimental.model_dump(), cfg.cluster_cap,
                       unit, cfg.experimental_budget, budget)
        keys = {t: _hash(inputs, "acts", self.task_fp[t], *self.eval_key(unit)) for t in evaluate_on}
        done = self.study.unit_done(unit, inputs)
        if done is not None and all(self.study.activations_done(unit, t, k) for t, k in keys.items()):
            self.train_logs[unit] = done["log"]
            return
        train = {t: self.train[t] for t in train_on}
        settings = cfg.experimental
        if cfg.experimental_budget == "parity":  # one pass over a stream that repeats each task as C_t does
            mix = parity_stream(train, self.clusters, control=cfg.control, cap=cfg.cluster_cap, seed=cfg.seed)
            settings = settings.model_copy(update={"epochs": 1.0, "max_steps": None})
        else:
            mix = mixture(train, self.clusters, cap=cfg.cluster_cap, seed=cfg.seed)
        self.rep.log(f"{unit} mixture: {len(mix)} examples from {len(train_on)} tasks ({cfg.experimental_budget})")
        self._adapter(unit, mix, settings, inputs, lora=lora)
        self._extract_tasks(unit, unit, keys)
        self.host.remove(unit)

    def base(self) -> None:
        """B: the plain base model's states on every task."""
        self._extract_tasks("base", None, {t: _hash(self.base_key, "base", fp, *self.eval_key("base"))
                                           for t, fp in self.task_fp.items()})

    def layer_ranges(self) -> tuple[dict[str, tuple[int, int]], str]:
        """The ranges the causal check and the restricted E's use (`mossa.causal.section_ranges`); the
        sections are read from results/sections.json, which the analysis has written by now."""
        return section_ranges(read_json(self.study.path("results", "sections.json")), self.loaded.n_layers,
                              self.cfg.causal_layers)

    def causal_tasks(self) -> dict[str, list[str]]:
        """Model -> the tasks its causal check runs on: E (trained, or a given adapter) on the causal tasks,
        E' on those of them it was not trained on."""
        chosen = [t.name for t in self.tasks if self.cfg.causal_tasks == "all" or t.name in self.cfg.causal_tasks]
        given = experimental_source(self.cfg.experimental_model)
        out = {EXPERIMENTAL: chosen} if given is None or given[0] == "adapter" else {}
        held = [t for t in chosen if t in self.heldout_tasks]
        if held:
            out[HELDOUT] = held
        return out

    def causal(self) -> None:
        """E (and E') with the adapter on in each layer range only, and outside it, on the first
        `causal_examples` evaluated prompts of each causal task; one record per (model, task) under causal/."""
        cfg = self.cfg
        ranges, source = self.layer_ranges()
        order = masks(ranges, self.loaded.n_layers)
        for model, tasks in self.causal_tasks().items():
            adapter = self._causal_adapter(model)
            loaded_here = False
            for task in tasks:
                prompts = self.test[task][:self.causal_rows(task)]
                key = _hash(adapter, self.prompt_key, self.task_fp[task], ranges, len(prompts),
                            *self.eval_key(model), "causal v1")
                path = self.study.path("causal", model, f"{task}.json")
                if path.is_file() and read_json(path).get("inputs") == key:
                    continue
                if not loaded_here:
                    self._load_causal_adapter(model)
                    loaded_here = True
                t0 = time.perf_counter()
                with self.rep.bar(f"causal {model} {task}", total=len(order)) as advance:
                    record = run_masks(self.host, model, prompts, order, token_budget=cfg.extract_token_budget,
                                       extract=lambda layers, ps=prompts, step=advance: self._masked(model, ps, layers,
                                                                                                     step))
                write_json(path, {"inputs": key, "model": model, "task": task, "source": source,
                                  "ranges": {k: list(v) for k, v in ranges.items()}, **record})
                self.seconds["extract"] += time.perf_counter() - t0
            if loaded_here:
                self.host.remove(model)

    def causal_rows(self, task: str) -> int:
        """How many of `task`'s first test prompts the causal check runs on: its evaluated prompts (a task
        without options is evaluated on its answered ones), at most `causal_examples`."""
        cfg, prompts = self.cfg, self.test[task]
        n = min(k for k in (cfg.causal_examples, cfg.eval_examples, len(prompts)) if k)
        if not any(p.options for p in prompts[:n]) and cfg.generate_examples:
            n = min(n, cfg.generate_examples)
        return n

    def _masked(self, adapter: str, prompts: list, layers, advance) -> dict:
        """The evaluation record of B + `adapter` on in the blocks `layers` only: the study's evaluation
        (scores and greedy answers, no lens) of `prompts`."""
        cfg = self.cfg
        record = extract(self.host, adapter, prompts, token_budget=cfg.extract_token_budget, last_layer=cfg.last_layer,
                         generate_rows=cfg.generate_examples, lens=False, answer_end=self.builder.end_of_answer(),
                         one_line=self.builder.mode == "plain", max_new_tokens=cfg.max_target_tokens,
                         layers=layers).evaluation
        advance(1)
        return record

    def _causal_adapter(self, model: str) -> str:
        """The fingerprint of the adapter `model`'s causal check masks: its training inputs, or a given
        adapter's digest."""
        given = experimental_source(self.cfg.experimental_model)
        if model == EXPERIMENTAL and given is not None:
            return adapter_digest(given[1])
        marker = read_json(self.study.adapter_dir(model) / MARKER)
        return marker["inputs"]

    def _load_causal_adapter(self, model: str) -> None:
        given = experimental_source(self.cfg.experimental_model)
        where = given[1] if model == EXPERIMENTAL and given is not None else self.study.adapter_dir(model)
        self.host.load(model, where)

    def restricted(self, name: str) -> None:
        """E with LoRA on one layer range only (`lora.layers`), on E's mixture and budget, evaluated on every
        task as model 'restricted <range>'."""
        ranges, _ = self.layer_ranges()
        first, last = ranges[name]
        unit = restricted_label(name)
        lora = self.cfg.lora.model_copy(update={"layers": [first, last]})
        every = [t.name for t in self.tasks]
        self._mixture_unit(unit, every, every, lora=lora)

    def _extract_tasks(self, label: str, adapter: str | None, keys: dict[str, str], *,
                       host: AdapterHost | None = None, test: dict | None = None,
                       builder: PromptBuilder | None = None) -> None:
        with self.rep.bar(f"extract {label}", total=sum(len(self.test[t]) for t in keys)) as advance:
            for task, key in keys.items():
                self._extract(label, adapter, task, key, host=host, test=test, builder=builder)
                advance(len(self.test[task]), info=task)


def _run(cfg: StudyConfig, study: StudyDir, tasks: list[TaskSpec], source, executor, rep: Reporter,
         timings: dict[str, float], started: float) -> StudyResult:
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
    run = _Study(cfg, study, tasks, loaded, rep)  # the prompt format and every prompt: checked here too
    timings["prompts"] = time.perf_counter() - t0
    # Logged only now: every check that needs the model has passed, so a user error stays one line.
    rep.log(f"study {study.root}: {len(tasks)} tasks in {len({t.cluster for t in tasks})} clusters, "
            f"model {cfg.model}")
    rep.log(f"loaded {loaded.name}: {loaded.n_layers} layers, d={loaded.hidden_size}, "
            f"{loaded.dtype} on {loaded.device} ({loaded.dtype_reason})")
    unit_cfg = unit_config(cfg, tasks, loaded)
    units = study_units(unit_cfg, run.heldout_tasks, gpus=_gpus_per_unit(unit_cfg), ceiling=run.ceiling_tasks)
    provenance = {**run.provenance(source),
                  "executor": {**executor.describe(), "threads": unit_cfg.threads,
                               "cpus_per_unit": units[0].cpus, "gpus_per_unit": units[0].gpus,
                               "units": [u.name for u in units]}}
    write_json(study.path("study.json"), {**provenance, "status": "running"})
    run.write_prompts(study.path(PROMPTS_FILE))
    with atomic_path(study.path("config.yaml")) as tmp:  # `mossa run --config` reruns the study
        tmp.write_text(yaml.safe_dump(json.loads(cfg.model_dump_json()), sort_keys=False), encoding="utf-8")
    del loaded
    key = _study_key(unit_cfg)
    if executor.in_process:
        _OPEN[key] = run  # run_unit finds this study (its loaded model) instead of loading another
    else:
        run.release()
    try:
        t0 = time.perf_counter()
        results = executor.map(units)
        timings["units"] = time.perf_counter() - t0
        for stage in ("train", "extract"):
            timings[stage] = sum(r["seconds"][stage] for r in results)
        training = {r["unit"]: r["log"] for r in results if r["log"] is not None}
        cpus, gpus = units[0].cpus, units[0].gpus
        analysis = Unit("analysis", analysis_unit, (unit_cfg, unit_cfg.out, provenance), cpus=cpus)
        [tables] = executor.map([analysis])
        later = [Unit(name, run_unit, (unit_cfg, unit_cfg.out, name), cpus=cpus, gpus=gpus)
                 for name in section_units(unit_cfg, read_json(study.path("results", "sections.json")),
                                           provenance["model"]["n_layers"])]
        if later:
            t0 = time.perf_counter()
            for r in executor.map(later):
                if r["log"] is not None:
                    training[r["unit"]] = r["log"]
            timings["causal"] = time.perf_counter() - t0
        finish = Unit("report", finish_study, (unit_cfg, unit_cfg.out, provenance, training,
                                               {**timings, **tables.timings}, started, tables), cpus=cpus)
        [result] = executor.map([finish])
    finally:
        _OPEN.pop(key, None)
    return replace(result, root=study.root)


_DTYPE_NAMES = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}


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


def _gpus_per_unit(cfg: StudyConfig) -> float:
    if cfg.gpus_per_unit is not None:
        return cfg.gpus_per_unit
    return 1.0 if cfg.device == "cuda" else 0.0


def study_units(cfg: StudyConfig, heldout: tuple[str, ...], *, gpus: float,
                ceiling: tuple[str, ...] = ()) -> list[Unit]:
    """The study's independent units, in the order the local executor runs them."""
    names = ([f"control-{t}" for t in cfg.tasks] + [f"{CEILING}-{t}" for t in ceiling] + [EXPERIMENTAL]
             + ([HELDOUT] if heldout else []) + ["base"])
    cpus = cfg.cpus_per_unit or float(cfg.threads)
    return [Unit(name, run_unit, (cfg, cfg.out, name), cpus=cpus, gpus=gpus) for name in names]


_OPEN: dict[str, _Study] = {}  # the study this process has open (the driver's, or a worker's own)


def _study_key(cfg: StudyConfig) -> str:
    return _hash(cfg.model_dump_json())


def _open_study(cfg: StudyConfig, root: Path) -> _Study:
    """This process's study for `cfg`: the running one, or one opened here (a Ray worker loads the model
    once and keeps it for the next unit it is given). Never takes the study lock: the driver holds it."""
    key = _study_key(cfg)
    if key not in _OPEN:
        _OPEN.clear()  # a worker keeps one study at a time
        rep = Reporter(enabled=False)
        tasks = study_tasks(cfg)
        loaded = load_model(resolve_model(cfg.model), dtype=cfg.dtype, device=cfg.device, progress=rep.log)
        _OPEN[key] = _Study(cfg, StudyDir(root), tasks, loaded, rep)
    return _OPEN[key]


@contextlib.contextmanager
def _unit_threads(n: int):
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


def restricted_label(name: str) -> str:
    """The unit and model label of the E trained on layer range `name` only ("restricted-shared")."""
    return "restricted-" + name.replace(" ", "-")


def section_units(cfg: StudyConfig, sections: dict, n_layers: int) -> list[str]:
    """The units that need the sections (run after the analysis): the causal check, and with
    `restrict_sections` one restricted E per layer range."""
    if cfg.causal_layers == "none":
        return []
    ranges, _ = section_ranges(sections, n_layers, cfg.causal_layers)
    return ["causal"] + ([restricted_label(r) for r in ranges] if cfg.restrict_sections else [])


def run_unit(cfg: StudyConfig, root: Path, name: str) -> dict:
    """Run one unit of the study at `root`: 'control-<task>', 'ceiling-<task>', 'experimental', 'heldout' or
    'base'.

    Returns its training log (None for 'base') and its seconds of training and extraction.
    """
    with _unit_threads(cfg.threads):
        run = _open_study(cfg, root)
        before = dict(run.seconds)
        if name.startswith("control-"):
            run.control(name[len("control-"):])
        elif name.startswith(f"{CEILING}-"):
            run.ceiling(name[len(CEILING) + 1:])
        elif name == EXPERIMENTAL:
            run.experimental()
        elif name == HELDOUT:
            run.heldout()
        elif name == "base":
            run.base()
        elif name == "causal":
            run.causal()
        elif name.startswith("restricted-"):
            ranges, _ = run.layer_ranges()
            [range_name] = [r for r in ranges if restricted_label(r) == name]
            run.restricted(range_name)
        else:
            raise ValueError(f"unknown study unit {name!r}")
        return {"unit": name, "log": run.train_logs.get(name),
                "seconds": {k: run.seconds[k] - before[k] for k in before}}


def analysis_unit(cfg: StudyConfig, root: Path, provenance: dict) -> StudyResult:
    """Every table and figure the stored activations give (the sections among them), before the units
    that need the sections run."""
    with _unit_threads(cfg.threads):
        run = _OPEN.get(_study_key(cfg))
        rep = run.rep if run is not None else Reporter(enabled=False)
        provenance = {**provenance, "experimental": experimental_info(StudyDir(root), provenance)}
        return analyze_and_report(root, measures=tuple(cfg.measures or DEFAULT_MEASURES), n_boot=cfg.n_boot,
                                  n_permutations=cfg.n_permutations, tsne_layers=cfg.tsne_layers,
                                  provenance=provenance, reporter=rep, checks=False)


def finish_study(cfg: StudyConfig, root: Path, provenance: dict, training: dict, timings: dict,
                 started: float, analysis: StudyResult) -> StudyResult:
    """The last unit: the causal check's and the restricted E's tables and figure, study.json marked
    complete, the report."""
    with _unit_threads(cfg.threads):
        run = _OPEN.get(_study_key(cfg))
        rep = run.rep if run is not None else Reporter(enabled=False)
        study = StudyDir(root)
        provenance = {**provenance, "experimental": experimental_info(study, provenance)}
        t0 = time.perf_counter()
        plot_section_checks(root, section_checks(root, provenance))
        timings = {**timings, "causal_tables": time.perf_counter() - t0, "total": time.time() - started}
        missed = not_learned(analysis.controls)
        if missed:
            rep.log(f"controls that did not learn their task ({LEARNED_RULE}): {', '.join(missed)}")
        write_json(study.path("study.json"), {
            **provenance, "status": "complete", "finished": datetime.now().isoformat(timespec="seconds"),
            "seconds": {k: round(v, 2) for k, v in timings.items()}, "training": training,
            "controls_learned": {"rule": LEARNED_RULE, "not_learned": missed,
                                 "learned": [t for t in analysis.controls["task"] if t not in missed]}})
        write_report(root)
        return StudyResult(root=study.root, similarity=analysis.similarity, controls=analysis.controls,
                           timings=timings)


def experimental_info(study: StudyDir, provenance: dict) -> dict:
    """How E came to be (trained, or given), with a given E's depth and width as stored and, when its
    depth differs from B's, the relative-depth map of B's states onto E's that the analysis uses."""
    info = dict(provenance.get("experimental") or {"mode": "trained"})
    if info["mode"] != "given":
        return info
    n_grid = int(provenance["model"]["n_layers"]) + 1
    file = study.activation_file(EXPERIMENTAL, next(iter(provenance["tasks"])), verify=False)
    shape = file.shape
    info.update(n_layers=shape[0] - 1, hidden_size=shape[2], prompt_format=file.meta.get("prompt_format"))
    if shape[0] != n_grid:
        info["layer_map"] = depth_map(shape[0], n_grid)
    return info


def analyze_and_report(root: Path, *, provenance: dict | None = None, reporter: Reporter | None = None,
                       checks: bool = True, **options) -> StudyResult:
    """The analysis stage's tables of a study (`mossa.analysis.analyze_study`, with `options`), then its
    figures (`mossa.report.plot_study`) and, with `checks`, the causal check's tables and figure from its
    stored records (`mossa.analysis.section_checks`; a run computes them once its causal unit is done). The
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


__all__ = ["StudyResult", "analyze_and_report", "experimental_info", "experimental_source", "finish_study", "run_study",
           "run_unit", "study_units", "unit_config", "validate"]
