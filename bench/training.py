"""Training throughput: mossa's `train_adapter` vs a raw forward+backward of the same model.

Every variant trains a fresh LoRA adapter (same name, so the same seeded init and the same
sequence of length-grouped batches as `train_adapter` draws) on the same peft model, at the
same dtype/autocast and batch size, for the same number of optimiser steps:

  mossa      `mossa.training.train_adapter` as the study calls it (its own log's tokens and
             seconds: collate, body forward, target-only logits and loss, backward, grad clip,
             AdamW step, LR schedule, loss.item()).
  raw-hf     the plain Hugging Face way: `model(input_ids, attention_mask, position_ids,
             labels)` (logits at every position, HF's shifted cross-entropy over the target
             tokens), backward, AdamW step. The batches come from the same `collate` inside
             the timed loop.
  raw-lean   the floor of mossa's own recipe with nothing around it: batches collated before
             the clock starts, body forward + logits at the target positions only, backward,
             AdamW step (no clip, no schedule, no loss.item()).

Tokens are counted the same way for all: non-pad tokens (prompt + target) of every batch
(`Batch.n_tokens`). The variants run in rounds, alternating their order, and the table gives
median tokens/s and the ratios (of medians; per-round ratios are in the JSON).

    .venv/bin/python bench/training.py                 # ~3.5 min on 2 idle CPU cores
    .venv/bin/python bench/training.py --steps 4 --rounds 2
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as common

DEMO4 = ["sst2", "snli", "arc_easy", "ag_news_subset"]
UNIT = "bench-train"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="gemma-3-270m")
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--tasks", default=",".join(DEMO4), help="flan-mini tasks whose train prompts are mixed")
    ap.add_argument("--tasks-dir", default=None)
    ap.add_argument("--n-train", type=int, default=64, help="train prompts per task")
    ap.add_argument("--max-prompt-tokens", type=int, default=96, help="the README figures; the demo preset uses 224")
    ap.add_argument("--max-target-tokens", type=int, default=16, help="the README figures; the demo preset uses 48")
    ap.add_argument("--batch-size", type=int, default=8, help="the README figures; the demo preset uses 2")
    ap.add_argument("--grad-accum", type=int, default=1, help="demo preset: 1")
    ap.add_argument("--steps", type=int, default=6, help="optimiser steps per variant per round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    ap.add_argument("--variants", default="mossa,raw-hf,raw-lean")
    ap.add_argument("--name", default="training", help="result file bench/results/<name>.json")
    args = ap.parse_args()

    from mossa.config import LoraSettings, TrainSettings
    from mossa.models import body_forward, collate, target_nll
    from mossa.training import _batches, examples_seen, train_adapter, unit_seed

    loaded, host, by_task = common.setup(args, "train", args.n_train)
    prompts = [p for ps in by_task.values() for p in ps]
    lora = LoraSettings()
    seed = 0
    s = unit_seed(seed, UNIT)
    pad = loaded.tokenizer.pad_token_id
    model = loaded.model

    def settings(steps: int) -> TrainSettings:
        return TrainSettings(lr=2e-3, max_steps=steps, batch_size=args.batch_size, grad_accum=args.grad_accum,
                             schedule="cosine", warmup_ratio=0.1)

    def same_batches(steps: int):
        """The batches train_adapter draws for UNIT, in order."""
        return _batches(prompts, args.batch_size, examples_seen(len(prompts), settings(steps)),
                        np.random.default_rng(s))

    def finish(params) -> None:
        model.eval()
        for p in params:
            p.requires_grad_(False)
        host.remove(UNIT)

    def run_mossa(steps: int) -> dict:
        log = train_adapter(host, UNIT, prompts, settings=settings(steps), lora=lora, seed=seed)
        host.remove(UNIT)
        return {"tokens": log["tokens"], "seconds": log["seconds"], "first_loss": log["train_loss"][0]}

    def run_raw_hf(steps: int) -> dict:
        groups = same_batches(steps)
        params = host.add(UNIT, lora, seed=s)
        opt = torch.optim.AdamW(params, lr=2e-3, weight_decay=0.0)
        model.train()
        tokens, first, t0 = 0, None, time.perf_counter()
        for step in range(steps):
            for k in range(args.grad_accum):
                batch = collate(groups[step * args.grad_accum + k], pad, loaded.device)
                labels = torch.full_like(batch.input_ids, -100)
                labels[batch.target_rows, batch.target_pos + 1] = batch.target_ids
                with loaded.autocast():
                    out = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                                position_ids=batch.position_ids, labels=labels, use_cache=False)
                (out.loss / args.grad_accum).backward()
                if first is None:
                    first = float(out.loss.detach())
                tokens += batch.n_tokens
            opt.step()
            opt.zero_grad(set_to_none=True)
        seconds = time.perf_counter() - t0
        finish(params)
        return {"tokens": tokens, "seconds": seconds, "first_loss": first}

    def run_raw_lean(steps: int) -> dict:
        batches = [collate(g, pad, loaded.device) for g in same_batches(steps)]
        params = host.add(UNIT, lora, seed=s)
        opt = torch.optim.AdamW(params, lr=2e-3, weight_decay=0.0)
        model.train()
        tokens, losses, t0 = 0, [], time.perf_counter()
        for step in range(steps):
            for k in range(args.grad_accum):
                batch = batches[step * args.grad_accum + k]
                with loaded.autocast():
                    out = body_forward(model, batch, output_hidden_states=False)
                    loss = target_nll(model, out.last_hidden_state, batch).mean()
                (loss / args.grad_accum).backward()
                losses.append(loss.detach())
                tokens += batch.n_tokens
            opt.step()
            opt.zero_grad(set_to_none=True)
        seconds = time.perf_counter() - t0
        finish(params)
        return {"tokens": tokens, "seconds": seconds, "first_loss": float(losses[0])}

    runners = {"mossa": run_mossa, "raw-hf": run_raw_hf, "raw-lean": run_raw_lean}
    chosen = [v for v in args.variants.split(",") if v]
    n_tok = [len(p.prompt_ids) + len(p.target_ids) for p in prompts]
    print(f"{len(prompts)} train prompts from {len(by_task)} tasks, {np.mean(n_tok):.1f} tokens each on average; "
          f"batch {args.batch_size} x accum {args.grad_accum}, {args.steps} steps per run, {args.rounds} rounds, "
          f"{torch.get_num_threads()} threads")
    busy = common.wait_for_quiet()
    print(f"warm-up (1 step each, not timed); other processes: {busy} cores busy")
    for v in chosen:
        runners[v](1)
    runs = common.run_rounds({v: (lambda v=v: runners[v](args.steps)) for v in chosen}, args.rounds)

    med = {v: {"tokens": runs[v][0]["tokens"], "seconds_median": round(common.median_of(runs[v], "seconds"), 3),
               "tokens_per_second_median": round(common.median_of(runs[v], "tokens_per_second"), 1),
               "first_step_loss": round(runs[v][0]["first_loss"], 4)} for v in chosen}
    ratios = {f"{a}/{b}": common.paired_ratios(runs, a, b) for a in chosen for b in chosen if a == "mossa" and b != a}
    rows = [[v, med[v]["tokens"], med[v]["seconds_median"], med[v]["tokens_per_second_median"],
             f"{med['mossa']['tokens_per_second_median'] / med[v]['tokens_per_second_median']:.3f}"
             if "mossa" in med else "", med[v]["first_step_loss"]] for v in chosen]
    print()
    print(common.table(rows, ["variant", "tokens", "s (median)", "tok/s (median)", "mossa / this", "step-1 loss"]))
    for k, r in ratios.items():
        print(f"{k}: {r['ratio_of_medians']:.3f} (per round: {r['round_ratios']})  target >= 0.8")
    path = common.write_result(args.name, {
        "model": loaded.name, "dtype": str(loaded.dtype), "dtype_reason": loaded.dtype_reason,
        "device": str(loaded.device), "tasks": list(by_task), "n_examples": len(prompts),
        "mean_tokens_per_example": round(float(np.mean(n_tok)), 1),
        "settings": {"batch_size": args.batch_size, "grad_accum": args.grad_accum, "steps_per_run": args.steps,
                     "rounds": args.rounds, "max_prompt_tokens": args.max_prompt_tokens,
                     "max_target_tokens": args.max_target_tokens, "lora": lora.model_dump(), "lr": 2e-3},
        "token_count": "non-pad prompt+target tokens of every batch (Batch.n_tokens), same for all variants",
        "optimizer_step": "included in every variant (AdamW); mossa also clips grads and steps an LR schedule",
        "variants": med, "ratios": ratios, "target": "mossa/raw-hf >= 0.8", "runs": runs})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
