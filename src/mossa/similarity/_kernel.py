"""RBF-kernel centered kernel alignment (CKA), biased and debiased.

Part of the ``similarity`` stage: it reads hidden-state matrices of the same examples from two
models (rows = examples) and returns how similar they are. It writes nothing.

The n x n Gram matrices are formed explicitly, so memory grows as n^2 (8 n^2 bytes per
matrix; a handful are alive at once). The Gram matrices are centred in the form
``expm1(-D / (2 sigma^2))`` instead of ``exp(-D / (2 sigma^2))``: centring removes the
constant ``1`` exactly, and ``expm1`` keeps full relative precision for near-zero exponents,
so a large ``sigma_frac`` does not cancel catastrophically (and tends to linear CKA, as it
should).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from mossa.similarity._cka import _DEBIASED_RTOL, _check_debiased_n
from mossa.similarity._result import SimilarityResult
from mossa.similarity._registry import register_measure
from mossa.similarity._validation import (
    centre_and_check_variation,
    check_paired_representations,
    check_scalar,
    value_or_warn,
)

__all__ = ["rbf_cka", "rbf_cka_result"]

# A squared distance from the Gram formula ||a||^2 + ||b||^2 - 2 a.b that is this small
# relative to ||a||^2 + ||b||^2 has lost most of its digits to cancellation (it is
# round-off for duplicate rows); such pairs are recomputed from explicit differences.
_RECOMPUTE_RTOL = 1e-6

# Pairs recomputed from explicit differences per chunk (bounds the chunk at ~chunk * d floats).
_PAIR_CHUNK_FLOATS = 2**22


def squared_distances(A: np.ndarray) -> np.ndarray:
    """Pairwise squared Euclidean distances between the rows of ``A`` [n, d], shape [n, n].

    Uses the Gram formula, then recomputes from explicit differences the pairs where it is
    dominated by round-off, so that duplicate rows are at distance exactly 0.
    """
    n, d = A.shape
    sq = np.einsum("ij,ij->i", A, A)  # [n]
    scale = sq[:, None] + sq[None, :]  # [n, n]
    D = scale - 2.0 * (A @ A.T)  # [n, n]
    i, j = np.nonzero(np.triu(D <= _RECOMPUTE_RTOL * scale, k=1))
    step = max(1, _PAIR_CHUNK_FLOATS // d)
    for s in range(0, i.size, step):
        ii, jj = i[s : s + step], j[s : s + step]
        diff = A[ii] - A[jj]  # [pairs, d]
        D[ii, jj] = D[jj, ii] = np.einsum("ij,ij->i", diff, diff)
    np.fill_diagonal(D, 0.0)
    return D


def _centred_rbf_gram(
    A: np.ndarray, sigma_frac: float, debiased: bool, name: str
) -> tuple[np.ndarray | None, str | None]:
    """The centred (or U-centred) RBF Gram of ``A`` [n, d], or None and why it is undefined."""
    n = A.shape[0]
    D = squared_distances(A)  # [n, n]
    median = float(np.median(np.sqrt(D[np.triu_indices(n, k=1)])))
    if median == 0.0:
        return None, (
            f"the median pairwise distance of {name} is 0 (at least half of its pairs of "
            f"examples are identical), so the RBF bandwidth sigma is 0"
        )
    sigma = sigma_frac * median
    # expm1 = exp - 1: the same Gram up to the constant 1, which centring removes exactly.
    E = np.expm1(-D / (2.0 * sigma * sigma))  # [n, n], zero diagonal
    if not np.any(E):
        return None, (
            f"every RBF kernel value of {name} rounds to 1 (sigma_frac={sigma_frac!r} is too "
            f"large for float64), so its centred Gram is zero (0/0)"
        )
    if debiased:
        # U-centring (Szekely & Rizzo 2014; Kornblith et al.'s center_gram(unbiased=True)):
        # <U(K), U(L)> / (n (n - 3)) is Song et al.'s unbiased HSIC.
        means = E.sum(axis=0) / (n - 2)  # [n]
        means -= means.sum() / (2 * (n - 1))
        G = E - means[:, None] - means[None, :]
        np.fill_diagonal(G, 0.0)
        # ||U(K)||_F^2 is n (n - 3) times the unbiased self-HSIC. It is 0 for some tiny
        # samples; a value this far below the Gram's own size is that 0 plus round-off.
        if np.sum(G * G) <= _DEBIASED_RTOL * np.sum(E * E):
            return None, (
                f"the debiased self-HSIC of {name} is not positive with n={n} examples, so "
                f"its square root cannot normalise (use more examples or debiased=False)"
            )
    else:
        means = E.mean(axis=0)  # [n]
        G = E - means[:, None] - means[None, :] + means.mean()  # H E H
        # Unreachable once E != 0: the RBF kernel is strictly positive definite on distinct
        # points, so H K H = 0 would need all rows equal. Kept as a guard against 0/0.
        if not np.any(G):
            return None, f"the centred RBF Gram of {name} is zero (0/0)"
    return G, None


def rbf_cka_result(
    X: Any, Y: Any, *, sigma_frac: float = 0.5, debiased: bool = False
) -> SimilarityResult:
    """RBF-kernel CKA between two representations, with a reason if undefined.

    Same computation as :func:`rbf_cka`, but returns a :class:`SimilarityResult` and never
    warns.

    Parameters
    ----------
    X : numpy.ndarray or torch.Tensor of shape (n_examples, d1)
        First representation, one row per example; any float dtype.
    Y : numpy.ndarray or torch.Tensor of shape (n_examples, d2)
        Second representation of the same examples in the same row order.
    sigma_frac : float, default=0.5
        Bandwidth of each side's Gaussian kernel as a fraction of that side's median pairwise
        Euclidean distance; must be > 0.
    debiased : bool, default=False
        Use the unbiased HSIC estimator of Song et al. (2012) instead of the biased one.

    Returns
    -------
    SimilarityResult
        ``value`` is the RBF CKA, NaN with a ``reason`` when a side does not vary across
        examples, when its median pairwise distance is 0, or when a debiased self-HSIC is not
        positive.

    Raises
    ------
    MossaError
        If the inputs fail validation, if ``sigma_frac`` is not a positive finite number, or
        if ``debiased=True`` and there are fewer than 4 examples.

    See Also
    --------
    rbf_cka : The same value as a float, warning when undefined.

    References
    ----------
    .. [1] S. Kornblith, M. Norouzi, H. Lee and G. Hinton, "Similarity of Neural Network
       Representations Revisited", ICML 2019.
    """
    Xv, Yv = check_paired_representations(X, Y)
    sigma_frac = check_scalar(
        sigma_frac,
        "sigma_frac",
        low=0.0,
        low_open=True,
        fix="pass a positive fraction of the median distance, e.g. sigma_frac=0.5",
    )
    n = Xv.shape[0]
    _check_debiased_n(n, debiased)
    pair = centre_and_check_variation(Xv, Yv)
    if pair.reason is not None:
        return SimilarityResult(math.nan, pair.reason, n)

    K, why_x = _centred_rbf_gram(pair.X, sigma_frac, debiased, "X")  # [n, n]
    L, why_y = _centred_rbf_gram(pair.Y, sigma_frac, debiased, "Y")  # [n, n]
    if K is None or L is None:
        return SimilarityResult(math.nan, "; ".join(r for r in (why_x, why_y) if r), n)

    cross = float(np.einsum("ij,ij->", K, L))
    self_x = float(np.einsum("ij,ij->", K, K))
    self_y = float(np.einsum("ij,ij->", L, L))
    return SimilarityResult(cross / (math.sqrt(self_x) * math.sqrt(self_y)), None, n)


def rbf_cka(X: Any, Y: Any, *, sigma_frac: float = 0.5, debiased: bool = False) -> float:
    """Centered kernel alignment with Gaussian (RBF) kernels.

    Each side gets the kernel ``k(a, b) = exp(-||a - b||^2 / (2 sigma^2))`` with its own
    bandwidth ``sigma = sigma_frac * median_{i<j} ||a_i - a_j||`` (the median over distinct
    pairs of examples), and

    ``CKA(X, Y) = HSIC(K, L) / sqrt(HSIC(K, K) HSIC(L, L))``

    with the biased HSIC ``tr(K H L H)`` (``H`` the centring matrix), or with Song et al.'s
    unbiased HSIC when ``debiased=True``. The biased value lies in [0, 1], the debiased one
    in [-1, 1]; neither is clamped. As ``sigma_frac`` grows the value tends to linear CKA.

    Invariant to orthogonal transforms (rotations, reflections, feature permutations),
    isotropic scaling (the bandwidth scales with the median distance) and translation of
    either side, and to a joint permutation of the examples. Not invariant to anisotropic
    scaling or other invertible linear maps.

    Kornblith et al.'s notebook takes the median of the squared distances over all n^2
    entries, the n zero self-distances included; mossa takes the median distance over the
    n (n - 1) / 2 distinct pairs, as the paper's text says. The two bandwidths differ slightly
    for small n.

    Parameters
    ----------
    X : numpy.ndarray or torch.Tensor of shape (n_examples, d1)
        First representation, one row per example. Any float dtype; torch tensors are
        detached and copied to the CPU. All arithmetic is float64.
    Y : numpy.ndarray or torch.Tensor of shape (n_examples, d2)
        Second representation of the same examples in the same row order.
    sigma_frac : float, default=0.5
        Bandwidth as a fraction of the median pairwise distance (the ``threshold`` argument
        of ``gram_rbf`` in Kornblith et al.'s notebook); must be > 0.
    debiased : bool, default=False
        Use the unbiased HSIC estimator of Song et al. (2012).

    Returns
    -------
    float
        The CKA value, NaN when undefined (a side does not vary across examples, at least
        half of a side's pairs of examples coincide so the bandwidth is 0, or a debiased
        self-HSIC is not positive); an :class:`UndefinedSimilarityWarning` says why.

    Raises
    ------
    MossaError
        If an input is not a 2-D NumPy array or torch tensor of reals, if X and Y have
        different numbers of rows, if there are fewer than 2 rows, if any value is NaN or
        infinite, if ``sigma_frac`` is not a positive finite number, or if ``debiased=True``
        and there are fewer than 4 rows.

    Warns
    -----
    UndefinedSimilarityWarning
        When NaN is returned, with the reason.

    See Also
    --------
    rbf_cka_result : The same value with the reason, without warning.
    linear_cka : The linear-kernel CKA used by the Layer by Layer paper.

    References
    ----------
    .. [1] S. Kornblith, M. Norouzi, H. Lee and G. Hinton, "Similarity of Neural Network
       Representations Revisited", ICML 2019.
    .. [2] L. Song, A. Smola, A. Gretton, J. Bedo and K. Borgwardt, "Feature Selection via
       Dependence Maximization", JMLR 13, 2012.

    Examples
    --------
    >>> import numpy as np
    >>> from mossa.similarity import rbf_cka
    >>> rng = np.random.default_rng(0)
    >>> X = rng.standard_normal((50, 4))
    >>> Q, _ = np.linalg.qr(rng.standard_normal((4, 4)))
    >>> round(rbf_cka(X, 2.0 * X @ Q + 1.0), 6)
    1.0
    """
    return value_or_warn(
        rbf_cka_result(X, Y, sigma_frac=sigma_frac, debiased=debiased), "RBF CKA"
    )


register_measure(
    "rbf_cka",
    symmetric=True,
    value_range=(0.0, 1.0),
    higher_is_similar=True,
    description="RBF-kernel CKA, bandwidth 0.5 x median distance (Kornblith et al. 2019)",
    rotation_invariant=True,
)(rbf_cka_result)
