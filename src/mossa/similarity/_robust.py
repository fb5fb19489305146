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
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from mossa.similarity._cka import linear_cka_result
from mossa.similarity._registry import register_measure
from mossa.similarity._result import _CONSTANT_RTOL, SimilarityResult, _center, _constant_reason, _scale_pow2
from mossa.similarity._validation import check_paired_representations

__all__ = ["OUTLIER_RULE", "ROBUST_MEASURES", "outlier_dims", "random_dims"]

OUTLIER_RULE = ("a dimension is an outlier when its median |h| over examples exceeds the layer's 99th percentile "
                "of |h| over all n*d entries")
OUTLIER_PERCENTILE = 99.0
# The registered variants, in the order a table lists them.
ROBUST_MEASURES = ("debiased_cka_standardized", "linear_cka_standardized", "debiased_cka_no_outliers",
                   "debiased_cka_random_dims")


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
