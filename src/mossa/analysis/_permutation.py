"""The null of every value: the measure with one side's examples re-paired at random.

Stage: analysis (pure functions over arrays; reads and writes nothing).

Permuting the rows of one representation keeps each side's own geometry and breaks the pairing
of examples: what two representations with nothing example-specific in common would score at
this n and d. Per layer, K seeded permutations (the same ones at every layer and for every model
and measure of a task) give the null mean, its 95% quantile (for a distance, its 5% quantile:
the bound that 95% of re-pairings are no better than), an add-one p-value
(1 + #{null at least as good}) / (K + 1), whose minimum is 1 / (K + 1), and the score
adjusted for chance, (value - null mean) / (best - null mean): 0 at chance, 1 at identity
(for a similarity in [0, 1], (value - null mean) / (1 - null mean)).

The kernel CKAs cost one gather of an n x n kernel per permutation (a re-pairing changes neither
side's kernel, centring or self-HSIC, only their cross term). Measures that register a batched
null (`mossa.similarity.register_permuted`) use it, the others are recomputed (on the n x rank
rotation of each side when they are rotation invariant); either way, they use the first
GENERIC_PERMUTATIONS (50) of the K, whose p-values then start at 1/51 (`n_permutations` in the
table says how many). Above NULL_MAX_N rows, the
value and its null are both computed on a seeded subsample of that many rows (a permutation
test on the subsample is exact; `null_n` says so).

Reference: E. J. G. Pitman, "Significance tests which may be applied to samples from any
populations", JRSS Suppl. 4, 1937; B. Phipson and G. K. Smyth, "Permutation p-values should
never be zero", Stat. Appl. Genet. Mol. Biol. 9, 2010.
"""

from __future__ import annotations

import numpy as np
from threadpoolctl import threadpool_limits

from mossa.analysis._grams import KERNEL_MEASURES, kernel
from mossa.similarity import get_measure, row_space_factor

NULL_MAX_N = 2000
GENERIC_PERMUTATIONS = 50  # measures recomputed per permutation use the first 50 (p >= 1/51)
NULL_COLUMNS = ["null_mean", "null_q95", "p_value", "adjusted", "n_permutations", "null_n", "null_strata"]


def permutations(n: int, k: int, rng: np.random.Generator, groups: np.ndarray | None = None) -> np.ndarray:
    """K seeded permutations of n rows [K, n]; with `groups` [n], each row moves only within its group
    (the same draws as without groups when there is one group)."""
    order = rng.random((k, n))
    if groups is None:
        return np.argsort(order, axis=1)
    groups = np.asarray(groups)
    if groups.shape != (n,):
        raise ValueError(f"groups: expected one label per row ({n}), got shape {groups.shape}")
    out = np.empty((k, n), dtype=np.int64)
    for label in np.unique(groups):
        rows = np.flatnonzero(groups == label)
        out[:, rows] = rows[np.argsort(order[:, rows], axis=1)]
    return out


def n_strata(groups: np.ndarray | None) -> int:
    """How many groups the re-pairing stays within (1: every row may meet every other)."""
    return 1 if groups is None else len(np.unique(groups))


def _kernel_null(measure: str, a: np.ndarray, b: np.ndarray, perms: np.ndarray) -> tuple[float, np.ndarray]:
    """(value, null values [K]) of a kernel CKA from the two kernels."""
    kind, debiased = KERNEL_MEASURES[measure]
    K, L = kernel(a, kind), kernel(b, kind)
    n = len(K)
    if debiased:
        np.fill_diagonal(K, 0.0)
        np.fill_diagonal(L, 0.0)
        rk, rl = K.sum(axis=1), L.sum(axis=1)

        def song(cross, ones_kl, sk, sl):
            return cross + sk * sl / ((n - 1) * (n - 2)) - 2.0 / (n - 2) * ones_kl

        kk, ll = song((K * K).sum(), rk @ rk, rk.sum(), rk.sum()), song((L * L).sum(), rl @ rl, rl.sum(), rl.sum())
        value_of = lambda cross, p: song(cross, rk @ rl[p], rk.sum(), rl.sum())  # noqa: E731
    else:
        K = K - K.mean(axis=0) - K.mean(axis=1)[:, None] + K.mean()
        L = L - L.mean(axis=0) - L.mean(axis=1)[:, None] + L.mean()
        kk, ll = (K * K).sum(), (L * L).sum()
        value_of = lambda cross, p: cross  # noqa: E731
    if not (kk > 0 and ll > 0):
        return np.nan, np.full(len(perms), np.nan)
    norm = np.sqrt(kk * ll)
    value = value_of((K * L).sum(), np.arange(n)) / norm
    out = np.empty(len(perms))
    chunk = max(1, 2**22 // (n * n))
    for start in range(0, len(perms), chunk):
        p = perms[start:start + chunk]
        cross = np.einsum("ij,kij->k", K, L[p[:, :, None], p[:, None, :]])
        out[start:start + chunk] = [value_of(c, q) for c, q in zip(cross, p)]
    return value, out / norm


def _registered_null(measure: str, a: np.ndarray, b: np.ndarray, perms: np.ndarray) -> tuple[float, np.ndarray]:
    m = get_measure(measure)
    perms = perms[:GENERIC_PERMUTATIONS]
    if m.permuted is None and m.rotation_invariant:
        a, b = row_space_factor(a), row_space_factor(b)
    values = m.null_values(a, b, np.concatenate([np.arange(a.shape[0])[None], perms]))
    return values[0], values[1:]


def summarize_null(measure: str, value: float, null: np.ndarray) -> dict:
    """Null mean, 95% bound, add-one p-value and chance-adjusted score of `value` against `null`."""
    m = get_measure(measure)
    finite = null[np.isfinite(null)]
    if not np.isfinite(value) or len(finite) < len(null):
        return {"null_mean": np.nan, "null_q95": np.nan, "p_value": np.nan, "adjusted": np.nan,
                "n_permutations": len(null)}
    mean = float(finite.mean())
    if m.higher_is_similar:
        bound, as_good = np.quantile(finite, 0.95), int(np.sum(finite >= value))
    else:
        bound, as_good = np.quantile(finite, 0.05), int(np.sum(finite <= value))
    span = m.best_value - mean
    return {"null_mean": mean, "null_q95": float(bound), "p_value": (1 + as_good) / (len(null) + 1),
            "adjusted": (value - mean) / span if span != 0 else np.nan, "n_permutations": len(null)}


def permutation_nulls(measure: str, A: np.ndarray, B: np.ndarray, values: list[float], *, perms: np.ndarray,
                      rng: np.random.Generator, groups: np.ndarray | None = None) -> list[dict]:
    """Per layer of stacks A, B [layers, n, d]: the null summary (NULL_COLUMNS) of `values`.

    `perms` [K, n] re-pair B's rows (drawn within `groups` [n] when given: `null_strata` says how many).
    Above NULL_MAX_N rows, value and null come from one seeded subsample (`null_n`) and `perms` is
    redrawn for it, within the same groups.
    """
    n = A.shape[1]
    strata = {"null_strata": n_strata(groups)}
    if not len(perms):
        return [dict.fromkeys(NULL_COLUMNS, np.nan) | {"n_permutations": 0, "null_n": n} | strata for _ in values]
    if n > NULL_MAX_N:
        pick = np.sort(rng.choice(n, size=NULL_MAX_N, replace=False))
        sub = None if groups is None else np.asarray(groups)[pick]
        A, B, perms = A[:, pick], B[:, pick], permutations(NULL_MAX_N, len(perms), rng, sub)
    compute = _kernel_null if measure in KERNEL_MEASURES else _registered_null
    k = len(perms) if measure in KERNEL_MEASURES else min(len(perms), GENERIC_PERMUTATIONS)
    out = []
    with threadpool_limits(1, user_api="blas"):  # small products: one BLAS thread is fastest
        for a, b, value in zip(A, B, values):
            if not np.isfinite(value):
                out.append(dict.fromkeys(NULL_COLUMNS, np.nan) | {"n_permutations": k, "null_n": A.shape[1]}
                           | strata)
                continue
            sub_value, null = compute(measure, a, b, perms)
            out.append(summarize_null(measure, value if n <= NULL_MAX_N else sub_value, null)
                       | {"null_n": A.shape[1]} | strata)
    return out
