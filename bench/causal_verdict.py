"""How often the causal verdict (`mossa.causal.section_verdict`) names a layer range that carries E's gain
over B: with the gain spread evenly over three ranges (false claims; target at most 5% of studies), at the
boundary of the claim (one range alone keeps exactly half, and without it exactly half is left), and with a
planted carrier (power), at 32 and 96 prompts per task and 1 and 3 tasks.

Each replicate is a study: per task, per-example scores of B, E, and E with its adapter on in one range only
and everywhere but one range (8 runs), on two metrics, sharing a per-example difficulty z ~ N(0, 1) (the
bench/share_coverage.py populations). Range r holds a fraction w_r of E's gain (w sums to 1): alone it keeps
w_r, without it 1 - w_r is kept.
- accuracy (each task's primary metric): run k right when 0.6 z + 0.8 e_k < q_k, with probability
  p_B = 0.55, p_E = 0.55 + g, p_masked = 0.55 + share g;
- NLL per token: T = 1 + Poisson(5) tokens, per-token loss 2 - share g' + 0.5 z + 0.5 e_k.
The runs' noise e_k ~ N(0, 1) is "independent" across runs (rho 0, as in bench/share_coverage.py) or
"shared" (rho 0.9: e_k = sqrt(rho) u + sqrt(1 - rho) eps_k, one u per example), as runs of one model on the
same prompt mostly are (the demo's NLL shares have intervals about +-0.03 wide at 32 prompts).
Gains: "clear" (g = 0.30, g' = 0.5 nats) and "weak" (g = 0.15, g' = 0.2). Scenarios:
- even: w = (1/3, 1/3, 1/3), no range carries the gain;
- boundary: w = (1/2, 1/4, 1/4), the least favourable null of "the first range carries it";
- planted: w = (0.8, 0.1, 0.1), the first range carries it.
The shares and tests are the table's (`mossa.causal.gain_share_test`), the verdict `section_verdict` (Holm
over 2 metrics x tasks x 4 claims). "before" is the rule until issue 25 on the same shares: the median share
over tasks per range, the largest named when it is >= 1/2 alone, every other range alone < 1/2 and without
it < 1/2 (on the primary metric, or the NLL where no primary share is stated). Rates are in % of studies,
with Wilson 95% intervals:
- named: the verdict names a carrier on any task and metric (before: the sentence names one);
- right: the planted first range is named on at least one task, and no other range anywhere;
- spread: "no single range carries it" is established on at least one task.

    python bench/causal_verdict.py                    # 300 replicates per cell
    python bench/causal_verdict.py --replicates 100 --sizes 32 --tasks 1
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import pandas as pd
from scipy import stats as sps

from _common import table, write_result

from mossa.causal import CAUSAL_COLUMNS, gain_share_test, section_verdict
from mossa.evaluation import wilson_interval
from mossa.evaluation._metrics import mean_scores, ratio_scores

RANGES = ("first third", "second third", "last third")
SCENARIOS = {"even": (1 / 3, 1 / 3, 1 / 3), "boundary": (0.5, 0.25, 0.25), "planted": (0.8, 0.1, 0.1)}
GAINS = {"clear": (0.30, 0.5), "weak": (0.15, 0.2)}
NOISE = {"independent": 0.0, "shared": 0.9}


def draw_task(rng: np.random.Generator, n: int, weights, gains, rho: float) -> dict[str, dict]:
    """metric -> run -> MetricScores for one task: B ('none'), E ('all') and the 6 masked runs."""
    acc_gain, nll_gain = gains
    shares = {"none": 0.0, "all": 1.0}
    for r, w in zip(RANGES, weights):
        shares[f"only {r}"], shares[f"outside {r}"] = w, 1 - w
    z, u = rng.normal(size=n), rng.normal(size=n)
    tokens = 1 + rng.poisson(5, n)
    rows = np.arange(n)
    out = {"accuracy": {}, "nll_per_token": {}}
    for run, share in shares.items():
        noise = np.sqrt(rho) * u + np.sqrt(1 - rho) * rng.normal(size=n)
        right = 0.6 * z + 0.8 * noise < sps.norm.ppf(0.55 + share * acc_gain)
        out["accuracy"][run] = mean_scores("accuracy", rows, right.astype(float))
        noise = np.sqrt(rho) * u + np.sqrt(1 - rho) * rng.normal(size=n)
        loss = 2 - share * nll_gain + 0.5 * z + 0.5 * noise
        out["nll_per_token"][run] = ratio_scores("nll_per_token", rows, tokens * loss, tokens)
    return out


def study_table(rng: np.random.Generator, n: int, n_tasks: int, weights, gains, rho: float) -> pd.DataFrame:
    """The causal.csv rows of E's masked runs for one simulated study (the columns the verdict reads)."""
    rows = []
    for t in range(n_tasks):
        scores = draw_task(rng, n, weights, gains, rho)
        for metric, runs in scores.items():
            for run, m in runs.items():
                if run in ("all", "none"):
                    continue
                test = gain_share_test(runs["none"], runs["all"], m, lower_better=metric == "nll_per_token")
                row = dict.fromkeys(CAUSAL_COLUMNS, np.nan)
                row.update(task=f"t{t}", cluster="NLI", model="experimental", mask=run, section=run.split(" ", 1)[1],
                           metric=metric, share=test.share, share_low=test.low, share_high=test.high,
                           share_reason=test.reason, gain_p=test.gain_p, above_half_p=test.above_p,
                           below_half_p=test.below_p, n_examples=n)
                rows.append(row)
    return pd.DataFrame(rows, columns=CAUSAL_COLUMNS)


def before_named(causal: pd.DataFrame) -> str | None:
    """The range the rule before issue 25 named from point estimates, or None."""
    for metric in ("accuracy", "nll_per_token"):
        part = causal[(causal["metric"] == metric) & causal["share"].notna()]
        if part.empty:
            continue
        only = {r: part.loc[part["mask"] == f"only {r}", "share"].median() for r in RANGES}
        outside = {r: part.loc[part["mask"] == f"outside {r}", "share"].median() for r in RANGES}
        top = max(only, key=only.get)
        carries = only[top] >= 0.5 and outside[top] < 0.5 and all(only[r] < 0.5 for r in RANGES if r != top)
        return top if carries else None
    return None


def cell(n: int, n_tasks: int, scenario: str, gain: str, noise: str, reps: int, seed: int) -> dict:
    """The rates of one cell over `reps` simulated studies."""
    rng = np.random.default_rng([seed, n, n_tasks, list(SCENARIOS).index(scenario), list(GAINS).index(gain),
                                 list(NOISE).index(noise)])
    counts = {"named": 0, "right": 0, "spread": 0, "before_named": 0, "before_right": 0}
    for _ in range(reps):
        causal = study_table(rng, n, n_tasks, SCENARIOS[scenario], GAINS[gain], NOISE[noise])
        verdict = section_verdict(causal)
        carriers = verdict["carriers"]
        counts["named"] += bool(carriers)
        counts["right"] += carriers == [RANGES[0]]
        counts["spread"] += any(verdict[k]["spread"] for k in ("primary", "nll_per_token"))
        old = before_named(causal)
        counts["before_named"] += old is not None
        counts["before_right"] += old == RANGES[0]
    return {k: v / reps for k, v in counts.items()}


def rate(p: float, reps: int) -> str:
    """A rate in % with its Wilson 95% interval."""
    low, high = wilson_interval(round(p * reps), reps)
    return f"{100 * p:.1f} ({100 * low:.1f}-{100 * high:.1f})"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--replicates", type=int, default=300)
    ap.add_argument("--sizes", default="32,96")
    ap.add_argument("--tasks", default="1,3")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--name", default="causal_verdict", help="the result file's name under bench/results/")
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    task_counts = [int(t) for t in args.tasks.split(",")]
    rows, results = [], []
    t_all = time.perf_counter()
    cells = [(s, g, v, t, n) for s in SCENARIOS for v in NOISE for g in GAINS for t in task_counts for n in sizes]
    for scenario, gain, noise, n_tasks, n in cells:
        t0 = time.perf_counter()
        res = cell(n, n_tasks, scenario, gain, noise, args.replicates, args.seed)
        results.append({"scenario": scenario, "weights": SCENARIOS[scenario], "gain": gain, "gains": GAINS[gain],
                        "noise": noise, "rho": NOISE[noise], "tasks": n_tasks, "n": n, **res,
                        "seconds": round(time.perf_counter() - t0, 1)})
        r = args.replicates
        rows.append([scenario, noise, gain, n_tasks, n, rate(res["named"], r), rate(res["before_named"], r),
                     rate(res["right"], r), rate(res["spread"], r)])
        print(f"{scenario} {noise} {gain} tasks={n_tasks} n={n}: {time.perf_counter() - t0:.1f} s", flush=True)
    print(table(rows, ["scenario", "noise", "gain", "tasks", "n", "named", "named before", "right range", "spread"]))
    print(f"total {time.perf_counter() - t_all:.0f} s")
    path = write_result(args.name, {"replicates": args.replicates, "rows": results})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
