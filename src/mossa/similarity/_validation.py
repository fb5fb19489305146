"""Shared input checks for every similarity measure.

Part of the ``similarity`` stage: it reads hidden-state matrices handed over by the caller
(NumPy arrays or torch tensors, any real dtype) and returns clean float64 NumPy arrays, so the
measure bodies never re-check. Every public measure calls :func:`check_paired_representations`
in its first lines, and every message says what was expected, what arrived, and the fix.
"""

from __future__ import annotations

import math
import numbers
import sys
import warnings
from typing import Any, NamedTuple

import numpy as np

from mossa.errors import MossaError
from mossa.similarity._result import _CONSTANT_RTOL, SimilarityResult, UndefinedSimilarityWarning
from mossa.similarity._result import _center, _constant_reason, _scale_pow2  # the test of "does not vary"


__all__ = [
    "CentredPair",
    "as_float64",
    "is_torch_tensor",
    "centre_and_check_variation",
    "row_space_factor",
    "check_paired_representations",
    "check_scalar",
    "value_or_warn",
]

# dtype kinds NumPy may hand us that carry real numbers: float, signed and unsigned int.
_REAL_KINDS = frozenset("fiu")


def is_torch_tensor(obj: Any) -> bool:
    """Tell whether ``obj`` is a torch tensor, without importing torch ourselves.

    If torch was never imported, nothing can be a tensor, so the check costs no import.
    """
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(obj, torch.Tensor)


def as_float64(obj: Any, name: str) -> np.ndarray:
    """Convert one NumPy array or torch tensor to a float64 NumPy array (a copy when needed)."""
    if is_torch_tensor(obj):
        import torch

        if obj.is_complex() or obj.dtype == torch.bool:
            raise MossaError(
                f"{name}: expected a tensor of real numbers (float16, bfloat16, float32 or "
                f"float64), got dtype {obj.dtype}. Fix: pass the hidden states themselves, "
                f"e.g. `{name}.float()`."
            )
        # Move to CPU in the input dtype (fewer bytes), then upcast: every float dtype torch
        # has (bfloat16 included, which NumPy lacks) converts to float64 exactly.
        return obj.detach().cpu().to(torch.float64).numpy()
    if isinstance(obj, np.ndarray):
        if obj.dtype.kind not in _REAL_KINDS:
            raise MossaError(
                f"{name}: expected an array of real numbers (a float dtype), got dtype "
                f"{obj.dtype}. Fix: pass the hidden states as floats, e.g. "
                f"`{name}.astype(np.float32)`."
            )
        return np.asarray(obj, dtype=np.float64)
    raise MossaError(
        f"{name}: expected a numpy.ndarray or torch.Tensor, got {type(obj).__module__}."
        f"{type(obj).__qualname__}. Fix: wrap it with `np.asarray({name})`."
    )


def _shape_hint(ndim: int) -> str:
    return "(n_examples, d)" if ndim == 2 else "(n_layers, n_examples, d)"


def check_paired_representations(
    X: Any,
    Y: Any,
    *,
    stacked: bool = False,
    names: tuple[str, str] = ("X", "Y"),
) -> tuple[np.ndarray, np.ndarray]:
    """Check two representations of the same examples and return them as float64 arrays.

    Parameters
    ----------
    X : numpy.ndarray or torch.Tensor of shape (n_examples, d1)
        First representation, one row per example. Any real dtype; torch tensors may live on
        any device and be float16 or bfloat16. With ``stacked=True`` the shape is
        ``(n_layers, n_examples, d1)``.
    Y : numpy.ndarray or torch.Tensor of shape (n_examples, d2)
        Second representation of the same examples, in the same row order. With
        ``stacked=True`` the shape is ``(n_layers, n_examples, d2)``.
    stacked : bool, default=False
        Whether the inputs are stacks of per-layer matrices (3-D) rather than one matrix each.
    names : tuple of (str, str), default=("X", "Y")
        How the two inputs are called in error messages.

    Returns
    -------
    X : numpy.ndarray of float64, shape (n_examples, d1) or (n_layers, n_examples, d1)
    Y : numpy.ndarray of float64, shape (n_examples, d2) or (n_layers, n_examples, d2)

    Raises
    ------
    MossaError
        If an input is not a NumPy array or torch tensor, holds non-real values, has the wrong
        number of dimensions, if the two disagree on the number of examples (or layers), if
        there are fewer than 2 examples or no features, or if any value is NaN or infinite.
    """
    ndim = 3 if stacked else 2
    name_x, name_y = names
    X = as_float64(X, name_x)
    Y = as_float64(Y, name_y)

    for arr, name in ((X, name_x), (Y, name_y)):
        if arr.ndim != ndim:
            fix = (
                f"stack the per-layer matrices with `np.stack` into {_shape_hint(3)}"
                if stacked
                else (
                    f"reshape a single example with `{name}.reshape(1, -1)` or a 1-D feature "
                    f"with `{name}.reshape(-1, 1)`"
                    if arr.ndim == 1
                    else f"select one layer, e.g. `{name}[layer]`, or use "
                    f"layerwise_linear_cka for a stack of layers"
                )
            )
            raise MossaError(
                f"{name}: expected a {ndim}-D array of shape {_shape_hint(ndim)}, got "
                f"{arr.ndim}-D with shape {arr.shape}. Fix: {fix}."
            )

    if stacked and X.shape[0] != Y.shape[0]:
        raise MossaError(
            f"{name_x} and {name_y}: expected the same number of layers, got "
            f"{name_x}.shape={X.shape} and {name_y}.shape={Y.shape}. Fix: compare layer "
            f"stacks of equal depth, e.g. slice both to the layers you want."
        )
    if X.shape[-2] != Y.shape[-2]:
        raise MossaError(
            f"{name_x} and {name_y}: expected the same number of rows (examples), got "
            f"{name_x}.shape={X.shape} and {name_y}.shape={Y.shape}. Rows must be the same "
            f"examples in the same order. Fix: align both by example id before comparing."
        )
    n_examples = X.shape[-2]
    if n_examples < 2:
        raise MossaError(
            f"{name_x} and {name_y}: expected at least 2 examples (rows), got {n_examples}. "
            f"Similarity across examples needs variation across examples. Fix: extract "
            f"hidden states for more examples."
        )
    for arr, name in ((X, name_x), (Y, name_y)):
        if arr.shape[-1] == 0:
            raise MossaError(
                f"{name}: expected at least 1 feature (column), got shape {arr.shape}. "
                f"Fix: check the extraction step produced hidden states."
            )
        if stacked and arr.shape[0] == 0:
            raise MossaError(
                f"{name}: expected at least 1 layer, got shape {arr.shape}. Fix: pass the "
                f"stack of per-layer hidden states."
            )

    for arr, name in ((X, name_x), (Y, name_y)):
        finite = np.isfinite(arr)
        if not finite.all():
            # A row (example) is bad if any of its values, in any layer, is NaN or Inf.
            bad_rows = ~finite.all(axis=-1)
            if stacked:
                bad_rows = bad_rows.any(axis=0)
            n_bad = int(bad_rows.sum())
            first = np.flatnonzero(bad_rows)[:5].tolist()
            where = " in at least one layer" if stacked else ""
            raise MossaError(
                f"{name}: expected finite values, got {n_bad} of {n_examples} rows (examples) "
                f"holding NaN or Inf{where} (row indices starting {first}). Fix: drop those "
                f"examples from both inputs jointly, by example id, before comparing, as the "
                f"pipeline does; the measure never drops rows silently."
            )
    return X, Y


def check_scalar(
    value: Any,
    name: str,
    *,
    integer: bool = False,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    fix: str,
) -> float | int:
    """Check one numeric parameter of a measure and return it as a Python ``float`` (or ``int``).

    ``bool`` is refused even though it is an ``int``. Bounds are inclusive unless
    ``low_open=True``; non-finite floats are refused. The message names the parameter, the
    allowed values, what arrived, and ``fix``.
    """
    kind = "an integer" if integer else "a real number"
    allowed = kind
    if low is not None or high is not None:
        left = "(" if low_open else "["
        right = f"{high}]" if high is not None else "inf)"
        allowed += f" in {left}{low if low is not None else '-inf'}, {right}"
    ok_type = isinstance(value, numbers.Integral if integer else numbers.Real) and not isinstance(
        value, bool
    )
    if ok_type:
        number = int(value) if integer else float(value)
        ok = math.isfinite(number)
        if ok and low is not None:
            ok = number > low if low_open else number >= low
        if ok and high is not None:
            ok = number <= high
        if ok:
            return number
    raise MossaError(f"{name}: expected {allowed}, got {value!r}. Fix: {fix}.")


class CentredPair(NamedTuple):
    """Two column-centred representations and whether each varies across examples.

    ``X`` and ``Y`` are each scaled by a power of two (exact, see ``_result._scale_pow2``) and
    then centred, so they may only feed quantities invariant to isotropic scaling. ``reason`` is
    None when both vary, else the reason linear CKA gives for the same inputs.
    """

    X: np.ndarray
    Y: np.ndarray
    varies_x: bool
    varies_y: bool
    reason: str | None


def centre_and_check_variation(
    X: np.ndarray, Y: np.ndarray, *, names: tuple[str, str] = ("X", "Y")
) -> CentredPair:
    """Centre two validated float64 matrices and apply linear CKA's "does not vary" rule.

    Every measure uses the same threshold as :func:`mossa.similarity.linear_cka` (centred
    Frobenius norm at most ``_result._CONSTANT_RTOL`` of the uncentred one), so all measures
    agree on which representations count as constant.

    Parameters
    ----------
    X : numpy.ndarray of float64, shape (n_examples, d1)
    Y : numpy.ndarray of float64, shape (n_examples, d2)
        Outputs of :func:`check_paired_representations`.
    names : tuple of (str, str), default=("X", "Y")
        How the two sides are called in the reason.
    """

    Xs = _scale_pow2(X[None])  # [1, n, d1]
    Ys = _scale_pow2(Y[None])  # [1, n, d2]
    Xc = _center(Xs)[0]  # [n, d1]
    Yc = _center(Ys)[0]  # [n, d2]
    const_x = bool(np.sum(Xc * Xc) <= _CONSTANT_RTOL**2 * np.sum(Xs * Xs))
    const_y = bool(np.sum(Yc * Yc) <= _CONSTANT_RTOL**2 * np.sum(Ys * Ys))
    return CentredPair(Xc, Yc, not const_x, not const_y, _constant_reason(const_x, const_y, names))


def value_or_warn(result: SimilarityResult, measure: str) -> float:
    """Return ``result.value``, warning :class:`UndefinedSimilarityWarning` when it is NaN.

    For the float-returning twin of each ``*_result`` measure function; the warning points at
    the caller of that function (``stacklevel=3``).
    """
    if result.reason is not None:
        warnings.warn(
            f"{measure} is undefined, returning NaN: {result.reason}",
            UndefinedSimilarityWarning,
            stacklevel=3,
        )
    return result.value


def row_space_factor(A: Any) -> np.ndarray:
    """`A` [n, d] rotated onto its row space, [n, n] float64, when it is more than twice as wide as
    it is tall: R' from A' = Q R (so A = R' Q' and R' = A Q); otherwise `A` itself (in float64),
    where the QR would cost more than it saves.

    R' has A's Gram matrix A A', hence its distances, cosines, column centring, singular values
    and left singular vectors: every rotation-invariant measure gives the same value on it, at
    a cost set by n instead of d. Only R is computed (`mode="r"`), not Q.
    """
    A = np.asarray(A, dtype=np.float64)
    if A.shape[1] <= 2 * A.shape[0]:
        return A
    return np.linalg.qr(A.T, mode="r").T
