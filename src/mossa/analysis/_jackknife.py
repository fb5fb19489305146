"""Intervals over examples: a delete-a-group jackknife, second-order corrected for the kernel CKAs.

Stage: analysis (pure functions over arrays; reads and writes nothing).

Why not the bootstrap: resampling rows with replacement repeats about 37% of them, and a
repeated row acts as extra diagonal mass in every Gram-based measure (the very bias debiased
HSIC removes): on independent data at n=100, d=1000 the bootstrap put debiased CKA's interval at
[0.89, 0.93] around an estimate of 0.02. A jackknife only ever deletes rows, so every subset is
a genuine sample of distinct examples.

The target of an interval is the mean of the estimator over fresh samples of the same size
(for an unbiased estimator, the population value): the interval is `value +- t * se`, centred
on the estimate, with t the 97.5% point of Student's t.

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
with g = GENERIC_GROUPS groups, v1 and t with g - 1 degrees of freedom (conservative;
`bench/coverage.py` measures by how much).

Heavy tails. Hidden states put 30-75% of their variance on one direction whose scores are
heavy-tailed; a few examples then carry the estimate, and its variance estimate is itself skewed
(over samples its standard deviation exceeded its mean, so a typical sample under-states it).
On such populations (`bench/coverage.py`: Student t scores with 3 degrees of freedom) linear and
debiased CKA's intervals covered 0.86-0.91 at the demo's shape; two rules, both read off the data,
bring them to 0.90-0.97:

- t takes the Satterthwaite degrees of freedom of the variance estimate used, 2 v^2 / (g var_j w_j),
  with v = sum_j w_j split into per-group terms (w_j = (g - 1)/g (theta_j - mean)^2 for v1, less
  half of each squared second difference D_jk involving group j for v2): about g for Gaussian
  influence values, a handful when a few groups carry the variance (Satterthwaite 1946);
- when the groups' influence values theta_j - mean are heavy-tailed (kurtosis above
  HEAVY_KURTOSIS) the interval uses v1: the second-order term, dominated by the few extreme
  groups, cancelled v1 almost entirely in some samples (a standard error near 0 with the estimate
  5 or more of them from its mean, in 4% of weakly related pairs), whereas v1 is conservative by
  Efron-Stein under any tails.

Above EXACT_MAX_N rows, the standard error is computed on a seeded subsample of m rows and
scaled to n by (m/n)^(a/2), with the rate a in [1, 2] read off the same estimate (same order)
on a nested m/2 rows: a fixed root-n scaling (a = 1) over-covered on unrelated representations
(100% at n = 3000), whose estimators shrink like 1/n. Its coverage is measured too.

References: B. Efron and C. Stein, "The jackknife estimate of variance", Ann. Statist. 9, 1981;
J. Shao and D. Tu, "The Jackknife and Bootstrap", Springer 1995, ch. 2; F. E. Satterthwaite, "An
approximate distribution of estimates of variance components", Biometrics Bull. 2, 1946.
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
HEAVY_KURTOSIS = 9.0  # influence values' kurtosis above which v1 is used (medians: Gaussian data 3-5, t3 12-40)
SECOND_ORDER = "jackknife, second order"


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


def _degrees_of_freedom(terms: np.ndarray) -> float:
    """Satterthwaite degrees of freedom of the variance estimate sum(terms), one term per group,
    within [1, g - 1]: 2 v^2 / Var(v), with Var(v) read off the spread of the terms."""
    g = len(terms)
    spread = g * float(np.var(terms))
    if spread <= 0:
        return float(g - 1)
    return float(min(g - 1, max(1.0, 2.0 * float(np.sum(terms)) ** 2 / spread)))


def jackknife_variance(theta: float, singles: np.ndarray, pairs: np.ndarray | None = None,
                       pair_index: np.ndarray | None = None, *, first_order: bool = False
                       ) -> tuple[float, float, str]:
    """Jackknife variance of `theta` from its group-deleted values, the degrees of freedom of its t
    quantile, and the method.

    Without `pairs`: v1 with g - 1 degrees of freedom. With `pairs` (the values without each pair of
    groups, in `pair_index` order): the second-order corrected v2 unless `first_order`, v2 is not
    positive, or the influence values are heavy-tailed (kurtosis above HEAVY_KURTOSIS); then v1. Either
    comes with its Satterthwaite degrees of freedom.
    """
    g = len(singles)
    influence = singles - singles.mean()
    terms = (g - 1) / g * influence**2
    v1 = float(terms.sum())
    if pairs is None:
        return v1, float(g - 1), "jackknife"
    squared = float(np.sum(influence**2))
    kurtosis = g * float(np.sum(influence**4)) / squared**2 if squared > 0 else 0.0
    second = theta - singles[pair_index[:, 0]] - singles[pair_index[:, 1]] + pairs
    squares = (second - second.mean()) ** 2
    halves = np.bincount(pair_index.ravel(), weights=np.repeat(squares / 2, 2), minlength=g)
    v2 = v1 - float(squares.sum())
    if first_order or kurtosis > HEAVY_KURTOSIS or v2 <= 0:
        reason = ("first order" if first_order else
                  f"heavy-tailed influence, kurtosis {kurtosis:.0f} > {HEAVY_KURTOSIS:.0f}: first order"
                  if kurtosis > HEAVY_KURTOSIS else "second-order term exceeded the first; first order")
        df = _degrees_of_freedom(terms)
        return v1, df, f"jackknife ({reason}; t with {df:.3g} df)"
    df = _degrees_of_freedom(terms - halves)
    return v2, df, f"{SECOND_ORDER} (t with {df:.3g} df)"


def _kernel_layer(measure: str, a: np.ndarray, bs: list[np.ndarray], weights: list[float],
                  rng: np.random.Generator, first_order: bool = False) -> tuple[float, float, float, str]:
    """(estimate, standard error, degrees of freedom, method) of ``sum_i w_i CKA(a, b_i)`` (a kernel CKA) on
    one layer, every pair with the same deleted groups (NaN where undefined)."""
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
        return np.nan, np.nan, np.nan, ""
    variance, df, method = jackknife_variance(theta, singles, pairs, pair_index, first_order=first_order)
    return theta, np.sqrt(variance), df, method


def _generic_layer(measure: str, a: np.ndarray, bs: list[np.ndarray], weights: list[float],
                   rng: np.random.Generator, first_order: bool = True) -> tuple[float, float, float, str]:
    """(estimate, standard error, degrees of freedom, method) of any registered measure between a and bs[0]
    on one layer (always first order: `first_order` only keeps `_kernel_layer`'s signature)."""
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
        return np.nan, np.nan, np.nan, ""
    variance, df, method = jackknife_variance(values[0], values[1:])
    return values[0], np.sqrt(variance), df, method


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
    example by example cancels in the contrast instead of adding up); the order of the variance and its
    degrees of freedom are read off the contrast's own subset values. Several B's need a kernel CKA. Centring,
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
            theta, se, df, method = layer(measure, a, [B[i] for B in Bs], weights, rng)
            if not method:
                out.append((np.nan, np.nan, ""))
                continue
            if order is not None:  # the nested half at the same order, so the rate compares like with like
                _, se_half, _, _ = layer(measure, A_half[i], [B[i] for B in Bs_half], weights, rng,
                                         first_order=not method.startswith(SECOND_ORDER))
                rate = _rate(se, se_half)
                se *= (m / n) ** (rate / 2)
                method += f", on {m} of {n} rows, scaled by (m/n)^({rate:.2f}/2)"
            centre = theta if values is None else values[i]
            width = stats.t.ppf(0.5 + LEVEL / 2, df) * se
            out.append((centre - width, centre + width, method))
    return out
