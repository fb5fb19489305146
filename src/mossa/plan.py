"""What a study will cost, before it is paid for: tokens, FLOPs, bytes on disk, memory and time.

Stage: planning (reads the model's config and tokenizer, the tasks or, where their data are not present,
the hub table's stated sizes; writes nothing).

The plan builds the study exactly as `mossa run` would (the same units, prompts, samples and data orders)
on a model that has its config but no weights (torch's meta device), and asks every unit what it will
train on and which states it will store. So with the data present its counts are the run's own: the
training tokens are what each training log will count, the bytes what the store will write. A task of
`hub:flan2021` whose data are not present is counted from the hub table's stated split sizes, with
prompts of the same task in flan-mini (else of a flan-mini task of its cluster) standing in for its
lengths; such counts are estimates and the plan says which tasks they are.

FLOPs, with N the parameters of the decoder blocks (embeddings and LM head excluded), V the vocabulary,
d the width, L the layers and s a sequence's length:

- a forward pass costs 2N per token plus 2 L s^2 d per sequence (causal attention scores and values);
- training (LoRA: the frozen weights get no gradient, the activations do) costs twice a forward pass:
  4N per token, 4 L s^2 d per sequence, and 4 d V per target token (logits only where a target is
  predicted);
- a stored state costs a forward pass of its prompt (no LM head); an evaluated prompt adds its scored
  continuation tokens (2N + 2dV each), its greedy answer (at most `max_target_tokens` tokens at 2N + 2dV
  each) and the logit lens (2dV for each of its L + 1 states).

Time on this machine comes from a short measured calibration: the FLOP rates of the study's own passes
(three training steps, a states-only and an evaluated extraction of a few of its prompts) when the model's
weights are here and a unit fits the machine's memory, else a GEMM of the study's compute dtype (best of 5)
times `CPU_EFFICIENCY` (or `GPU_EFFICIENCY` on CUDA), the share of that rate the demo's passes reached
(docs/plan.md). On a named GPU: its peak dense bf16 rate times `GPU_EFFICIENCY`, assumed until a GPU run
measures it (bench/README.md).
"""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import socket
import time
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

import torch

from mossa.analysis import DEFAULT_MEASURES, KERNEL_MEASURES
from mossa.config import StudyConfig
from mossa.errors import MossaError
from mossa.models import LoadedModel, decoder_blocks, materialize, pick_device, pick_dtype, resolve_lora_targets, resolve_model
from mossa.progress import Reporter
from mossa.store import StudyDir, activation_bytes
from mossa.tasks import HubTask, TaskSpec, hub_table, load_tasks, stated_rows, study_tasks
from mossa.training import examples_seen, n_steps
from mossa.units import (
    STATES,
    UNIT_KINDS,
    AdapterOutput,
    Base,
    StatesOutput,
    StudyContext,
    output_exists,
    unit_config,
)

# Named GPUs: peak dense bf16 tensor FLOP/s and memory (the vendors' data sheets).
GPUS = {
    "A100-80GB": (312e12, 80), "H100-SXM": (989e12, 80), "H200": (989e12, 141), "L40S": (362e12, 48),
    "A10G": (70e12, 24), "RTX-4090": (165e12, 24),
}
# The share of a GPU's peak the study's passes reach: assumed (small LoRA batches, short prompts), not yet
# measured; a GPU run's measured time corrects it (bench/README.md). The analysis runs on the host's CPU
# (NumPy, float64) wherever the units ran.
GPU_EFFICIENCY = {"training": 0.30, "extraction": 0.25, "evaluation": 0.10}
# The share of this machine's GEMM rate (compute dtype) the study's passes reach where they cannot be timed
# (no weights here): measured on the demo study (gemma-3-270m, 2-core AMD EPYC, docs/plan.md), its stage
# times against its planned FLOPs; its extraction and evaluation are timed together. The analysis's share of
# the float64 GEMM rate is assumed (its kernels and permutation sums), plus a fixed cost per table cell (task x
# compared pair x layer x measure) measured on the demo: 57.5 s of analysis over 11,856 cells.
CPU_EFFICIENCY = {"training": 0.30, "extraction": 0.34, "evaluation": 0.34, "analysis": 0.30}
ANALYSIS_CELL_SECONDS = 0.0045
STAGES = ("training", "extraction", "evaluation", "analysis")
_CALIBRATION_PROMPTS = 64  # test prompts of one task the calibration extracts (as a task's extraction batches them)


@dataclass
class KindCost:
    """What one kind of unit costs in a study (every unit of the kind together)."""

    kind: str
    units: int = 0
    train_tokens: int = 0
    target_tokens: int = 0  # of the training tokens, those predicted (they reach the LM head)
    steps: int = 0
    state_tokens: int = 0  # prompt tokens of the stored states' forward passes
    eval_tokens: int = 0  # scored continuation tokens of the evaluated prompts (options, targets)
    answer_tokens: int = 0  # at most: greedy answers, max_target_tokens each
    lens_states: int = 0  # states read by the logit lens
    activation_bytes: int = 0
    flops: dict[str, float] = field(default_factory=lambda: dict.fromkeys(STAGES[:3], 0.0))


@dataclass
class ModelFacts:
    """The model as the plan counts it (from its config: no weights)."""

    name: str
    n_layers: int
    hidden: int
    vocab: int
    params: int  # every parameter
    block_params: int  # N: the decoder blocks' parameters
    lora_params: int
    compute_dtype: str
    tokenizer: str  # whose tokenizer counted the tokens


@dataclass
class StudyPlan:
    """Everything `mossa plan` prints: the cost per unit kind, the analysis, memory, time and disk."""

    model: ModelFacts
    kinds: list[KindCost]
    tasks: int
    clusters: int
    test_prompts: int
    estimated_tasks: list[str]  # counted from stated sizes (no data here)
    activation_dtype: str
    analysis: dict
    memory: dict
    machine: dict  # the calibration and the time on this machine per stage
    gpus: dict[str, dict]  # name -> time per stage, fits in memory
    disk: dict
    notes: list[str]

    @property
    def total(self) -> KindCost:
        return _total(self.kinds)


def _meta_model(location: str):
    """The model built from its config on torch's meta device: its shapes and parameter count, no weights."""
    from transformers import AutoConfig, AutoModelForCausalLM

    try:
        config = AutoConfig.from_pretrained(location)
    except (OSError, ValueError) as exc:
        raise MossaError(f"{location}: cannot read the model's config ({type(exc).__name__}); pass a folder "
                         f"with config.json or a model cached here") from None
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config)


def _tokenizer(location: str):
    """The model's tokenizer, else the default model's (counts then approximate the model's), and whose it is."""
    from transformers import AutoTokenizer

    try:
        tok, whose = AutoTokenizer.from_pretrained(location), "the model's own"
    except (OSError, ValueError, TypeError):
        default = StudyConfig.model_fields["model"].default
        fallback, _ = materialize(resolve_model(default), progress=lambda *_: None)
        tok, whose = AutoTokenizer.from_pretrained(fallback), f"{default}'s (the model has none)"
    tok.padding_side = "left"
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok, whose


def _weightless(cfg: StudyConfig, root: Path) -> tuple[LoadedModel, str, str]:
    """B as the plan needs it (config, tokenizer and fingerprint, its parameters on the meta device), whose
    tokenizer counts, and where its files are."""
    source = resolve_model(cfg.model)
    if source.kind == "hf_dir" and not root.exists():  # no stored unit to match: skip hashing its weights
        location, fingerprint = source.location, f"plan:{source.location}"
    else:  # a GGUF is converted once (cached), as `mossa run` would
        location, fingerprint = materialize(source, progress=lambda *_: None)
    model = _meta_model(location)
    tok, whose = _tokenizer(location)
    device = pick_device(cfg.device)
    dtype, reason = pick_dtype(cfg.dtype, device)
    return LoadedModel(name=source.name, source=source, model=model, tokenizer=tok, fingerprint=fingerprint,
                       device=device, dtype=dtype, dtype_reason=reason), whose, location


def _stand_in(task: HubTask, surrogates: dict[str, TaskSpec]) -> TaskSpec:
    """A hub task whose data are not here, with the prompts of its flan-mini namesake (else of the first
    flan-mini task of its cluster) standing in for its lengths."""
    same = surrogates.get(task.name) or next((t for t in surrogates.values() if t.cluster == task.cluster), None)
    if same is None:
        raise MossaError(f"task {task.name!r}: its data are not here and flan-mini has no task of its cluster "
                         f"({task.cluster}) to stand in for its lengths; download it once while online")
    return replace(same, name=task.name, cluster=task.cluster, fingerprint=f"stated:{task.name}")


@contextlib.contextmanager
def _cache_only_when_unreachable(host: str = "huggingface.co"):
    """Hub data read from the local cache alone when the hub cannot be reached: one probe, not the five
    retries `datasets` makes per task before it gives up."""
    try:
        socket.create_connection((host, 443), timeout=3).close()
        yield
        return
    except OSError:
        pass
    import datasets.config
    import huggingface_hub.constants

    saved = datasets.config.HF_HUB_OFFLINE, huggingface_hub.constants.HF_HUB_OFFLINE
    datasets.config.HF_HUB_OFFLINE = huggingface_hub.constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        datasets.config.HF_HUB_OFFLINE, huggingface_hub.constants.HF_HUB_OFFLINE = saved


def _tasks(cfg: StudyConfig) -> tuple[list[TaskSpec], dict[str, dict[str, int]]]:
    """The study's tasks and, for those counted from the hub table's stated sizes, their rows per split."""
    if cfg.tasks_dir is None or not str(cfg.tasks_dir).startswith("hub:"):
        return study_tasks(cfg), {}
    table = hub_table()
    names = cfg.tasks or [n for n, t in table.items() if t.flan2021 and not t.unavailable]
    present: dict[str, TaskSpec] = {}
    with _cache_only_when_unreachable():
        for name in names:
            try:
                present[name] = load_tasks(cfg.tasks_dir, [name])[0]
            except MossaError:
                if name not in table:
                    raise
    missing = [name for name in names if name not in present]
    surrogates = {t.name: t for t in load_tasks(None)} if missing else {}
    for name in missing:
        present[name] = _stand_in(table[name], surrogates)
    return [present[name] for name in names], {name: stated_rows(table[name]) for name in missing}


def _cycled(prompts: list, n: int) -> list:
    """`n` prompts cycling through `prompts` (references: a stated size's stand-in, no copies)."""
    return [prompts[i % len(prompts)] for i in range(n)] if prompts else []


def _context(cfg: StudyConfig, root: Path) -> tuple[StudyContext, str, str, dict[str, dict[str, int]]]:
    """The study as `mossa run` builds it, on the weightless B; tasks counted from stated sizes hold their
    stand-in prompts at those sizes."""
    tasks, stated = _tasks(cfg)
    loaded, whose, location = _weightless(cfg, root)
    targets = resolve_lora_targets(cfg.lora.targets, loaded.model)
    cfg = cfg.model_copy(update={"out": root, "lora": cfg.lora.model_copy(update={"targets": targets})})
    ctx = StudyContext(unit_config(cfg, tasks, loaded), StudyDir(root), tasks, loaded,
                       Reporter(enabled=False, quiet=True))
    for task, rows in stated.items():  # the stand-in prompts at the stated sizes
        ctx.train_prompts[task] = _cycled(ctx.train_prompts[task], min(ctx.cfg.task_n_train(task), rows["train"]))
        ctx.test[task] = _cycled(ctx.test[task], min(ctx.cfg.n_test, rows["test"]))
    return ctx, whose, location, stated


def _facts(ctx: StudyContext, whose: str) -> ModelFacts:
    model = ctx.loaded.model
    text = model.config.get_text_config()
    params = sum(p.numel() for p in model.parameters())
    blocks = sum(p.numel() for block in decoder_blocks(model) for p in block.parameters())
    lora = 0
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) and name.rsplit(".", 1)[-1] in ctx.cfg.lora.targets:
            lora += ctx.cfg.lora.rank * (module.in_features + module.out_features)
    return ModelFacts(name=ctx.loaded.name, n_layers=ctx.n_layers, hidden=ctx.loaded.hidden_size,
                      vocab=int(text.vocab_size), params=params, block_params=blocks, lora_params=lora,
                      compute_dtype=str(ctx.loaded.dtype).replace("torch.", ""), tokenizer=whose)


def _train_cost(prompts: list, settings, tokens: int, m: ModelFacts) -> dict:
    """FLOPs and counts of training on `prompts` with `settings`, reading `tokens` tokens (the unit's exact
    count): targets and attention at the prompts' mean shares."""
    seen = examples_seen(len(prompts), settings)
    lengths = [len(p.prompt_ids) + len(p.target_ids) for p in prompts]
    targets = round(tokens * sum(len(p.target_ids) for p in prompts) / max(1, sum(lengths)))
    mean_sq = sum(s * s for s in lengths) / max(1, len(lengths))
    flops = 4 * m.block_params * tokens + 4 * m.hidden * m.vocab * targets + 4 * m.n_layers * m.hidden * mean_sq * seen
    return {"train_tokens": tokens, "target_tokens": targets, "steps": n_steps(len(prompts), settings),
            "flops": {"training": flops}}


def _states_cost(prompts: list, evaluated: bool, cfg: StudyConfig, m: ModelFacts) -> dict:
    """FLOPs and counts of storing the states of `prompts` and, when `evaluated`, evaluating them."""
    tokens = sum(len(p.prompt_ids) for p in prompts)
    out = {"state_tokens": tokens, "flops": {
        "extraction": 2 * m.block_params * tokens + 2 * m.n_layers * m.hidden * sum(len(p.prompt_ids) ** 2
                                                                                    for p in prompts)}}
    if evaluated:
        rows = prompts[:cfg.eval_examples or len(prompts)]
        scored = sum(sum(len(o) for o in p.option_ids) if p.option_ids else len(p.target_ids) for p in rows)
        answered = [p for p in rows if not p.option_ids][:cfg.generate_examples or len(rows)]
        lens = len(rows[:cfg.lens_examples or len(rows)]) * (m.n_layers + 1)
        answers = len(answered) * cfg.max_target_tokens
        dv = m.hidden * m.vocab
        out |= {"eval_tokens": scored, "answer_tokens": answers, "lens_states": lens,
                "flops": {**out["flops"], "evaluation": (2 * m.block_params + 2 * dv) * (scored + answers)
                          + 2 * dv * lens}}
    return out


def _add(cost: KindCost, part: dict) -> None:
    for name, value in part.items():
        if name == "flops":
            for stage, f in value.items():
                cost.flops[stage] += f
        else:
            setattr(cost, name, getattr(cost, name) + value)


def _total(kinds: list[KindCost]) -> KindCost:
    out = KindCost("total")
    for k in kinds:
        _add(out, {f.name: getattr(k, f.name) for f in fields(KindCost) if f.name != "kind"})
    return out


def _states_units(ctx: StudyContext):
    """Every states-phase unit of the study, kind by kind, in the order the study runs them."""
    for kind in UNIT_KINDS.values():
        if kind.phase == STATES:
            for unit in kind.units(ctx):
                yield kind(ctx, unit)


def _array_bytes(ctx: StudyContext, output: StatesOutput) -> int:
    return activation_bytes(ctx.n_layers + 1, len(ctx.test[output.task]), ctx.loaded.hidden_size,
                            ctx.cfg.activation_dtype)


def _cost(ctx: StudyContext, m: ModelFacts) -> list[KindCost]:
    """Every states-phase unit's cost, by kind, what is already stored left out."""
    kinds = {kind.name: KindCost(kind.name) for kind in UNIT_KINDS.values() if kind.phase == STATES}
    for job in _states_units(ctx):
        cost = kinds[job.name]
        cost.units += 1
        for output in job.outputs():
            if output_exists(ctx.study, output):
                continue
            if isinstance(output, AdapterOutput):
                prompts, settings = job.training_run()
                _add(cost, _train_cost(prompts, settings, job.train_tokens(), m))
            elif isinstance(output, StatesOutput):
                _add(cost, _states_cost(ctx.test[output.task], ctx.evaluated(output.label), ctx.cfg, m))
                cost.activation_bytes += _array_bytes(ctx, output)
    return list(kinds.values())


def _analysis(ctx: StudyContext, m: ModelFacts) -> dict:
    """The analysis's cost: its CKA paths, their memory, FLOPs.

    Values stream through feature-space sums (d x d, float64, per representation and open layer), whatever
    n; the intervals and nulls of the kernel measures use example-space kernels (n x n, float64, one per
    representation and layer), re-summed once per permutation."""
    measures = tuple(ctx.cfg.measures or DEFAULT_MEASURES)
    kernels = [x for x in measures if x in KERNEL_MEASURES]
    kinds = len({KERNEL_MEASURES[x][0] for x in kernels})
    reps: dict[str, int] = {}
    for job in _states_units(ctx):
        for output in job.outputs():
            if isinstance(output, StatesOutput):
                reps[output.task] = reps.get(output.task, 0) + 1
    d, states, perms = m.hidden, m.n_layers + 1, ctx.cfg.n_permutations
    flops, n_max, r_max, cells = 0.0, 0, 0, 0
    for task, r in reps.items():
        n = len(ctx.test[task])
        n_max, r_max = max(n_max, n), max(r_max, r)
        pairs = r - 1
        cells += states * pairs * len(measures)
        flops += states * (r * (2 * n * d * d + kinds * 2 * n * n * d)
                           + pairs * (2 * n * d * d + len(kernels) * (perms + 2) * 2 * n * n))
    kernel_bytes = 8 * n_max * n_max
    return {"path": "values: d x d feature sums (streamed); intervals and nulls: n x n kernels",
            "flops": flops, "cells": cells, "kernel_bytes": kernel_bytes, "feature_bytes": 8 * d * d,
            "memory": 4 * kernel_bytes + 8 * d * d * (2 * r_max - 1), "n_max": n_max}


def _bytes_per(dtype: str) -> int:
    return 4 if dtype == "float32" else 2


def _memory(ctx: StudyContext, m: ModelFacts) -> dict:
    """Peak memory of a unit: the fp32 master weights, LoRA and its AdamW state, and the larger of a training
    step's activations (Korthikanti et al.'s 34 s b d + 5 a s^2 b bytes per layer at 16 bits, without
    recomputation) and an extraction batch's (every layer's states of a token budget, the evaluated prompts'
    key/value cache and lens logits)."""
    cfg, text = ctx.cfg, ctx.loaded.model.config.get_text_config()
    width = _bytes_per(m.compute_dtype)
    heads = int(getattr(text, "num_attention_heads", 1))
    kv = int(getattr(text, "num_key_value_heads", heads)) * (m.hidden // heads)
    weights, lora = 4 * m.params, 16 * m.lora_params
    longest = max((len(p.prompt_ids) + len(p.target_ids) for ps in ctx.train_prompts.values() for p in ps), default=0)
    target = max((len(p.target_ids) for ps in ctx.train_prompts.values() for p in ps), default=0)
    batch = max(cfg.task_control(t.name).batch_size for t in ctx.tasks)
    batch = max(batch, cfg.experimental.batch_size)
    train = (m.n_layers * (34 * longest * batch * m.hidden + 5 * heads * longest ** 2 * batch) * width // 2
             + 2 * 4 * batch * target * m.vocab)
    budget = cfg.extract_token_budget
    extract = (budget * (m.n_layers + 1) * m.hidden * 4 + budget * m.n_layers * 2 * kv * width
               + (m.n_layers + 1) * m.vocab * 4 * max(1, budget // max(1, longest)))
    unit = weights + lora + max(train, extract)
    return {"weights": weights, "lora_and_optimizer": lora, "training_activations": train,
            "extraction_activations": extract, "unit_peak": unit}


def gemm_rate(dtype: torch.dtype, threads: int, device: torch.device | str = "cpu", size: int = 2048,
              repeats: int = 5) -> float:
    """This machine's dense matrix-product rate in FLOP/s for `dtype` on `device` (size x size, best of
    `repeats`, `threads` torch threads)."""
    sync = torch.cuda.synchronize if torch.device(device).type == "cuda" else (lambda: None)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        a, b = (torch.randn(size, size, dtype=dtype, device=device) for _ in range(2))
        a @ b
        sync()
        best = math.inf
        for _ in range(repeats):
            t0 = time.perf_counter()
            a @ b
            sync()
            best = min(best, time.perf_counter() - t0)
    finally:
        torch.set_num_threads(before)
    return 2 * size ** 3 / best


def _has_weights(location: str) -> bool:
    folder = Path(location)
    return folder.is_dir() and (any(folder.glob("*.safetensors")) or any(folder.glob("*.bin")))


def _spread(ctx: StudyContext, n: int) -> list:
    """n training prompts taken round-robin over the tasks (the calibration's training sample)."""
    pools = [ctx.train_prompts[t.name] for t in ctx.tasks]
    out = []
    for i in range(n):
        pool = pools[i % len(pools)]
        if pool:
            out.append(pool[(i // len(pools)) % len(pool)])
    return out


def _timed(run) -> float:
    """Seconds of `run()`'s second call: the first builds what a long run builds once (kernels per shape)."""
    run()
    t0 = time.perf_counter()
    run()
    return time.perf_counter() - t0


def _measured_rates(ctx: StudyContext, m: ModelFacts) -> dict[str, float]:
    """FLOP/s the study's own passes reach on this machine, per stage: three training steps, a states-only and an
    evaluated extraction of one task's test prompts (up to 64), on the real model, each timed on its second run."""
    from mossa.config import TrainSettings
    from mossa.extraction import extract
    from mossa.models import AdapterHost, load_model
    from mossa.training import train_adapter
    from mossa.units import unit_threads

    cfg = ctx.cfg
    with unit_threads(cfg.threads):
        loaded = load_model(ctx.loaded.source, dtype=m.compute_dtype, device=cfg.device, progress=lambda *_: None)
        host = AdapterHost(loaded)
        settings = TrainSettings(lr=cfg.control.lr, epochs=1, max_steps=3, batch_size=cfg.control.batch_size,
                                 grad_accum=1)
        train = _spread(ctx, 3 * settings.batch_size)
        # one task's test prompts, as an extraction batches them: the first task that answers by generation (the
        # dearest evaluation), else the first
        task = next((t.name for t in ctx.tasks if not any(p.option_ids for p in ctx.test[t.name])), ctx.tasks[0].name)
        test = ctx.test[task][:_CALIBRATION_PROMPTS]
        logs = []
        seconds = {"training": _timed(lambda: logs.append(train_adapter(host, "calibrate", train, settings=settings,
                                                                         lora=cfg.lora, seed=0)))}
        host.remove("calibrate")
        flops = {"training": _train_cost(train, settings, logs[-1]["tokens"], m)["flops"]["training"]}
        evaluate = ctx.extract_options(Base.name)  # B is evaluated: its options are the run's
        seconds["extraction"] = _timed(lambda: extract(host, None, test, **{**evaluate, "evaluate": False}))
        flops["extraction"] = _states_cost(test, False, cfg, m)["flops"]["extraction"]
        spent = _timed(lambda: extract(host, None, test, **evaluate))
        cost = _states_cost(test, True, cfg, m)["flops"]
        states = cost["extraction"] / (flops["extraction"] / seconds["extraction"])
        seconds["evaluation"] = max(spent - states, 1e-3)
        flops["evaluation"] = cost["evaluation"]
    return {stage: flops[stage] / seconds[stage] for stage in flops}


def _free_bytes(root: Path) -> tuple[Path, int]:
    """The free space of the file system the study folder is (or will be) on."""
    where = next(p for p in (root, *root.resolve().parents) if p.exists())
    return where, shutil.disk_usage(where).free


def stored_bytes_needed(ctx: StudyContext) -> int:
    """Bytes of the activation arrays the study's states-phase units still have to write."""
    return sum(_array_bytes(ctx, output) for job in _states_units(ctx) for output in job.outputs()
               if isinstance(output, StatesOutput) and not output_exists(ctx.study, output))


def check_disk(ctx: StudyContext) -> None:
    """Refuse a study whose activations would not fit the free space of its folder's file system.

    Raises
    ------
    MossaError
        One line with both sizes and what to do.
    """
    needed = stored_bytes_needed(ctx)
    where, free = _free_bytes(ctx.study.root)
    if needed > free:
        half = ", set activation_dtype float16 (half the size)" if ctx.cfg.activation_dtype == "float32" else ""
        raise MossaError(f"{ctx.study.root}: the study's activations need {human_bytes(needed)} and {where} has "
                         f"{human_bytes(free)} free (`mossa plan` shows the study's cost); free some space, "
                         f"choose another --out{half}, or pass --ignore-disk-space to go on")


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB", "PB"):
        if abs(n) < 1000 or unit == "PB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n} B"


def _machine(ctx: StudyContext, m: ModelFacts, peak: int, flops: dict[str, float], cells: int,
             location: str) -> dict:
    """This machine's calibration and time per stage: rates measured on the model's own passes when its weights
    are here and a unit fits the device's memory, else its GEMM rate times the stated efficiency."""
    from mossa.models import cpu_name

    device, threads = ctx.loaded.device, ctx.cfg.threads
    cuda = device.type == "cuda"
    rate = gemm_rate(ctx.loaded.dtype, threads, device)
    room = (torch.cuda.get_device_properties(device).total_memory if cuda
            else os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    measured = _has_weights(location) and peak <= room
    efficiency = GPU_EFFICIENCY if cuda else CPU_EFFICIENCY
    rates = _measured_rates(ctx, m) if measured else {s: rate * efficiency[s] for s in STAGES[:3]}
    rates["analysis"] = gemm_rate(torch.float64, threads) * CPU_EFFICIENCY["analysis"]  # NumPy, on the CPU
    return {"cpu": torch.cuda.get_device_name(device) if cuda else cpu_name(), "device": device.type,
            "threads": threads, "memory": room, "fits": peak <= room, "gemm_flops": rate,
            "calibration": "the model's own passes" if measured else f"GEMM x {'GPU' if cuda else 'CPU'}_EFFICIENCY",
            "rates": rates, "seconds": {**{s: flops[s] / rates[s] for s in STAGES[:3]},
                                        "analysis": flops["analysis"] / rates["analysis"] + cells * ANALYSIS_CELL_SECONDS}}


def plan_study(cfg: StudyConfig, *, calibrate: bool = True) -> StudyPlan:
    """The cost of the study `cfg` describes, without training or extracting anything.

    With `calibrate`, this machine's rates are measured: on the real model (a few of the study's own training
    steps and extractions) when its weights are here, else by a GEMM of the compute dtype times
    `CPU_EFFICIENCY`.

    Raises
    ------
    MossaError
        For the same bad inputs as `mossa run` (tasks, model, settings), one line each.
    """
    root = Path(cfg.out) if cfg.out is not None else Path("runs") / "planned"
    ctx, whose, location, stated = _context(cfg, root)
    m = _facts(ctx, whose)
    kinds = _cost(ctx, m)
    analysis = _analysis(ctx, m)
    memory = _memory(ctx, m)
    flops = {**_total(kinds).flops, "analysis": analysis["flops"]}
    machine = _machine(ctx, m, memory["unit_peak"], flops, analysis["cells"], location) if calibrate else {}
    gpus = {}
    for name, (peak, gib) in GPUS.items():
        gpus[name] = {"seconds": {s: flops[s] / (peak * GPU_EFFICIENCY[s]) for s in STAGES[:3]},
                      "fits": memory["unit_peak"] <= gib * 2 ** 30, "memory_gib": gib}
    where, free = _free_bytes(root)
    needed = sum(k.activation_bytes for k in kinds)
    notes = []
    if stated:
        notes.append(f"{len(stated)} task(s) counted from the hub table's stated sizes, their prompt lengths from "
                     f"flan-mini's rows of the same task or cluster: {', '.join(sorted(stated))}")
    return StudyPlan(model=m, kinds=kinds, tasks=len(ctx.tasks), clusters=len({t.cluster for t in ctx.tasks}),
                     test_prompts=sum(len(v) for v in ctx.test.values()), estimated_tasks=sorted(stated),
                     activation_dtype=ctx.cfg.activation_dtype,
                     analysis=analysis, memory=memory, machine=machine, gpus=gpus,
                     disk={"folder": str(where), "free": free, "needed": needed, "fits": needed <= free},
                     notes=notes)
