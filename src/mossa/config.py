"""The study's settings: one validated object, filled by presets, a YAML file and CLI flags.

Stage: configuration (reads nothing but the user's flags and config file). Every other stage
receives a `StudyConfig`; `study.json` stores its resolved form so a study can be rerun.

Presets are named override sets (nanoGPT style): `quick` (smoke-sized), `demo` (CPU-sized,
one real task per Flan cluster) and `paper` (the paper's hyperparameters, for GPUs).
"""

from __future__ import annotations

import json
import os
import textwrap
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from mossa.errors import MossaError

PresetName = Literal["quick", "demo", "paper"]


class LoraSettings(BaseModel):
    """LoRA adapter shape (the paper: rank 8, alpha 16, dropout 0 on q_proj and v_proj)."""

    model_config = ConfigDict(extra="forbid")

    rank: int = Field(8, gt=0, description="LoRA rank r.")
    alpha: float = Field(16.0, gt=0, description="LoRA scaling alpha.")
    dropout: float = Field(0.0, ge=0, lt=1, description="Dropout on the LoRA input.")
    targets: list[str] | Literal["auto"] = Field("auto", description="Module names to adapt; auto = the "
                                                 "attention query and value projections of the model's family "
                                                 "(q_proj/v_proj, GPT-2's c_attn, GPT-NeoX's query_key_value).")

    layers: list[int] | None = Field(None, description="Train LoRA on the blocks of this layer range only, [first, "
                                     "last] inclusive, numbered as the study's layers (1 = the first block, whose "
                                     "output is layer 1); None = every layer. peft's layers_to_transform.")

    @field_validator("targets")
    @classmethod
    def _some_targets(cls, v):
        if isinstance(v, list) and not v:
            raise ValueError("name at least one module, or 'auto'")
        return v

    @field_validator("layers")
    @classmethod
    def _layer_range(cls, v):
        if v is not None and (len(v) != 2 or v[0] < 1 or v[1] < v[0]):
            raise ValueError(f"expected [first, last] with 1 <= first <= last, got {v}")
        return v

    def key(self) -> dict:
        """The settings as cache keys hold them (an unset layer range is left out: keys of studies run before
        it existed stay valid)."""
        return self.model_dump(exclude={"layers"} if self.layers is None else set())


class TrainSettings(BaseModel):
    """Optimisation of one LoRA unit (a control C_t or the experimental model E)."""

    model_config = ConfigDict(extra="forbid")

    lr: float = Field(5e-5, gt=0, description="Peak learning rate (AdamW).")
    epochs: float = Field(3.0, gt=0, description="Passes over the training set.")
    max_steps: int | None = Field(None, gt=0, description="Cap on optimiser steps (overrides epochs when smaller).")
    batch_size: int = Field(4, gt=0, description="Examples per forward pass.")
    grad_accum: int = Field(4, gt=0, description="Forward passes per optimiser step.")
    schedule: Literal["cosine", "linear", "constant"] = Field("cosine", description="Learning-rate schedule.")
    warmup_ratio: float = Field(0.0, ge=0, lt=1, description="Fraction of steps spent warming up linearly.")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay.")


class TaskBudget(BaseModel):
    """One task's training budget where it differs from the study's: its training examples (`n_train`) and its
    control's passes and peak learning rate. Under budget parity E and E' follow it (each task as often as its
    control sees it)."""

    model_config = ConfigDict(extra="forbid")

    n_train: int | None = Field(None, gt=0, description="Training examples of this task (None = the study's).")
    epochs: float | None = Field(None, gt=0, description="Passes of its control (None = control.epochs).")
    lr: float | None = Field(None, gt=0, description="Peak learning rate of its control (None = control.lr).")


class TaskFile(BaseModel):
    """A custom task: one JSONL file (its name is the file's stem) and its cluster."""

    model_config = ConfigDict(extra="forbid")

    path: Path = Field(description="The task's JSONL file.")
    cluster: str | None = Field(None, min_length=1, description="Its cluster; None = 'Custom'.")


class _StudyInputs(BaseModel):
    """What a study studies and how its prompts are built: model, tasks, splits, prompt format, the held-out
    and second-seed tasks. Field descriptions double as CLI/YAML help."""

    model_config = ConfigDict(extra="forbid")

    preset: PresetName = Field("demo", description="Named defaults the other fields override.")
    model: str = Field("gemma-3-270m", description="Base model B: a registered name, a local HF dir or a hub id.")
    tasks_dir: Path | None = Field(None, description="Task source: a folder of <task>.jsonl files (flan-mini "
                                   "format) or of Super-NaturalInstructions task*.json files, or hub:flan2021 (the "
                                   "Flan 2021 collection from the Hugging Face hub; online, needs `datasets`). None = "
                                   "../shared/data/flan-mini, or no folder when task_files are given.")
    task_files: list[TaskFile] = Field([], description="Custom tasks, one JSONL file each (fields input, target; "
                                       "optional split, options, id), added to the task source's.")
    tasks: list[str] | None = Field(None, description="Task names to study; None = the preset's choice when the "
                                    "task source has all of them, else every task it offers.")
    out: Path | None = Field(None, description="Study dir; default runs/<timestamp>.")
    seed: int = Field(0, ge=0, description="Seed for sampling, LoRA init and data order.")
    n_train: int = Field(500, gt=0, description="Training examples per task (control and mixture), sampled.")
    n_test: int = Field(96, ge=4, description="Test prompts per task, sampled (at least 4: debiased CKA needs 4).")
    cluster_cap: int = Field(50_000, gt=0, description="Max training examples per cluster in E's mixture.")
    experimental_budget: Literal["parity", "settings"] = Field(
        "parity", description="How long E and E' train: 'parity' = each task's training examples as often as its "
        "control sees them (E's epochs and max_steps are then unused), 'settings' = E's own epochs/max_steps.")
    max_prompt_tokens: int = Field(128, ge=16, description="Prompts longer than this are shortened in their "
                                   "template's truncatable fields (a shared budget; options and instructions are "
                                   "never cut).")
    truncation_floor: float = Field(0.5, gt=0, le=1, description="Share of its tokens a cut field keeps at least; a "
                                    "prompt that cannot fit above it is left out and replaced by the next sampled "
                                    "example (counted in study.json and the report).")
    max_target_tokens: int = Field(32, gt=0, description="Targets are cut to this many tokens (training and test loss).")
    templates: Literal["first", "all"] = Field("all", description="Instruction templates per task: 'all' draws one "
                                               "of the task's templates per example (by seed and example id, the same "
                                               "for every model), 'first' uses its first template only.")
    prompt_format: Literal["auto", "plain", "chat"] = Field(
        "auto", description="One prompt format for every model of the study, base included: 'plain' (instruction, "
        "then the cue), 'chat' (chat_template around the instruction), 'auto' = chat when B has a chat template "
        "of its own, else plain.")
    chat_template: str | None = Field(None, description="Chat format in chat mode: a registered name ('llama-2', as "
                                      "in the paper, with its default system prompt; 'chatml'), a Jinja file, or "
                                      "'model' (B's own); None = B's own.")
    system_prompt: str | None = Field(None, description="System prompt put before every instruction (a system turn "
                                      "in chat mode, a paragraph in plain mode); None = the chat template's default "
                                      "(Llama-2's for 'llama-2'), none in plain mode; '' = none.")
    experimental_prompt_format: Literal["study", "own"] = Field(
        "study", description="Prompt format of a given E: 'study' (the same text B and C_t read) or 'own' (the same "
        "instructions wrapped in E's own chat template).")
    cue: str = Field("Answer:", min_length=1, description="Answer cue appended to plain-text prompts.")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="Compute dtype; auto = bf16 on GPU, the faster of fp32/bf16 (measured) on CPU."
    )
    device: str = Field("auto", description="torch device: auto, cpu, cuda, cuda:1, ...")
    last_layer: Literal["post_norm", "pre_norm"] = Field(
        "post_norm", description="Last layer's state after the final norm (HF convention) or before it."
    )
    holdout: list[str] | Literal["auto", "none"] = Field(
        "auto", description="Tasks held out of a second experimental model E' (Fig 7): names, 'auto' (one "
                            "seeded task from each of up to 7 clusters, at most half the tasks) or 'none'.")
    ceiling_tasks: list[str] | Literal["auto", "all", "none"] = Field(
        "auto", description="Tasks whose control is trained twice, the second time under another seed (LoRA "
        "init and data order) on the same examples: CKA(C_t', C_t) per layer is what two equally trained "
        "specialists share, the ceiling of the task's curves, and C_t' tells whether C_t learned something of its own "
        "task (the control's own specificity). Names, 'auto' (the first task of each of up to 4 clusters spread "
        "evenly over the study's clusters in study order), 'all' or 'none' (or []).")
    cross_tasks: int | Literal["all", "none"] = Field(
        3, description="Other tasks' controls whose states are also taken on each task's test prompts (extraction "
        "only), the reference of task specificity: CKA(M, C_t) - mean over s of CKA(M, C_s). A number k >= 1 "
        "(seeded, from other clusters first; at most the other tasks), 'all' or 'none'.")

    @field_validator("chat_template")
    @classmethod
    def _chat_only(cls, v: str | None, info) -> str | None:
        if v is not None and info.data.get("prompt_format") == "plain":
            raise ValueError("only used with prompt_format chat (or auto); drop it or set prompt_format: chat")
        if v is not None and not v.strip():
            raise ValueError("name a registered chat template, a Jinja file or 'model', or leave it unset")
        return v

    @field_validator("holdout", "ceiling_tasks", mode="before")
    @classmethod
    def _list_words(cls, v, info):
        """A one-item list naming a word (`--holdout none`) is the word; [] is 'none' for ceiling_tasks."""
        words = ("auto", "none", "all") if info.field_name == "ceiling_tasks" else ("auto", "none")
        if isinstance(v, list) and len(v) == 1 and v[0] in words:
            return v[0]
        if isinstance(v, list) and not v and info.field_name == "ceiling_tasks":
            return "none"
        return v

    @field_validator("cross_tasks")
    @classmethod
    def _cross_count(cls, v):
        if isinstance(v, int) and (isinstance(v, bool) or v < 1):
            raise ValueError(f"must be a number of other tasks (1 or more), 'all' or 'none', got {v!r}")
        return v

    @field_validator("ceiling_tasks")
    @classmethod
    def _ceiling_unique(cls, v):
        if isinstance(v, list):
            dupes = sorted({t for t in v if v.count(t) > 1})
            if dupes:
                raise ValueError(f"names a task twice: {', '.join(dupes)}")
        return v

    @field_validator("out")
    @classmethod
    def _out_creatable(cls, v: Path | None) -> Path | None:
        """Refuse up front a study folder that exists as a file or would lie under one (creates nothing)."""
        if v is None:
            return v
        if v.exists() and not v.is_dir():
            raise ValueError(f"{v} exists and is not a folder; choose another --out")
        above = next((p for p in v.parents if p.exists()), None)
        if not v.exists() and above is not None and not above.is_dir():
            raise ValueError(f"{v} cannot be created: {above} is a file, not a folder; choose another --out")
        return v

    @field_validator("device")
    @classmethod
    def _torch_device(cls, v: str) -> str:
        if v != "auto":
            import torch

            try:
                torch.device(v)
            except (RuntimeError, ValueError):
                raise ValueError(f"{v!r} is not a torch device; use auto, cpu, cuda or cuda:N") from None
        return v

    @field_validator("tasks")
    @classmethod
    def _tasks_unique(cls, v: list[str] | None) -> list[str] | None:
        if v is not None:
            if not v:
                raise ValueError("must name at least one task")
            dupes = sorted({t for t in v if v.count(t) > 1})
            if dupes:
                raise ValueError(f"names a task twice: {', '.join(dupes)}")
        return v


class _AnalysisSettings(_StudyInputs):
    """How a study measures: similarity measures, intervals and nulls, evaluation, the causal check."""

    measures: list[str] | None = Field(None, description="Similarity measures for the tables; None = all of "
                                       "mossa.analysis.DEFAULT_MEASURES.")
    tsne_layers: list[int] | None = Field(None, description="Layers for the t-SNE figure; None = 5 spread over "
                                          "the model's depth.")
    variance_threshold: float = Field(0.99, gt=0, le=1, description="Variance share for the spectral analysis.")
    n_boot: int = Field(200, ge=0, description="Resamples of the bootstrap intervals (the layer sections, the task "
                        "metrics); 0 = no intervals at all (nor the jackknife over examples, nor those over tasks).")
    n_permutations: int = Field(200, ge=0, description="Re-pairings of the test examples for the permutation null "
                                "of every value (null mean, 95% bound, p-value, chance-adjusted score); 0 = none.")
    analysis_workers: int | Literal["auto"] = Field(
        "auto", description="Processes the analysis runs its jobs in (each task's tables, each t-SNE panel), one "
        "BLAS thread each; 'auto' = one per core when the study compares at least 10,000 (example, layer) pairs "
        "(below that, starting workers costs more than it saves). The tables do not depend on it.")
    extract_token_budget: int = Field(2048, gt=0, description="Max padded tokens per extraction batch.")
    activation_dtype: Literal["float32", "float16", "bfloat16"] = Field(
        "float16", description="How the stored states (activations/) are kept. 'float16' (half the size): each "
        "state less its layer's centre, scaled per example by a power of two so none overflows, error at most "
        "2^-11 of that example's spread; on the demo no value moved by more than 1.3e-4, no interval bound by more "
        "than 0.5% of its width, no verdict changed. 'bfloat16' (half): 2^-8, up to 7% of an interval's width "
        "on the demo. 'float32': exactly as computed, twice the disk. Every statistic accumulates in float64 "
        "either way (docs/analyses.md, 'The half-size activation store'). Changing it recomputes the states.")
    eval_examples: int | None = Field(
        None, ge=1, description="Test prompts per task each model is evaluated on: the first n of the seeded test sample, "
        "the same ones for every model (None = all). On them the prompt's cache is kept and the model is scored: test "
        "loss with and without the end of answer, each option's log-likelihood (accuracy), a greedy answer on tasks "
        "without options (exact match, ROUGE-L, BLEU, chrF) and the logit lens at every layer. The states are taken on "
        "every prompt; evaluating one costs its options' or answer's tokens and the LM head at each of them.")
    generate_examples: int | None = Field(
        None, ge=1, description="Of the evaluated prompts of a task without options, the first n get a greedy answer "
        "(None = all evaluated): a decoding step reads every weight, so answers cost more than anything else the "
        "evaluation does. A task without options is evaluated on its answered prompts alone (its metrics are "
        "the answers'); in a task that mixes both, the other prompts without options are scored (loss, lens).")
    lens_examples: int | None = Field(
        None, ge=1, description="Of the evaluated prompts, the first n are read by the logit lens (None = all): each "
        "layer's state through the final norm and the whole LM head, about 0.7 of a short prompt's forward pass.")
    probe_examples: int | None = Field(None, ge=2, description="Test prompts per task the linear probes are fitted on "
                                       "(results/probes.csv): the first n of the seeded test sample (None = all).")
    evaluate_ceiling: bool = Field(False, description="Also evaluate each second-seed control C_t' (B, E, E' and "
                                   "every C_t always are); C_t' serves the similarity ceiling, where only its states "
                                   "are used.")
    causal_layers: list[list[int]] | Literal["sections", "none"] = Field(
        "sections", description="Layer ranges E's adapter is switched on in (only there, and everywhere but there) "
        "to test which layers carry E's gain over B (results/causal.csv): 'sections' = the shared, transition and "
        "refinement sections found (the thirds of the depth when none is found), a list of [first, last] "
        "ranges, or 'none' (no causal check).")
    causal_examples: int | None = Field(
        None, ge=1, description="Evaluated test prompts per task the causal check runs on: the first n (None = all "
        "the evaluated ones). Each range costs two evaluations of E on them.")
    causal_tasks: list[str] | Literal["all"] = Field("all", description="Tasks the causal check runs on (names, or "
                                                     "'all'); `mossa run --causal-full` sets 'all' and every "
                                                     "evaluated prompt.")
    restrict_sections: bool = Field(False, description="Also train one E per layer range of causal_layers with LoRA "
                                    "on that range only (lora.layers), same mixture and budget as E, and report "
                                    "their task metrics beside E's (performance.csv, models 'restricted <range>').")

    @field_validator("analysis_workers", mode="before")
    @classmethod
    def _workers(cls, v):
        if v == "auto" or (isinstance(v, int) and not isinstance(v, bool) and v >= 1):
            return v
        raise ValueError(f"expected 'auto' or an integer >= 1, got {v!r}")

    @field_validator("causal_layers")
    @classmethod
    def _causal_ranges(cls, v):
        if isinstance(v, list):
            if not v:
                raise ValueError("name at least one [first, last] range, or 'sections' or 'none'")
            for r in v:
                if len(r) != 2 or r[0] < 1 or r[1] < r[0]:
                    raise ValueError(f"expected [first, last] ranges with 1 <= first <= last, got {r}")
        return v

    @field_validator("causal_tasks", mode="before")
    @classmethod
    def _causal_all(cls, v):
        return "all" if v == ["all"] else v

    @field_validator("tsne_layers")
    @classmethod
    def _tsne_layers(cls, v: list[int] | None) -> list[int] | None:
        if v is not None:
            if not v:
                raise ValueError("name at least one layer, or leave it unset for 5 spread over the depth")
            if any(layer < 0 for layer in v):
                raise ValueError(f"layers are 0 (embeddings) or more, got {v}")
            if len(set(v)) != len(v):
                raise ValueError(f"names a layer twice: {v}")
        return v


class StudyConfig(_AnalysisSettings):
    """Everything a study depends on: its inputs and analysis settings, where its units run, and how its
    adapters train. Field descriptions double as CLI/YAML help."""

    executor: str = Field("local", description="Where the independent units (each control, E, E', the base "
                          "extraction, then the analysis) run: 'local' (this process, in order) or 'ray' (one "
                          "Ray task per unit; same results).")
    ray_address: str | None = Field(None, description="Ray cluster to connect to (executor 'ray'); None = start "
                                    "a local Ray instance. The study dir must be a path every node sees.")
    ray_cpus: int | None = Field(None, gt=0, description="CPUs of the local Ray instance; None = all of this "
                                 "machine's.")
    threads: int | None = Field(None, gt=0, description="torch (and BLAS) threads of every unit, in either "
                                "executor, so results do not depend on the executor; None = torch's default "
                                "in the process that starts the study.")
    cpus_per_unit: float | None = Field(None, gt=0, description="CPUs a unit asks Ray for; None = threads.")
    gpus_per_unit: float | None = Field(None, ge=0, description="GPUs a training or extraction unit asks Ray "
                                        "for; None = 1 when the device is CUDA, else 0.")
    experimental_model: str | None = Field(
        None, description="E given instead of trained: a released instruction-tuned model (registered name, "
        "local HF dir, .gguf, hub id or BASE+ADAPTER) or a peft adapter folder applied to B. None = train E "
        "(LoRA on the mixture of all tasks). A given E has no E' (nothing to hold tasks out of).")
    lora: LoraSettings = Field(default_factory=LoraSettings, description="LoRA adapters of C_t, E and E'.")
    control: TrainSettings = Field(default_factory=TrainSettings, description="Training of each control C_t.")
    task_budgets: dict[str, TaskBudget] = Field(
        {}, description="Per-task training budgets, task name -> {n_train, epochs, lr}, overriding n_train and "
        "the control's epochs and lr for that task (the demo's come from a screen on training examples only, "
        "bench/screen.py); E's parity follows them.")
    experimental_seeds: int = Field(
        1, ge=1, le=2, description="Training runs of E (and E'), each under its own seed (LoRA init and data "
        "order) on the same data and budget: 2 measures E's seed variation (CKA(E, E2) per layer; every statement "
        "about E is checked on both). A given E has one.")
    heldout_seeds: int | None = Field(
        None, ge=1, le=2, description="Training runs of E' (None = experimental_seeds): 1 keeps E' to one seed where "
        "the second costs more than the held-out reading needs (the demo).")
    experimental: TrainSettings = Field(default_factory=TrainSettings, description="Training of E and E' (unused "
                                        "when experimental_model gives E).")

    @model_validator(mode="before")
    @classmethod
    def _legacy_evaluation(cls, data):
        return upgrade_legacy(data) if isinstance(data, dict) else data

    @model_validator(mode="before")
    @classmethod
    def _legacy_chat_flag(cls, data):
        """Configs of earlier versions: use_chat_template true meant each model's own chat template."""
        if isinstance(data, dict) and "use_chat_template" in data:
            data = dict(data)
            own = data.pop("use_chat_template")
            if own is True:
                data.setdefault("experimental_prompt_format", "own")
            elif own is False:
                data.setdefault("prompt_format", "plain")
            else:
                raise ValueError("use_chat_template (an earlier setting) must be true or false; use prompt_format")
        return data

    @property
    def n_heldout_seeds(self) -> int:
        """Training runs of E': heldout_seeds, else experimental_seeds."""
        return self.heldout_seeds or self.experimental_seeds

    def task_n_train(self, task: str) -> int:
        """Training examples of `task`: its budget's n_train, else the study's."""
        budget = self.task_budgets.get(task)
        return budget.n_train if budget and budget.n_train else self.n_train

    def task_control(self, task: str) -> TrainSettings:
        """How `task`'s control trains: the control settings with its budget's epochs and lr."""
        budget = self.task_budgets.get(task)
        if budget is None:
            return self.control
        return self.control.model_copy(update={k: v for k, v in (("epochs", budget.epochs), ("lr", budget.lr))
                                               if v is not None})

    @model_validator(mode="after")
    def _restrict_needs_ranges(self):
        if self.restrict_sections and self.causal_layers == "none":
            raise ValueError("restrict_sections trains one E per range of causal_layers, which is 'none'; name "
                             "ranges or 'sections'")
        if self.restrict_sections and self.experimental_model is not None:
            raise ValueError("restrict_sections trains E on layer ranges, but E is given (experimental_model); "
                             "train E instead")
        if self.experimental_seeds > 1 and self.experimental_model is not None:
            raise ValueError(f"experimental_seeds is {self.experimental_seeds}, but E is given (experimental_model) "
                             "and has one seed; set experimental_seeds: 1 or train E")
        return self

    @field_validator("executor")
    @classmethod
    def _known_executor(cls, v: str) -> str:
        from mossa.executors import executor_names, unknown_executor

        if v not in executor_names():
            raise ValueError(str(unknown_executor(v)))
        return v

    @field_validator("ray_address", "ray_cpus")
    @classmethod
    def _ray_only(cls, v, info):
        if v is not None and info.data.get("executor", "ray") != "ray":
            raise ValueError("only used with executor 'ray' (--executor ray)")
        if v is not None and info.field_name == "ray_cpus" and info.data.get("ray_address"):
            raise ValueError("sizes the local Ray instance; a cluster given by ray_address has its own CPUs")
        return v

    @field_validator("experimental_model")
    @classmethod
    def _given_experimental(cls, v: str | None, info) -> str | None:
        if v is not None and not v.strip():
            raise ValueError("name a model or adapter folder, or leave it unset to train E")
        if v is not None and isinstance(info.data.get("holdout"), list):
            raise ValueError("a given E cannot have tasks held out of its training; drop 'holdout' (or set it "
                             "to 'none') or train E")
        return v


def upgrade_legacy(values: dict[str, Any]) -> dict[str, Any]:
    """Settings of earlier versions in today's terms: loss_examples is eval_examples (those rows are now
    evaluated, not only scored); test_loss 'all' also scored C_t', which evaluate_ceiling now says
    ('base_and_controls' left E and E' unscored: every model but C_t' is evaluated now)."""
    if "loss_examples" not in values and "test_loss" not in values:
        return values
    values = dict(values)
    for old, new in (("loss_examples", "eval_examples"), ("test_loss", "evaluate_ceiling")):
        if old in values and new in values:
            raise ValueError(f"gives both {old} (an earlier setting) and {new}; keep {new}")
    if "loss_examples" in values:
        values["eval_examples"] = values.pop("loss_examples")
    if "test_loss" in values:
        old = values.pop("test_loss")
        if old not in ("all", "base_and_controls"):
            raise ValueError(f"test_loss (an earlier setting) must be 'all' or 'base_and_controls', got {old!r}; use "
                             f"evaluate_ceiling")
        values["evaluate_ceiling"] = old == "all"
    return values


# The demo's tasks and their training budgets, chosen by a screen that never reads a test example
# (`bench/screen.py`: each control trained on the task's train split less 96 validation examples, scored
# against B on those, the study's rule: primary metric gain, paired 95% interval above 0; table and rule in
# docs/analyses.md, "The demo's tasks"). Each task takes the smallest budget of the ladder 16 examples x 2
# passes, then 64 x 2, then 128 x 2, at which it learns there: 16 x 2 for the generation tasks and
# glue_mrpc, 64 x 2 for cb (+0.17 accuracy [0.07, 0.27]) and ag_news_subset (+0.53 [0.41, 0.64]). Of the
# learners at 16 x 2, the cheapest to evaluate fill the 12 (translations answer in a few tokens; web_nlg_en,
# which learns, answers in up to 48 and would take the demo past 30 minutes). No task of the other 6 clusters
# learns at any budget screened (DEMO_UNCOVERED), so the demo covers 6 of the 12 clusters.
DEMO_TASKS = ["glue_mrpc", "e2e_nlg", "dart", "tatoeba_translate_deen", "tatoeba_translate_fren",
              "tatoeba_translate_roen", "tatoeba_translate_tren", "tatoeba_translate_ruen", "fix_punct", "word_segment",
              "cb", "ag_news_subset"]
DEMO_BUDGETS = {"cb": {"n_train": 64}, "ag_news_subset": {"n_train": 64}}
# What the screen found in the clusters the demo lacks: per task and budget (examples x passes[, peak learning
# rate when not the demo's 2e-3]), the control's gain over B on the validation prompts with its paired 95%
# interval (docs/analyses.md has the whole table). The report of a demo study states it.
DEMO_UNCOVERED = {
    "Sentiment": "sst2 16x2 -0.03 [-0.18, +0.10], 64x2 +0.02 [-0.04, +0.08], 128x2 -0.03 [-0.07, +0.00], "
                 "64x2 at 5e-4 +0.03 [-0.03, +0.07]",
    "Closed-book QA": "arc_easy 16x2 -0.01 [-0.13, +0.11], 64x2 -0.05 [-0.20, +0.09], 64x2 at 5e-4 +0.05 "
                      "[-0.09, +0.18]; trivia_qa (ROUGE-L) 64x2 +0.02 [-0.02, +0.09], 128x2 +0.08 [-0.00, +0.18]",
    "Commonsense reasoning": "piqa 16x2 +0.00 [-0.13, +0.12], 64x2 +0.01 [-0.10, +0.11]",
    "Coreference": "winogrande 16x2 +0.01 [-0.12, +0.12], 64x2 -0.02 [-0.17, +0.12], 64x2 at 5e-4 -0.01 "
                   "[-0.12, +0.11]; wsc 32x2 on 32 validation prompts +0.00 (B and C_t both answer yes)",
    "Reading comprehension": "multirc 16x2 -0.03 [-0.30, +0.25], 64x2 -0.01 [-0.10, +0.07]; openbookqa 64x2 -0.02 "
                             "[-0.15, +0.10], 64x2 at 5e-4 -0.02 [-0.15, +0.10]; bool_q 32x2 on 32 validation "
                             "prompts -0.02 [-0.11, +0.08]",
    "Reading comprehension with commonsense": "cosmos_qa 16x2 +0.04 [-0.08, +0.17], 64x2 +0.02 [-0.08, +0.14]",
}

PRESETS: dict[str, dict[str, Any]] = {
    "quick": {
        "tasks": ["sst2", "e2e_nlg"], "holdout": "none", "ceiling_tasks": "none", "causal_examples": 8,
        "n_train": 16, "n_test": 16, "max_prompt_tokens": 64, "max_target_tokens": 8,
        "control": {"lr": 2e-3, "max_steps": 2, "batch_size": 4, "grad_accum": 1, "schedule": "constant"},
        "experimental": {"lr": 2e-3, "max_steps": 2, "batch_size": 4, "grad_accum": 1, "schedule": "constant"},
    },
    # 224 prompt and 48 target tokens hold every demo prompt and >= 93% of every task's targets
    # (dart's and e2e_nlg's are the longest). Each control sees its examples twice in steps of 4 (DEMO_BUDGETS: cb and
    # ag_news_subset 64 examples, the others 16); E and E' by parity each task's as often. Every control is
    # trained twice (ceiling_tasks all), so that each one's own specificity, C_t' against C_t and against 2
    # other tasks' controls on t's prompts, says whether it learned something of its own task. E is trained
    # twice, E' once (heldout_seeds 1): E' holds out one task of each of the 6 clusters (holdout auto), so the
    # clusters of a single task (glue_mrpc, cb, ag_news_subset) are unseen by E', as in the paper's Fig 7, and
    # E' trains on 16-example tasks only. 48 test prompts per task: against 96 the intervals over examples are
    # 1.4 times as wide, against 64 1.13 times (bench/n_width.py), and the study stays within 30 minutes (bench/
    # README.md, "The demo's budget"). Tasks without options answer greedily on the first 24
    # (`generate_examples`: a decoding step reads every weight; a task without options is scored on its answered
    # prompts) and the lens reads the first 16 (19 states through the 262k-token head cost 0.7 of a prompt's
    # forward). 100 permutations per null (p-values from 1/101). The causal check (E's adapter on in one section
    # only, and outside it) runs on the answered prompts of fix_punct, where E gains most, in about 50 s (with
    # word_segment, held out of E' and so checked for E' too, the demo took 30:02); `--causal-full` runs every
    # task.
    "demo": {
        "tasks": DEMO_TASKS, "task_budgets": DEMO_BUDGETS,
        "n_train": 16, "n_test": 48, "max_prompt_tokens": 224, "max_target_tokens": 48,
        "generate_examples": 24, "lens_examples": 16, "n_permutations": 100, "experimental_seeds": 2,
        "heldout_seeds": 1, "ceiling_tasks": "all", "cross_tasks": 2,
        "causal_examples": 24, "causal_tasks": ["fix_punct"],
        "control": {"lr": 2e-3, "epochs": 2, "batch_size": 4, "grad_accum": 1, "schedule": "cosine",
                    "warmup_ratio": 0.1},
        "experimental": {"lr": 2e-3, "epochs": 1, "batch_size": 4, "grad_accum": 1, "schedule": "cosine",
                         "warmup_ratio": 0.05},
    },
    "paper": {
        "n_train": 1_000_000, "n_test": 10_000, "max_prompt_tokens": 1024, "max_target_tokens": 256,
        "cluster_cap": 50_000, "experimental_seeds": 2,
        "control": {"lr": 5e-5, "epochs": 3, "batch_size": 4, "grad_accum": 4, "schedule": "cosine"},
        "experimental": {"lr": 5e-5, "epochs": 3, "batch_size": 4, "grad_accum": 4, "schedule": "cosine"},
    },
}


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def _short(text: str, limit: int = 100) -> str:
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _format_validation_error(err: ValidationError, source: str) -> str:
    first = err.errors()[0]
    field = ".".join(str(p) for p in first["loc"]) or "(top level)"
    got = first.get("input")
    said = first["type"] == "value_error" and (repr(got) in first["msg"]  # the validator's message names it
                                               or isinstance(got, Path) and str(got) in first["msg"])
    got_txt = "" if isinstance(got, dict) or said else f" (got {_short(repr(got))})"
    more = f"; {len(err.errors()) - 1} more problem(s)" if len(err.errors()) > 1 else ""
    return f"{source}: field '{field}': {first['msg']}{got_txt}{more}"


def read_config_file(path: Path) -> dict[str, Any]:
    """Read a YAML study config into a plain dict, with errors naming the file."""
    path = Path(path)
    if not path.is_file():
        raise MossaError(f"{path}: config file not found; pass an existing YAML file to --config")
    try:
        text = path.read_bytes().decode("utf-8")
    except OSError as exc:
        raise MossaError(f"{path}: cannot read the config file ({exc.strerror})") from None
    except UnicodeDecodeError as exc:
        raise MossaError(f"{path}: not valid UTF-8 (byte {exc.start}); save the config as UTF-8") from None
    try:
        data = yaml.safe_load(text)
    except (yaml.YAMLError, RecursionError) as exc:
        line = getattr(getattr(exc, "problem_mark", None), "line", None)
        where = f"{path}:{line + 1}" if line is not None else str(path)
        raise MossaError(f"{where}: not valid YAML ({type(exc).__name__}); fix the syntax") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise MossaError(f"{path}: expected a mapping of settings at the top level, got {type(data).__name__}")
    return data


def resolve_config(overrides: dict[str, Any] | None = None, *, config_file: Path | None = None,
                   unset: tuple[str, ...] = ()) -> StudyConfig:
    """Build the study config: preset defaults < config file < explicit overrides (flags); the
    fields in `unset` are returned to their defaults whatever the file says.

    Raises
    ------
    MossaError
        When a value is invalid; the message names the field (and the file).
    """
    file_values = read_config_file(config_file) if config_file is not None else {}
    overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
    preset = overrides.get("preset", file_values.get("preset", "demo"))
    if not isinstance(preset, str) or preset not in PRESETS:
        where = f"{config_file}: " if "preset" not in overrides and config_file is not None else ""
        raise MossaError(f"{where}field 'preset': unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    try:
        file_values = upgrade_legacy({k: v for k, v in file_values.items() if k not in unset})
        overrides = upgrade_legacy(overrides)
    except ValueError as exc:
        raise MossaError(f"{config_file or 'config'}: {exc}") from None
    preset_values = {k: v for k, v in PRESETS[preset].items() if k != "tasks"}  # see preset_tasks
    if (file_values | overrides).get("experimental_model") is not None:
        preset_values.pop("experimental_seeds", None)  # a given E has one seed, whatever the preset trains
    merged = _merge(_merge(preset_values, file_values), overrides)
    merged["preset"] = preset
    if merged.get("tasks_dir") is None and os.environ.get("MOSSA_TASKS_DIR"):
        merged["tasks_dir"] = os.environ["MOSSA_TASKS_DIR"]
    try:
        return StudyConfig.model_validate(merged)
    except ValidationError as err:
        source = str(config_file) if config_file is not None else "config"
        raise MossaError(_format_validation_error(err, source)) from None


def preset_tasks(preset: str) -> list[str] | None:
    """The tasks a preset studies when `tasks` is not given and the task source has them all
    (flan-mini names); None = every task of the source."""
    return PRESETS[preset].get("tasks")


def check_layer_ranges(cfg: StudyConfig, n_layers: int) -> None:
    """Layer ranges the user names (lora.layers, causal_layers) must lie within the model's layers."""
    named = [("lora.layers", cfg.lora.layers)] if cfg.lora.layers else []
    if isinstance(cfg.causal_layers, list):
        named += [("causal_layers", r) for r in cfg.causal_layers]
    for where, (first, last) in named:
        if last > n_layers:
            raise MossaError(f"field '{where}': [{first}, {last}] reaches past the model's {n_layers} layers; "
                             f"name layers 1 to {n_layers}")


def example_config(preset: str = "demo") -> str:
    """A study config in YAML holding every setting with its value under `preset` and, above it,
    its description as a comment: `mossa run --config` on it runs exactly that preset."""
    values = json.loads(resolve_config({"preset": preset}).model_dump_json())
    lines = ["# mossa study config, written by `mossa init`. Every setting is listed with its value under the",
             f"# '{preset}' preset; edit any of them, delete the ones you keep as they are, then run",
             "#   mossa run --config <this file>",
             "# Command-line flags override this file; this file overrides the preset.", ""]

    def emit(model: type[BaseModel], data: dict[str, Any], indent: int) -> None:
        pad = " " * indent
        for name, info in model.model_fields.items():
            lines.extend(f"{pad}# {ln}" for ln in textwrap.wrap(info.description or "", 110 - indent))
            if isinstance(info.annotation, type) and issubclass(info.annotation, BaseModel):
                lines.append(f"{pad}{name}:")
                emit(info.annotation, data[name], indent + 2)
            else:
                lines.append(f"{pad}{name}: {json.dumps(data[name])}")  # JSON values are YAML flow values
            if indent == 0:
                lines.append("")

    emit(StudyConfig, values, 0)
    return "\n".join(lines).rstrip() + "\n"


__all__ = ["DEMO_TASKS", "DEMO_UNCOVERED", "PRESETS", "LoraSettings", "StudyConfig", "TaskBudget", "TaskFile", "TrainSettings",
           "check_layer_ranges", "example_config",
           "preset_tasks", "read_config_file", "resolve_config"]
