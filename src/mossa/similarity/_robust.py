"""CKA variants that outlier dimensions cannot dominate: standardised features, outlier dimensions removed,
and as many random dimensions removed (the control of the removal).

Part of the ``similarity`` stage: functions of two representations of the same examples (rows =
examples); they read and write nothing. In decoder LLMs one to a few residual dimensions carry most
of the variance ("massive activations"), and linear CKA, a ratio of sums over dimensions, follows
them. Each variant here changes which dimensions enter and then computes linear CKA as
:func:`~mossa.similarity.linear_cka_result` does, so a study can ask whether its result is about
those few dimensions or about the rest of the representation.

Outlier rule (``OUTLIER_RULE``): a dimension is an outlier when its median |h| over the examples
exceeds the 99th percentile of |h| over all n * d entries of the layer. An outlier dimension has at
least half its n entries above that percentile, which only 1% of all entries are, so at most 2% of
the dimensions can be outliers (more large dimensions than that lift the percentile above their own
median, and none is found); Gaussian dimensions of one scale are not outliers (median |h| 0.67 sd
against a 99th percentile of 2.58 sd).

The coordinate rule cannot see a dominant direction spread over many coordinates: one that carries 60% of
the variance, rotated away from the axes, raises no dimension above the percentile, and the variants
above keep it. ``debiased_cka_top_pcs_removed`` removes principal directions instead (``TOP_PCS_RULE``),
found on the second argument (the control C_t in a study) and projected out of both sides, so every model
compared with one control loses the same directions.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from mossa.similarity._cka import _check_debiased_n, linear_cka_result
from mossa.similarity._registry import register_measure
from mossa.similarity._result import _CONSTANT_RTOL, SimilarityResult, _center, _constant_reason, _scale_pow2
from mossa.similarity._validation import centre_and_check_variation, check_paired_representations

__all__ = ["DOMINANT_SHARE", "OUTLIER_RULE", "ROBUST_MEASURES", "TOP_PCS_RULE", "dominant_directions", "outlier_dims",
           "random_dims"]

OUTLIER_RULE = ("a dimension is an outlier when its median |h| over examples exceeds the layer's 99th percentile "
                "of |h| over all n*d entries")
OUTLIER_PERCENTILE = 99.0
DOMINANT_SHARE = 0.10
TOP_PCS_RULE = ("the principal directions of the second side (the control C_t) that each carry more than 10% of its "
                "centred variance, at least its top one and at most all but one, projected out of both sides")
# The registered variants, in the order a table lists them.
ROBUST_MEASURES = ("debiased_cka_standardized", "linear_cka_standardized", "debiased_cka_no_outliers",
                   "debiased_cka_random_dims", "debiased_cka_top_pcs_removed")


def _outlier_dims(X: np.ndarray) -> np.ndarray:
    """`outlier_dims` of a validated float64 matrix."""
    magnitude = np.abs(X)
    return np.flatnonzero(np.median(magnitude, axis=0) > np.percentile(magnitude, OUTLIER_PERCENTILE))


def outlier_dims(X: Any) -> np.ndarray:
    """Sorted indices of the outlier dimensions of one layer's states `X` [n, d], by ``OUTLIER_RULE``:
    median |h| over the n examples above the 99th percentile of |h| over all n * d entries.

    The rule reads raw (uncentred) magnitudes: an outlier dimension of an LLM is large on every
    token, which is what makes it dominate the linear kernel.
    """
    return _outlier_dims(check_paired_representations(X, X)[0])


def random_dims(d: int, outliers: np.ndarray) -> np.ndarray:
    """As many dimensions of ``0..d-1`` as `outliers`, none of them an outlier: the first that are not in
    a random order of the d dimensions drawn by a generator seeded with ``(len(outliers), d)``. The order
    depends on the count and the width alone, so a value computed without these dimensions is
    reproducible, and two sides of equal width and count lose the same dimensions unless one's outliers
    fall among them."""
    k = len(outliers)
    order = np.random.default_rng([k, d]).permutation(d)
    return np.sort(order[~np.isin(order, outliers)][:k])


def _standardized(X: np.ndarray) -> np.ndarray:
    """Validated float64 `X` [n, d] with each column z-scored over the examples; a column that does not
    vary (centred norm at most ``_CONSTANT_RTOL`` of its raw norm, the rule every measure applies to a
    whole matrix) is dropped, not divided by 0, so none is left when `X` is constant."""
    Xs = _scale_pow2(X[None])[0]  # an exact power-of-two scale: no overflow in the squares
    Xc = _center(Xs[None])[0]
    spread = np.einsum("ij,ij->j", Xc, Xc)
    varying = Xc[:, spread > (_CONSTANT_RTOL**2) * np.einsum("ij,ij->j", Xs, Xs)]
    return varying / np.sqrt(np.mean(varying * varying, axis=0))


def _standardized_cka(X: Any, Y: Any, debiased: bool) -> SimilarityResult:
    Xz, Yz = (_standardized(side) for side in check_paired_representations(X, Y))
    reason = _constant_reason(Xz.shape[1] == 0, Yz.shape[1] == 0, ("X", "Y"))
    if reason is not None:
        return SimilarityResult(math.nan, reason, Xz.shape[0])
    return linear_cka_result(Xz, Yz, debiased=debiased)


@register_measure(
    "debiased_cka_standardized",
    symmetric=True,
    value_range=(-1.0, 1.0),
    higher_is_similar=True,
    description="debiased linear CKA on z-scored features (no dimension dominates by its scale)",
)
def debiased_cka_standardized_result(X: Any, Y: Any) -> SimilarityResult:
    """Debiased linear CKA of `X` and `Y` with every column z-scored over the examples (a column that
    does not vary dropped): each dimension weighs the same, whatever its scale. NaN with the reason
    when a side has no varying column."""
    return _standardized_cka(X, Y, debiased=True)


@register_measure(
    "linear_cka_standardized",
    symmetric=True,
    value_range=(0.0, 1.0),
    higher_is_similar=True,
    description="linear CKA (biased HSIC) on z-scored features",
)
def linear_cka_standardized_result(X: Any, Y: Any) -> SimilarityResult:
    """Linear CKA (biased HSIC) of `X` and `Y` with every column z-scored over the examples, as
    :func:`debiased_cka_standardized_result`."""
    return _standardized_cka(X, Y, debiased=False)


def _removed_cka(X: Any, Y: Any, *, random: bool) -> SimilarityResult:
    Xv, Yv = check_paired_representations(X, Y)
    keep = []
    for side in (Xv, Yv):
        drop = _outlier_dims(side)
        if random:
            drop = random_dims(side.shape[1], drop)
        keep.append(np.delete(side, drop, axis=1) if len(drop) else side)
    return linear_cka_result(*keep, debiased=True)


@register_measure(
    "debiased_cka_no_outliers",
    symmetric=True,
    value_range=(-1.0, 1.0),
    higher_is_similar=True,
    description="debiased linear CKA without each side's outlier dimensions (median |h| > 99th percentile of |h|)",
)
def debiased_cka_no_outliers_result(X: Any, Y: Any) -> SimilarityResult:
    """Debiased linear CKA of `X` and `Y` with each side's outlier dimensions (``OUTLIER_RULE``, found
    on that side) deleted. The rule leaves at least 98% of the dimensions, so no side is emptied."""
    return _removed_cka(X, Y, random=False)


@register_measure(
    "debiased_cka_random_dims",
    symmetric=True,
    value_range=(-1.0, 1.0),
    higher_is_similar=True,
    description="debiased linear CKA without as many seeded random dimensions as each side has outliers "
                "(the control of debiased_cka_no_outliers)",
)
def debiased_cka_random_dims_result(X: Any, Y: Any) -> SimilarityResult:
    """Debiased linear CKA of `X` and `Y` with as many dimensions deleted from each side as it has
    outlier dimensions, chosen among its other dimensions by :func:`random_dims` (seeded with the
    count and the width: reproducible). What removing that many ordinary dimensions does, against
    which :func:`debiased_cka_no_outliers_result` is read."""
    return _removed_cka(X, Y, random=True)


def _dominant_directions(Yc: np.ndarray) -> np.ndarray:
    """`dominant_directions` of a centred float64 matrix that varies, from the eigenvectors of its smaller
    Gram matrix (n x n when n < d: ~2 ms at n = 96, d = 640, against ~8 ms for an SVD)."""
    n, d = Yc.shape
    lam, vecs = np.linalg.eigh(Yc @ Yc.T if n < d else Yc.T @ Yc)
    lam, vecs = lam[::-1], vecs[:, ::-1]
    n_dirs = int(np.count_nonzero(lam > lam[0] * max(n, d) * np.finfo(np.float64).eps))
    k = max(1, min(int(np.count_nonzero(lam > DOMINANT_SHARE * lam[:n_dirs].sum())), n_dirs - 1))
    if n >= d:
        return vecs[:, :k]
    top = Yc.T @ vecs[:, :k]  # [d, k]: Yc' u_i = s_i v_i
    return top / np.linalg.norm(top, axis=0)


def dominant_directions(Y: Any) -> np.ndarray:
    """The principal directions `debiased_cka_top_pcs_removed` projects out, as orthonormal columns [d, k]:
    those of the centred `Y` [n, d] that each carry more than ``DOMINANT_SHARE`` (10%) of its variance, at
    least the top one and at most all but one of the directions it varies along. The dominant direction of
    LLM states (massive activations) carries tens of percent; with none (isotropic states of width d >> 10,
    each direction near 1/min(n, d) of the variance) only the top one is removed. Below d = 10 even
    isotropic directions exceed 10%, and all but one are removed. Empty (k = 0) when `Y` does not vary.

    The directions rotate with `Y` (those of Y Q are Q' v), where the coordinate ``OUTLIER_RULE`` does not.
    """
    Yv = check_paired_representations(Y, Y)[0]
    pair = centre_and_check_variation(Yv, Yv)
    return _dominant_directions(pair.Y) if pair.reason is None else np.zeros((Yv.shape[1], 0))


def _projected_out(A: np.ndarray, V: np.ndarray) -> np.ndarray:
    return A - (A @ V) @ V.T


@register_measure(
    "debiased_cka_top_pcs_removed",
    symmetric=False,
    value_range=(-1.0, 1.0),
    higher_is_similar=True,
    description="debiased linear CKA with Y's dominant principal directions (each > 10% of its variance, at least "
                "the top one) projected out of both sides",
)
def debiased_cka_top_pcs_removed_result(X: Any, Y: Any) -> SimilarityResult:
    """Debiased linear CKA of `X` and `Y` after one projection, ``A -> A (I - V V')``, applied to both sides:
    V [d, k] holds the dominant principal directions of `Y` (:func:`dominant_directions`, ``TOP_PCS_RULE``).

    Why: linear CKA weighs each principal direction by its variance squared, so one direction carrying half
    the variance decides the value; when that direction is spread over all coordinates no coordinate is an
    outlier, and the coordinate variants keep it. The basis comes from `Y` alone (in a study the control
    C_t, the second argument of every comparison) so that CKA(E, C_t) and CKA(B, C_t) lose the same
    directions and their difference compares like with like; the measure is therefore not symmetric.

    Invariance: unchanged when both sides are rotated by the same Q (the directions rotate with `Y`), and
    under isotropic scaling or translation of either side; changed by rotating one side alone, since the
    projection is read in `Y`'s coordinates, and by per-dimension scaling. Sides of different widths share
    no coordinates: each side then loses its own dominant directions, by the same rule.

    Estimation: the directions come from the n examples themselves. What the estimate misses of a direction
    both sides share, tilted toward `Y`'s own noise, stays in `X` with the opposite sign, which biases the
    value by about -d / (d + n^2) against isotropic noise, whatever the direction's share: -0.065 at
    n = 96, d = 640 (measured -0.06 +- 0.015), -0.017 at n = 192.

    NaN with the reason when a side does not vary, or varies only along the removed directions (a `Y` of
    rank 1, say). Raises MossaError on invalid inputs and, as debiased CKA does, below 4 examples.
    """
    Xv, Yv = check_paired_representations(X, Y)
    _check_debiased_n(Xv.shape[0], debiased=True)
    pair = centre_and_check_variation(Xv, Yv)
    if pair.reason is not None:
        return SimilarityResult(math.nan, pair.reason, Xv.shape[0])
    sides = (pair.X, pair.Y)
    if Xv.shape[1] == Yv.shape[1]:
        V = _dominant_directions(pair.Y)
        projected = [_projected_out(A, V) for A in sides]
    else:
        projected = [_projected_out(A, _dominant_directions(A)) for A in sides]
    emptied = [bool(np.einsum("ij,ij->", P, P) <= (_CONSTANT_RTOL**2) * np.einsum("ij,ij->", A, A))
               for P, A in zip(projected, sides)]
    reason = _constant_reason(*emptied, ("X", "Y"))
    if reason is not None:
        return SimilarityResult(math.nan, reason.replace(" (0/0)", " once the dominant principal directions are "
                                                                   "removed (0/0)"), Xv.shape[0])
    return linear_cka_result(*projected, debiased=True)
