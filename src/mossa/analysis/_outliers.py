"""Outlier dimensions of every model's states: how many, which, and how much of the variance they and the
top principal direction carry, per task, model and layer (results/outliers.csv).

Stage: analysis (reads activation files from the store; writes nothing itself). Loads no model.

In decoder LLMs one to a few residual dimensions carry most of the variance, and CKA follows them;
this table says where that happens, and the robust CKA variants (`mossa.similarity.ROBUST_MEASURES`)
say whether the study's result depends on it. The rule (``OUTLIER_RULE``, defined with the measures
that remove the dimensions): a dimension is an outlier when its median |h| over the examples exceeds
the layer's 99th percentile of |h| over all n * d entries. Rows are the similarity table's: matched by
example id across the task's models, an example non-finite in any of them at any layer dropped from
all, every model on the control's layer grid.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import pandas as pd

from mossa.workers import JobPool
from mossa.analysis._similarity import COMPARED, HELDOUT, aligned_rows, joint_finite, on_grid
from mossa.similarity import OUTLIER_RULE, as_float64, outlier_dims
from mossa.spectral import DegenerateSpectrumWarning, layer_spectrum
from mossa.store import StudyDir

OUTLIER_COLUMNS = ["task", "cluster", "model", "layer", "n_examples", "n_dropped", "n_outliers", "outlier_dims",
                   "top_direction_share", "outlier_variance_share", "rule", "undefined_reason"]
CONSTANT = "does not vary across examples: no variance to share"


def top_direction_share(X: Any) -> float:
    """Share of the total centred variance of `X` [n, d] on its first principal direction, lam_1 / sum(lam)
    in float64 (the spectral table's ``top1_variance_fraction``); NaN when `X` does not vary."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DegenerateSpectrumWarning)
        return float(layer_spectrum(X[None])["top1_variance_fraction"].iloc[0])


def _variance_share(X: np.ndarray, dims: np.ndarray) -> float:
    """Share of the total centred variance of float64 `X` on the columns `dims` (NaN when it has none)."""
    Xc = X - X.mean(axis=0)
    per_dim = np.einsum("ij,ij->j", Xc, Xc)
    total = float(per_dim.sum())
    return float(per_dim[dims].sum() / total) if total > 0 else float("nan")


def layer_outliers(X: Any) -> dict:
    """n_outliers, outlier_dims ("12;301", "" for none), top_direction_share, outlier_variance_share and
    undefined_reason of one layer's states `X` [n, d]."""
    dims = outlier_dims(X)  # validates X: 2-D, finite, at least 2 rows
    Xv = as_float64(X, "X")
    top = top_direction_share(Xv)
    return {"n_outliers": len(dims), "outlier_dims": ";".join(map(str, dims)), "top_direction_share": top,
            "outlier_variance_share": _variance_share(Xv, dims) if np.isfinite(top) else float("nan"),
            "undefined_reason": "" if np.isfinite(top) else CONSTANT}


def task_outliers(study: StudyDir, task: str, cluster: str, models: tuple[str, ...]) -> list[dict]:
    """The outlier rows of one task's `models`, on the similarity table's rows (a worker job)."""
    runs = {m: study.activation_file(m, task) for m in models}
    runs = on_grid(runs, runs["control"].shape[0])
    _, rows = aligned_rows(runs)
    finite = joint_finite(runs, rows)
    kept = {m: r[finite] for m, r in rows.items()}
    out = []
    for model in models:
        for layer in range(runs[model].shape[0]):  # one layer in memory at a time
            states = runs[model].read(kept[model], layers=[layer])[0]
            out.append({"task": task, "cluster": cluster, "model": model, "layer": layer,
                        "n_examples": int(finite.sum()), "n_dropped": int((~finite).sum()),
                        **layer_outliers(states), "rule": OUTLIER_RULE})
    return out


def outlier_table(study: StudyDir, tasks: dict[str, str], *, heldout: tuple[str, ...] = (),
                  ceiling: tuple[str, ...] = (), pool: JobPool | None = None) -> pd.DataFrame:
    """Rows OUTLIER_COLUMNS per (task, model, layer) for every model a task has: B, E, C_t, E' on the held-out
    tasks and C_t' on the ceiling tasks. `pool` runs one job per task; the table does not depend on it."""
    jobs = pool or JobPool()
    futures = [jobs.submit(task_outliers, study, task, cluster,
                           (*COMPARED, "control", *((HELDOUT,) if task in heldout else ()),
                            *(("ceiling",) if task in ceiling else ())))
               for task, cluster in tasks.items()]
    return pd.DataFrame([row for f in futures for row in f.result()], columns=OUTLIER_COLUMNS)


__all__ = ["OUTLIER_COLUMNS", "OUTLIER_RULE", "layer_outliers", "outlier_dims", "outlier_table",
           "task_outliers", "top_direction_share"]
