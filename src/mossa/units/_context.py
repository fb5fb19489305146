"""The study a unit runs in, and the machinery every kind of unit shares: the loaded base with its
adapters, the prompts every model reads, adapter training and extraction into the store, each resumed
by the fingerprint of its inputs.

Stage: units (reads the base model and the tasks; writes adapters/ and activations/ through the store).
"""

from __future__ import annotations

import gc
import hashlib
import json
import time
from pathlib import Path

import torch

from mossa.analysis import CROSS, SECOND_SEED
from mossa.config import LoraSettings, StudyConfig
from mossa.extraction import extract
from mossa.models import AdapterHost
from mossa.progress import Reporter
from mossa.store import MARKER, StudyDir, atomic_path
from mossa.tasks import (
    PromptBuilder,
    PromptFormat,
    TaskSpec,
    check_test_prompts,
    prompt_digest,
    resolve_cross_tasks,
    resolve_format,
)
from mossa.training import n_steps, train_adapter

CEILING = "ceiling"  # C_t': a task's control trained again under another seed (seed agreement)


def input_digest(*parts: object) -> str:
    """The fingerprint of a unit's inputs: a short SHA-256 of their JSON."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


class StudyContext:
    """A study in progress: the loaded base with its adapters, the prompts, the study dir, and the shared
    steps of every unit (`train`, `extract`, `extract_tasks`), each skipped when its output is stored with
    the same input fingerprint."""

    def __init__(self, cfg: StudyConfig, study: StudyDir, tasks: list[TaskSpec], loaded, rep: Reporter):
        self.cfg, self.study, self.tasks, self.loaded, self.rep = cfg, study, tasks, loaded, rep
        self.host = AdapterHost(loaded)
        self.n_layers = loaded.n_layers
        self.clusters = {t.name: t.cluster for t in tasks}
        self.fmt = resolve_format(cfg.prompt_format, cue=cfg.cue, template=cfg.chat_template,
                                  system_prompt=cfg.system_prompt, own_template=loaded.chat_template)
        self.builder = self.prompt_builder(loaded, self.fmt)
        size = {"train": cfg.task_n_train, "test": lambda task: cfg.n_test}
        self.samples = {split: {t.name: self.builder.draw(t, split, size[split](t.name), cfg.seed,
                                                          templates=cfg.templates) for t in tasks}
                        for split in ("train", "test")}
        for task in tasks:
            sample = self.samples["test"][task.name]
            check_test_prompts(task, len(sample.prompts), len(sample.left_out))
        self.train_prompts = {t: sample.prompts for t, sample in self.samples["train"].items()}
        self.test = {t: sample.prompts for t, sample in self.samples["test"].items()}
        self.task_fp = {t.name: t.fingerprint for t in tasks}
        self.cross = resolve_cross_tasks(cfg, tasks)  # task -> the other tasks whose controls read its prompts
        self.prompt_key = input_digest(self.fmt.describe(), cfg.max_prompt_tokens, cfg.max_target_tokens,
                                       cfg.truncation_floor, cfg.templates, cfg.seed, cfg.n_train, cfg.n_test,
                                       "prompts-v2")
        self.base_key = input_digest(loaded.fingerprint, str(loaded.dtype), cfg.last_layer, self.prompt_key)
        self.train_logs: dict[str, dict] = {}
        self.seconds = {"train": 0.0, "extract": 0.0}

    def evaluated(self, label: str) -> bool:
        """Whether `label`'s extraction also evaluates the model on its first `eval_examples` prompts
        (test loss, options, answers, lens): B, E, E' and every C_t always; C_t' with evaluate_ceiling; E and
        E' of the second seed and C_s on another task's prompts never (states only: they serve the similarity
        measures)."""
        if label == CEILING:
            return self.cfg.evaluate_ceiling
        return label not in SECOND_SEED.values() and not label.startswith(CROSS)

    def eval_key(self, label: str) -> tuple:
        """What an extraction's cache key adds for its evaluation (or for having none)."""
        if not self.evaluated(label):
            return ("states only",)
        limits = {"generate": self.cfg.generate_examples, "lens": self.cfg.lens_examples}
        return ("evaluation v1", self.cfg.eval_examples, *(f"{k} {v}" for k, v in limits.items() if v))

    def states_key(self, label: str) -> tuple:
        """What a stored extraction's cache key adds: its evaluation's key and the dtype its states are stored in
        (float32 adds nothing: keys of studies run before half-size stores stay valid)."""
        store = () if self.cfg.activation_dtype == "float32" else (f"store {self.cfg.activation_dtype}",)
        return (*self.eval_key(label), *store)

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

    def train(self, unit: str, prompts, settings, inputs: str, *, lora: LoraSettings | None = None) -> None:
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

    def extract(self, label: str, adapter: str | None, task: str, inputs: str, *, host: AdapterHost | None = None,
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
                                          hidden=loaded.hidden_size, inputs=inputs, meta=meta,
                                          dtype=self.cfg.activation_dtype) as sink:
            extract(host, adapter, prompts, sink=sink, **self.extract_options(label, builder))
        self.seconds["extract"] += time.perf_counter() - t0

    def extract_options(self, label: str, builder: PromptBuilder | None = None) -> dict:
        """The options `mossa.extraction.extract` runs with for `label`'s states (and evaluation) in this study."""
        cfg, builder = self.cfg, builder or self.builder
        return {"token_budget": cfg.extract_token_budget, "last_layer": cfg.last_layer,
                "evaluate": self.evaluated(label), "eval_rows": cfg.eval_examples,
                "generate_rows": cfg.generate_examples, "lens_rows": cfg.lens_examples,
                "answer_end": builder.end_of_answer(), "one_line": builder.mode == "plain",
                "max_new_tokens": cfg.max_target_tokens}

    def extract_tasks(self, label: str, adapter: str | None, keys: dict[str, str], *,
                      host: AdapterHost | None = None, test: dict | None = None,
                      builder: PromptBuilder | None = None) -> None:
        """`extract` on every task of `keys` (task -> input fingerprint of its states), under one progress bar."""
        with self.rep.bar(f"extract {label}", total=sum(len(self.test[t]) for t in keys)) as advance:
            for task, key in keys.items():
                self.extract(label, adapter, task, key, host=host, test=test, builder=builder)
                advance(len(self.test[task]), info=task)
