"""LoRA units: the per-task controls C_t and the multi-task experimental model E.

Stage: training (reads prompts and the loaded base; writes adapters into the study dir).

The loss is on target tokens only, and logits are computed only at the positions that predict
a target token. Compute runs under autocast when the compute dtype is not fp32 (weights stay
fp32). E's mixture caps each cluster at `cluster_cap` examples, drawn examples-proportionally
across the cluster's tasks, as in the paper.
"""

from __future__ import annotations

import math
import time
import zlib

import numpy as np
import torch

from mossa.config import LoraSettings, TrainSettings
from mossa.models._adapters import AdapterHost
from mossa.models._forward import body_forward, collate, target_nll
from mossa.tasks import Prompt


def unit_seed(seed: int, unit: str) -> int:
    """A per-unit seed, stable across runs and independent of unit order."""
    return (seed * 1_000_003 + zlib.crc32(unit.encode())) % (2**31)


def mixture(train: dict[str, list[Prompt]], clusters: dict[str, str], *, cap: int, seed: int) -> list[Prompt]:
    """E's training mixture: all tasks, each cluster capped at `cap` examples.

    Inside an over-full cluster every task keeps a share proportional to its size (largest
    remainders get the leftover slots), drawn by a seeded generator.
    """
    rng = np.random.default_rng(seed)
    by_cluster: dict[str, list[str]] = {}
    for task in train:
        by_cluster.setdefault(clusters[task], []).append(task)
    out: list[Prompt] = []
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
            out.extend(train[task][i] for i in pick)
    return out


def n_steps(n_examples: int, settings: TrainSettings) -> int:
    per_step = settings.batch_size * settings.grad_accum
    steps = max(1, math.ceil(n_examples * settings.epochs / per_step))
    return min(steps, settings.max_steps) if settings.max_steps else steps


def _batches(prompts: list[Prompt], batch_size: int, rng: np.random.Generator):
    """Endless length-grouped batches: shuffle, sort windows of 8 batches by length, shuffle batches."""
    while True:
        order = rng.permutation(len(prompts))
        window = batch_size * 8
        batches = []
        for start in range(0, len(order), window):
            chunk = sorted(order[start:start + window], key=lambda i: len(prompts[i].prompt_ids)
                           + len(prompts[i].target_ids))
            batches += [chunk[i:i + batch_size] for i in range(0, len(chunk), batch_size)]
        for b in rng.permutation(len(batches)):
            yield [prompts[i] for i in batches[b]]


def train_adapter(host: AdapterHost, unit: str, prompts: list[Prompt], *, settings: TrainSettings,
                  lora: LoraSettings, seed: int, on_step=None) -> dict:
    """Train a fresh LoRA adapter named `unit` on `prompts`; return its training log.

    `on_step(step, total, loss)` is called after each optimiser step (for progress bars).
    """
    from transformers import get_scheduler

    loaded = host.loaded
    s = unit_seed(seed, unit)
    params = host.add(unit, lora, seed=s)
    total = n_steps(len(prompts), settings)
    opt = torch.optim.AdamW(params, lr=settings.lr, weight_decay=settings.weight_decay)
    name = {"cosine": "cosine", "linear": "linear", "constant": "constant_with_warmup"}[settings.schedule]
    sched = get_scheduler(name, opt, num_warmup_steps=int(settings.warmup_ratio * total),
                          num_training_steps=total)
    rng = np.random.default_rng(s)
    batches = _batches(prompts, settings.batch_size, rng)
    pad = loaded.tokenizer.pad_token_id
    model = loaded.model
    model.train()
    losses, tokens, t0 = [], 0, time.perf_counter()
    for step in range(total):
        step_loss = 0.0
        for _ in range(settings.grad_accum):
            batch = collate(next(batches), pad, loaded.device)
            with loaded.autocast():
                out = body_forward(model, batch, output_hidden_states=False)
                loss = target_nll(model, out.last_hidden_state, batch).mean()
            (loss / settings.grad_accum).backward()
            step_loss += loss.item() / settings.grad_accum
            tokens += batch.n_tokens
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        losses.append(step_loss)
        if on_step:
            on_step(step + 1, total, step_loss)
    model.eval()
    for p in params:
        p.requires_grad_(False)
    seconds = time.perf_counter() - t0
    return {"unit": unit, "steps": total, "n_examples": len(prompts), "train_loss": losses,
            "tokens": tokens, "seconds": round(seconds, 3), "tokens_per_second": round(tokens / seconds, 1)}
