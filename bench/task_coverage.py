"""Coverage of the intervals over tasks: how often an interval for the median over tasks holds the median
of the population of tasks it stands for, at 2, 3, 5 and 12 tasks.

Each replicate draws n task-level values (a per-task value or per-task gain E - B) from a fixed
population and forms three intervals: the percentile bootstrap of the median over tasks (what the
medians table used before), the percentile bootstrap of the mean (what the summary's E - B used
before) and the distribution-free interval of the median (`mossa.analysis.median_interval`, used now;
none below MIN_COVERAGE). Coverage is the share of replicates whose interval holds the population median
(the mean for the bootstrap of the mean); "given" is the share of replicates with an interval at all.
Populations: normal (sd 0.05 around a gain of 0.1), Student t with 3 degrees of freedom (heavy tails) and
lognormal (skewed); binomial standard error about 0.005 at 2,000 replicates.

    python bench/task_coverage.py                 # 2,000 replicates, n_boot 200 as the study's default
"""

from __future__ import annotations

import argparse

import numpy as np

from _common import table, write_result

from mossa.analysis import median_interval

TASKS = (2, 3, 5, 12)
POPULATIONS = {  # draw(rng, size), median, mean
    "normal": (lambda rng, size: rng.normal(0.1, 0.05, size), 0.1, 0.1),
    "t3": (lambda rng, size: rng.standard_t(3, size), 0.0, 0.0),
    "lognormal": (lambda rng, size: rng.lognormal(0.0, 1.0, size), 1.0, float(np.exp(0.5))),
}


def percentile(values: np.ndarray, statistic, n_boot: int, rng: np.random.Generator) -> tuple[float, float]:
    draws = statistic(values[rng.integers(0, len(values), size=(n_boot, len(values)))], axis=1)
    lo, hi = np.percentile(draws, [2.5, 97.5])
    return float(lo), float(hi)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--replicates", type=int, default=2000)
    ap.add_argument("--n-boot", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    rng = np.random.default_rng(args.seed)
    rows, results = [], []
    for name, (draw, median, mean) in POPULATIONS.items():
        for n in TASKS:
            boot_median = boot_mean = exact = given = 0
            stated = np.nan
            for _ in range(args.replicates):
                x = draw(rng, n)
                lo, hi = percentile(x, np.median, args.n_boot, rng)
                boot_median += lo <= median <= hi
                lo, hi = percentile(x, np.mean, args.n_boot, rng)
                boot_mean += lo <= mean <= hi
                lo, hi, stated = median_interval(x)
                given += bool(np.isfinite(lo))
                exact += bool(np.isfinite(lo)) and lo <= median <= hi
            k = args.replicates
            row = {"population": name, "tasks": n, "bootstrap_median": boot_median / k, "bootstrap_mean": boot_mean / k,
                   "order_statistics": exact / given if given else None, "stated": stated, "given": given / k}
            results.append(row)
            rows.append([name, n, f"{row['bootstrap_median']:.3f}", f"{row['bootstrap_mean']:.3f}",
                         f"{row['order_statistics']:.3f}" if given else "no interval", f"{stated:.3f}",
                         f"{row['given']:.2f}"])
    print(table(rows, ["population", "tasks", "bootstrap median (before)", "bootstrap mean (summary before)",
                       "order statistics (now)", "stated", "given"]))
    print(f"binomial se at {args.replicates} replicates: about {np.sqrt(0.95 * 0.05 / args.replicates):.3f}")
    path = write_result("task_coverage", {"replicates": args.replicates, "n_boot": args.n_boot, "rows": results})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
