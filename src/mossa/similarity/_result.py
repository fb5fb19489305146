"""What every similarity measure returns, and the shared test of "does not vary across examples".

Part of the ``similarity`` stage; imports nothing else of it, so the measures and the input
checks (``_validation.py``) can all build on it without an import cycle.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

# A representation "does not vary across examples" when the Frobenius norm of its centred
# matrix is at most this fraction of the norm of the uncentred one, i.e. when
# trace(K) = ||Xc||_F^2 <= (rtol * ||X||_F)^2. Two-pass centring leaves a constant matrix
# with residuals around (n * 2.2e-16)^2 of its scale, and real float32/bfloat16 hidden states
# cannot carry variation 1e-12 below their own magnitude (float32 resolves 6e-8), so 1e-12
# separates round-off from signal with orders of magnitude to spare on both sides.
# In terms of self-HSIC this is ||Xc^T Xc||_F <= (rtol * ||X||_F)^2 up to a sqrt(rank) factor.
_CONSTANT_RTOL = 1e-12

@dataclass(frozen=True)
class SimilarityResult:
    """The value of a similarity measure, or why it is undefined.

    Parameters
    ----------
    value : float
        The similarity. NaN only when the measure is undefined for these inputs.
    reason : str or None
        None when ``value`` is defined; otherwise a short human-readable reason, such as
        ``"X does not vary across examples (0/0)"``.
    n_examples : int
        Number of examples (rows) the value was computed from.
    """

    value: float
    reason: str | None
    n_examples: int

    def __post_init__(self) -> None:
        # A programmer error, not a user one: results are built by the measures only.
        if math.isnan(self.value) != (self.reason is not None):
            raise ValueError(
                f"SimilarityResult: value must be NaN exactly when a reason is given, got "
                f"value={self.value!r}, reason={self.reason!r}"
            )


class UndefinedSimilarityWarning(RuntimeWarning):
    """A similarity was undefined (for example 0/0) and NaN was returned in its place."""


def _scale_pow2(A: np.ndarray) -> np.ndarray:
    """Scale each matrix of a ``[layers, n, d]`` stack by a power of two so max |a| is in [0.5, 1).

    CKA is invariant to isotropic scaling and a power-of-two factor is exact, so this changes
    no bit of the result for ordinary data while ruling out overflow of the fourth powers in
    HSIC for very large inputs and underflow for very small ones.
    """
    peak = np.max(np.abs(A), axis=(1, 2), keepdims=True)  # [layers, 1, 1]
    _, exponent = np.frexp(peak)
    exponent = np.where(peak > 0, exponent, 0)
    return np.ldexp(A, -exponent)


def _center(A: np.ndarray) -> np.ndarray:
    """Centre the columns of each matrix of a ``[layers, n, d]`` stack, in two passes.

    The second pass removes the rounding error of the first mean, so a constant matrix
    centres to (almost exactly) zero however many rows it has.
    """
    Ac = A - A.mean(axis=1, keepdims=True)
    Ac -= Ac.mean(axis=1, keepdims=True)
    return Ac


def _constant_reason(const_x: bool, const_y: bool, names: tuple[str, str]) -> str | None:
    name_x, name_y = names
    if const_x and const_y:
        return f"{name_x} and {name_y} do not vary across examples (0/0)"
    if const_x:
        return f"{name_x} does not vary across examples (0/0)"
    if const_y:
        return f"{name_y} does not vary across examples (0/0)"
    return None
