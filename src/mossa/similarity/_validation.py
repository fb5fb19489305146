"""Shared input checks for every similarity measure.

Part of the ``similarity`` stage: it reads hidden-state matrices handed over by the caller
(NumPy arrays or torch tensors, any real dtype) and returns clean float64 NumPy arrays, so the
measure bodies never re-check. Every public measure calls :func:`check_paired_representations`
in its first lines, and every message says what was expected, what arrived, and the fix.
"""

from __future__ import annotations

import sys
from typing import Any

import numpy as np

from mossa.errors import MossaError

__all__ = ["check_paired_representations"]

# dtype kinds NumPy may hand us that carry real numbers: float, signed and unsigned int.
_REAL_KINDS = frozenset("fiu")


def _is_torch_tensor(obj: Any) -> bool:
    """Tell whether ``obj`` is a torch tensor, without importing torch ourselves.

    If torch was never imported, nothing can be a tensor, so the check costs no import.
    """
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(obj, torch.Tensor)


def _to_float64(obj: Any, name: str) -> np.ndarray:
    """Convert one NumPy array or torch tensor to a float64 NumPy array (a copy when needed)."""
    if _is_torch_tensor(obj):
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
    X = _to_float64(X, name_x)
    Y = _to_float64(Y, name_y)

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
