"""Intervals over examples: a delete-a-group jackknife, second-order corrected for the kernel CKAs.

Stage: analysis (pure functions over arrays; reads and writes nothing).

Why not the bootstrap: resampling rows with replacement repeats about 37% of them, and a
repeated row acts as extra diagonal mass in every Gram-based measure (the very bias debiased
HSIC removes): on independent data at n=100, d=1000 the bootstrap put debiased CKA's interval at
[0.89, 0.93] around an estimate of 0.02. A jackknife only ever deletes rows, so every subset is
a genuine sample of distinct examples.

The target of an interval is the mean of the estimator over fresh samples of the same size
(for an unbiased estimator, the population value): the interval is `value +- t * se`, centred
on the estimate, with t the 97.5% point of Student's t with g - 1 degrees of freedom.

Rows are split at random (seeded) into g groups (one row each when n <= g). With theta the
estimate, theta_j the estimate without group j and theta_jk without groups j and k:

    v1 = (g - 1) / g * sum_j (theta_j - mean_j theta_j)^2                 (Tukey; Shao & Tu 1995)
    D_jk = theta - theta_j - theta_k + theta_jk
    v2 = v1 - sum_{j<k} (D_jk - mean D)^2                    (Efron & Stein 1981, second order)

By the Efron-Stein inequality v1 over-estimates the variance of any symmetric statistic in
expectation; the excess is the second-order (pairwise-interaction) part of its ANOVA, which
the squared second differences estimate. That part dominates whenever the first-order part
vanishes: unrelated representations, and the n < d regime of biased CKA, where v1 alone gives
intervals about 1.4x too wide (99.5-100% coverage). The kernel CKAs use v2: every subset is
a sum over one pair of kernels (`_grams.py`), so the g + g(g-1)/2 subsets cost no more than
building the kernels. When v2 is not positive (its two terms are estimates), the interval
falls back to v1 and says so in `ci_method`. The other measures are recomputed from the rows
of each subset (on the n x rank rotation of each side when the measure is rotation invariant),
with g = GENERIC_GROUPS groups and v1 (conservative; `bench/coverage.py` measures by how much).

Above EXACT_MAX_N rows, the standard error is computed on a seeded subsample of m rows and
scaled to n by (m/n)^(a/2), with the rate a in [1, 2] read off the same estimate on a nested
m/2 rows: a fixed root-n scaling (a = 1) over-covered on unrelated representations (100% at
n = 3000), whose estimators shrink like 1/n. Its coverage is measured too.

References: B. Efron and C. Stein, "The jackknife estimate of variance", Ann. Statist. 9, 1981;
J. Shao and D. Tu, "The Jackknife and Bootstrap", Springer 1995, ch. 2.
"""

from __future__ import annotations

import warnings

import numpy as np
from scipy import stats
from threadpoolctl import threadpool_limits

from mossa.analysis._grams import KERNEL_MEASURES, adaptive_rbf_cka, deletion_cka, kernel
from mossa.errors import MossaError
from mossa.similarity import get_measure, row_space_factor

KERNEL_GROUPS = 96  # kernel CKAs: at most this many groups (g(g-1)/2 = 4560 pair deletions)
GENERIC_GROUPS = 24  # other measures: recomputed on each of g subsets
EXACT_MAX_N = 1000  # above this many rows, a subsample of this many, scaled at a measured rate
LEVEL = 0.95


def _groups(n: int, most: int, rng: np.random.Generator) -> tuple[np.ndarray, int]:
    """Each row's group, and the number g of groups that are deleted: g groups of exactly
    ceil(n / most) rows each (row i alone when n <= most), in a seeded order; the n - g * size
    rows left over form group g, which every subset keeps.

    Equal sizes matter: an estimator whose bias depends on n (biased CKA at n < d) would
    otherwise differ between subsets by their size alone, and the jackknife would read that as
    variance (measured: 1.35x the variance of linear CKA at n=500 with groups of 5 and 6).
    """
    if n <= most:
        return np.arange(n), n
    size = -(-n // most)
    g = n // size
    return np.minimum(rng.permutation(n) // size, g), g


def jackknife_variance(theta: float, singles: np.ndarray, pairs: np.ndarray | None = None,
                       pair_index: np.ndarray | None = None) -> tuple[float, str]:
    """Jackknife variance of `theta` from its group-deleted values, and which order was used.

    With `pairs` (the values without each pair of groups, in `pair_index` order) the
    second-order corrected estimate is returned when it is positive; otherwise the first-order one.
    """
    g = len(singles)
    v1 = (g - 1) / g * float(np.sum((singles - singles.mean()) ** 2))
    if pairs is None:
        return v1, "jackknife"
    second = theta - singles[pair_index[:, 0]] - singles[pair_index[:, 1]] + pairs
    v2 = v1 - float(np.sum((second - second.mean()) ** 2))
    if v2 > 0:
        return v2, "jackknife, second order"
    return v1, "jackknife (second-order term exceeded the first; first order)"


def _kernel_layer(measure: str, a: np.ndarray, bs: list[np.ndarray], weights: list[float],
                  rng: np.random.Generator) -> tuple[float, float, int, str]:
    """(estimate, standard error, groups, method) of ``sum_i w_i CKA(a, b_i)`` (a kernel CKA) on one layer, every
    pair with the same deleted groups (NaN where undefined)."""
    kind, debiased = KERNEL_MEASURES[measure]
    groups, g = _groups(len(a), KERNEL_GROUPS, rng)
    every = g + int(groups.max() == g)  # with the kept group, if there are left-over rows
    pair_index = np.stack(np.triu_indices(g, k=1), axis=1)  # never the kept group
    if kind == "rbf":
        values = sum(w * adaptive_rbf_cka(a, b, groups, every, pair_index, deleted=g) for b, w in zip(bs, weights))
    else:
        K = kernel(a, kind)
        values = sum(w * deletion_cka(K, kernel(b, kind), groups, every, pair_index, debiased, deleted=g)
                     for b, w in zip(bs, weights))
    theta, singles, pairs = values[0], values[1:1 + g], values[1 + g:]
    if not np.all(np.isfinite(values)):
        return np.nan, np.nan, g, ""
    variance, method = jackknife_variance(theta, singles, pairs, pair_index)
    return theta, np.sqrt(variance), g, method


def _generic_layer(measure: str, a: np.ndarray, bs: list[np.ndarray], weights: list[float],
                   rng: np.random.Generator) -> tuple[float, float, int, str]:
    """(estimate, standard error, groups, method) of any registered measure between a and bs[0] on one layer."""
    func = get_measure(measure)
    b = bs[0]
    if func.rotation_invariant:  # the same values on n x rank rotations, much cheaper when n < d
        a, b = row_space_factor(a), row_space_factor(b)
    groups, g = _groups(len(a), GENERIC_GROUPS, rng)
    values = np.empty(g + 1)
    for j in range(-1, g):
        rows = np.flatnonzero(groups != j)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                values[j + 1] = func(a[rows], b[rows]).value
        except MossaError:
            values[j + 1] = np.nan
    if not np.all(np.isfinite(values)):
        return np.nan, np.nan, g, ""
    variance, method = jackknife_variance(values[0], values[1:])
    return values[0], np.sqrt(variance), g, method


def _rate(se_m: float, se_half: float) -> float:
    """The exponent a of var ~ m^-a from the standard errors at m and m/2 rows, within [1, 2]: 1 for
    an estimator whose spread shrinks like 1/sqrt(m), 2 for one that shrinks like 1/m (a degenerate
    U-statistic: unrelated representations); outside that range the two estimates are noise."""
    if not (se_m > 0 and se_half > 0):
        return 1.0
    return float(min(2.0, max(1.0, 2.0 * np.log2(se_half / se_m))))


def example_intervals(measure: str, A: np.ndarray, B: np.ndarray, *, rng: np.random.Generator,
                      values: list[float] | None = None) -> list[tuple[float, float, str]]:
    """(ci_low, ci_high, ci_method) per layer of `measure` between stacks A, B [layers, n, d].

    Intervals are centred on `values` (the table's estimates) when given; a layer whose
    estimate or any jackknife subset is undefined gets NaN and an empty method. Above
    EXACT_MAX_N rows, the standard error of a seeded subsample of m = EXACT_MAX_N rows is scaled
    to n by (m/n)^(a/2), the rate a read off the same estimate on a nested m/2 rows (`_rate`).
    """
    return contrast_intervals(measure, A, [B], [1.0], rng=rng, values=values)


def contrast_intervals(measure: str, A: np.ndarray, Bs: list[np.ndarray], weights: list[float], *,
                       rng: np.random.Generator, values: list[float] | None = None
                       ) -> list[tuple[float, float, str]]:
    """(ci_low, ci_high, ci_method) per layer of the contrast ``sum_i w_i measure(A, B_i)`` over stacks
    [layers, n, d] whose rows are the same examples (one B and weight 1: the measure itself).

    One jackknife serves every pair: the same groups of examples are deleted from every representation and
    the contrast is recomputed on each subset, so the interval respects the pairing (what the pairs share
    example by example cancels in the contrast instead of adding up). Several B's need a kernel CKA. Centring,
    undefined layers and the subsampling above EXACT_MAX_N rows are as in `example_intervals`.
    """
    if len(Bs) > 1 and measure not in KERNEL_MEASURES:
        raise MossaError(f"contrast_intervals: a contrast of several pairs needs a kernel CKA "
                         f"({', '.join(KERNEL_MEASURES)}), got {measure!r}")
    n = A.shape[1]
    m = min(n, EXACT_MAX_N)
    order = rng.permutation(n)[:m] if n > m else None
    half = np.sort(order[:m // 2]) if order is not None else None
    if order is not None:
        A_half, Bs_half = A[:, half], [B[:, half] for B in Bs]
        A, Bs = A[:, np.sort(order)], [B[:, np.sort(order)] for B in Bs]
    layer = _kernel_layer if measure in KERNEL_MEASURES else _generic_layer
    state = rng.bit_generator.state
    out = []
    with threadpool_limits(1, user_api="blas"):  # small products: one BLAS thread is fastest
        for i, a in enumerate(A):
            if values is not None and not np.isfinite(values[i]):
                out.append((np.nan, np.nan, ""))
                continue
            rng.bit_generator.state = state  # the same groups at every layer
            theta, se, g, method = layer(measure, a, [B[i] for B in Bs], weights, rng)
            if not method:
                out.append((np.nan, np.nan, ""))
                continue
            if order is not None:
                _, se_half, _, _ = layer(measure, A_half[i], [B[i] for B in Bs_half], weights, rng)
                rate = _rate(se, se_half)
                se *= (m / n) ** (rate / 2)
                method += f", on {m} of {n} rows, scaled by (m/n)^({rate:.2f}/2)"
            centre = theta if values is None else values[i]
            width = stats.t.ppf(0.5 + LEVEL / 2, g - 1) * se
            out.append((centre - width, centre + width, method))
    return out
