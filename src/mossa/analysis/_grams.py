"""Kernel matrices of the kernel CKAs, and their HSICs on many row subsets at once.

Stage: analysis (pure functions over arrays; reads and writes nothing).

The intervals (`_jackknife.py`) and the nulls (`_permutation.py`) of linear, debiased and RBF
CKA recompute the statistic on thousands of row subsets or hundreds of re-pairings. Each is a
sum over one pair of n x n kernels built once in float64, so none recomputes a kernel. The RBF
bandwidth is held at its full-sample value (conditional on it).
"""

from __future__ import annotations

import numpy as np

from mossa.similarity import pairwise_squared_distances

KERNEL_MEASURES = {"linear_cka": ("linear", False), "debiased_cka": ("linear", True), "rbf_cka": ("rbf", False)}
_RBF_SIGMA_FRAC = 0.5  # rbf_cka's default bandwidth fraction


def kernel(X: np.ndarray, kind: str) -> np.ndarray:
    """Uncentred kernel matrix [n, n] in float64 of column-centred `X` (centring of each subset
    happens in the HSIC, so any subset is exact)."""
    X = np.asarray(X, dtype=np.float64)
    X = X - X.mean(axis=0)
    if kind == "linear":
        return X @ X.T
    D = pairwise_squared_distances(X)
    median = np.median(np.sqrt(D[np.triu_indices(len(X), k=1)]))
    if median == 0:
        return np.zeros_like(D)
    sigma = _RBF_SIGMA_FRAC * median
    return np.exp(-D / (2.0 * sigma * sigma))


def _forms(M: np.ndarray, pairs: np.ndarray, deleted: int | None = None) -> np.ndarray:
    """u'Mu for u = all ones minus the indicators of D, for D = {}, each {j} (j < `deleted`, default
    all groups; a last group of left-over rows is kept by every subset), each pair {j, k} of `pairs`."""
    S, R, C, dg = M.sum(), M.sum(axis=1), M.sum(axis=0), np.diag(M)
    j, k = pairs[:, 0], pairs[:, 1]
    single = (S - R - C + dg)[:deleted]
    pair = S - R[j] - C[j] - R[k] - C[k] + dg[j] + dg[k] + M[j, k] + M[k, j]
    return np.concatenate([[S], single, pair])


def _linear(v: np.ndarray, pairs: np.ndarray, deleted: int | None = None) -> np.ndarray:
    """v.u for the same deletions as `_forms`."""
    return np.concatenate([[v.sum()], (v.sum() - v)[:deleted], v.sum() - v[pairs[:, 0]] - v[pairs[:, 1]]])


def _cubic(onehot: np.ndarray, groups: np.ndarray, KG: np.ndarray, LG: np.ndarray, pairs: np.ndarray,
           deleted: int | None = None) -> np.ndarray:
    """sum_n w_n (K w)_n (L w)_n for the same deletions as `_forms`, w the 0/1 row weights.

    It is sum_m u_m u'T_m u with T_m = sum over the rows n of group m of outer(KG[n], LG[n]);
    only sums of T and its entries at the deleted groups are needed, so T is never built.
    """
    g = onehot.shape[1]
    j, k = pairs[:, 0], pairs[:, 1]
    a, c = KG.sum(axis=1), LG.sum(axis=1)  # row sums of K and L
    total = _forms(KG.T @ LG, pairs, deleted)  # sum_m T_m
    tot = onehot.T @ (a * c)  # [g] 1'T_m 1
    R, C = onehot.T @ (KG * c[:, None]), onehot.T @ (LG * a[:, None])  # [g, g] T_m 1 and T_m' 1
    order = np.argsort(groups, kind="stable")  # rows of each group, padded to the largest group
    sizes = np.bincount(groups, minlength=g)
    slot = np.arange(len(groups)) - np.repeat(np.cumsum(sizes) - sizes, sizes)
    KGs, LGs = np.zeros((g, sizes.max(), g)), np.zeros((g, sizes.max(), g))
    KGs[groups[order], slot], LGs[groups[order], slot] = KG[order], LG[order]

    def entry(x, y, z):  # T[x, y, z] for index arrays
        return np.einsum("pr,pr->p", KGs[x, :, y], LGs[x, :, z])

    m = np.arange(g if deleted is None else deleted)
    own_single = tot[m] - R[m, m] - C[m, m] + entry(m, m, m)  # q_{T_j} at u without j

    def at_pair(x):  # q_{T_x} at u without j and k
        return (tot[x] - R[x, j] - C[x, j] - R[x, k] - C[x, k] + entry(x, j, j) + entry(x, k, k)
                + entry(x, j, k) + entry(x, k, j))

    return total - np.concatenate([[0.0], own_single, at_pair(j) + at_pair(k)])


def deletion_hsic(K: np.ndarray, L: np.ndarray, groups: np.ndarray, g: int, pairs: np.ndarray,
                  debiased: bool, deleted: int | None = None) -> np.ndarray:
    """HSIC of all rows, of all rows but each group, and of all rows but each pair of groups.

    Returns [1 + g + len(pairs)]: the biased HSIC (times N^2) or Song et al.'s unbiased HSIC
    (times N(N-3)) of each subset, N its row count. Every sum over a subset's rows is a
    quadratic, linear or cubic form in its 0/1 group vector u, so all subsets cost O(n g^2 +
    n^2 g) together, exactly (no subset is materialised).
    """
    onehot = _onehot(groups, g)
    KG, LG = K @ onehot, L @ onehot  # [n, g]
    N = _linear(onehot.sum(axis=0), pairs, deleted)
    quad = _forms(onehot.T @ ((K * L) @ onehot), pairs, deleted)
    cross = _cubic(onehot, groups, KG, LG, pairs, deleted)
    if not debiased:
        s, t = _forms(onehot.T @ KG, pairs, deleted), _forms(onehot.T @ LG, pairs, deleted)
        return quad - 2.0 * cross / N + s * t / N**2
    dk, dl = np.diag(K), np.diag(L)
    dkl = _linear(onehot.T @ (dk * dl), pairs, deleted)
    trace = quad - dkl
    ones_k = _forms(onehot.T @ KG, pairs, deleted) - _linear(onehot.T @ dk, pairs, deleted)
    ones_l = _forms(onehot.T @ LG, pairs, deleted) - _linear(onehot.T @ dl, pairs, deleted)
    F, G = onehot.T @ (dk[:, None] * LG), onehot.T @ (dl[:, None] * KG)  # [g, g]
    ones_kl = cross - _forms(F, pairs, deleted) - _forms(G, pairs, deleted) + dkl
    return trace + ones_k * ones_l / ((N - 1) * (N - 2)) - 2.0 / (N - 2) * ones_kl


def _onehot(groups: np.ndarray, g: int) -> np.ndarray:
    onehot = np.zeros((len(groups), g))
    onehot[np.arange(len(groups)), groups] = 1.0
    return onehot


def _median_distance(X: np.ndarray, groups: np.ndarray, g: int, pairs: np.ndarray,
                     deleted: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Squared distances [n, n] of centred X, and the median pairwise distance of every deletion
    subset (all, without each group, without each pair; to first order in the change).

    Below the full median m, a subset keeps u'Bu/2 of its C(N, 2) pairs (B the 0/1 matrix of
    pairs closer than m, summed over groups); its median moves by (1/2 - that share) times the
    slope of the distance quantile at 1/2, read off the 45% and 55% quantiles.
    """
    X = np.asarray(X, dtype=np.float64)
    D = pairwise_squared_distances(X - X.mean(axis=0))
    dist = np.sqrt(D)
    upper = dist[np.triu_indices(len(X), k=1)]
    m = float(np.median(upper))
    q45, q55 = np.quantile(upper, [0.45, 0.55])
    onehot = _onehot(groups, g)
    below = (dist < m).astype(np.float64)
    np.fill_diagonal(below, 0.0)
    share = (_forms(onehot.T @ below @ onehot, pairs, deleted) / 2) / _pairs_kept(onehot.sum(axis=0), pairs, deleted)
    return D, m + (0.5 - share) * (q55 - q45) / 0.1


def _pairs_kept(sizes: np.ndarray, pairs: np.ndarray, deleted: int | None = None) -> np.ndarray:
    N = _linear(sizes, pairs, deleted)
    return N * (N - 1) / 2


def adaptive_rbf_cka(X: np.ndarray, Y: np.ndarray, groups: np.ndarray, g: int, pairs: np.ndarray, *,
                     deleted: int | None = None, sigma_frac: float = _RBF_SIGMA_FRAC, eps: float = 1e-3) -> np.ndarray:
    """RBF CKA of every deletion subset with each subset's own bandwidth (sigma_frac x its median
    distance, as `rbf_cka` sets it), to first order in the bandwidth's change.

    Holding the bandwidth at the full sample's leaves out how the estimator adapts its scale to
    each sample, and over-states its variance several-fold on unrelated representations.
    """
    Dx, mx = _median_distance(X, groups, g, pairs, deleted)
    Dy, my = _median_distance(Y, groups, g, pairs, deleted)
    if mx[0] == 0 or my[0] == 0:
        return np.full(len(mx), np.nan)

    def gram(D: np.ndarray, m: float, scale: float) -> np.ndarray:
        sigma = sigma_frac * m * scale
        return np.exp(-D / (2 * sigma * sigma))

    def hsic(A: np.ndarray, B: np.ndarray) -> np.ndarray:
        return deletion_hsic(A, B, groups, g, pairs, False, deleted)

    K, L, Kx, Ly = gram(Dx, mx[0], 1.0), gram(Dy, my[0], 1.0), gram(Dx, mx[0], 1.0 + eps), gram(Dy, my[0], 1.0 + eps)
    kk, ll = hsic(K, K), hsic(L, L)  # each self term serves the base value and one slope
    with np.errstate(invalid="ignore", divide="ignore"):
        base = hsic(K, L) / np.sqrt(kk * ll)
        slope_x = (hsic(Kx, L) / np.sqrt(hsic(Kx, Kx) * ll) - base) / eps
        slope_y = (hsic(K, Ly) / np.sqrt(kk * hsic(Ly, Ly)) - base) / eps
    return base + (mx / mx[0] - 1.0) * slope_x + (my / my[0] - 1.0) * slope_y


def deletion_cka(K: np.ndarray, L: np.ndarray, groups: np.ndarray, g: int, pairs: np.ndarray,
                 debiased: bool, deleted: int | None = None) -> np.ndarray:
    """CKA of all rows, without each group and without each pair (NaN where a self-HSIC is not positive)."""
    kl = deletion_hsic(K, L, groups, g, pairs, debiased, deleted)
    kk = deletion_hsic(K, K, groups, g, pairs, debiased, deleted)
    ll = deletion_hsic(L, L, groups, g, pairs, debiased, deleted)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where((kk > 0) & (ll > 0), kl / np.sqrt(np.abs(kk * ll)), np.nan)
