import numpy as np
import pandas as pd

from mossa.analysis._bootstrap import median_over_tasks


def test_median_over_tasks_and_one_task_clusters():
    rows = []
    for t, (cluster, v) in enumerate([("A", 0.2), ("A", 0.4), ("A", 0.9), ("B", 0.5)]):
        rows.append({"task": f"t{t}", "cluster": cluster, "model": "base", "layer": 1, "measure": "linear_cka",
                     "value": v, "ci_low": v - 0.1, "ci_high": v + 0.1})
    sim = pd.DataFrame(rows)
    overall = median_over_tasks(sim, n_boot=500, seed=0, by_cluster=False).iloc[0]
    assert overall["median"] == np.median([0.2, 0.4, 0.9, 0.5]) and overall["ci_source"] == "tasks"
    assert overall["ci_low"] <= overall["median"] <= overall["ci_high"]
    per = median_over_tasks(sim, n_boot=500, seed=0, by_cluster=True).set_index("group")
    assert per.loc["B", "ci_source"] == "examples" and per.loc["B", "ci_low"] == 0.4
    assert per.loc["A", "median"] == 0.4
    none = median_over_tasks(sim, n_boot=0, seed=0, by_cluster=False).iloc[0]  # no resamples: no interval
    assert none["median"] == overall["median"] and np.isnan(none["ci_low"]) and none["ci_source"] == "none"
