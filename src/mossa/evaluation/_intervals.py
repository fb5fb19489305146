"""Intervals over examples for task metrics and for paired gains.

Stage: evaluation (pure functions over `MetricScores`; reads and writes nothing).

- a share of 0/1 outcomes (accuracy without ties, exact match): the Wilson score interval, which
  stays inside [0, 1] and keeps its coverage near 0/n and n/n, where it is still informative
  (48/48 gives [0.926, 1]), so an all-correct share is not treated as degenerate;
- a mean of bounded scores (accuracy with 1/k ties, ROUGE-L), a corpus statistic (BLEU, chrF)
  or a ratio estimator (NLL per token): a seeded bootstrap over examples of the statistic
  itself, resampling rows of its per-example statistics;
- a paired gain (control minus base on the same examples): the same bootstrap, the same
  resampled rows for both models.

Degenerate cases are reported in the method name, never hidden or clamped: a statistic that
cannot vary under resampling (identical examples) gives [v, v] ("constant"); zero examples give
NaN ("no examples"); ``n_boot=0`` gives NaN ("none"); where a requested BCa interval is
undefined (e.g. every resample on one side of the estimate) the percentile interval of the same
resamples is used and so named.

Coverage of the nominal 95% intervals, measured by ``python bench/metric_coverage.py``
(2000 replicates per case, n_boot 200 as in the tables, standard error about 0.005), for the
default percentile bootstrap and, in brackets, BCa on the same resamples:

==========================================  ===============  ===============
case                                        n = 48           n = 96
==========================================  ===============  ===============
Bernoulli p=0.5, Wilson                     0.938            0.946
Bernoulli p=0.8, Wilson                     0.954            0.952
Bernoulli p=0.95, Wilson                    0.975            0.944
ties {0, 1/2, 1}, mean                      0.934 (0.934)    0.929 (0.934)
Beta(2, 5) score, mean                      0.924 (0.925)    0.938 (0.938)
ROUGE-like (zeros, ones, Beta), mean        0.940 (0.945)    0.934 (0.939)
ratio of sums (NLL per token)               0.921 (0.918)    0.942 (0.936)
corpus BLEU                                 0.918 (0.919)    0.937 (0.941)
corpus chrF                                 0.936 (0.940)    0.934 (0.930)
paired gain 0.60 -> 0.75, rho 0.4           0.924 (0.925)    0.934 (0.935)
paired gain 0.70 -> 0.70 (no gain)          0.949 (0.937)    0.950 (0.944)
paired chrF gain                            0.932 (0.931)    0.939 (0.934)
==========================================  ===============  ===============

With no gain, ci_low > 0 (a false "learned") in 2.8% (n = 48) and 2.6% (n = 96) of samples.
BCa is no better than the percentile interval anywhere (all differences within about two
standard errors), so the simpler percentile interval is the default. Bootstraps undercover a
little at n = 48, most for the skewed ratio and BLEU (about 0.92 for a nominal 0.95), as a
bootstrap of a nonlinear statistic does at that size: read their intervals as slightly narrow.
"""

from __future__ import annotations

import warnings
from typing import NamedTuple

import numpy as np
from scipy import stats as sps

from mossa.errors import MossaError
from mossa.evaluation._metrics import MetricScores

BOOTSTRAP_METHOD = "percentile"


class Interval(NamedTuple):
    """A confidence interval and the method that produced it."""

    low: float
    high: float
    method: str


def wilson_interval(successes: int, n: int, *, confidence: float = 0.95) -> tuple[float, float]:
    """The Wilson score interval for `successes` out of `n` 0/1 outcomes (NaN for n = 0)."""
    _check_confidence(confidence)
    if n == 0:
        return float("nan"), float("nan")
    z = sps.norm.ppf(0.5 + confidence / 2)
    k, z2 = successes, z * z
    root = z / 2 if k in (0, n) else np.sqrt(k * (n - k) / n + z2 / 4)  # z / 2 exactly at 0/n and n/n
    centre, half = k + z2 / 2, z * root
    return float((centre - half) / (n + z2)), float((centre + half) / (n + z2))


def metric_interval(scores: MetricScores, *, n_boot: int, rng, confidence: float = 0.95,
                    method: str = BOOTSTRAP_METHOD) -> Interval:
    """The interval over examples of one metric: Wilson for a share, a bootstrap otherwise.

    Parameters
    ----------
    scores : MetricScores
        The metric's per-example statistics.
    n_boot : int
        Bootstrap resamples; 0 gives no interval (NaN, method "none"), also for Wilson.
    rng : numpy.random.Generator or int
        The bootstrap's random source (a seed for reproducibility).
    confidence : float, default=0.95
    method : {"percentile", "BCa"}, default="percentile"
        The bootstrap interval (BCa measured no better; see the module docstring).
    """
    _check_args(n_boot, confidence, method)
    n = scores.n_examples
    if n == 0:
        return Interval(float("nan"), float("nan"), "no examples")
    if n_boot == 0:
        return Interval(float("nan"), float("nan"), "none")
    if scores.kind == "share":
        return Interval(*wilson_interval(round(float(scores.stats[:, 0].sum())), n, confidence=confidence), "wilson")
    value = scores.value
    if _all_rows_equal(scores.stats):
        return Interval(value, value, "constant")

    def statistic(idx: np.ndarray, axis: int = -1) -> np.ndarray:
        return _resampled(scores, idx)

    return _bootstrap(statistic, value, n, n_boot, rng, confidence, method)


def paired_gain_interval(base: MetricScores, control: MetricScores, *, n_boot: int, rng, confidence: float = 0.95,
                         method: str = BOOTSTRAP_METHOD) -> Interval:
    """The interval of control minus base for one metric on the same examples.

    A paired bootstrap: every resample draws the same examples for both models, so what the
    two share (easy and hard examples) cancels. For a mean this is the bootstrap of the mean of
    per-example differences; for a corpus statistic, of the difference of the two statistics.
    """
    _check_args(n_boot, confidence, method)
    if base.name != control.name or not np.array_equal(base.rows, control.rows):
        raise MossaError(f"paired gain: expected one metric on the same rows, got {base.name} on "
                         f"{base.n_examples} rows and {control.name} on {control.n_examples}; "
                         "restrict both to their shared rows first")
    n = base.n_examples
    if n == 0:
        return Interval(float("nan"), float("nan"), "no examples")
    if n_boot == 0:
        return Interval(float("nan"), float("nan"), "none")
    gain = control.value - base.value
    if base.kind in ("share", "mean") and control.kind in ("share", "mean"):
        diff = control.stats[:, 0] - base.stats[:, 0]
        if np.all(diff == diff[0]):
            return Interval(gain, gain, "constant")

        def statistic(idx: np.ndarray, axis: int = -1) -> np.ndarray:
            return diff[idx].mean(axis=-1)
    else:
        if _all_rows_equal(np.hstack([base.stats, control.stats])):
            return Interval(gain, gain, "constant")

        def statistic(idx: np.ndarray, axis: int = -1) -> np.ndarray:
            return _resampled(control, idx) - _resampled(base, idx)

    return _bootstrap(statistic, gain, n, n_boot, rng, confidence, method)


def gain_share_interval(base: MetricScores, full: MetricScores, part: MetricScores, *, n_boot: int, rng,
                        confidence: float = 0.95) -> tuple[float, Interval]:
    """The share of `full`'s gain over `base` that `part` keeps, (part - base) / (full - base), with a
    paired percentile bootstrap: every resample draws the same examples for the three models, so what they
    share cancels in both differences. Lower-is-better metrics need no sign change (both differences flip).

    The caller decides whether the full gain is large enough to share out; a resample whose full gain is 0
    gives an infinite share, which the percentiles keep (an interval reaching +-inf says the share is not
    determined by these examples).
    """
    _check_args(n_boot, confidence, "percentile")
    if not (base.name == full.name == part.name and np.array_equal(base.rows, full.rows)
            and np.array_equal(base.rows, part.rows)):
        raise MossaError(f"gain share: expected one metric on the same rows, got {base.name}, {full.name} and "
                         f"{part.name} on {base.n_examples}, {full.n_examples} and {part.n_examples} rows; restrict "
                         "all three to their shared rows first")
    with np.errstate(divide="ignore", invalid="ignore"):
        share = (part.value - base.value) / (full.value - base.value)
    if base.n_examples == 0:
        return float("nan"), Interval(float("nan"), float("nan"), "no examples")
    if n_boot == 0:
        return float(share), Interval(float("nan"), float("nan"), "none")

    def statistic(idx: np.ndarray, axis: int = -1) -> np.ndarray:
        b = _resampled(base, idx)
        with np.errstate(divide="ignore", invalid="ignore"):
            return (_resampled(part, idx) - b) / (_resampled(full, idx) - b)

    return float(share), _bootstrap(statistic, float(share), base.n_examples, n_boot, rng, confidence, "percentile")


def _resampled(scores: MetricScores, idx: np.ndarray) -> np.ndarray:
    """The metric on resamples of its examples; `idx` has shape (..., n) of row positions."""
    summed = scores.stats[idx].sum(axis=-2)  # (..., k)
    return scores.score(summed.reshape(-1, summed.shape[-1])).reshape(idx.shape[:-1])


def _bootstrap(statistic, value: float, n: int, n_boot: int, rng, confidence: float, method: str) -> Interval:
    """scipy's bootstrap over example positions; "constant" when no resample differs from the estimate."""
    kwargs = {"vectorized": True, "axis": -1, "confidence_level": confidence}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scipy warns on degenerate BCa; handled below
        res = sps.bootstrap((np.arange(n),), statistic, n_resamples=n_boot, method=method, rng=rng, **kwargs)
        dist = res.bootstrap_distribution
        if np.all(dist == value):
            return Interval(value, value, "constant")
        low, high = res.confidence_interval
        label = f"bootstrap {method}"
        if not (np.isfinite(low) and np.isfinite(high)) and method == "BCa" and np.all(np.isfinite(dist)):
            res = sps.bootstrap((np.arange(n),), statistic, n_resamples=0, method="percentile",
                                bootstrap_result=res, rng=rng, **kwargs)
            low, high = res.confidence_interval
            label = "bootstrap percentile (BCa undefined)"
    return Interval(float(low), float(high), label)


def _all_rows_equal(stats: np.ndarray) -> bool:
    return bool(np.all(stats == stats[0]))


def _check_confidence(confidence: float) -> None:
    if not 0 < confidence < 1:
        raise MossaError(f"confidence: expected a level between 0 and 1, got {confidence!r}; use e.g. 0.95")


def _check_args(n_boot: int, confidence: float, method: str) -> None:
    if method not in ("percentile", "BCa"):
        raise MossaError(f"method: expected 'percentile' or 'BCa', got {method!r}; use 'percentile' (the default)")
    if isinstance(n_boot, bool) or not isinstance(n_boot, (int, np.integer)) or n_boot < 0:
        raise MossaError(f"n_boot: expected a whole number >= 0, got {n_boot!r}; use e.g. 200 (0 for no intervals)")
    _check_confidence(confidence)
