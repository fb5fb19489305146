"""Bootstrap intervals over tasks for per-layer medians across tasks.

Stage: analysis (pure functions over tables; reads and writes nothing).

Tasks are resampled with replacement and the median recomputed; the interval is the 2.5-97.5
percentile range. Intervals over the examples of one value are a jackknife (`_jackknife.py`).
"""

from __future__ import annotations

import numpy as np
import pandas as pd


def median_over_tasks(sim: pd.DataFrame, *, n_boot: int, seed: int, by_cluster: bool) -> pd.DataFrame:
    """Per-layer median over tasks with a bootstrap-over-tasks 95% interval.

    With `by_cluster`, one median per cluster; a cluster of one task has no spread over tasks,
    so its interval is that task's jackknife interval over examples (`ci_source` says which). With
    `n_boot` 0 there are no intervals (NaN, `ci_source` "none"). `null_mean` and `null_q95` are the
    medians over the same tasks of their permutation nulls (NaN without a null).
    """
    rng = np.random.default_rng(seed)
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
            rows.append({**row, "median": np.nan, "ci_low": np.nan, "ci_high": np.nan, "ci_source": "undefined"})
            continue
        median = float(np.median(finite))
        if len(finite) == 1:
            only = group[np.isfinite(values)].iloc[0]
            rows.append({**row, "median": median, "ci_low": only.get("ci_low", np.nan),
                         "ci_high": only.get("ci_high", np.nan), "ci_source": "examples"})
            continue
        if n_boot == 0:
            rows.append({**row, "median": median, "ci_low": np.nan, "ci_high": np.nan, "ci_source": "none"})
            continue
        draws = np.median(finite[rng.integers(0, len(finite), size=(n_boot, len(finite)))], axis=1)
        lo, hi = np.percentile(draws, [2.5, 97.5])
        rows.append({**row, "median": median, "ci_low": float(lo), "ci_high": float(hi), "ci_source": "tasks"})
    columns = ["group", "measure", "model", "layer", "median", "ci_low", "ci_high", "n_tasks", "ci_source",
               "null_mean", "null_q95"]
    return pd.DataFrame(rows).reindex(columns=columns) if rows else pd.DataFrame(columns=columns)
