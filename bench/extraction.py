"""Extraction throughput: mossa's `extract` vs the raw model-body forward pass and vs the
authors' procedure, on real flan-mini test prompts of the default model.

Variants (same loaded model, same adapter, same dtype/autocast, `torch.inference_mode`), each
streamed to a `StudyDir` activation writer in a temp folder (one writer per task; the timed
block includes the writer's fsync, content hash and publish):

  mossa-states   `extract(..., evaluate=False)`: prompts alone, states of the last prompt token
                 at every layer, no LM head.
  mossa-lens     `extract(..., score=False)`: the same, plus the logit lens at every layer on
                 every prompt (final norm + the 262k-token head on 19 states per prompt).
  mossa-lens-demo  the lens on the demo's share of each task's prompts (`--eval-share`, the demo's
                 lens_examples / n_test = 32 / 96), the others states only.
  mossa-eval     `extract(...)` as the study runs it on the demo's share: the lens, every option
                 scored from the prompt cache (target loss included), greedy answers on tasks
                 without options; the other prompts states only.
  raw-states     the practical limit for the states: `body_forward(..., output_hidden_states=
                 True)` over the same `length_batches` of the same prompts at the same token budget
                 (batches collated before the clock starts), nothing kept.
  authors        the authors' procedure on a subset: batch size 1, greedy
                 `model.generate(max_new_tokens=32, output_hidden_states=True,
                 return_dict_in_generate=True)` per example (32 tokens generated unless
                 --authors-stop-at-eos), the last prompt token's state of each layer saved as its
                 own .npy per example, then merged into one .npy per layer.

Token counts: "tokens" are the prompts' non-pad tokens (options, targets and generated tokens
are not counted), so every ratio compares the same prompts: mossa-lens/raw-states is the cost of
the lens, mossa-eval/raw-states what a study's evaluated extraction costs against the bare
forward pass. Against the authors, the figure is
prompt tokens per second (the prompts whose states come out), which is also given as
examples per second; the authors' subset is drawn evenly from every task. Variants run in
rounds with alternating order; the ratios are of median tokens/s (per-round ratios are in the
JSON). The authors' states are checked against mossa's on the subset (max relative difference).

    .venv/bin/python bench/extraction.py               # ~8 min on 2 idle CPU cores
    .venv/bin/python bench/extraction.py --n-test 24 --rounds 2 --authors-n 4
"""

from __future__ import annotations

import argparse
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as common

DEMO4 = ["sst2", "snli", "arc_easy", "ag_news_subset"]
ADAPTER = "bench-extract"


def subset_evenly(by_task: dict[str, list], n: int, seed: int = 0) -> list:
    """n prompts drawn from every task in turn (seeded), in task order."""
    rng = np.random.default_rng(seed)
    tasks = list(by_task)
    per = {t: n // len(tasks) + (1 if i < n % len(tasks) else 0) for i, t in enumerate(tasks)}
    out = []
    for t in tasks:
        pick = np.sort(rng.choice(len(by_task[t]), size=min(per[t], len(by_task[t])), replace=False))
        out += [by_task[t][i] for i in pick]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="gemma-3-270m")
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--tasks", default=",".join(DEMO4))
    ap.add_argument("--tasks-dir", default=None)
    ap.add_argument("--n-test", type=int, default=40, help="test prompts per task")
    ap.add_argument("--max-prompt-tokens", type=int, default=224, help="the demo preset's")
    ap.add_argument("--max-target-tokens", type=int, default=48, help="the demo preset's")
    ap.add_argument("--token-budget", type=int, default=2048, help="study default extract_token_budget")
    ap.add_argument("--adapter", choices=["lora", "none"], default="lora",
                    help="run a fresh LoRA adapter (as for C_t, E, E') or the plain base model B")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--eval-share", type=float, default=1 / 3,
                    help="share of each task's prompts lensed and evaluated (the demo lenses lens_examples 32 of 96)")
    ap.add_argument("--authors-n", type=int, default=8, help="examples for the authors' procedure per round")
    ap.add_argument("--authors-new-tokens", type=int, default=32)
    ap.add_argument("--authors-stop-at-eos", action="store_true",
                    help="let generation stop at EOS (default: always generate --authors-new-tokens)")
    ap.add_argument("--variants", default="mossa-states,mossa-lens,mossa-lens-demo,mossa-eval,raw-states,authors")
    ap.add_argument("--tmp", default=None, help="folder for the temp study dirs (default: the system temp)")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--name", default="extraction", help="result file bench/results/<name>.json")
    args = ap.parse_args()

    from mossa.config import LoraSettings
    from mossa.extraction import extract
    from mossa.models import body_forward, collate, length_batches
    from mossa.store import StudyDir

    loaded, host, by_task = common.setup(args, "test", args.n_test)
    adapter = None
    if args.adapter == "lora":
        host.add(ADAPTER, LoraSettings(), seed=0)
        adapter = ADAPTER
    pad = loaded.tokenizer.pad_token_id
    budget = args.token_budget
    n_states, hidden = loaded.n_layers + 1, loaded.hidden_size
    all_prompts = [p for ps in by_task.values() for p in ps]
    n_ex = len(all_prompts)
    prompt_tok = sum(len(p.prompt_ids) for p in all_prompts)
    sub = subset_evenly(by_task, args.authors_n)
    sub_prompt_tok = sum(len(p.prompt_ids) for p in sub)

    pre = [collate([ps[i] for i in idx], pad, loaded.device, with_targets=False)
           for ps in by_task.values() for idx in length_batches(ps, budget, with_targets=False)]
    padded = sum(int(b.input_ids.numel()) for b in pre)

    def finish(res: dict, n: int, p_tok: int) -> dict:
        res["examples_per_second"] = n / res["seconds"]
        res["prompt_tokens_per_second"] = p_tok / res["seconds"]
        return res

    modes = {"mossa-states": {"evaluate": False}, "mossa-lens": {"score": False},
             "mossa-lens-demo": {"score": False, "share": True}, "mossa-eval": {"share": True}}

    def run_mossa(mode: str) -> dict:
        options = dict(modes[mode])
        share = options.pop("share", False)
        root = Path(tempfile.mkdtemp(prefix="mossa-bench-", dir=args.tmp))
        try:
            study = StudyDir(root)
            study.create()
            t0 = time.perf_counter()
            for task, ps in by_task.items():
                with study.activation_writer("bench", task, ids=[p.id for p in ps], n_states=n_states,
                                             hidden=hidden, inputs="bench") as sink:
                    extract(host, adapter, ps, token_budget=budget, sink=sink, eval_rows=round(len(ps) * args.eval_share) if share else None,
                            max_new_tokens=args.max_target_tokens, **options)
            seconds = time.perf_counter() - t0
        finally:
            shutil.rmtree(root, ignore_errors=True)
        return finish({"tokens": prompt_tok, "seconds": seconds}, n_ex, prompt_tok)

    def run_raw() -> dict:
        with host.use(adapter) as model, torch.inference_mode(), loaded.autocast():
            t0 = time.perf_counter()
            for batch in pre:
                body_forward(model, batch, output_hidden_states=True)
            seconds = time.perf_counter() - t0
        return finish({"tokens": prompt_tok, "seconds": seconds}, n_ex, prompt_tok)

    authors_states: dict[int, np.ndarray] = {}
    generated: list[int] = []

    def run_authors() -> dict:
        root = Path(tempfile.mkdtemp(prefix="authors-bench-", dir=args.tmp))
        stop = {} if args.authors_stop_at_eos else {"min_new_tokens": args.authors_new_tokens}
        safe = [re.sub(r"[^A-Za-z0-9_.-]", "_", p.id) for p in sub]
        try:
            with host.use(adapter) as model, torch.inference_mode(), loaded.autocast():
                t0 = time.perf_counter()
                for p, name in zip(sub, safe):
                    ids = torch.tensor([p.prompt_ids], device=loaded.device)
                    out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids),
                                         max_new_tokens=args.authors_new_tokens, do_sample=False,
                                         output_hidden_states=True, return_dict_in_generate=True,
                                         pad_token_id=pad, **stop)
                    generated.append(int(out.sequences.shape[1] - ids.shape[1]))
                    for layer, h in enumerate(out.hidden_states[0]):  # the prompt's (prefill) step
                        np.save(root / f"{name}.layer{layer}.npy", h[0, -1].float().cpu().numpy())
                for layer in range(n_states):
                    merged = np.stack([np.load(root / f"{name}.layer{layer}.npy") for name in safe])
                    np.save(root / f"layer{layer}.npy", merged)
                seconds = time.perf_counter() - t0
            for layer in range(n_states):
                authors_states[layer] = np.load(root / f"layer{layer}.npy")
        finally:
            shutil.rmtree(root, ignore_errors=True)
        return finish({"tokens": sub_prompt_tok, "seconds": seconds}, len(sub), sub_prompt_tok)

    runners = {**{m: (lambda m=m: run_mossa(m)) for m in modes}, "raw-states": run_raw,
               "authors": run_authors}
    chosen = [v for v in args.variants.split(",") if v]
    print(f"{n_ex} test prompts from {len(by_task)} tasks: {prompt_tok} prompt tokens ({prompt_tok / n_ex:.1f} "
          f"each); token budget {budget}: {len(pre)} batches ({padded} padded tokens); "
          f"adapter {adapter}; authors' subset {len(sub)} examples ({sub_prompt_tok / len(sub):.1f} prompt "
          f"tokens each); {torch.get_num_threads()} threads")
    busy = common.wait_for_quiet()
    print(f"warm-up (every batch shape once, extract on one task in each mode; not timed); other processes: "
          f"{busy:.2f} cores busy")
    with host.use(adapter) as model, torch.inference_mode(), loaded.autocast():
        for b in pre:
            body_forward(model, b, output_hidden_states=True)
    first = next(iter(by_task.values()))
    extract(host, adapter, first, token_budget=budget, eval_rows=round(len(first) * args.eval_share), max_new_tokens=args.max_target_tokens)
    runs = common.run_rounds({v: runners[v] for v in chosen}, args.rounds)

    check = None
    if "authors" in chosen:
        mine = extract(host, adapter, sub, token_budget=budget, evaluate=False).acts  # [L+1, n, d]
        theirs = np.stack([authors_states[layer] for layer in range(n_states)])
        rel = np.abs(mine - theirs).max(axis=(1, 2)) / np.abs(theirs).max(axis=(1, 2))
        check = {"max_rel_diff_over_layers": float(rel.max()), "per_layer": [float(x) for x in rel]}

    def med(v: str, key: str) -> float:
        return common.median_of(runs[v], key)

    summary = {v: {"n_examples": len(sub) if v == "authors" else n_ex, "tokens": runs[v][0]["tokens"],
                   "seconds_median": round(med(v, "seconds"), 3),
                   "tokens_per_second_median": round(med(v, "tokens_per_second"), 1),
                   "prompt_tokens_per_second_median": round(med(v, "prompt_tokens_per_second"), 1),
                   "examples_per_second_median": round(med(v, "examples_per_second"), 3)} for v in chosen}
    pairs = [("mossa-states", "raw-states", "tokens_per_second", ">= 0.9"),
             ("mossa-lens", "raw-states", "tokens_per_second", "(lens on every prompt)"),
             ("mossa-lens-demo", "raw-states", "tokens_per_second", ">= 0.85 (the demo's share)"),
             ("mossa-eval", "raw-states", "tokens_per_second", "(info: the study's evaluated extraction)"),
             ("mossa-states", "authors", "prompt_tokens_per_second", ">= 20"),
             ("mossa-eval", "authors", "prompt_tokens_per_second", ">= 20")]
    ratios = {f"{a}/{b}": {**common.paired_ratios(runs, a, b, key), "per": key, "target": target}
              for a, b, key, target in pairs if a in chosen and b in chosen}
    rows = [[v, s["n_examples"], s["tokens"], s["seconds_median"], s["tokens_per_second_median"],
             s["prompt_tokens_per_second_median"], s["examples_per_second_median"]] for v, s in summary.items()]
    print()
    print(common.table(rows, ["variant", "examples", "tokens", "s (median)", "tok/s", "prompt tok/s", "examples/s"]))
    for k, r in ratios.items():
        print(f"{k} ({r['per']}): {r['ratio_of_medians']:.3f} (per round: {r['round_ratios']})  target {r['target']}")
    if check:
        print(f"authors' states vs mossa's on the subset: max relative difference {check['max_rel_diff_over_layers']:.2e}")
    if generated:
        print(f"authors: {np.mean(generated):.1f} tokens generated per example")
    path = common.write_result(args.name, {
        "model": loaded.name, "dtype": str(loaded.dtype), "dtype_reason": loaded.dtype_reason,
        "device": str(loaded.device), "adapter": args.adapter, "tasks": list(by_task), "n_examples": n_ex,
        "token_budget": budget, "prompt_tokens": prompt_tok,
        "padded_tokens": padded, "batches": len(pre),
        "settings": {"n_test_per_task": args.n_test, "max_prompt_tokens": args.max_prompt_tokens,
                     "max_target_tokens": args.max_target_tokens, "rounds": args.rounds},
        "authors": {"n_examples": len(sub), "prompt_tokens": sub_prompt_tok,
                    "max_new_tokens": args.authors_new_tokens, "stop_at_eos": args.authors_stop_at_eos,
                    "mean_generated_tokens": float(np.mean(generated)) if generated else None,
                    "states_vs_mossa": check},
        "token_count": "the prompts' non-pad tokens for every variant (options, targets and generated tokens not "
                       "counted); authors ratios use prompt tokens/s",
        "variants": summary, "ratios": ratios, "runs": runs})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
