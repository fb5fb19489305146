"""Fig 6: per layer, Pearson correlation across tasks between CKA(M, C_t) and task properties.

Stage: analysis (reads the similarity table and per-task properties recorded in study.json).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import stats

PROPERTIES = {"flesch_kincaid_grade": "Flesch-Kincaid grade of the inputs",
              "coleman_liau_index": "Coleman-Liau index of the inputs",
              "train_size": "training examples its control saw"}


def correlations(sim: pd.DataFrame, properties: pd.DataFrame, *, measure: str = "linear_cka") -> pd.DataFrame:
    """Pearson r (and its two-sided p value) across tasks, per model, layer and property.

    Parameters
    ----------
    sim : DataFrame
        The long similarity table.
    properties : DataFrame
        One row per task (index = task name) with the columns of `PROPERTIES`.

    Returns
    -------
    DataFrame with columns model, layer, property, r, p_value, n_tasks. `r` is NaN, with
    `note`, where fewer than 3 tasks have a defined value or one side does not vary.
    """
    data = sim[sim["measure"] == measure]
    rows = []
    for (model, layer), group in data.groupby(["model", "layer"], sort=True):
        values = group.set_index("task")["value"]
        for prop in PROPERTIES:
            joined = pd.concat([values, properties[prop]], axis=1, join="inner").dropna()
            x, y = joined.iloc[:, 0].to_numpy(float), joined.iloc[:, 1].to_numpy(float)
            note = ""
            if len(joined) < 3:
                r = p = np.nan
                k = len(joined)
                note = f"only {k} task{'s' if k > 1 else ''} with a defined value" if k else \
                    "no task with a defined value"
            elif np.ptp(x) == 0 or np.ptp(y) == 0:
                r = p = np.nan
                note = "no variation across tasks"
            else:
                r, p = stats.pearsonr(x, y)
            rows.append({"model": model, "layer": layer, "property": prop, "r": float(r), "p_value": float(p),
                         "n_tasks": len(joined), "note": note})
    return pd.DataFrame(rows, columns=["model", "layer", "property", "r", "p_value", "n_tasks", "note"])
