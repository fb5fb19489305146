"""Mutual k-nearest-neighbour alignment between representations.

Part of the ``similarity`` stage: it reads hidden-state matrices of the same examples from two
models (rows = examples) and returns how much the two agree on which examples are neighbours.
It writes nothing. It forms two n x n cosine-similarity matrices, so memory grows as n^2.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from mossa.errors import MossaError
from mossa.similarity._result import SimilarityResult
from mossa.similarity._registry import register_measure, register_permuted
from mossa.similarity._validation import (
    centre_and_check_variation,
    check_paired_representations,
    check_scalar,
    value_or_warn,
)

__all__ = ["mutual_knn", "mutual_knn_permuted", "mutual_knn_result"]


def _unit_rows(A: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rows of ``A`` [n, d] scaled to unit Euclidean norm, and the indices of all-zero rows.

    Each row is first scaled by a power of two (exact) so that its norm neither overflows nor
    underflows whatever its magnitude. All-zero rows stay zero.
    """
    peak = np.max(np.abs(A), axis=1, keepdims=True)  # [n, 1]
    _, exponent = np.frexp(peak)
    A = np.ldexp(A, -np.where(peak > 0, exponent, 0))
    norms = np.linalg.norm(A, axis=1, keepdims=True)  # [n, 1]
    zero = np.flatnonzero(norms[:, 0] == 0.0)
    return A / np.where(norms > 0, norms, 1.0), zero


def _neighbours(U: np.ndarray, k: int) -> np.ndarray:
    """Boolean [n, n] mask of each row's k most cosine-similar other rows (ties: lower index)."""
    n = U.shape[0]
    S = U @ U.T  # [n, n] cosine similarities
    np.fill_diagonal(S, -np.inf)  # never one's own neighbour
    order = np.argsort(-S, axis=1, kind="stable")[:, :k]  # [n, k]
    mask = np.zeros((n, n), dtype=bool)
    np.put_along_axis(mask, order, True, axis=1)
    return mask


def mutual_knn_result(X: Any, Y: Any, *, k: int = 10) -> SimilarityResult:
    """Mutual k-nearest-neighbour alignment, with a reason if undefined.

    Same computation as :func:`mutual_knn`, but returns a :class:`SimilarityResult` and never
    warns.

    Parameters
    ----------
    X : numpy.ndarray or torch.Tensor of shape (n_examples, d1)
        First representation, one row per example; any float dtype.
    Y : numpy.ndarray or torch.Tensor of shape (n_examples, d2)
        Second representation of the same examples in the same row order.
    k : int, default=10
        Number of neighbours per example; 1 <= k < n_examples.

    Returns
    -------
    SimilarityResult
        ``value`` is the mean neighbour overlap in [0, 1], NaN with a ``reason`` when a side
        has all-zero rows or does not vary in direction across examples.

    Raises
    ------
    MossaError
        If the inputs fail validation, or if ``k`` is not an integer with 1 <= k < n.

    See Also
    --------
    mutual_knn : The same value as a float, warning when undefined.

    References
    ----------
    .. [1] M. Huh, B. Cheung, T. Wang and P. Isola, "The Platonic Representation
       Hypothesis", ICML 2024.
    """
    Xv, Yv = check_paired_representations(X, Y)
    k = check_scalar(k, "k", integer=True, low=1, fix="pass a positive number of neighbours")
    n = Xv.shape[0]
    if k >= n:
        raise MossaError(
            f"k: expected fewer neighbours than examples (k < n, each example has n - 1 "
            f"others), got k={k} with n={n} examples. Fix: pass k <= {n - 1} (much smaller "
            f"for a meaningful value: with k = n - 1 every overlap is 1), or compare more "
            f"examples."
        )
    Ux, zero_x = _unit_rows(Xv)  # [n, d1]
    Uy, zero_y = _unit_rows(Yv)  # [n, d2]
    zero_reasons = [
        f"{name} has {zero.size} all-zero rows (examples, first {zero[:5].tolist()}), whose "
        f"cosine similarity is undefined"
        for name, zero in (("X", zero_x), ("Y", zero_y))
        if zero.size
    ]
    if zero_reasons:
        return SimilarityResult(math.nan, "; ".join(zero_reasons), n)
    # Unit rows that do not vary (linear CKA's rule) mean every cosine similarity is 1.
    pair = centre_and_check_variation(Ux, Uy)
    flat = [name for name, varies in (("X", pair.varies_x), ("Y", pair.varies_y)) if not varies]
    if flat:
        both = len(flat) == 2
        return SimilarityResult(
            math.nan,
            f"{' and '.join(flat)} {'do' if both else 'does'} not vary across examples in "
            f"direction (every cosine similarity is 1), so nearest neighbours are undefined",
            n,
        )
    overlap = np.logical_and(_neighbours(Ux, k), _neighbours(Uy, k)).sum(axis=1)  # [n]
    return SimilarityResult(float(np.mean(overlap / k)), None, n)


def mutual_knn(X: Any, Y: Any, *, k: int = 10) -> float:
    """Mutual k-nearest-neighbour alignment (Huh et al. 2024).

    For each example ``i``, let ``N_X(i)`` be the ``k`` other examples whose rows of X have
    the highest cosine similarity to row ``i`` (the example itself excluded), and likewise
    ``N_Y(i)``. The value is

    ``mean_i |N_X(i) & N_Y(i)| / k``,

    in [0, 1] and symmetric; independent representations score about ``k / (n - 1)`` on
    average. Neighbours are by cosine similarity of the uncentred rows, as the
    platonic-rep code does (L2-normalised features and inner products); ties are broken in
    favour of the lower example index (so with a single feature, where every cosine is +-1,
    the ties decide). platonic-rep also clips outlier activations before normalising; mossa
    does not.

    Invariant to orthogonal transforms of either side, to positive rescaling of each example
    (row) separately and hence to isotropic scaling, and to any change that keeps the order of
    cosine similarities; invariant to a joint permutation of the examples up to tie-breaking.
    Not invariant to translation (adding a vector to every row changes the angles) or to
    anisotropic scaling and other invertible linear maps.

    Parameters
    ----------
    X : numpy.ndarray or torch.Tensor of shape (n_examples, d1)
        First representation, one row per example. Any float dtype; torch tensors are
        detached and copied to the CPU. All arithmetic is float64.
    Y : numpy.ndarray or torch.Tensor of shape (n_examples, d2)
        Second representation of the same examples in the same row order.
    k : int, default=10
        Number of neighbours per example; 1 <= k < n_examples (platonic-rep uses 10).

    Returns
    -------
    float
        The mean neighbour overlap; NaN when a side has all-zero rows (cosine undefined) or
        all its rows point the same way (every similarity ties), with an
        :class:`UndefinedSimilarityWarning` saying which.

    Raises
    ------
    MossaError
        If an input is not a 2-D NumPy array or torch tensor of reals, if X and Y have
        different numbers of rows, if there are fewer than 2 rows, if any value is NaN or
        infinite, or if ``k`` is not an integer with 1 <= k < n_examples.

    Warns
    -----
    UndefinedSimilarityWarning
        When NaN is returned, with the reason.

    See Also
    --------
    mutual_knn_result : The same value with the reason, without warning.

    References
    ----------
    .. [1] M. Huh, B. Cheung, T. Wang and P. Isola, "The Platonic Representation
       Hypothesis", ICML 2024.

    Examples
    --------
    >>> import numpy as np
    >>> from mossa.similarity import mutual_knn
    >>> rng = np.random.default_rng(0)
    >>> X = rng.standard_normal((30, 8))
    >>> Q, _ = np.linalg.qr(rng.standard_normal((8, 8)))
    >>> mutual_knn(X, 3.0 * X @ Q, k=5)
    1.0
    """
    return value_or_warn(mutual_knn_result(X, Y, k=k), "mutual kNN alignment")


register_measure(
    "mutual_knn",
    symmetric=True,
    value_range=(0.0, 1.0),
    higher_is_similar=True,
    description="mean overlap of 10 cosine nearest neighbours (Huh et al. 2024)",
    rotation_invariant=True,
)(mutual_knn_result)


@register_permuted("mutual_knn")
def mutual_knn_permuted(X: Any, Y: Any, perms: np.ndarray, *, k: int = 10, chunk: int = 64) -> np.ndarray:
    """Mutual kNN alignment of (X, Y[p]) for each permutation p in ``perms`` [K, n].

    Each side's neighbour sets are found once: row i of Y[p] has the neighbours
    {l : p[l] is a neighbour of p[i] in Y}, so a permutation costs one gather of Y's [n, n]
    neighbour mask (ties between exactly equal similarities may break differently).
    """
    base = mutual_knn_result(X, Y, k=k)
    if not math.isfinite(base.value):
        return np.full(len(perms), math.nan)
    Xv, Yv = check_paired_representations(X, Y)
    Nx, Ny = _neighbours(_unit_rows(Xv)[0], k), _neighbours(_unit_rows(Yv)[0], k)
    out = np.empty(len(perms))
    for start in range(0, len(perms), chunk):
        p = perms[start:start + chunk]
        shared = Nx[None] & Ny[p[:, :, None], p[:, None, :]]  # [c, n, n]
        out[start:start + chunk] = shared.sum(axis=(1, 2)) / (k * Xv.shape[0])
    return out
