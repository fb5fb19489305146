"""Similarity measures between representations of the same examples.

The ``similarity`` stage: it reads per-layer hidden-state matrices (rows = examples) of two
models and returns how similar they are, layer by layer. Each measure family lives in a
private module (``_cka.py``, ...) and is re-exported here; shared input checks live in
``_validation.py``.
"""

from mossa.similarity._cka import (
    SimilarityResult,
    UndefinedSimilarityWarning,
    layerwise_linear_cka,
    linear_cka,
    linear_cka_result,
)

__all__ = [
    "SimilarityResult",
    "UndefinedSimilarityWarning",
    "layerwise_linear_cka",
    "linear_cka",
    "linear_cka_result",
]
