"""The performance table of every (task, model) and the check that each control model learned its task.

Stage: evaluation (pure functions over evaluation records; reads and writes nothing).

Each interval has its own random stream, seeded by (seed, task, model, metric) alone, so a table
is reproducible and any row is the same whatever else the records hold or in what order.
"""

from __future__ import annotations

import zlib

import numpy as np
import pandas as pd

from mossa.errors import MossaError
from mossa.evaluation._intervals import metric_interval, paired_gain_interval
from mossa.evaluation._metrics import (
    check_record,
    primary_metric,
    record_metrics,
    task_metrics,
)

PERFORMANCE_COLUMNS = ["task", "cluster", "model", "metric", "value", "ci_low", "ci_high", "n_examples", "interval"]
CONTROL_COLUMNS = ["task", "cluster", "metric", "base", "control", "gain", "ci_low", "ci_high", "n_examples",
                   "learned", "interval"]


def performance_table(records: dict[tuple[str, str], dict | None], clusters: dict[str, str], *, n_boot: int = 200,
                      seed: int = 0) -> pd.DataFrame:
    """One row per (task, model, metric that applies) with a 95% interval over examples.

    The metrics of a task are those of any of its records: option metrics if some record has
    option rows, generation metrics (BLEU and chrF only in `CORPUS_CLUSTERS`) if some has
    generation rows, and the NLL ratio estimators always; a record without rows of a kind gives
    NaN there with ``n_examples`` 0. A missing record (None) gives no rows.

    Parameters
    ----------
    records : dict of (task, model) to dict or None
        The evaluation records.
    clusters : dict of task to str
        Every task's cluster.
    n_boot : int, default=200
        Bootstrap resamples per interval; 0 gives no intervals (NaN, ``interval`` "none").
    seed : int, default=0

    Returns
    -------
    DataFrame with columns `PERFORMANCE_COLUMNS`, sorted by task, model and metric order;
    ``interval`` names the method (see `metric_interval`).
    """
    kinds = _check_inputs(records, clusters, n_boot, seed)
    rows = []
    for task, model in sorted(records):
        record = records[(task, model)]
        if record is None:
            continue
        cluster = clusters[task]
        names = task_metrics(cluster, has_options=kinds[task][0], has_generation=kinds[task][1])
        scores = record_metrics(record, cluster, names=names, where=f"record ({task}, {model})")
        for name in names:
            low, high, method = metric_interval(scores[name], n_boot=n_boot, rng=named_stream(seed, task, model, name))
            rows.append([task, cluster, model, name, scores[name].value, low, high, scores[name].n_examples, method])
    return pd.DataFrame(rows, columns=PERFORMANCE_COLUMNS)


def control_check(records: dict[tuple[str, str], dict | None], clusters: dict[str, str], *, n_boot: int = 200,
                  seed: int = 0, base: str = "base", control: str = "control") -> pd.DataFrame:
    """Per task, whether the control model beats the base model on the task's primary metric.

    Both models are scored on the rows they share (of the kind the primary metric uses: option
    rows for accuracy, generation rows otherwise); ``gain`` is control minus base, with a paired
    bootstrap interval. ``learned`` is True when ``ci_low > 0``, i.e. the interval excludes no
    gain; with ``n_boot=0`` there is no interval and ``learned`` is just ``gain > 0``. Every
    primary metric is higher-is-better, so a positive gain is always an improvement.

    A task where either record is missing, or that has no shared rows, still gets its row: NaN
    values, ``learned`` False, and ``interval`` saying why.

    Returns
    -------
    DataFrame with columns `CONTROL_COLUMNS`, one row per task of `records`, sorted by task.
    """
    kinds = _check_inputs(records, clusters, n_boot, seed)
    nan = float("nan")
    rows = []
    for task in sorted({t for t, _ in records}):
        cluster = clusters[task]
        has_options, has_generation = kinds[task]
        metric = primary_metric(cluster, has_options) if has_options or has_generation else "unknown"
        pair = records.get((task, base)), records.get((task, control))
        if any(r is None for r in pair):
            missing = " and ".join(m for m, r in zip((base, control), pair) if r is None)
            rows.append([task, cluster, metric, nan, nan, nan, nan, nan, 0, False, f"missing record: {missing}"])
            continue
        if metric == "unknown":
            rows.append([task, cluster, metric, nan, nan, nan, nan, nan, 0, False, "no examples"])
            continue
        b, c = (record_metrics(r, cluster, names=[metric], where=f"record ({task}, {m})")[metric]
                for r, m in zip(pair, (base, control)))
        shared = np.intersect1d(b.rows, c.rows)
        b, c = b.on_rows(shared), c.on_rows(shared)
        gain = c.value - b.value
        low, high, method = paired_gain_interval(b, c, n_boot=n_boot,
                                                 rng=named_stream(seed, task, f"{control}-{base}", metric))
        learned = bool(low > 0) if n_boot else bool(gain > 0)
        rows.append([task, cluster, metric, b.value, c.value, gain, low, high, len(shared), learned, method])
    return pd.DataFrame(rows, columns=CONTROL_COLUMNS)


def named_stream(seed: int, *parts: str) -> np.random.Generator:
    """A random stream that depends only on the seed and the names, not on table order."""
    return np.random.default_rng([seed, *(zlib.crc32(p.encode()) for p in parts)])


def _check_inputs(records, clusters, n_boot, seed) -> dict[str, tuple[bool, bool]]:
    """Checked arguments; per task, whether any record has option rows and any generation rows."""
    if not isinstance(records, dict):
        raise MossaError(f"records: expected a dict keyed by (task, model), got {type(records).__name__}; pass a dict")
    bad = [k for k in records if not (isinstance(k, tuple) and len(k) == 2)]
    if bad:
        raise MossaError(f"records: expected (task, model) tuple keys, got {bad[0]!r}; key each record by (task, model)")
    unknown = sorted({t for t, _ in records} - set(clusters))
    if unknown:
        raise MossaError(f"clusters: expected a cluster for every task, got none for {', '.join(unknown)}; "
                         "add them to clusters")
    for name, v in (("n_boot", n_boot), ("seed", seed)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 0:
            raise MossaError(f"{name}: expected a whole number >= 0, got {v!r}; use e.g. 200 for n_boot, 0 for seed")
    kinds: dict[str, tuple[bool, bool]] = {}
    for (task, model), record in records.items():
        has = kinds.get(task, (False, False))
        if record is not None:
            gold = check_record(record, f"record ({task}, {model})")["gold"]
            has = (has[0] or any(g is not None for g in gold), has[1] or any(g is None for g in gold))
        kinds[task] = has
    return kinds
