"""The measure registry: every similarity measure by its lower_snake name, with its metadata.

Part of the ``similarity`` stage. Each measure module registers its ``*_result`` function
where it is defined, with :func:`register_measure`; the pipeline and the CLI look measures up
by name with :func:`get_measure` and list them with :func:`available_measures`. The registry
is a plain dict filled at import time; it reads and writes nothing else.
"""

from __future__ import annotations

import math
import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import numpy as np

from mossa.errors import MossaError, unknown_name_error

if TYPE_CHECKING:
    from mossa.similarity._result import SimilarityResult

__all__ = ["Measure", "available_measures", "get_measure", "register_measure", "register_permuted"]

_NAME = re.compile(r"[a-z][a-z0-9]*(?:_[a-z0-9]+)*")


@dataclass(frozen=True)
class Measure:
    """A registered similarity measure: the function and what its values mean.

    Calling a ``Measure`` calls its function: ``get_measure("svcca")(X, Y, variance=0.9)``
    returns a :class:`~mossa.similarity.SimilarityResult`.

    Parameters
    ----------
    name : str
        Registry key, lower_snake (``"linear_cka"``).
    func : callable
        ``func(X, Y, **options) -> SimilarityResult``.
    symmetric : bool
        Whether ``func(X, Y)`` equals ``func(Y, X)`` for all inputs.
    value_range : tuple of (float, float)
        The closed interval every defined value lies in (up to float round-off).
    higher_is_similar : bool
        True for similarities (best value ``value_range[1]``), False for distances (best value
        ``value_range[0]``).
    description : str
        One line for listings.
    rotation_invariant : bool
        Whether the value is unchanged when either side's features are rotated (``X -> X Q``,
        Q orthogonal); such a measure may be computed on the n x rank(X) rotation ``X V`` of an
        n < d representation, which is much cheaper.
    permuted : callable or None
        ``permuted(X, Y, perms) -> values [K]``: the value with Y's rows re-paired by each
        permutation in ``perms`` [K, n], computed faster than K calls (see
        :func:`register_permuted`); None means K calls.
    """

    name: str
    func: Callable[..., SimilarityResult]
    symmetric: bool
    value_range: tuple[float, float]
    higher_is_similar: bool
    description: str
    rotation_invariant: bool = False
    permuted: Callable[..., np.ndarray] | None = None

    def __call__(self, X: Any, Y: Any, **options: Any) -> SimilarityResult:
        return self.func(X, Y, **options)

    def null_values(self, X: np.ndarray, Y: np.ndarray, perms: np.ndarray) -> np.ndarray:
        """The value of (X, Y[p]) for each permutation p in ``perms`` [K, n] (NaN where undefined)."""
        if self.permuted is not None:
            return np.asarray(self.permuted(X, Y, perms), dtype=np.float64)
        out = np.empty(len(perms))
        for i, p in enumerate(perms):
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    out[i] = self.func(X, Y[p]).value
            except MossaError:
                out[i] = math.nan
        return out

    @property
    def best_value(self) -> float:
        """The value of a representation compared with itself."""
        return self.value_range[1] if self.higher_is_similar else self.value_range[0]

    @property
    def origin(self) -> str:
        """Where the function is defined, as ``module:qualname``."""
        return f"{self.func.__module__}:{self.func.__qualname__}"


_MEASURES: dict[str, Measure] = {}


def _check_metadata(
    name: Any,
    symmetric: Any,
    value_range: Any,
    higher_is_similar: Any,
    description: Any,
) -> tuple[float, float]:
    where = f"register_measure({name!r})"
    if not isinstance(name, str) or _NAME.fullmatch(name) is None:
        raise MossaError(
            f"{where}: expected a lower_snake name such as 'linear_cka', got {name!r}. "
            f"Fix: use lower-case letters, digits and single underscores."
        )
    for field, value in (("symmetric", symmetric), ("higher_is_similar", higher_is_similar)):
        if not isinstance(value, bool):
            raise MossaError(
                f"{where}: expected {field} to be True or False, got {value!r}. Fix: pass a bool."
            )
    try:
        lo, hi = (float(v) for v in value_range)
    except (TypeError, ValueError):
        lo = hi = math.nan
    if not (lo < hi):  # also catches NaN and wrong lengths
        raise MossaError(
            f"{where}: expected value_range to be (low, high) with low < high, got "
            f"{value_range!r}. Fix: pass e.g. value_range=(0.0, 1.0)."
        )
    if not isinstance(description, str) or not description.strip():
        raise MossaError(
            f"{where}: expected a non-empty description, got {description!r}. Fix: describe "
            f"the measure in one line."
        )
    return lo, hi


def register_measure(
    name: str,
    *,
    symmetric: bool,
    value_range: tuple[float, float],
    higher_is_similar: bool,
    description: str,
    rotation_invariant: bool = False,
) -> Callable[[Callable[..., SimilarityResult]], Callable[..., SimilarityResult]]:
    """Register a measure function under ``name``; use as a decorator.

    The decorated function is returned unchanged, so ``@register_measure(...)`` can sit on the
    public ``*_result`` function itself.

    Parameters
    ----------
    name : str
        Registry key, lower_snake (``^[a-z][a-z0-9]*(_[a-z0-9]+)*$``).
    symmetric : bool
        Whether the measure gives the same value with its arguments swapped.
    value_range : tuple of (float, float)
        Closed interval of the defined values; ``low < high``.
    higher_is_similar : bool
        True for similarities, False for distances.
    description : str
        One non-empty line for listings.
    rotation_invariant : bool, default=False
        Whether rotating either side's features leaves the value unchanged.

    Returns
    -------
    callable
        A decorator that registers ``func(X, Y, **options) -> SimilarityResult`` and returns it.

    Raises
    ------
    MossaError
        If the name is not lower_snake or is already registered, or if a metadata value is
        malformed.

    Examples
    --------
    How a measure module registers its function (not run here, to keep the registry clean)::

        @register_measure(
            "my_measure", symmetric=True, value_range=(0.0, 1.0),
            higher_is_similar=True, description="what it measures, in one line",
        )
        def my_measure_result(X, Y) -> SimilarityResult:
            ...
    """
    lo, hi = _check_metadata(name, symmetric, value_range, higher_is_similar, description)

    def decorator(func: Callable[..., SimilarityResult]) -> Callable[..., SimilarityResult]:
        if not callable(func):
            raise MossaError(
                f"register_measure({name!r}): expected a function, got {func!r}. Fix: decorate "
                f"the measure's *_result function."
            )
        if name in _MEASURES:
            raise MossaError(
                f"register_measure({name!r}): expected a new name, got one already registered "
                f"by {_MEASURES[name].origin} (now from {func.__module__}:"
                f"{func.__qualname__}). Fix: choose another name."
            )
        _MEASURES[name] = Measure(name, func, symmetric, (lo, hi), higher_is_similar, description,
                                  rotation_invariant=bool(rotation_invariant))
        return func

    return decorator


def register_permuted(name: str) -> Callable[[Callable[..., np.ndarray]], Callable[..., np.ndarray]]:
    """Attach a batched permutation-null function to the registered measure ``name``.

    The function ``f(X, Y, perms)`` must return, for each row ``p`` of ``perms`` [K, n], the
    value of the measure on ``(X, Y[p])`` (NaN where undefined); the permutation nulls of the
    analysis use it instead of K calls.
    """
    measure = get_measure(name)

    def decorator(func: Callable[..., np.ndarray]) -> Callable[..., np.ndarray]:
        _MEASURES[name] = replace(measure, permuted=func)
        return func

    return decorator


def available_measures() -> list[str]:
    """The names of all registered measures, sorted.

    Examples
    --------
    >>> from mossa.similarity import available_measures
    >>> "linear_cka" in available_measures()
    True
    """
    return sorted(_MEASURES)


def get_measure(name: str) -> Measure:
    """Look up a registered measure by name.

    Parameters
    ----------
    name : str
        A name from :func:`available_measures`.

    Returns
    -------
    Measure
        Callable as ``measure(X, Y, **options) -> SimilarityResult``, with its metadata.

    Raises
    ------
    MossaError
        If no measure has that name; the message lists the closest names first.

    Examples
    --------
    >>> import numpy as np
    >>> from mossa.similarity import get_measure
    >>> measure = get_measure("procrustes_distance")
    >>> measure.higher_is_similar, measure.best_value
    (False, 0.0)
    """
    try:
        return _MEASURES[name]
    except (KeyError, TypeError):
        raise unknown_name_error(
            "measure", str(name), available_measures(), "the measure registry"
        ) from None
