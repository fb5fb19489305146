"""LoRA units: the per-task controls C_t and the multi-task experimental model E.

Stage: training (reads prompts and the loaded base; writes adapters into the study dir).

The loss is on target tokens only, and logits are computed only at the positions that predict
a target token. Compute runs under autocast when the compute dtype is not fp32 (weights stay
fp32); fp16 compute scales the loss with torch's gradient scaler. E's mixture caps each
cluster at `cluster_cap` examples, drawn examples-proportionally across the cluster's tasks, as
in the paper.

Budget parity (`parity_stream`): E sees each task's training examples as often as that task's
control does, so a low CKA(E, C_t) is not a smaller training budget in disguise. Every unit's
log records how many examples of each task it saw.
"""

from __future__ import annotations

import math
import time
import zlib
from collections import Counter
from itertools import islice

import numpy as np
import torch

from mossa.config import LoraSettings, TrainSettings
from mossa.models import AdapterHost, body_forward, collate, target_nll
from mossa.tasks import Prompt


def unit_seed(seed: int, unit: str) -> int:
    """A per-unit seed, stable across runs and independent of unit order."""
    return (seed * 1_000_003 + zlib.crc32(unit.encode())) % (2**31)


def _capped(train: dict[str, list[Prompt]], clusters: dict[str, str], *, cap: int,
            seed: int) -> dict[str, list[Prompt]]:
    """Each task's examples in E's mixture, cluster by cluster (sorted), each cluster capped at `cap`."""
    rng = np.random.default_rng(seed)
    by_cluster: dict[str, list[str]] = {}
    for task in train:
        by_cluster.setdefault(clusters[task], []).append(task)
    out: dict[str, list[Prompt]] = {}
    for cluster in sorted(by_cluster):
        tasks = by_cluster[cluster]
        sizes = np.array([len(train[t]) for t in tasks], dtype=float)
        total = sizes.sum()
        if total <= cap:
            quota = sizes.astype(int)
        else:
            exact = sizes * cap / total
            quota = np.floor(exact).astype(int)
            for i in np.argsort(-(exact - quota), kind="stable")[: cap - quota.sum()]:
                quota[i] += 1
        for task, k in zip(tasks, quota):
            pick = np.sort(rng.choice(len(train[task]), size=int(k), replace=False))
            out[task] = [train[task][i] for i in pick]
    return out


def mixture(train: dict[str, list[Prompt]], clusters: dict[str, str], *, cap: int, seed: int) -> list[Prompt]:
    """E's training mixture: all tasks, each cluster capped at `cap` examples.

    Inside an over-full cluster every task keeps a share proportional to its size (largest
    remainders get the leftover slots), drawn by a seeded generator.
    """
    return [p for prompts in _capped(train, clusters, cap=cap, seed=seed).values() for p in prompts]


def examples_seen(n_examples: int, settings: TrainSettings) -> int:
    """How many examples (repeats counted) a unit trained with `settings` on `n_examples` sees:
    `epochs` passes, cut at `max_steps` full steps."""
    seen = max(1, math.ceil(n_examples * settings.epochs))
    if settings.max_steps:
        seen = min(seen, settings.max_steps * settings.batch_size * settings.grad_accum)
    return seen


def tokens_seen(prompts: list[Prompt], settings: TrainSettings, *, seed: int, unit: str) -> int:
    """The prompt and target tokens unit `unit` trained with `settings` on `prompts` reads, repeats counted:
    exactly the training log's `tokens` (the slots of its seeded data order, `_slot_order`), without a model."""
    if not prompts:
        return 0
    total = examples_seen(len(prompts), settings)
    lengths = np.array([len(p.prompt_ids) + len(p.target_ids) for p in prompts], dtype=np.int64)
    return int(lengths[_slot_order(len(prompts), total, np.random.default_rng(unit_seed(seed, unit)))].sum())


def n_steps(n_examples: int, settings: TrainSettings) -> int:
    """Optimiser steps of a unit (the last one may hold fewer examples)."""
    return math.ceil(examples_seen(n_examples, settings) / (settings.batch_size * settings.grad_accum))


BUDGET_RULES = {
    "parity": "E and E' see each task's training examples as often as that task's control does: C_t sees "
              "min(ceil(n_t * epochs), max_steps * batch * accumulation) of its n_t examples, E sees "
              "round(seen_t * k_t / n_t) of the k_t it holds after the cluster cap, in one epoch over the stream",
    "settings": "E and E' train for their own epochs and max_steps over the cluster-capped mixture",
}


def parity_stream(train: dict[str, list[Prompt]], clusters: dict[str, str], *,
                  control: TrainSettings | dict[str, TrainSettings], cap: int, seed: int) -> list[Prompt]:
    """E's training examples under budget parity: the capped mixture, with each task's share
    repeated so that E sees task t as often as C_t does.

    C_t sees `examples_seen(n_t, control)` examples of its n_t; E holds k_t of them after the
    cluster cap and sees round(seen_t * k_t / n_t): the same number of passes over what it holds
    (seeded, each pass a fresh order). Train E on the result for one epoch. `control` is every control's
    settings, or each task's (per-task budgets).
    """
    rng = np.random.default_rng([seed, 1])
    out: list[Prompt] = []
    for task, held in _capped(train, clusters, cap=cap, seed=seed).items():
        n = len(train[task])
        settings = control[task] if isinstance(control, dict) else control
        want = round(examples_seen(n, settings) * len(held) / n)
        while want > 0 and held:
            order = rng.permutation(len(held))[:want]
            out.extend(held[i] for i in order)
            want -= len(order)
    return out


def lr_factor(step: int, total: int, warmup: int, schedule: str) -> float:
    """The learning-rate multiplier of optimiser step `step` (0-based) of `total`.

    Warmup rises linearly over `warmup` steps to 1 and never spends a step at 0 (its first step
    runs at 1/(warmup+1)); then constant, linear to 0 or a half cosine to 0 over the remaining
    steps, each step's value taken at its start.
    """
    if step < warmup:
        return (step + 1) / (warmup + 1)
    if schedule == "constant":
        return 1.0
    progress = (step - warmup) / max(1, total - warmup)
    return 1.0 - progress if schedule == "linear" else 0.5 * (1.0 + math.cos(math.pi * progress))


def _slot_order(n: int, total: int, rng: np.random.Generator) -> np.ndarray:
    """The example behind each of `total` training slots: passes over n examples in fresh seeded orders."""
    return np.concatenate([rng.permutation(n) for _ in range(math.ceil(total / n))])[:total]


def _batches(prompts: list[Prompt], batch_size: int, total: int, rng: np.random.Generator) -> list[list[Prompt]]:
    """`total` example slots in batches: passes in fresh seeded orders, one after another, cut at
    `total`; each window of 8 batches sorted by length (less padding), its batches in random order.
    Every slot is used once, so a unit sees exactly `total` examples (the last batch may be short)."""
    order = _slot_order(len(prompts), total, rng)
    window = batch_size * 8
    out: list[list[Prompt]] = []
    for start in range(0, total, window):
        chunk = sorted(order[start:start + window], key=lambda i: len(prompts[i].prompt_ids)
                       + len(prompts[i].target_ids))
        batches = [chunk[i:i + batch_size] for i in range(0, len(chunk), batch_size)]
        out += [[prompts[i] for i in batches[b]] for b in rng.permutation(len(batches))]
    return out


def train_adapter(host: AdapterHost, unit: str, prompts: list[Prompt], *, settings: TrainSettings,
                  lora: LoraSettings, seed: int, on_step=None) -> dict:
    """Train a fresh LoRA adapter named `unit` on `prompts`; return its training log.

    `on_step(step, total, loss)` is called after each optimiser step (for progress bars). The log
    holds the losses, the learning rate of every step, and the examples seen per task (`Prompt.task`).
    """
    loaded = host.loaded
    s = unit_seed(seed, unit)
    params = host.add(unit, lora, seed=s)
    total = n_steps(len(prompts), settings)
    batches = iter(_batches(prompts, settings.batch_size, examples_seen(len(prompts), settings),
                            np.random.default_rng(s)))
    warmup = round(settings.warmup_ratio * total)
    opt = torch.optim.AdamW(params, lr=settings.lr, weight_decay=settings.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: lr_factor(step, total, warmup, settings.schedule))
    scaler = torch.amp.GradScaler(loaded.device.type, enabled=loaded.dtype == torch.float16)
    pad = loaded.tokenizer.pad_token_id
    model = loaded.model
    model.train()
    losses, rates, tokens, t0 = [], [], 0, time.perf_counter()
    seen: Counter[str] = Counter()
    distinct: dict[str, set[str]] = {}
    for step in range(total):
        step_loss = 0.0
        rates.append(opt.param_groups[0]["lr"])
        for chosen in islice(batches, settings.grad_accum):
            for p in chosen:
                seen[p.task] += 1
                distinct.setdefault(p.task, set()).add(p.id)
            batch = collate(chosen, pad, loaded.device)
            with loaded.autocast():
                out = body_forward(model, batch, output_hidden_states=False)
                loss = target_nll(model, out.last_hidden_state, batch).mean()
            scaler.scale(loss / settings.grad_accum).backward()
            step_loss += loss.item() / settings.grad_accum
            tokens += batch.n_tokens
        scaler.unscale_(opt)
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        scaler.step(opt)
        scaler.update()
        sched.step()
        opt.zero_grad(set_to_none=True)
        losses.append(step_loss)
        if on_step:
            on_step(step + 1, total, step_loss)
    model.eval()
    for p in params:
        p.requires_grad_(False)
    seconds = time.perf_counter() - t0
    return {"unit": unit, "steps": total, "n_examples": len(prompts), "train_loss": losses, "lr": rates,
            "examples_seen": dict(sorted(seen.items())),
            "distinct_examples": {t: len(ids) for t, ids in sorted(distinct.items())},
            "tokens": tokens, "seconds": round(seconds, 3), "tokens_per_second": round(tokens / seconds, 1)}
