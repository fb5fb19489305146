"""Analysis: tables and statistics computed from stored activations. Loads no model.

Stage: analysis (reads activation files from the store; writes results/).
"""

from mossa.analysis._similarity import COMPARED, SIMILARITY_COLUMNS, align, analyze, mean_loss, task_similarity

__all__ = ["COMPARED", "SIMILARITY_COLUMNS", "align", "analyze", "mean_loss", "task_similarity"]
