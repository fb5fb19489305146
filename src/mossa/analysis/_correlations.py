"""Fig 6: per layer, Pearson correlation across tasks between CKA(M, C_t) and task properties.

Stage: analysis (reads the similarity table and per-task properties recorded in study.json).

One figure tests every (model, layer, property) at once, so its p values are corrected together
(Benjamini-Hochberg, `p_adjusted`): uncorrected, dozens of tests at 0.05 mark some layer by
chance. A correlation across fewer than `MIN_TASKS` tasks is not computed: with 3 tasks r has
1 degree of freedom and |r| near 1 is common under no association.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import stats

PROPERTIES = {"flesch_kincaid_grade": "Flesch-Kincaid grade of the inputs",
              "coleman_liau_index": "Coleman-Liau index of the inputs",
              "train_size": "training examples its control saw"}
MIN_TASKS = 5  # fewest tasks a correlation across tasks is computed on
ALPHA = 0.05  # false discovery rate at which the figure marks a correlation
CORRELATION_COLUMNS = ["model", "layer", "property", "r", "p_value", "p_adjusted", "n_tasks", "reason"]


def _undefined_reason(x: np.ndarray, y: np.ndarray, measure: str, prop: str) -> str:
    """Why no correlation is computed on these paired values ("" when one is)."""
    k = len(x)
    if k < MIN_TASKS:
        counted = f"only {k} task{'s' if k != 1 else ''}" if k else "no task"
        return f"{counted} with a defined value, fewer than the {MIN_TASKS} a correlation across tasks needs"
    if np.ptp(x) == 0:
        return f"{measure} is the same for every task"
    if np.ptp(y) == 0:
        return f"{prop} is the same for every task"
    return ""


CORRELATED_MODELS = ("base", "experimental", "heldout")  # not the ceiling: a reference, not a finding


def correlations(sim: pd.DataFrame, properties: pd.DataFrame, *, measure: str = "linear_cka") -> pd.DataFrame:
    """Pearson r across tasks, per model, layer and property, with BH-adjusted p values.

    Parameters
    ----------
    sim : DataFrame
        The long similarity table.
    properties : DataFrame
        One row per task (index = task name) with the columns of `PROPERTIES`.
    measure : str
        The similarity measure correlated with the properties.

    Returns
    -------
    DataFrame with columns `CORRELATION_COLUMNS`: `p_value` is the two-sided p of r and
    `p_adjusted` its Benjamini-Hochberg adjustment over every defined test of the table (all
    of B, E and E'; layers and properties); significance is `p_adjusted < ALPHA`. `r`, `p_value` and
    `p_adjusted` are NaN, with `reason`, where fewer than `MIN_TASKS` tasks have a defined value
    (`n_tasks` says how many) or one side does not vary across tasks.
    """
    data = sim[(sim["measure"] == measure) & sim["model"].isin(CORRELATED_MODELS)]
    rows = []
    for (model, layer), group in data.groupby(["model", "layer"], sort=True):
        values = group.set_index("task")["value"]
        for prop in PROPERTIES:
            joined = pd.concat([values, properties[prop]], axis=1, join="inner").dropna()
            x, y = joined.iloc[:, 0].to_numpy(float), joined.iloc[:, 1].to_numpy(float)
            reason = _undefined_reason(x, y, measure, prop)
            r, p = (np.nan, np.nan) if reason else stats.pearsonr(x, y)
            rows.append({"model": model, "layer": layer, "property": prop, "r": float(r), "p_value": float(p),
                         "n_tasks": len(joined), "reason": reason})
    table = pd.DataFrame(rows, columns=CORRELATION_COLUMNS)
    tested = table["p_value"].notna().to_numpy()
    adjusted = np.full(len(table), np.nan)
    if tested.any():
        adjusted[tested] = stats.false_discovery_control(table["p_value"].to_numpy(float)[tested], method="bh")
    table["p_adjusted"] = adjusted
    return table
