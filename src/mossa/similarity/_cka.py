"""Linear centered kernel alignment (CKA), biased and debiased.

Part of the ``similarity`` stage: it reads hidden-state matrices of the same examples from two
models (one matrix per layer, rows = examples) and returns how similar the two representations
are. It writes nothing; callers store the returned values.

Both estimators are computed from three kinds of statistics of the column-centred inputs
``Xc`` (n x d1) and ``Yc`` (n x d2), with ``K = Xc Xc^T`` and ``L = Yc Yc^T``:

- ``<K, L>_F = ||Xc^T Yc||_F^2`` and the self terms ``||K||_F^2 = ||Xc^T Xc||_F^2``;
- the row norms ``diag(K)`` and ``diag(L)`` (debiased only).

The Frobenius products are taken in whichever space is cheaper: the n x n Gram space when
there are few examples relative to features, the d x d feature space otherwise. All arithmetic
is float64 whatever the input dtype.
"""

from __future__ import annotations

import math
import warnings
from typing import Any, Literal

import numpy as np

from mossa.errors import MossaError
from mossa.similarity._result import (
    _CONSTANT_RTOL,
    SimilarityResult,
    UndefinedSimilarityWarning,
    _center,
    _constant_reason,
    _scale_pow2,
)
from mossa.similarity._validation import check_paired_representations

__all__ = [
    "SimilarityResult",
    "UndefinedSimilarityWarning",
    "layerwise_linear_cka",
    "linear_cka",
    "linear_cka_result",
]

# The debiased self-HSIC is a difference of non-negative terms. An estimate at or below this
# fraction of the terms' total is cancellation noise (or truly non-positive for tiny n), and
# normalising by its square root would give a meaningless or NaN value.
_DEBIASED_RTOL = 1e-10

# Soft cap on the float64 intermediates (Gram or cross-covariance matrices) held at once when
# computing many layers in one batch.
_BATCH_BYTES = 256 * 2**20

_MIN_DEBIASED_EXAMPLES = 4


Form = Literal["gram", "feature"]


def select_form(n: int, d1: int, d2: int) -> Form:
    """Pick the cheaper space for the Frobenius products.

    The Gram space costs about ``n^2 (d1 + d2)`` multiply-adds (two n x n Grams), the feature
    space about ``n (d1^2 + d1 d2 + d2^2)`` (three cross-covariances). For ``d1 = d2 = d`` this
    chooses the Gram space when ``n < 1.5 d``.
    """
    return "gram" if n * (d1 + d2) < d1 * d1 + d1 * d2 + d2 * d2 else "feature"


def _frob_stats(Xc: np.ndarray, Yc: np.ndarray, form: Form) -> tuple[np.ndarray, ...]:
    """Return ``<K,L>_F``, ``||K||_F^2`` and ``||L||_F^2`` per layer, each of shape [layers]."""
    if form == "gram":
        K = np.matmul(Xc, Xc.transpose(0, 2, 1))  # [layers, n, n]
        L = np.matmul(Yc, Yc.transpose(0, 2, 1))  # [layers, n, n]
        cross = np.einsum("lij,lij->l", K, L)
        self_x = np.einsum("lij,lij->l", K, K)
        self_y = np.einsum("lij,lij->l", L, L)
    else:
        XtX = np.matmul(Xc.transpose(0, 2, 1), Xc)  # [layers, d1, d1]
        YtY = np.matmul(Yc.transpose(0, 2, 1), Yc)  # [layers, d2, d2]
        XtY = np.matmul(Xc.transpose(0, 2, 1), Yc)  # [layers, d1, d2]
        cross = np.einsum("lij,lij->l", XtY, XtY)
        self_x = np.einsum("lij,lij->l", XtX, XtX)
        self_y = np.einsum("lij,lij->l", YtY, YtY)
    return cross, self_x, self_y


def _debiased_hsic(
    frob: np.ndarray, rows_a: np.ndarray, rows_b: np.ndarray, n: int
) -> tuple[np.ndarray, np.ndarray]:
    """Unbiased HSIC (Song et al. 2012) from centred statistics, times ``n (n - 3)``.

    With ``K~`` and ``L~`` the Grams with zeroed diagonals, Song et al.'s estimator is
    ``[tr(K~L~) + 1'K~1 1'L~1 / ((n-1)(n-2)) - 2/(n-2) 1'K~L~1] / (n(n-3))``. It is unchanged by
    centring the features, and for centred features ``K 1 = 0``, which reduces it to the three
    terms below (Kornblith et al.'s ``_debiased_dot_product_similarity_helper``). The common
    factor ``1 / (n (n - 3))`` cancels in CKA and is left out.

    Returns the estimate and the sum of the magnitudes of its terms (for the cancellation
    guard), each of shape [layers].
    """
    t1 = frob
    t2 = n / (n - 2) * np.einsum("li,li->l", rows_a, rows_b)
    t3 = rows_a.sum(axis=1) * rows_b.sum(axis=1) / ((n - 1) * (n - 2))
    return t1 - t2 + t3, np.abs(t1) + np.abs(t2) + np.abs(t3)


def _cka_stack(
    A: np.ndarray,
    B: np.ndarray,
    *,
    debiased: bool,
    form: Form | None = None,
    names: tuple[str, str] = ("X", "Y"),
) -> list[SimilarityResult]:
    """Linear CKA for each layer of validated float64 stacks ``A [layers, n, d1]``, ``B [layers, n, d2]``.

    ``form`` forces the Gram or feature space (tests use it to check that both agree); by
    default the cheaper one is chosen.
    """
    n_layers, n, d1 = A.shape
    d2 = B.shape[2]
    if form is None:
        form = select_form(n, d1, d2)

    per_layer_bytes = 8 * (2 * n * n if form == "gram" else d1 * d1 + d1 * d2 + d2 * d2)
    per_layer_bytes += 8 * 2 * n * (d1 + d2)  # scaled and centred copies
    batch = max(1, _BATCH_BYTES // max(per_layer_bytes, 1))

    results: list[SimilarityResult] = []
    for start in range(0, n_layers, batch):
        Xs = _scale_pow2(A[start : start + batch])  # [b, n, d1]
        Ys = _scale_pow2(B[start : start + batch])  # [b, n, d2]
        Xc = _center(Xs)
        Yc = _center(Ys)
        rows_x = np.einsum("lij,lij->li", Xc, Xc)  # [b, n], diag(K)
        rows_y = np.einsum("lij,lij->li", Yc, Yc)  # [b, n], diag(L)
        const_x = rows_x.sum(axis=1) <= (_CONSTANT_RTOL**2) * np.einsum("lij,lij->l", Xs, Xs)
        const_y = rows_y.sum(axis=1) <= (_CONSTANT_RTOL**2) * np.einsum("lij,lij->l", Ys, Ys)

        cross, self_x, self_y = _frob_stats(Xc, Yc, form)
        if debiased:
            cross, _ = _debiased_hsic(cross, rows_x, rows_y, n)
            self_x, scale_x = _debiased_hsic(self_x, rows_x, rows_x, n)
            self_y, scale_y = _debiased_hsic(self_y, rows_y, rows_y, n)
            bad_x = self_x <= _DEBIASED_RTOL * scale_x
            bad_y = self_y <= _DEBIASED_RTOL * scale_y
        else:
            bad_x = self_x <= 0.0
            bad_y = self_y <= 0.0

        results += _results(cross, self_x, self_y, const_x, const_y, bad_x, bad_y, n=n, debiased=debiased,
                            names=names)
    return results


def _results(cross, self_x, self_y, const_x, const_y, bad_x, bad_y, *, n: int, debiased: bool,
             names: tuple[str, str]) -> list[SimilarityResult]:
    """Per-layer CKA values from HSIC terms, NaN with a reason where a layer is undefined."""
    results = []
    for i in range(len(cross)):
        reason = _constant_reason(bool(const_x[i]), bool(const_y[i]), names)
        if reason is None and (bad_x[i] or bad_y[i]):
            which = " and ".join(nm for nm, bad in zip(names, (bad_x[i], bad_y[i])) if bad)
            if debiased:
                reason = (
                    f"the debiased self-HSIC of {which} is not positive with n={n} "
                    f"examples, so its square root cannot normalise (use more examples "
                    f"or debiased=False)"
                )
            else:  # unreachable for data that passed the constant check; kept as a guard
                reason = f"the self-HSIC of {which} is zero (0/0)"
        if reason is not None:
            results.append(SimilarityResult(math.nan, reason, n))
        else:
            value = float(cross[i] / (math.sqrt(self_x[i]) * math.sqrt(self_y[i])))
            results.append(SimilarityResult(value, None, n))
    return results


def _check_debiased_n(n: int, debiased: bool) -> None:
    if debiased and n < _MIN_DEBIASED_EXAMPLES:
        raise MossaError(
            f"debiased=True: the debiased estimator needs at least {_MIN_DEBIASED_EXAMPLES} "
            f"examples (its normaliser is n(n-3)), got n={n}. Fix: compare more examples, or "
            f"use debiased=False."
        )


def linear_cka_result(X: Any, Y: Any, *, debiased: bool = False) -> SimilarityResult:
    """Linear CKA between two representations of the same examples, with a reason if undefined.

    Same computation as :func:`linear_cka`, but returns a :class:`SimilarityResult` and never
    warns: when CKA is undefined the result holds NaN and the reason.

    Parameters
    ----------
    X : numpy.ndarray or torch.Tensor of shape (n_examples, d1)
        First representation, one row per example. Any float dtype (float16, bfloat16,
        float32, float64); torch tensors are detached and copied to the CPU.
    Y : numpy.ndarray or torch.Tensor of shape (n_examples, d2)
        Second representation of the same examples in the same row order.
    debiased : bool, default=False
        Use the unbiased HSIC estimator of Song et al. (2012) instead of the biased one.

    Returns
    -------
    SimilarityResult
        ``value`` is the CKA (NaN if undefined), ``reason`` is None or says why it is
        undefined (which side does not vary across examples, or a non-positive debiased
        self-HSIC), ``n_examples`` is n.

    Raises
    ------
    MossaError
        If the inputs fail validation (see :func:`linear_cka`) or if ``debiased=True`` and
        there are fewer than 4 examples.

    See Also
    --------
    linear_cka : The same value as a float, warning when undefined.
    layerwise_linear_cka : One result per layer for stacks of layers.

    References
    ----------
    .. [1] S. Kornblith, M. Norouzi, H. Lee and G. Hinton, "Similarity of Neural Network
       Representations Revisited", ICML 2019.
    .. [2] L. Song, A. Smola, A. Gretton, J. Bedo and K. Borgwardt, "Feature Selection via
       Dependence Maximization", JMLR 13, 2012.

    Examples
    --------
    >>> import numpy as np
    >>> from mossa.similarity import linear_cka_result
    >>> X = np.arange(12.0).reshape(4, 3)
    >>> linear_cka_result(X, np.ones((4, 2))).reason
    'Y does not vary across examples (0/0)'
    """
    Xv, Yv = check_paired_representations(X, Y)
    _check_debiased_n(Xv.shape[0], debiased)
    return _cka_stack(Xv[None], Yv[None], debiased=debiased)[0]


def linear_cka(X: Any, Y: Any, *, debiased: bool = False) -> float:
    """Linear centered kernel alignment (CKA) between two representations of the same examples.

    With ``Xc`` and ``Yc`` the column-centred inputs, biased linear CKA is

    ``CKA(X, Y) = ||Xc^T Yc||_F^2 / (||Xc^T Xc||_F ||Yc^T Yc||_F)``,

    which equals ``HSIC(K, L) / sqrt(HSIC(K, K) HSIC(L, L))`` for the linear kernels
    ``K = X X^T`` and ``L = Y Y^T``. It lies in [0, 1] and CKA(X, X) = 1. With
    ``debiased=True`` each HSIC is replaced by the unbiased estimator of Song et al. (2012);
    that value is nearly unbiased for small n but can be slightly negative or slightly above
    1, and is returned as is (never clamped).

    Linear CKA is invariant to orthogonal transforms (rotations, reflections, permutations of
    features) and to isotropic scaling of either side, and to translation of the features
    (adding the same vector to every row). It is not invariant to arbitrary invertible linear
    maps: ``CKA(X A, Y)`` generally differs from ``CKA(X, Y)`` for a non-orthogonal ``A``.

    The Frobenius products are computed in the n x n Gram space when n is small relative to
    the widths and in the feature space otherwise; both give the same value. All arithmetic
    is float64.

    Parameters
    ----------
    X : numpy.ndarray or torch.Tensor of shape (n_examples, d1)
        First representation, one row per example. Any float dtype (float16, bfloat16,
        float32, float64); torch tensors are detached and copied to the CPU.
    Y : numpy.ndarray or torch.Tensor of shape (n_examples, d2)
        Second representation of the same examples in the same row order; ``d2`` may differ
        from ``d1``.
    debiased : bool, default=False
        Use the unbiased HSIC estimator of Song et al. (2012) instead of the biased one.

    Returns
    -------
    float
        The CKA value. NaN when undefined (a side does not vary across examples, so CKA is
        0/0, or a debiased self-HSIC is not positive); an
        :class:`UndefinedSimilarityWarning` then says why.

    Raises
    ------
    MossaError
        If an input is not a NumPy array or torch tensor, is not 2-D, if X and Y have
        different numbers of rows, if there are fewer than 2 rows, if any value is NaN or
        infinite, or if ``debiased=True`` and there are fewer than 4 rows.

    Warns
    -----
    UndefinedSimilarityWarning
        When NaN is returned, with the reason.

    See Also
    --------
    linear_cka_result : The same value with the reason, without warning.
    layerwise_linear_cka : One result per layer for stacks of layers.

    References
    ----------
    .. [1] S. Kornblith, M. Norouzi, H. Lee and G. Hinton, "Similarity of Neural Network
       Representations Revisited", ICML 2019.
    .. [2] L. Song, A. Smola, A. Gretton, J. Bedo and K. Borgwardt, "Feature Selection via
       Dependence Maximization", JMLR 13, 2012.

    Examples
    --------
    >>> import numpy as np
    >>> from mossa.similarity import linear_cka
    >>> rng = np.random.default_rng(0)
    >>> X = rng.standard_normal((100, 8))
    >>> Q, _ = np.linalg.qr(rng.standard_normal((8, 8)))  # a random orthogonal matrix
    >>> round(linear_cka(X, 3.0 * X @ Q + 1.0), 6)  # rotated, scaled and shifted copy
    1.0
    >>> 0.0 <= linear_cka(X, rng.standard_normal((100, 5))) <= 1.0
    True
    """
    result = linear_cka_result(X, Y, debiased=debiased)
    if result.reason is not None:
        warnings.warn(
            f"linear CKA is undefined, returning NaN: {result.reason}",
            UndefinedSimilarityWarning,
            stacklevel=2,
        )
    return result.value


def layerwise_linear_cka(
    A: Any, B: Any, *, debiased: bool = False, names: tuple[str, str] = ("A", "B")
) -> list[SimilarityResult]:
    """Linear CKA between two stacks of layer representations, one result per layer.

    Layer ``i`` of ``A`` is compared with layer ``i`` of ``B``, giving the value
    ``linear_cka_result(A[i], B[i], debiased=debiased)`` would, but layers are batched so
    that the per-layer products share one vectorised computation (in float64). Undefined
    layers hold NaN and a reason naming ``A`` or ``B`` (or ``names``); nothing is warned.

    Parameters
    ----------
    A : numpy.ndarray or torch.Tensor of shape (n_layers, n_examples, d1)
        Hidden states of the first model, one matrix per layer, rows = examples.
    B : numpy.ndarray or torch.Tensor of shape (n_layers, n_examples, d2)
        Hidden states of the second model for the same examples in the same order.
    debiased : bool, default=False
        Use the unbiased HSIC estimator of Song et al. (2012) instead of the biased one.
    names : tuple of str, default=("A", "B")
        What to call the two sides in error messages and undefined-value reasons (for
        example the model names).

    Returns
    -------
    list of SimilarityResult
        ``n_layers`` results, in layer order.

    Raises
    ------
    MossaError
        If an input is not a NumPy array or torch tensor, is not 3-D, if A and B disagree on
        the number of layers or examples, if there are fewer than 2 examples, if any value is
        NaN or infinite, or if ``debiased=True`` and there are fewer than 4 examples.

    See Also
    --------
    linear_cka_result : The same measure for one pair of matrices.

    References
    ----------
    .. [1] S. Kornblith, M. Norouzi, H. Lee and G. Hinton, "Similarity of Neural Network
       Representations Revisited", ICML 2019.
    .. [2] L. Song, A. Smola, A. Gretton, J. Bedo and K. Borgwardt, "Feature Selection via
       Dependence Maximization", JMLR 13, 2012.
    """
    Av, Bv = check_paired_representations(A, B, stacked=True, names=names)
    _check_debiased_n(Av.shape[1], debiased)
    return _cka_stack(Av, Bv, debiased=debiased, names=names)


# --- measure registry entries. The import sits with them; _registry imports nothing from
# this module at run time, so there is no import cycle. ---
from mossa.similarity._registry import register_measure  # noqa: E402

register_measure(
    "linear_cka",
    symmetric=True,
    value_range=(0.0, 1.0),
    higher_is_similar=True,
    description="linear CKA, biased HSIC (Kornblith et al. 2019)",
    rotation_invariant=True,
)(linear_cka_result)


@register_measure(
    "debiased_cka",
    symmetric=True,
    value_range=(-1.0, 1.0),
    higher_is_similar=True,
    description="linear CKA, unbiased HSIC (Song et al. 2012); may be negative",
    rotation_invariant=True,
)
def _debiased_cka_result(X: Any, Y: Any) -> SimilarityResult:
    """``linear_cka_result(X, Y, debiased=True)``, as the registry's ``debiased_cka``."""
    return linear_cka_result(X, Y, debiased=True)


def cross_layer_linear_cka(A: Any, B: Any) -> np.ndarray:
    """Biased linear CKA between every layer of ``A`` and every layer of ``B``.

    Entry ``[i, j]`` equals ``linear_cka(A[i], B[j])``; all pairs come from one set of
    centred Gram matrices (n x n per layer, float64), so the whole matrix costs about as much
    as one product of two ``[layers, n*n]`` matrices.

    Parameters
    ----------
    A : numpy.ndarray or torch.Tensor of shape (layers_a, n_examples, d1)
    B : numpy.ndarray or torch.Tensor of shape (layers_b, n_examples, d2)
        The same examples in the same row order; the layer counts may differ.

    Returns
    -------
    numpy.ndarray of shape (layers_a, layers_b)
        NaN where either layer does not vary across examples (CKA is 0/0 there); such layers
        are the ones for which :func:`linear_cka_result` gives a reason.

    Raises
    ------
    MossaError
        If the inputs fail validation (see :func:`layerwise_linear_cka`).
    """
    Av = check_paired_representations(A, A, stacked=True, names=("A", "A"))[0]
    Bv = check_paired_representations(B, B, stacked=True, names=("B", "B"))[0]
    if Av.shape[1] != Bv.shape[1]:
        raise MossaError(f"A and B must hold the same examples: got {Av.shape[1]} and {Bv.shape[1]} rows; "
                         "align the rows by example id first")

    def unit_grams(stack: np.ndarray) -> np.ndarray:
        scaled = _scale_pow2(stack)
        centred = _center(scaled)
        grams = np.einsum("lid,ljd->lij", centred, centred).reshape(len(stack), -1)  # [layers, n*n]
        norms = np.linalg.norm(grams, axis=1)
        constant = np.einsum("lij,lij->l", centred, centred) <= (_CONSTANT_RTOL**2) * np.einsum(
            "lij,lij->l", scaled, scaled)
        out = np.full_like(grams, np.nan)
        ok = ~constant & (norms > 0)
        out[ok] = grams[ok] / norms[ok, None]
        return out

    return unit_grams(Av) @ unit_grams(Bv).T
