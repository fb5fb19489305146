"""Coverage of the causal check's share interval: how often a nominal 95% interval of (masked - B) / (E - B)
holds the true share of a known population, over the replicates where it is stated, and over those where E's
gain over B is only just significant.

Each replicate draws n examples of three models that share a per-example difficulty z ~ N(0, 1) (the
same prompts: what the paired intervals are for) and computes two intervals:
- now: the table's, `mossa.causal.gain_share_test` (Fieller's interval from a paired t test with jackknife
  variances), stated where E's gain over B passes the same test, as results/causal.csv does;
- before: the percentile bootstrap of the ratio (`mossa.evaluation.gain_share_interval`, n_boot resamples),
  stated where E's gain is above 0 by its paired bootstrap interval, the table's rule until issue 25.
"Just significant": E's one-sided gain p-value (the t test's) in (0.0025, 0.025], i.e. passing at 5% two-sided
but not at 0.5%: the cases the selection on E's gain distorts most. Coverage is over the replicates where the
interval is stated (what a reader of the table sees), with its binomial standard error. Populations, true
share s:

- NLL per token (a ratio of sums): T = 1 + Poisson(5) tokens, per-token loss 2 + d_k + 0.5 z + e_k
  (e_k ~ N(0, 0.5) per example), d_B = 0, d_E = -g, d_masked = -s g: truth s exactly;
- accuracy (0/1): model k right when 0.6 z + 0.8 e_k < q_k, so right with probability p_k, p_B = 0.55,
  p_E = 0.55 + g, p_masked = 0.55 + s g: truth s.

    python bench/share_coverage.py                    # n 32 and 96, 1000 replicates
    python bench/share_coverage.py --replicates 300 --sizes 32
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from scipy import stats as sps

from _common import table, write_result

from mossa.causal import gain_share_test
from mossa.evaluation import gain_share_interval, paired_gain_interval
from mossa.evaluation._metrics import mean_scores, ratio_scores


def _nll(gain: float, share: float):
    def draw(rng: np.random.Generator, n: int):
        tokens = 1 + rng.poisson(5, n)
        z = rng.normal(size=n)
        out = []
        for d in (0.0, -gain, -share * gain):
            loss = 2 + d + 0.5 * z + rng.normal(0, 0.5, n)
            out.append(ratio_scores("nll_per_token", np.arange(n), tokens * loss, tokens))
        return out
    return draw


def _accuracy(gain: float, share: float):
    def draw(rng: np.random.Generator, n: int):
        z = rng.normal(size=n)
        out = []
        for p in (0.55, 0.55 + gain, 0.55 + share * gain):
            right = 0.6 * z + 0.8 * rng.normal(size=n) < sps.norm.ppf(p)
            out.append(mean_scores("accuracy", np.arange(n), right.astype(float)))
        return out
    return draw


CASES = [(f"NLL per token, E gains {g}, share {s}", _nll(g, s), s, True) for g in (0.5, 0.2) for s in (0.2, 0.7)]
CASES += [(f"accuracy, E gains {g}, share {s}", _accuracy(g, s), s, False) for g in (0.3, 0.15) for s in (0.2, 0.7)]


def replicate(draw, truth: float, lower_better: bool, n: int, reps: int, n_boot: int, seed: int, label: str) -> dict:
    """Per method ("now", "before"): the share of replicates stated, and the coverage over the stated ones and
    over the just significant ones (with their counts and standard errors)."""
    rng = np.random.default_rng([seed, n, sum(map(ord, label))])
    hits = {m: {"stated": [], "just": []} for m in ("now", "before")}
    for r in range(reps):
        base, full, part = draw(rng, n)
        now = gain_share_test(base, full, part, lower_better=lower_better)
        just = 0.0025 < now.gain_p <= 0.025
        if not now.reason:
            covered = now.low <= truth <= now.high
            hits["now"]["stated"].append(covered)
            if just:
                hits["now"]["just"].append(covered)
        stream = np.random.default_rng([seed, n, r])
        low, high, _ = paired_gain_interval(base, full, n_boot=n_boot, rng=stream)
        if high < 0 if lower_better else low > 0:
            _, (lo, hi, _) = gain_share_interval(base, full, part, n_boot=n_boot, rng=stream)
            hits["before"]["stated"].append(lo <= truth <= hi)
            if just:
                hits["before"]["just"].append(lo <= truth <= hi)
    out = {}
    for method, got in hits.items():
        out[method] = {"stated": len(got["stated"]) / reps}
        for subset, values in got.items():
            cov = float(np.mean(values)) if values else float("nan")
            out[method][f"coverage_{subset}"] = cov
            out[method][f"n_{subset}"] = len(values)
            out[method][f"se_{subset}"] = float(np.sqrt(cov * (1 - cov) / len(values))) if values else float("nan")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--replicates", type=int, default=1000)
    ap.add_argument("--sizes", default="32,96")
    ap.add_argument("--n-boot", type=int, default=200, help="resamples per interval (the table's default)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--name", default="share_coverage", help="the result file's name under bench/results/")
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    rows, results = [], []
    t_all = time.perf_counter()
    for label, draw, truth, lower_better in CASES:
        for n in sizes:
            t0 = time.perf_counter()
            res = replicate(draw, truth, lower_better, n, args.replicates, args.n_boot, args.seed, label)
            results.append({"case": label, "n": n, "truth": truth, **res,
                            "seconds": round(time.perf_counter() - t0, 1)})
            now, before = res["now"], res["before"]
            rows.append([label, n, f"{now['stated']:.2f} / {before['stated']:.2f}",
                         f"{now['coverage_stated']:.3f} ({now['se_stated']:.3f}) / {before['coverage_stated']:.3f}",
                         f"{now['coverage_just']:.3f} ({now['se_just']:.3f}) / {before['coverage_just']:.3f}",
                         f"{now['n_just']} / {before['n_just']}"])
            print(f"{label} n={n}: {time.perf_counter() - t0:.1f} s", flush=True)
    print(table(rows, ["case", "n", "stated now / before", "coverage stated now (se) / before",
                       "coverage just significant now (se) / before", "n just significant now / before"]))
    print(f"total {time.perf_counter() - t_all:.0f} s")
    path = write_result(args.name, {"replicates": args.replicates, "n_boot": args.n_boot, "rows": results})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
