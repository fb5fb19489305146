"""Analysis: tables and statistics computed from stored activations. Loads no model.

Stage: analysis (reads activation files from the store; writes results/).
"""

from mossa.analysis._similarity import (
    COMPARED,
    DEFAULT_MEASURES,
    HELDOUT,
    SIMILARITY_COLUMNS,
    align,
    analyze,
    check_measures,
    mean_loss,
    task_cross_layer,
    task_similarity,
)

__all__ = ["COMPARED", "DEFAULT_MEASURES", "HELDOUT", "SIMILARITY_COLUMNS", "align", "analyze", "check_measures",
           "mean_loss", "task_cross_layer", "task_similarity"]
