"""Orthogonal Procrustes distance between representations.

Part of the ``similarity`` stage: it reads hidden-state matrices of the same examples from two
models (rows = examples) and returns how far apart they are after the best rotation. It writes
nothing.

Only the nuclear norm of ``Xc^T Yc`` (d1 x d2) is needed. When a side is wider than it has
examples, it is first replaced by the n x n triangular factor ``R^T`` of ``Xc^T = Q R``, which
has the same Gram matrix, so the SVD is at most min(n, d1) x min(n, d2).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from mossa.similarity._result import SimilarityResult
from mossa.similarity._registry import register_measure, register_permuted
from mossa.similarity._validation import (
    centre_and_check_variation,
    check_paired_representations,
    row_space_factor,
    value_or_warn,
)

__all__ = ["procrustes_distance", "procrustes_distance_result", "procrustes_permuted"]


def procrustes_distance_result(X: Any, Y: Any) -> SimilarityResult:
    """Orthogonal Procrustes distance, with a reason if undefined.

    Same computation as :func:`procrustes_distance`, but returns a :class:`SimilarityResult`
    and never warns.

    Parameters
    ----------
    X : numpy.ndarray or torch.Tensor of shape (n_examples, d1)
        First representation, one row per example; any float dtype.
    Y : numpy.ndarray or torch.Tensor of shape (n_examples, d2)
        Second representation of the same examples in the same row order.

    Returns
    -------
    SimilarityResult
        ``value`` is the squared Procrustes distance in [0, 2], NaN with a ``reason`` when a
        side does not vary across examples (it cannot be normalised).

    Raises
    ------
    MossaError
        If the inputs fail validation (see :func:`procrustes_distance`).

    See Also
    --------
    procrustes_distance : The same value as a float, warning when undefined.

    References
    ----------
    .. [1] F. Ding, J.-S. Denain and J. Steinhardt, "Grounding Representation Similarity with
       Statistical Testing", NeurIPS 2021.
    """
    Xv, Yv = check_paired_representations(X, Y)
    n = Xv.shape[0]
    pair = centre_and_check_variation(Xv, Yv)
    if pair.reason is not None:
        return SimilarityResult(math.nan, pair.reason, n)
    norm_x = np.linalg.norm(pair.X)
    norm_y = np.linalg.norm(pair.Y)
    Bx = row_space_factor(pair.X / norm_x)  # [n, min(n, d1)]
    By = row_space_factor(pair.Y / norm_y)  # [n, min(n, d2)]
    nuclear = float(np.sum(np.linalg.svd(Bx.T @ By, compute_uv=False)))
    return SimilarityResult(2.0 - 2.0 * nuclear, None, n)


def procrustes_distance(X: Any, Y: Any) -> float:
    """Squared orthogonal Procrustes distance after centring and Frobenius normalisation.

    With ``Xn = Xc / ||Xc||_F`` and ``Yn = Yc / ||Yc||_F`` (column-centred, unit Frobenius
    norm), the narrower side conceptually zero-padded to the wider one's width,

    ``d(X, Y) = min_{Q orthogonal} ||Xn Q - Yn||_F^2 = 2 - 2 ||Xn^T Yn||_*``

    where ``||.||_*`` is the nuclear norm (sum of singular values), which needs no padding.
    The value lies in [0, 2]: 0 when one side is a rotated, scaled and shifted copy of the
    other, 2 when ``Xn^T Yn = 0``. It is a distance (lower = more similar) and symmetric; its
    square root is a metric (it satisfies the triangle inequality), and Williams et al.'s
    angular form is ``arccos(1 - d / 2)``. Round-off can leave ``d(X, X)`` a few ulps
    below 0; the value is not clamped.

    Invariant to orthogonal transforms (rotations, reflections, feature permutations),
    isotropic scaling and translation of either side, and to a joint permutation of the
    examples. Not invariant to anisotropic scaling or other invertible linear maps.

    Parameters
    ----------
    X : numpy.ndarray or torch.Tensor of shape (n_examples, d1)
        First representation, one row per example. Any float dtype; torch tensors are
        detached and copied to the CPU. All arithmetic is float64.
    Y : numpy.ndarray or torch.Tensor of shape (n_examples, d2)
        Second representation of the same examples in the same row order; ``d2`` may differ
        from ``d1``.

    Returns
    -------
    float
        The squared Procrustes distance; NaN when a side does not vary across examples (its
        normalisation is 0/0), with an :class:`UndefinedSimilarityWarning` saying which.

    Raises
    ------
    MossaError
        If an input is not a 2-D NumPy array or torch tensor of reals, if X and Y have
        different numbers of rows, if there are fewer than 2 rows, or if any value is NaN or
        infinite.

    Warns
    -----
    UndefinedSimilarityWarning
        When NaN is returned, with the reason.

    See Also
    --------
    procrustes_distance_result : The same value with the reason, without warning.
    linear_cka : A similarity with the same invariances.

    References
    ----------
    .. [1] F. Ding, J.-S. Denain and J. Steinhardt, "Grounding Representation Similarity with
       Statistical Testing", NeurIPS 2021.
    .. [2] A. H. Williams, E. Kunz, S. Kornblith and S. W. Linderman, "Generalized Shape
       Metrics on Neural Representations", NeurIPS 2021.
    .. [3] P. H. Schonemann, "A generalized solution of the orthogonal Procrustes problem",
       Psychometrika 31(1), 1966.

    Examples
    --------
    >>> import numpy as np
    >>> from mossa.similarity import procrustes_distance
    >>> rng = np.random.default_rng(0)
    >>> X = rng.standard_normal((50, 4))
    >>> Q, _ = np.linalg.qr(rng.standard_normal((6, 6)))
    >>> Y = 5.0 * np.hstack([X, np.zeros((50, 2))]) @ Q - 1.0  # padded, rotated, scaled
    >>> abs(procrustes_distance(X, Y)) < 1e-12
    True
    """
    return value_or_warn(procrustes_distance_result(X, Y), "the Procrustes distance")


register_measure(
    "procrustes_distance",
    symmetric=True,
    value_range=(0.0, 2.0),
    higher_is_similar=False,
    description="squared orthogonal Procrustes distance, 2 - 2 ||Xn^T Yn||_* (Ding et al. 2021)",
    rotation_invariant=True,
)(procrustes_distance_result)


@register_permuted("procrustes_distance")
def procrustes_permuted(X: Any, Y: Any, perms: np.ndarray, *, chunk: int = 64) -> np.ndarray:
    """Procrustes distance of (X, Y[p]) for each permutation p in ``perms`` [K, n].

    Re-pairing rows changes neither side's centring nor its norm, so each side's factor is built
    once and each permutation costs one [r, r] product and its singular values.
    """
    Xv, Yv = check_paired_representations(X, Y)
    pair = centre_and_check_variation(Xv, Yv)
    if pair.reason is not None:
        return np.full(len(perms), math.nan)
    Bx = row_space_factor(pair.X / np.linalg.norm(pair.X))
    By = row_space_factor(pair.Y / np.linalg.norm(pair.Y))
    out = np.empty(len(perms))
    for start in range(0, len(perms), chunk):
        M = np.einsum("nr,kns->krs", Bx, By[perms[start:start + chunk]])  # [c, r1, r2]
        out[start:start + chunk] = 2.0 - 2.0 * np.linalg.svd(M, compute_uv=False).sum(axis=1)
    return out
