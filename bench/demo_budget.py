"""What the demo preset's sizes rest on, measured side by side on the default model and real
flan-mini prompts at the demo's prompt and target limits (224 and 48 tokens).

1. Scoring targets: `extract` of each task's test prompts with the test loss (prompt+target,
   the output head at every target position) and without it (prompts alone), seconds per
   prompt. The demo scores only B's and the controls' targets (`test_loss: base_and_controls`).
2. Batch size at a fixed number of examples: a fresh control trained on the same examples in
   steps of 2 and in steps of 4 (the same seed and schedule), seconds per example and the
   test loss per target token of each task after training (identical in every round: training
   is deterministic), against B's.

Variants run in rounds with alternating order (`_common.run_rounds`); the ratios are medians
over rounds of same-round ratios.

    .venv/bin/python bench/demo_budget.py             # ~5 min on 2 idle CPU cores
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as common  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="gemma-3-270m")
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--tasks", default="snli,e2e_nlg,cosmos_qa,trec")
    ap.add_argument("--tasks-dir", default=None)
    ap.add_argument("--n-test", type=int, default=48, help="test prompts per task")
    ap.add_argument("--n-train", type=int, default=16, help="training examples of each control (demo: 16)")
    ap.add_argument("--batches", default="2,4", help="batch sizes to compare (demo: 2)")
    ap.add_argument("--max-prompt-tokens", type=int, default=224, help="demo preset: 224")
    ap.add_argument("--max-target-tokens", type=int, default=48, help="demo preset: 48")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--name", default="demo_budget", help="result file bench/results/<name>.json")
    args = ap.parse_args()

    from mossa.config import LoraSettings, TrainSettings
    from mossa.extraction import extract
    from mossa.training import train_adapter

    loaded, host, test = common.setup(args, "test", args.n_test)
    train = common.prompts(loaded, args.tasks.split(","), "train", args.n_train, tasks_dir=args.tasks_dir,
                           max_prompt_tokens=args.max_prompt_tokens, max_target_tokens=args.max_target_tokens)
    budget = 2048

    def scoring(with_loss: bool):
        def run() -> dict:
            import time

            t0 = time.perf_counter()
            for prompts in test.values():
                extract(host, None, prompts, token_budget=budget, with_loss=with_loss)
            n = sum(len(p) for p in test.values())
            return {"tokens": n, "seconds": time.perf_counter() - t0}  # "tokens" counts prompts here
        return run

    scored = common.run_rounds({"with test loss": scoring(True), "states only": scoring(False)}, args.rounds)
    per_prompt = {k: statistics.median(r["seconds"] / r["tokens"] for r in v) for k, v in scored.items()}
    loss_ratio = statistics.median(a["seconds"] / b["seconds"]
                                   for a, b in zip(scored["with test loss"], scored["states only"]))

    base_nll = {t: extract(host, None, p, token_budget=budget) for t, p in test.items()}

    def per_token(runs) -> float:
        return float(sum(r.target_nll.sum() for r in runs) / sum(r.target_tokens.sum() for r in runs))

    quality: dict[int, list[dict[str, float]]] = {}

    def training(batch: int):
        def run() -> dict:
            settings = TrainSettings(lr=2e-3, epochs=1, batch_size=batch, grad_accum=1, schedule="cosine",
                                     warmup_ratio=0.1)
            seconds, examples, after = 0.0, 0, {}
            for task, prompts in train.items():
                log = train_adapter(host, "bench", prompts, settings=settings, lora=LoraSettings(), seed=0)
                seconds += log["seconds"]
                examples += sum(log["examples_seen"].values())
                after[task] = per_token([extract(host, "bench", test[task], token_budget=budget)])
                host.remove("bench")
            quality.setdefault(batch, []).append(after)
            return {"tokens": examples, "seconds": seconds}  # "tokens" counts training examples here
        return run

    batches = [int(b) for b in args.batches.split(",")]
    trained = common.run_rounds({f"batch {b}": training(b) for b in batches}, args.rounds)
    rows = [["test loss scored", f"{per_prompt['with test loss']:.3f} s/prompt", ""],
            ["states only", f"{per_prompt['states only']:.3f} s/prompt", f"{loss_ratio:.2f}x"]]
    base = {t: per_token([r]) for t, r in base_nll.items()}
    header = ["variant", "cost", "scored / states only"] + [f"NLL/token {t}" for t in test]
    rows = [row + [""] * len(test) for row in rows]
    rows.append(["B (untrained)", "", ""] + [f"{base[t]:.3f}" for t in test])
    for b in batches:
        cost = statistics.median(r["seconds"] / r["tokens"] for r in trained[f"batch {b}"])
        rows.append([f"control, batch {b}", f"{cost:.3f} s/example", ""]
                    + [f"{quality[b][0][t]:.3f}" for t in test])
    print(common.table(rows, header))
    path = common.write_result(args.name, {
        "settings": vars(args), "scoring": scored, "seconds_per_prompt": per_prompt, "loss_over_states": loss_ratio,
        "training": trained, "test_nll_per_token": {str(b): quality[b] for b in batches},
        "base_test_nll_per_token": base})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
