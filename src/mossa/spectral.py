"""Spectral summaries of one representation: how many directions its variance spreads over.

Stage: analysis (reads hidden-state matrices handed over by the caller, one per layer, rows =
examples; writes nothing, callers store the returned table). This is Fig 5 of Zhao et al.
(2024): per layer, the number of principal directions needed to explain 99% of the variance.

Everything is computed from the eigenvalues ``lam_1 >= lam_2 >= ... >= 0`` of the scatter
matrix of the column-centred input ``Xc`` (n x d), i.e. the squared singular values of
``Xc``. They are taken in whichever space is cheaper:

- ``n < d``: the eigenvalues of the n x n Gram matrix ``Xc Xc^T`` (``numpy.linalg.eigvalsh``);
- ``n >= d``: the singular values of ``Xc`` itself (``numpy.linalg.svd``).

The non-zero eigenvalues are the same in both spaces. All arithmetic is float64 whatever the
input dtype (NumPy arrays or torch tensors, bfloat16 included).

Round-off conventions (shared by both paths, so that they agree):

- Eigenvalues at or below ``max(n, d) * eps * lam_1`` (eps = 2.2e-16) are set to zero. That is
  the resolution of the Gram path: forming ``Xc Xc^T`` turns exact zeros into noise of that
  size, whose square roots would otherwise inflate the effective rank. Equivalently, singular
  values below about ``sqrt(max(n, d) * eps)`` of the largest (5e-7 at d = 1000) count as zero.
- A representation is *constant* (does not vary across examples) when
  ``||Xc||_F <= 1e-12 * ||X||_F``, the rule used by the similarity measures (see
  ``mossa.similarity._result``): two-pass centring of a constant matrix leaves residuals far below
  that, and float32 or bfloat16 hidden states cannot carry real variation that small.

Degenerate cases, decided once here:

- constant representation: :func:`dims_for_variance` returns ``0`` (no direction is needed to
  explain zero variance; this is a true answer, e.g. layer 0 when every prompt ends with the
  same answer-cue token); :func:`effective_rank` returns NaN and warns with
  :class:`DegenerateSpectrumWarning` (0/0: the normalised spectrum does not exist);
  :func:`layer_spectrum` reports ``dims_for_variance = 0``, ``total_variance = 0.0``, NaN for
  the two ratios, and one warning naming the constant layers.
- fewer than 2 examples, non-finite values, wrong shapes, ``threshold`` outside (0, 1]:
  :class:`~mossa.errors.MossaError`.

The cap: centring removes one dimension, so ``n`` examples span at most ``min(n - 1, d)``
directions and :func:`dims_for_variance` can never exceed that. A count *at* the cap means the
threshold needed every direction the sample has: it is a lower bound (more examples could
reveal more directions), not a measurement, and counts on different ``n`` are not comparable.
:func:`layer_spectrum` reports the cap (``max_dims``) and flags such layers (``at_cap``);
``mossa.analysis.spectral_table`` computes every task on a common ``n`` for that reason.

References
----------
Zhao, Z., Ziser, Y., & Cohen, S. B. (2024). Layer by Layer: Uncovering Where Multi-Task
Learning Happens in Instruction-Tuned Large Language Models. EMNLP 2024.

Roy, O., & Vetterli, M. (2007). The effective rank: A measure of effective dimensionality.
15th European Signal Processing Conference (EUSIPCO), 606-610.
"""

from __future__ import annotations

import math
import numbers
import warnings
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import pandas as pd

from mossa.errors import MossaError
from mossa.similarity import as_float64, is_torch_tensor

__all__ = [
    "SPECTRUM_COLUMNS",
    "DegenerateSpectrumWarning",
    "dims_for_variance",
    "effective_rank",
    "layer_spectrum",
]

SPECTRUM_COLUMNS = ["layer", "dims_for_variance", "effective_rank", "total_variance",
                    "top1_variance_fraction", "max_dims", "at_cap"]

# See the module docstring: ||Xc||_F <= _CONSTANT_RTOL * ||X||_F means "does not vary".
_CONSTANT_RTOL = 1e-12

# The cumulative explained-variance ratio is a sum of up to min(n, d) float64 terms divided by
# their total; its round-off is ~min(n, d) * 1.1e-16 (1e-13 at 1000 directions). A ratio within
# this *absolute* tolerance below the threshold counts as reaching it, so that threshold=1.0
# on rank-k data gives k and not k+1 or "never". It is far below any threshold resolution a
# user asks for (0.99, 0.999999).
_RATIO_TOL = 1e-12


class DegenerateSpectrumWarning(UserWarning):
    """A spectral summary is undefined (a representation that does not vary) and is NaN."""


# --------------------------------------------------------------------------------------------
# Validation (at the door; the bodies below trust their inputs)


def _check_threshold(threshold: Any) -> float:
    ok = (isinstance(threshold, numbers.Real) and not isinstance(threshold, bool)
          and math.isfinite(float(threshold)) and 0.0 < float(threshold) <= 1.0)
    if not ok:
        raise MossaError(
            f"threshold: expected a fraction of variance in (0, 1], got {threshold!r}. Fix: "
            f"pass e.g. threshold=0.99 for 99% of the variance (not 99)."
        )
    return float(threshold)


def _check_matrix(X: Any, name: str = "X") -> np.ndarray:
    """Check one representation (n_examples, d) and return it as float64."""
    X = as_float64(X, name)
    if X.ndim != 2:
        fix = ("select one layer, e.g. `X[layer]`, or call layer_spectrum on the stack"
               if X.ndim == 3 else "reshape it to (n_examples, d), e.g. `X.reshape(-1, 1)` "
               "for a single feature")
        raise MossaError(
            f"{name}: expected a 2-D array of shape (n_examples, d), got {X.ndim}-D with shape "
            f"{X.shape}. Fix: {fix}."
        )
    n, d = X.shape
    if n < 2:
        raise MossaError(
            f"{name}: expected at least 2 examples (rows), got {n} (shape {X.shape}). Variance "
            f"across examples needs at least two. Fix: extract hidden states for more examples."
        )
    if d < 1:
        raise MossaError(
            f"{name}: expected at least 1 feature (column), got shape {X.shape}. Fix: check the "
            f"extraction step produced hidden states."
        )
    finite = np.isfinite(X)
    if not finite.all():
        bad = np.flatnonzero(~finite.all(axis=1))
        raise MossaError(
            f"{name}: expected finite values, got {bad.size} of {n} rows holding NaN or Inf "
            f"(row indices starting {bad[:5].tolist()}). Fix: drop those examples before the "
            f"analysis (the pipeline drops them jointly by example id)."
        )
    return X


# --------------------------------------------------------------------------------------------
# The spectrum


def _spectrum(X: np.ndarray, *, method: Literal["auto", "gram", "svd"] = "auto") -> np.ndarray | None:
    """Eigenvalues of ``Xc^T Xc`` (= squared singular values of ``Xc``), descending.

    ``X`` is a checked float64 (n, d) matrix. Returns ``None`` for a constant representation.
    The length is ``min(n, d)``; eigenvalues below the shared round-off floor are exactly 0.
    """
    n, d = X.shape
    Xc = X - X.mean(axis=0, keepdims=True)  # [n, d]
    scale = float(np.linalg.norm(X))
    if float(np.linalg.norm(Xc)) <= _CONSTANT_RTOL * scale or scale == 0.0:
        return None
    if method == "auto":
        method = "gram" if n < d else "svd"
    if method == "gram":
        gram = Xc @ Xc.T  # [n, n]
        lam = np.linalg.eigvalsh(gram)[::-1][: min(n, d)]
    else:
        s = np.linalg.svd(Xc, compute_uv=False)  # [min(n, d)]
        lam = s * s
    lam = np.array(lam, dtype=np.float64)  # writable, descending
    floor = max(n, d) * np.finfo(np.float64).eps * lam[0]
    lam[lam <= floor] = 0.0
    return lam


def _dims_from_spectrum(lam: np.ndarray | None, threshold: float) -> int:
    if lam is None:
        return 0
    ratio = np.cumsum(lam) / lam.sum()
    return int(np.searchsorted(ratio, threshold - _RATIO_TOL, side="left")) + 1


def _effective_rank_from_spectrum(lam: np.ndarray | None) -> float:
    if lam is None:
        return math.nan
    s = np.sqrt(lam[lam > 0.0])
    p = s / s.sum()
    entropy = float(-(p * np.log(p)).sum())
    # exp of a non-negative entropy is >= 1 exactly; the upper end can exceed the count of
    # non-zero values by round-off only, so clip there.
    return float(min(math.exp(entropy), float(s.size)))


def _warn_constant(where: str) -> None:
    warnings.warn(
        f"{where} does not vary across examples (||X - mean||_F <= {_CONSTANT_RTOL:g} ||X||_F): "
        f"its normalised spectrum is 0/0, so the effective rank and the top-1 variance fraction "
        f"are NaN (dims_for_variance is 0).",
        DegenerateSpectrumWarning,
        stacklevel=3,
    )


# --------------------------------------------------------------------------------------------
# Public API


def dims_for_variance(X: Any, threshold: float = 0.99) -> int:
    """Number of principal directions needed to explain ``threshold`` of the variance.

    The smallest ``k`` such that the ``k`` largest-variance principal directions of the
    column-centred ``X`` explain at least ``threshold`` of its total variance, i.e.
    ``sum(lam[:k]) / sum(lam) >= threshold`` with ``lam`` the eigenvalues of the covariance.
    A cumulative ratio within 1e-12 below ``threshold`` counts as reaching it (float64
    round-off; it makes ``threshold=1.0`` return the rank instead of the rank plus one).

    Parameters
    ----------
    X : numpy.ndarray or torch.Tensor of shape (n_examples, d)
        One representation, one row per example. Any real dtype; computed in float64.
    threshold : float, default=0.99
        Fraction of the total variance to explain, in (0, 1]. Fig 5 of the paper uses 0.99.

    Returns
    -------
    int
        In ``[1, min(n_examples - 1, d)]``; ``0`` when ``X`` does not vary across examples
        (zero variance needs no direction). A value at ``min(n_examples - 1, d)`` is a lower
        bound: the threshold needed every direction the sample spans.

    Raises
    ------
    MossaError
        If ``threshold`` is not in (0, 1], ``X`` is not a 2-D real array or tensor, has fewer
        than 2 rows or no columns, or holds NaN or Inf.

    See Also
    --------
    effective_rank, layer_spectrum

    Examples
    --------
    >>> import numpy as np
    >>> X = np.array([[0.0, 0.0], [2.0, 0.1], [4.0, -0.1]])
    >>> dims_for_variance(X, threshold=0.99)
    1
    >>> dims_for_variance(X, threshold=1.0)
    2
    """
    threshold = _check_threshold(threshold)
    return _dims_from_spectrum(_spectrum(_check_matrix(X)), threshold)


def effective_rank(X: Any) -> float:
    """Entropy effective rank (Roy & Vetterli, 2007) of the column-centred ``X``.

    With ``s`` the singular values of ``Xc`` and ``p = s / sum(s)``, the effective rank is
    ``exp(-sum(p * log p))`` (zero singular values contribute nothing). It is invariant to
    rotation, translation and isotropic scaling of ``X``, equals ``k`` when the ``k`` non-zero
    singular values are equal, and lies in ``[1, rank(Xc)]``, a subset of
    ``[1, min(n_examples - 1, d)]`` (centering removes one dimension).

    Parameters
    ----------
    X : numpy.ndarray or torch.Tensor of shape (n_examples, d)
        One representation, one row per example. Any real dtype; computed in float64.

    Returns
    -------
    float
        The effective rank; NaN, with a :class:`DegenerateSpectrumWarning`, when ``X`` does not
        vary across examples (the normalised spectrum is 0/0).

    Raises
    ------
    MossaError
        If ``X`` is not a 2-D real array or tensor, has fewer than 2 rows or no columns, or
        holds NaN or Inf.

    References
    ----------
    Roy, O., & Vetterli, M. (2007). The effective rank: A measure of effective
    dimensionality. EUSIPCO 2007, 606-610.

    Examples
    --------
    >>> import numpy as np
    >>> X = np.array([[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0], [0.0, -1.0]])
    >>> round(effective_rank(X), 6)
    2.0
    """
    lam = _spectrum(_check_matrix(X))
    if lam is None:
        _warn_constant("X")
    return _effective_rank_from_spectrum(lam)


def layer_spectrum(acts: Any, threshold: float = 0.99, *, layers: Sequence[int] | None = None
                   ) -> pd.DataFrame:
    """Per-layer spectral summary of a stack of representations (Fig 5 of the paper).

    Each layer's spectrum is computed once and gives all the columns. Layers are converted
    to float64 one at a time, so the stack may be large and in a low-precision dtype.

    Parameters
    ----------
    acts : numpy.ndarray or torch.Tensor of shape (n_layers, n_examples, d)
        Hidden states of the same examples at every layer.
    threshold : float, default=0.99
        Fraction of the variance for the ``dims_for_variance`` column, in (0, 1].
    layers : sequence of int, optional
        The model layer of each entry of ``acts`` (default ``0 .. n_layers - 1``), for the
        ``layer`` column, warnings and errors; pass it when ``acts`` holds a selection of layers
        so that a message names the model's layer, not the position in the selection.

    Returns
    -------
    pandas.DataFrame
        One row per layer, columns ``SPECTRUM_COLUMNS``:

        - ``layer`` (int): the model layer (``layers``, default the index into ``acts``);
        - ``dims_for_variance`` (int): see :func:`dims_for_variance`;
        - ``effective_rank`` (float): see :func:`effective_rank`;
        - ``total_variance`` (float): sum of the per-feature sample variances (ddof=1),
          ``||Xc||_F^2 / (n - 1)``, the scale the fractions are relative to;
        - ``top1_variance_fraction`` (float): share of the total variance on the single
          largest-variance principal direction, ``lam_1 / sum(lam)``. Values near 1 flag a
          layer dominated by one direction (e.g. Gemma's mid layers hold 45-75% there), where
          a 99% count mostly measures the rest;
        - ``max_dims`` (int): ``min(n_examples - 1, d)``, the most directions ``n_examples``
          centred examples can span, so the most ``dims_for_variance`` can be;
        - ``at_cap`` (bool): ``dims_for_variance == max_dims``: the threshold needed every
          available direction, so the count is a lower bound, not a measurement.

        A layer that does not vary across examples has ``dims_for_variance = 0``,
        ``total_variance = 0.0`` and NaN for the two ratios; one
        :class:`DegenerateSpectrumWarning` names all such layers.

    Raises
    ------
    MossaError
        If ``threshold`` is not in (0, 1], ``acts`` is not a 3-D real array or tensor, has no
        layers, fewer than 2 examples or no features, or holds NaN or Inf, or ``layers`` does
        not give one int per entry of ``acts``.

    See Also
    --------
    dims_for_variance, effective_rank

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> acts = rng.normal(size=(3, 50, 8))
    >>> layer_spectrum(acts).columns.tolist()
    ['layer', 'dims_for_variance', 'effective_rank', 'total_variance', 'top1_variance_fraction',
     'max_dims', 'at_cap']
    """
    threshold = _check_threshold(threshold)
    shape = tuple(getattr(acts, "shape", ()))
    if not (is_torch_tensor(acts) or isinstance(acts, np.ndarray)):
        as_float64(acts, "acts")  # raises the type error
    if len(shape) != 3 or shape[0] < 1:
        fix = ("stack the per-layer matrices with `np.stack(per_layer)`" if len(shape) != 3
               else "pass at least one layer")
        raise MossaError(
            f"acts: expected a 3-D array of shape (n_layers, n_examples, d) with at least one "
            f"layer, got shape {shape}. Fix: {fix}; use dims_for_variance or effective_rank "
            f"for a single matrix."
        )
    if layers is None:
        names = [(i, f"acts[{i}]") for i in range(shape[0])]
    else:
        layers = list(layers)
        if len(layers) != shape[0] or not all(isinstance(x, numbers.Integral) for x in layers):
            raise MossaError(f"layers: expected one int per entry of acts ({shape[0]}), got {layers!r}")
        names = [(int(x), f"acts[{i}] (layer {int(x)})") for i, x in enumerate(layers)]
    rows, constant = [], []
    for i, (layer, name) in enumerate(names):
        X = _check_matrix(acts[i], name=name)  # [n, d] float64
        lam = _spectrum(X)
        if lam is None:
            constant.append(layer)
            total, top1 = 0.0, math.nan
        else:
            total = float(lam.sum()) / (X.shape[0] - 1)
            top1 = float(lam[0] / lam.sum())
        dims, cap = _dims_from_spectrum(lam, threshold), min(X.shape[0] - 1, X.shape[1])
        rows.append({
            "layer": layer,
            "dims_for_variance": dims,
            "effective_rank": _effective_rank_from_spectrum(lam),
            "total_variance": total,
            "top1_variance_fraction": top1,
            "max_dims": cap,
            "at_cap": dims == cap,
        })
    if constant:
        _warn_constant(f"acts at layer(s) {constant}")
    return pd.DataFrame(rows, columns=SPECTRUM_COLUMNS).astype(
        {"layer": "int64", "dims_for_variance": "int64", "effective_rank": "float64",
         "total_variance": "float64", "top1_variance_fraction": "float64", "max_dims": "int64",
         "at_cap": "bool"})
