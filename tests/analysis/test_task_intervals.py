import numpy as np
import pandas as pd
import pytest
from scipy import stats

from mossa.analysis._task_intervals import MIN_COVERAGE, TOO_FEW, median_interval, median_over_tasks


def _table(pairs):
    return pd.DataFrame([{"task": f"t{t}", "cluster": cluster, "model": "base", "layer": 1, "measure": "linear_cka",
                          "value": v, "ci_low": v - 0.1, "ci_high": v + 0.1} for t, (cluster, v) in enumerate(pairs)])


def test_median_over_tasks_gives_an_interval_only_where_it_covers():
    sim = _table([("A", 0.2), ("A", 0.4), ("A", 0.9), ("B", 0.5), ("B", 0.3), ("B", 0.1)])
    overall = median_over_tasks(sim, n_boot=500, seed=0, by_cluster=False).iloc[0]
    assert overall["median"] == np.median([0.2, 0.4, 0.9, 0.5, 0.3, 0.1]) and overall["ci_source"] == "tasks"
    assert (overall["ci_low"], overall["ci_high"]) == (0.1, 0.9) and overall["ci_coverage"] == 1 - 2 / 2**6
    per = median_over_tasks(sim, n_boot=500, seed=0, by_cluster=True).set_index("group")
    assert per.loc["A", "median"] == 0.4 and per.loc["A", "ci_source"] == TOO_FEW  # 3 tasks: min-max covers 0.75
    assert np.isnan(per.loc["A", "ci_low"]) and per.loc["A", "ci_coverage"] == 0.75
    one = median_over_tasks(_table([("A", 0.2), ("A", 0.4), ("B", 0.5)]), n_boot=500, seed=0, by_cluster=True)
    one = one.set_index("group")
    assert one.loc["B", "ci_source"] == TOO_FEW and np.isnan(one.loc["B", "ci_low"])  # no switch to examples
    none = median_over_tasks(sim, n_boot=0, seed=0, by_cluster=False).iloc[0]  # the setting for no intervals
    assert none["median"] == overall["median"] and np.isnan(none["ci_low"]) and none["ci_source"] == "none"


def test_median_interval_coverage_is_exact_and_withheld_below_the_minimum():
    for n, want in ((2, 0.5), (3, 0.75), (4, 0.875)):
        lo, hi, coverage = median_interval(np.arange(n, dtype=float))
        assert np.isnan(lo) and np.isnan(hi) and coverage == want < MIN_COVERAGE
    lo, hi, coverage = median_interval(np.arange(12, dtype=float))
    assert (lo, hi) == (2.0, 9.0) and coverage == pytest.approx(1 - 2 * stats.binom.cdf(2, 12, 0.5))


@pytest.mark.parametrize("population", ["normal", "t3", "lognormal"])
@pytest.mark.parametrize("n", [5, 12])
def test_median_interval_covers_the_population_median_as_stated(population, n):
    """Simulated: the share of intervals holding the population median is the stated coverage (within
    Monte Carlo error), for symmetric, heavy-tailed and skewed task populations alike."""
    rng = np.random.default_rng(n)
    draw = {"normal": lambda size: rng.normal(0.1, 0.05, size), "t3": lambda size: rng.standard_t(3, size),
            "lognormal": lambda size: rng.lognormal(0, 1, size)}[population]
    truth = {"normal": 0.1, "t3": 0.0, "lognormal": 1.0}[population]
    hits, stated = [], None
    for _ in range(4000):
        lo, hi, stated = median_interval(draw(n))
        hits.append(lo <= truth <= hi)
    se = np.sqrt(stated * (1 - stated) / len(hits))
    assert abs(np.mean(hits) - stated) < 4 * se and stated >= MIN_COVERAGE
