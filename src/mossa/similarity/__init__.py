"""Similarity measures between representations of the same examples.

The ``similarity`` stage: it reads per-layer hidden-state matrices (rows = examples) of two
models and returns how similar they are, layer by layer. Each measure family lives in a
private module (``_cka.py``, ``_kernel.py``, ``_cca.py``, ``_procrustes.py``, ``_knn.py``, and
``_robust.py`` for the CKA variants robust to outlier dimensions and dominant directions) and is
re-exported here; what every measure returns lives in ``_result.py``, shared input checks in
``_validation.py``. Every
measure registers itself by name in the measure registry (``_registry.py``) when its module is imported.
"""

from mossa.similarity._cca import pwcca, pwcca_result, svcca, svcca_result
from mossa.similarity._cka import (
    SimilarityResult,
    select_form,
    UndefinedSimilarityWarning,
    cross_layer_linear_cka,
    layerwise_linear_cka,
    linear_cka,
    linear_cka_result,
)
from mossa.similarity._kernel import rbf_cka, rbf_cka_result
from mossa.similarity._kernel import squared_distances as pairwise_squared_distances
from mossa.similarity._knn import mutual_knn, mutual_knn_result
from mossa.similarity._procrustes import procrustes_distance, procrustes_distance_result
from mossa.similarity._robust import (
    DOMINANT_SHARE,
    OUTLIER_RULE,
    ROBUST_MEASURES,
    TOP_PCS_RULE,
    dominant_directions,
    outlier_dims,
    random_dims,
)
from mossa.similarity._validation import as_float64, is_torch_tensor, row_space_factor
from mossa.similarity._streaming import StreamingLinearCKA, cross_layer_cka, stream_chunks
from mossa.similarity._registry import (
    Measure,
    available_measures,
    get_measure,
    register_measure,
    register_permuted,
)

__all__ = [
    "DOMINANT_SHARE",
    "Measure",
    "OUTLIER_RULE",
    "ROBUST_MEASURES",
    "SimilarityResult",
    "StreamingLinearCKA",
    "TOP_PCS_RULE",
    "UndefinedSimilarityWarning",
    "as_float64",
    "available_measures",
    "cross_layer_cka",
    "cross_layer_linear_cka",
    "dominant_directions",
    "get_measure",
    "is_torch_tensor",
    "layerwise_linear_cka",
    "linear_cka",
    "linear_cka_result",
    "mutual_knn",
    "mutual_knn_result",
    "outlier_dims",
    "pairwise_squared_distances",
    "procrustes_distance",
    "procrustes_distance_result",
    "pwcca",
    "pwcca_result",
    "random_dims",
    "rbf_cka",
    "rbf_cka_result",
    "register_measure",
    "register_permuted",
    "row_space_factor",
    "select_form",
    "stream_chunks",
    "svcca",
    "svcca_result",
]
