"""Intervals over tasks for per-layer medians across tasks: the distribution-free interval of a median.

Stage: analysis (pure functions over tables; reads and writes nothing).

The estimand is the median of the population of tasks the study's tasks stand for. With n tasks, the
interval between the j-th smallest and the j-th largest value covers that median with probability
exactly 1 - 2 P(Bin(n, 1/2) <= j - 1), whatever the distribution of the tasks' values (continuous; the
sign test's interval). `median_interval` takes the largest j whose coverage is at least 95%, else j = 1
(min to max). A percentile bootstrap over tasks, used before, covered 0.51 of the time at 2 tasks, 0.75
at 3 and about 0.90 at 5 (`bench/task_coverage.py`): it cannot reach beyond the observed values. The
best any interval of order statistics can do at n tasks is min to max, 1 - 2^(1 - n): 0.5, 0.75, 0.875
at 2, 3, 4 tasks, below MIN_COVERAGE, so no interval is given there ("too few tasks for an interval").
Intervals over the examples of one value are a jackknife (`_jackknife.py`).

Reference: W. J. Conover, "Practical Nonparametric Statistics", 3rd ed., Wiley 1999, sec. 3.2 (the
confidence interval for a quantile).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import stats

LEVEL = 0.95
MIN_COVERAGE = 0.90  # an interval over tasks is given only when its exact coverage reaches this
TOO_FEW = "too few tasks for an interval"


def median_interval(values: np.ndarray, level: float = LEVEL) -> tuple[float, float, float]:
    """(low, high, coverage) of the distribution-free interval for the median of the population the
    finite `values` are drawn from; (NaN, NaN, coverage of min to max) when even that covers less than
    MIN_COVERAGE (fewer than 5 values)."""
    x = np.sort(np.asarray(values, dtype=float))
    n = len(x)
    if n < 2:
        return np.nan, np.nan, (0.0 if n else np.nan)
    js = np.arange(1, n // 2 + 1)
    coverage = 1 - 2 * stats.binom.cdf(js - 1, n, 0.5)  # of [x_(j), x_(n+1-j)]
    j = int(js[coverage >= level].max(initial=1))
    if coverage[j - 1] < MIN_COVERAGE:
        return np.nan, np.nan, float(coverage[j - 1])
    return float(x[j - 1]), float(x[n - j]), float(coverage[j - 1])


def median_over_tasks(sim: pd.DataFrame, *, n_boot: int, seed: int, by_cluster: bool) -> pd.DataFrame:
    """Per-layer median over tasks with its distribution-free interval over tasks (`median_interval`).

    With `by_cluster`, one median per cluster. Fewer than 5 tasks (a one-task cluster among them) give no
    interval: `ci_source` says "too few tasks for an interval"; `ci_coverage` is the interval's exact
    coverage (of min to max when none is given). With `n_boot` 0 there are no intervals at all (NaN,
    `ci_source` "none"; the study's setting for no intervals). `null_mean` and `null_q95` are the medians
    over the same tasks of their permutation nulls (NaN without a null). `seed` is unused: the interval
    involves no resampling.
    """
    keys = ["measure", "model", "layer"] + (["cluster"] if by_cluster else [])
    rows = []
    for key, group in sim.groupby(keys, sort=True):
        values = group["value"].to_numpy(dtype=float)
        finite = values[np.isfinite(values)]
        row = dict(zip(keys, key), group=key[3] if by_cluster else "all", n_tasks=len(finite))
        for column in ("null_mean", "null_q95"):
            null = group.loc[np.isfinite(values), column].to_numpy(dtype=float) if column in group else np.array([])
            row[column] = float(np.median(null)) if len(null) and np.isfinite(null).all() else np.nan
        if not len(finite):
            rows.append({**row, "median": np.nan, "ci_low": np.nan, "ci_high": np.nan, "ci_source": "undefined",
                         "ci_coverage": np.nan})
            continue
        median = float(np.median(finite))
        if n_boot == 0:
            rows.append({**row, "median": median, "ci_low": np.nan, "ci_high": np.nan, "ci_source": "none",
                         "ci_coverage": np.nan})
            continue
        lo, hi, coverage = median_interval(finite)
        rows.append({**row, "median": median, "ci_low": lo, "ci_high": hi, "ci_coverage": coverage,
                     "ci_source": "tasks" if np.isfinite(lo) else TOO_FEW})
    columns = ["group", "measure", "model", "layer", "median", "ci_low", "ci_high", "n_tasks", "ci_source",
               "ci_coverage", "null_mean", "null_q95"]
    return pd.DataFrame(rows).reindex(columns=columns) if rows else pd.DataFrame(columns=columns)
