"""Bootstrap confidence intervals: over examples for every table value, over tasks for medians.

Stage: analysis (pure functions over arrays and tables; reads and writes nothing).

Over examples: rows are resampled with replacement (the same rows for both models, so pairs
stay matched) and the statistic recomputed; the interval is the 2.5-97.5 percentile range.
For the kernel CKAs (linear, debiased, RBF) the kernel matrices are built once and a
resample is a vector of row counts applied to them, so hundreds of resamples cost a few
[R, n] x [n, n] products and memory stays at a few n x n matrices; the RBF bandwidth is held at its full-sample value (a conditional bootstrap).
Other measures are recomputed from the resampled rows by their registered function.

Over tasks: for a per-layer median across tasks, tasks are resampled with replacement.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd

from mossa.errors import MossaError
from mossa.similarity import get_measure
from mossa.similarity._kernel import squared_distances

_FAST = {"linear_cka": ("linear", False), "debiased_cka": ("linear", True), "rbf_cka": ("rbf", False)}
_RBF_SIGMA_FRAC = 0.5  # rbf_cka's default bandwidth fraction


def _kernel(X: np.ndarray, kind: str) -> np.ndarray:
    """Uncentred kernel matrix [n, n] in float64 (centring happens per resample)."""
    X = np.asarray(X, dtype=np.float64)
    X = X - X.mean(axis=0)
    if kind == "linear":
        return X @ X.T
    D = squared_distances(X)
    median = np.median(np.sqrt(D[np.triu_indices(len(X), k=1)]))
    if median == 0:
        return np.zeros_like(D)
    sigma = _RBF_SIGMA_FRAC * median
    return np.exp(-D / (2.0 * sigma * sigma))


def _weighted_hsic(K: np.ndarray, L: np.ndarray, W: np.ndarray) -> np.ndarray:
    """Biased HSIC (up to a common factor) of each resample, from its row counts W [R, n].

    A resample that takes row i w_i times has the double-centred Gram sum
    sum_ij w_i w_j Kc_ij L_ij = w'(K*L)w - (2/N) (w*Kw).(Lw) + (w'Kw)(w'Lw)/N^2 with N = sum(w),
    which costs three [R, n] x [n, n] products instead of building R centred [n, n] matrices.
    """
    N = W.sum(axis=1)  # [R]
    KW, LW = W @ K, W @ L  # [R, n] (K, L symmetric)
    quad = np.einsum("rn,rn->r", W @ (K * L), W)
    cross = np.einsum("rn,rn->r", W * KW, LW)
    s, t = np.einsum("rn,rn->r", W, KW), np.einsum("rn,rn->r", W, LW)
    return quad - 2.0 * cross / N + s * t / N**2


def _weighted_song(K: np.ndarray, L: np.ndarray, W: np.ndarray) -> np.ndarray:
    """Song et al.'s unbiased HSIC (times N(N-3)) of each resample, from its row counts W [R, n].

    The resample's Gram has a zero diagonal but keeps the off-diagonal copies of a repeated
    row, as indexing the full Gram would: every sum over p != q is the weighted sum over all
    (i, j) minus the weighted diagonal, so three [R, n] x [n, n] products give it all.
    """
    N = W.sum(axis=1)
    dk, dl = np.diag(K), np.diag(L)
    KW, LW = W @ K - dk, W @ L - dl  # row sums of the zero-diagonal resampled Grams, per original row
    trace = np.einsum("rn,rn->r", W @ (K * L), W) - W @ (dk * dl)
    ones_k = np.einsum("rn,rn->r", W, KW)
    ones_l = np.einsum("rn,rn->r", W, LW)
    ones_kl = np.einsum("rn,rn->r", W * KW, LW)
    return trace + ones_k * ones_l / ((N - 1) * (N - 2)) - 2.0 / (N - 2) * ones_kl


def _gram_cka(K: np.ndarray, L: np.ndarray, idx: np.ndarray, debiased: bool) -> np.ndarray:
    """CKA of each resample [R] from full-sample kernels and resample indices [R, n]."""
    W = np.zeros(idx.shape, dtype=np.float64)
    np.add.at(W, (np.arange(len(idx))[:, None], idx), 1.0)  # row counts [R, n]
    hsic = _weighted_song if debiased else _weighted_hsic
    kl, kk, ll = hsic(K, L, W), hsic(K, K, W), hsic(L, L, W)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where((kk > 0) & (ll > 0), kl / np.sqrt(np.abs(kk * ll)), np.nan)


def _percentiles(values: np.ndarray) -> tuple[float, float]:
    """2.5 and 97.5 percentiles of the finite resample values (NaN when fewer than half are finite)."""
    finite = values[np.isfinite(values)]
    if len(finite) < max(2, len(values) // 2):
        return float("nan"), float("nan")
    lo, hi = np.percentile(finite, [2.5, 97.5])
    return float(lo), float(hi)


def example_bootstrap(measure: str, A: np.ndarray, B: np.ndarray, *, n_boot: int,
                      rng: np.random.Generator) -> list[tuple[float, float]]:
    """(ci_low, ci_high) per layer of `measure` between stacks A, B [layers, n, d].

    Layers whose full-sample value is undefined still get resampled; they come out NaN.
    """
    n = A.shape[1]
    idx = rng.integers(0, n, size=(n_boot, n))
    out = []
    if measure in _FAST:
        kind, debiased = _FAST[measure]
        if debiased and n < 4:
            return [(float("nan"), float("nan"))] * len(A)
        for a, b in zip(A, B):
            out.append(_percentiles(_gram_cka(_kernel(a, kind), _kernel(b, kind), idx, debiased)))
        return out
    func = get_measure(measure)
    for a, b in zip(A, B):
        values = np.empty(n_boot)
        for r, rows in enumerate(idx):
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    values[r] = func(a[rows], b[rows]).value
            except MossaError:
                values[r] = np.nan
        out.append(_percentiles(values))
    return out


def median_over_tasks(sim: pd.DataFrame, *, n_boot: int, seed: int, by_cluster: bool) -> pd.DataFrame:
    """Per-layer median over tasks with a bootstrap-over-tasks 95% interval.

    With `by_cluster`, one median per cluster; a cluster of one task has no spread over tasks,
    so its interval is that task's example-bootstrap interval (`ci_source` says which). With
    `n_boot` 0 there are no intervals (NaN, `ci_source` "none").
    """
    rng = np.random.default_rng(seed)
    keys = ["measure", "model", "layer"] + (["cluster"] if by_cluster else [])
    rows = []
    for key, group in sim.groupby(keys, sort=True):
        values = group["value"].to_numpy(dtype=float)
        finite = values[np.isfinite(values)]
        row = dict(zip(keys, key), group=key[3] if by_cluster else "all", n_tasks=len(finite))
        if not len(finite):
            rows.append({**row, "median": np.nan, "ci_low": np.nan, "ci_high": np.nan, "ci_source": "undefined"})
            continue
        median = float(np.median(finite))
        if len(finite) == 1:
            only = group[np.isfinite(values)].iloc[0]
            rows.append({**row, "median": median, "ci_low": only.get("ci_low", np.nan),
                         "ci_high": only.get("ci_high", np.nan), "ci_source": "examples"})
            continue
        if n_boot == 0:
            rows.append({**row, "median": median, "ci_low": np.nan, "ci_high": np.nan, "ci_source": "none"})
            continue
        draws = np.median(finite[rng.integers(0, len(finite), size=(n_boot, len(finite)))], axis=1)
        lo, hi = np.percentile(draws, [2.5, 97.5])
        rows.append({**row, "median": median, "ci_low": float(lo), "ci_high": float(hi), "ci_source": "tasks"})
    columns = ["group", "measure", "model", "layer", "median", "ci_low", "ci_high", "n_tasks", "ci_source"]
    return pd.DataFrame(rows).reindex(columns=columns) if rows else pd.DataFrame(columns=columns)
