"""CCA-family similarity measures: SVCCA and projection-weighted CCA (PWCCA).

Part of the ``similarity`` stage: it reads hidden-state matrices of the same examples from two
models (rows = examples) and returns how similar they are. It writes nothing.

Canonical correlations are computed without forming or inverting a covariance matrix. Each
column-centred side ``Ac`` (n x d) is reduced by a thin SVD ``Ac = U S V^T`` to an orthonormal
basis ``U_k`` (n x k) of its top-``k`` principal directions, after dropping the directions
whose singular values are round-off (``s <= s_max * max(n, d) * eps``, NumPy's rank rule), so
rank-deficient inputs (duplicated or linearly dependent features, n < d) are handled
explicitly. The canonical correlations are then the singular values of ``U_kx^T U_ky``
(Bjorck & Golub 1973), all in [0, 1] up to round-off.
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
    row_space_factor,
    value_or_warn,
)

__all__ = ["pwcca", "pwcca_permuted", "pwcca_result", "svcca", "svcca_permuted", "svcca_result"]


def _principal_basis(Ac: np.ndarray, variance: float) -> np.ndarray:
    """Orthonormal basis [n, k] of the fewest top principal directions of the centred ``Ac``
    [n, d] that explain at least ``variance`` of its variance, null directions excluded.

    The SVD is of Ac's row-space factor, which has Ac's left singular vectors and singular values:
    for n < d an n x n SVD instead of an n x d one."""
    U, s, _ = np.linalg.svd(row_space_factor(Ac), full_matrices=False)  # U [n, min(n, d)], s descending
    rank = int(np.sum(s > s[0] * max(Ac.shape) * np.finfo(np.float64).eps))
    explained = np.cumsum(s[:rank] ** 2)
    explained /= explained[-1]
    # First index whose cumulative share reaches `variance`; round-off may leave the last
    # share a hair below 1, hence the cap at the rank.
    k = min(rank, int(np.searchsorted(explained, variance)) + 1)
    return U[:, :k]


def _canonical(
    Xc: np.ndarray, Yc: np.ndarray, variance: float, measure: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """SVD-reduce both sides and return ``(Ux [n, k1], A [k1, m], rho [m])``, m = min(k1, k2).

    ``Ux @ A`` holds the X-side canonical variates as orthonormal columns, and ``rho`` the
    canonical correlations in descending order.
    """
    n = Xc.shape[0]
    Ux = _principal_basis(Xc, variance)  # [n, k1]
    Uy = _principal_basis(Yc, variance)  # [n, k2]
    k1, k2 = Ux.shape[1], Uy.shape[1]
    if k1 + k2 > n - 1:
        raise MossaError(
            f"{measure}: expected the kept directions to fit in the centred examples "
            f"(k_X + k_Y <= n - 1), got k_X={k1} and k_Y={k2} directions (variance="
            f"{variance!r}) with n={n} examples; at least {k1 + k2 - (n - 1)} canonical "
            f"correlations would be 1 whatever the data. Fix: compare at least {k1 + k2 + 1} "
            f"examples (many more for a stable value), or lower `variance`."
        )
    A, rho, _ = np.linalg.svd(Ux.T @ Uy, full_matrices=False)  # A [k1, m], rho [m]
    return Ux, A, rho


def _check_variance(variance: Any) -> float:
    return check_scalar(
        variance,
        "variance",
        low=0.0,
        low_open=True,
        high=1.0,
        fix="pass the share of each side's variance to keep, e.g. variance=0.99 "
        "(1.0 keeps every non-null direction)",
    )


def svcca_result(X: Any, Y: Any, *, variance: float = 0.99) -> SimilarityResult:
    """SVCCA between two representations, with a reason if undefined.

    Same computation as :func:`svcca`, but returns a :class:`SimilarityResult` and never
    warns.

    Parameters
    ----------
    X : numpy.ndarray or torch.Tensor of shape (n_examples, d1)
        First representation, one row per example; any float dtype.
    Y : numpy.ndarray or torch.Tensor of shape (n_examples, d2)
        Second representation of the same examples in the same row order.
    variance : float, default=0.99
        Share of each side's variance its kept principal directions must explain, in (0, 1].

    Returns
    -------
    SimilarityResult
        ``value`` is the mean canonical correlation, NaN with a ``reason`` when a side does
        not vary across examples.

    Raises
    ------
    MossaError
        If the inputs fail validation, if ``variance`` is not in (0, 1], or if the kept
        directions do not fit in the examples (``k_X + k_Y > n - 1``).

    See Also
    --------
    svcca : The same value as a float, warning when undefined.

    References
    ----------
    .. [1] M. Raghu, J. Gilmer, J. Yosinski and J. Sohl-Dickstein, "SVCCA: Singular Vector
       Canonical Correlation Analysis for Deep Learning Dynamics and Interpretability",
       NeurIPS 2017.
    """
    Xv, Yv = check_paired_representations(X, Y)
    variance = _check_variance(variance)
    n = Xv.shape[0]
    pair = centre_and_check_variation(Xv, Yv)
    if pair.reason is not None:
        return SimilarityResult(math.nan, pair.reason, n)
    _, _, rho = _canonical(pair.X, pair.Y, variance, "svcca")
    return SimilarityResult(float(np.mean(rho)), None, n)


def svcca(X: Any, Y: Any, *, variance: float = 0.99) -> float:
    """Singular vector canonical correlation analysis (SVCCA) similarity.

    Each side is centred and reduced by SVD to its fewest top principal directions that
    explain at least ``variance`` of its variance (``k_X`` and ``k_Y`` directions); the value
    is the mean of the ``min(k_X, k_Y)`` canonical correlations between the two reduced
    representations. It lies in [0, 1] (not clamped) and is symmetric in X and Y.

    Invariant to orthogonal transforms, isotropic scaling and translation of either side, and
    to a joint permutation of the examples. Invariant to any invertible linear map of a side
    only when the reduction keeps all of that side's non-null directions (for example
    ``variance=1.0``): otherwise a non-orthogonal map changes which directions are kept.

    CCA overfits when the examples are few relative to the kept directions: once
    ``k_X + k_Y > n - 1`` some canonical correlations are 1 whatever the data, and that case
    is refused. Expect inflated values unless n is several times ``k_X + k_Y``.

    Parameters
    ----------
    X : numpy.ndarray or torch.Tensor of shape (n_examples, d1)
        First representation, one row per example. Any float dtype; torch tensors are
        detached and copied to the CPU. All arithmetic is float64.
    Y : numpy.ndarray or torch.Tensor of shape (n_examples, d2)
        Second representation of the same examples in the same row order.
    variance : float, default=0.99
        Share of each side's variance its kept principal directions must explain, in (0, 1];
        0.99 as in Raghu et al. 1.0 keeps every non-null direction (plain CCA on the
        non-degenerate subspace).

    Returns
    -------
    float
        The mean canonical correlation; NaN when a side does not vary across examples, with
        an :class:`UndefinedSimilarityWarning` saying which.

    Raises
    ------
    MossaError
        If an input is not a 2-D NumPy array or torch tensor of reals, if X and Y have
        different numbers of rows, if there are fewer than 2 rows, if any value is NaN or
        infinite, if ``variance`` is not in (0, 1], or if ``k_X + k_Y > n - 1``.

    Warns
    -----
    UndefinedSimilarityWarning
        When NaN is returned, with the reason.

    See Also
    --------
    svcca_result : The same value with the reason, without warning.
    pwcca : Canonical correlations weighted by how much of X they account for.

    Notes
    -----
    Google's reference code (``cca_core.get_cca_similarity``) solves CCA through regularised
    covariance inverses with an ``epsilon`` and drops low-variance neurons by a threshold;
    mossa uses orthonormal bases from the SVD (no regularisation), so values can differ
    slightly from that code on ill-conditioned inputs.

    References
    ----------
    .. [1] M. Raghu, J. Gilmer, J. Yosinski and J. Sohl-Dickstein, "SVCCA: Singular Vector
       Canonical Correlation Analysis for Deep Learning Dynamics and Interpretability",
       NeurIPS 2017.
    .. [2] A. Bjorck and G. H. Golub, "Numerical Methods for Computing Angles Between Linear
       Subspaces", Mathematics of Computation 27(123), 1973.

    Examples
    --------
    >>> import numpy as np
    >>> from mossa.similarity import svcca
    >>> rng = np.random.default_rng(0)
    >>> X = rng.standard_normal((200, 5))
    >>> A = rng.standard_normal((5, 5))  # invertible, not orthogonal
    >>> round(svcca(X, X @ A + 3.0, variance=1.0), 6)
    1.0
    """
    return value_or_warn(svcca_result(X, Y, variance=variance), "SVCCA")


def pwcca_result(X: Any, Y: Any, *, variance: float = 0.99) -> SimilarityResult:
    """Projection-weighted CCA between two representations, with a reason if undefined.

    Same computation as :func:`pwcca`, but returns a :class:`SimilarityResult` and never
    warns.

    Parameters
    ----------
    X : numpy.ndarray or torch.Tensor of shape (n_examples, d1)
        First representation, one row per example; its features weight the correlations.
    Y : numpy.ndarray or torch.Tensor of shape (n_examples, d2)
        Second representation of the same examples in the same row order.
    variance : float, default=0.99
        Share of each side's variance its kept principal directions must explain, in (0, 1].

    Returns
    -------
    SimilarityResult
        ``value`` is the weighted mean canonical correlation, NaN with a ``reason`` when a
        side does not vary across examples.

    Raises
    ------
    MossaError
        If the inputs fail validation, if ``variance`` is not in (0, 1], or if the kept
        directions do not fit in the examples (``k_X + k_Y > n - 1``).

    See Also
    --------
    pwcca : The same value as a float, warning when undefined.

    References
    ----------
    .. [1] A. S. Morcos, M. Raghu and S. Bengio, "Insights on representational similarity in
       neural networks with canonical correlation", NeurIPS 2018.
    """
    Xv, Yv = check_paired_representations(X, Y)
    variance = _check_variance(variance)
    n = Xv.shape[0]
    pair = centre_and_check_variation(Xv, Yv)
    if pair.reason is not None:
        return SimilarityResult(math.nan, pair.reason, n)
    Ux, A, rho = _canonical(pair.X, pair.Y, variance, "pwcca")
    H = Ux @ A  # [n, m], X-side canonical variates, orthonormal columns
    # alpha_i = sum_j |<h_i, x_j>| over X's (centred) features j.
    alpha = np.abs(H.T @ pair.X).sum(axis=1)  # [m]
    # Positive: each h_i is a non-zero vector in the column space of the centred X.
    assert alpha.sum() > 0.0, "a canonical variate is orthogonal to every feature of X"
    return SimilarityResult(float(alpha @ rho / alpha.sum()), None, n)


def pwcca(X: Any, Y: Any, *, variance: float = 0.99) -> float:
    """Projection-weighted canonical correlation analysis (PWCCA) similarity.

    Both sides are centred and SVD-reduced as in :func:`svcca` (``variance`` of each side
    kept), giving canonical correlations ``rho_i`` and X-side canonical variates ``h_i``
    (unit vectors over the examples). Each correlation is weighted by how much of X's
    features it accounts for,

    ``alpha_i = sum_j |<h_i, x_j>|``, over X's centred features ``x_j`` (columns),

    and the value is ``sum_i alpha_i rho_i / sum_i alpha_i``, in [0, 1] (not clamped).

    PWCCA is **not symmetric**: X is the side whose features weight the correlations. Swap
    the arguments to weight by Y. It is invariant to a joint permutation of the examples;
    to translation and isotropic scaling of either side; to permutations and sign flips of
    X's features (the weights are L1 sums over them) but **not** to other rotations of X;
    and to orthogonal transforms of Y, and to any invertible linear map of Y when its
    reduction keeps all non-null directions (for example ``variance=1.0``). When canonical
    correlations repeat, the canonical variates and hence the weights are not unique.

    Parameters
    ----------
    X : numpy.ndarray or torch.Tensor of shape (n_examples, d1)
        First representation, one row per example; its features weight the correlations.
        Any float dtype; torch tensors are detached and copied to the CPU. All arithmetic is
        float64.
    Y : numpy.ndarray or torch.Tensor of shape (n_examples, d2)
        Second representation of the same examples in the same row order.
    variance : float, default=0.99
        Share of each side's variance its kept principal directions must explain, in (0, 1].

    Returns
    -------
    float
        The projection-weighted mean canonical correlation; NaN when a side does not vary
        across examples, with an :class:`UndefinedSimilarityWarning` saying which.

    Raises
    ------
    MossaError
        If an input is not a 2-D NumPy array or torch tensor of reals, if X and Y have
        different numbers of rows, if there are fewer than 2 rows, if any value is NaN or
        infinite, if ``variance`` is not in (0, 1], or if ``k_X + k_Y > n - 1`` (see
        :func:`svcca`).

    Warns
    -----
    UndefinedSimilarityWarning
        When NaN is returned, with the reason.

    See Also
    --------
    pwcca_result : The same value with the reason, without warning.
    svcca : The unweighted mean canonical correlation.

    Notes
    -----
    Google's reference ``compute_pwcca`` weights by whichever side has fewer neurons and
    projects the uncentred activations; mossa always weights by X and uses centred features
    (translation invariance). Call ``pwcca(smaller, larger)`` to follow the reference's
    choice of side.

    References
    ----------
    .. [1] A. S. Morcos, M. Raghu and S. Bengio, "Insights on representational similarity in
       neural networks with canonical correlation", NeurIPS 2018.
    .. [2] M. Raghu, J. Gilmer, J. Yosinski and J. Sohl-Dickstein, "SVCCA: Singular Vector
       Canonical Correlation Analysis for Deep Learning Dynamics and Interpretability",
       NeurIPS 2017.

    Examples
    --------
    >>> import numpy as np
    >>> from mossa.similarity import pwcca
    >>> rng = np.random.default_rng(0)
    >>> X = rng.standard_normal((200, 5))
    >>> round(pwcca(X, X @ rng.standard_normal((5, 5)), variance=1.0), 6)
    1.0
    """
    return value_or_warn(pwcca_result(X, Y, variance=variance), "PWCCA")


register_measure(
    "svcca",
    symmetric=True,
    value_range=(0.0, 1.0),
    higher_is_similar=True,
    description="mean canonical correlation after SVD to 99% variance (Raghu et al. 2017)",
    rotation_invariant=True,
)(svcca_result)

register_measure(
    "pwcca",
    symmetric=False,
    value_range=(0.0, 1.0),
    higher_is_similar=True,
    description="canonical correlations weighted by X's features (Morcos et al. 2018)",
)(pwcca_result)


def _permutable_bases(X: Any, Y: Any, variance: Any):
    """(centred X, Ux, Uy) of a pair for the batched nulls, or None where the measure is undefined."""
    Xv, Yv = check_paired_representations(X, Y)
    variance = _check_variance(variance)
    pair = centre_and_check_variation(Xv, Yv)
    if pair.reason is not None:
        return None
    Ux, Uy = _principal_basis(pair.X, variance), _principal_basis(pair.Y, variance)
    return None if Ux.shape[1] + Uy.shape[1] > Xv.shape[0] - 1 else (pair.X, Ux, Uy)


@register_permuted("svcca")
def svcca_permuted(X: Any, Y: Any, perms: np.ndarray, *, variance: float = 0.99, chunk: int = 64) -> np.ndarray:
    """SVCCA of (X, Y[p]) for each permutation p in ``perms`` [K, n].

    Re-pairing rows permutes Y's principal basis with them (centring commutes with it), so each
    side is reduced once and a permutation costs the singular values of one [k1, k2] product.
    """
    bases = _permutable_bases(X, Y, variance)
    if bases is None:
        return np.full(len(perms), math.nan)
    Xc, Ux, Uy = bases
    out = np.empty(len(perms))
    for start in range(0, len(perms), chunk):
        M = np.einsum("nk,pnl->pkl", Ux, Uy[perms[start:start + chunk]])  # [c, k1, k2]
        out[start:start + chunk] = np.linalg.svd(M, compute_uv=False).mean(axis=1)
    return out


@register_permuted("pwcca")
def pwcca_permuted(X: Any, Y: Any, perms: np.ndarray, *, variance: float = 0.99) -> np.ndarray:
    """PWCCA of (X, Y[p]) for each permutation p in ``perms`` [K, n].

    As in :func:`svcca_permuted`, each side is reduced once; X's weights need only the
    projections of its features on its own basis, Ux' X [k1, d], computed once too.
    """
    bases = _permutable_bases(X, Y, variance)
    if bases is None:
        return np.full(len(perms), math.nan)
    Xc, Ux, Uy = bases
    P = Ux.T @ Xc  # [k1, d]
    out = np.empty(len(perms))
    for i, p in enumerate(perms):
        A, rho, _ = np.linalg.svd(Ux.T @ Uy[p], full_matrices=False)
        alpha = np.abs(A.T @ P).sum(axis=1)
        out[i] = alpha @ rho / alpha.sum()
    return out
