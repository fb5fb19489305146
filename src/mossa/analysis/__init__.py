"""Analysis: tables and statistics computed from stored activations and evaluation records, and
`analyze_study`, which computes every table of a finished study. Loads no model.

Stage: analysis (reads activation files from the store; writes results/).
"""

from mossa.analysis._bootstrap import median_over_tasks
from mossa.analysis._causal import SectionChecks, section_checks
from mossa.analysis._jackknife import example_intervals
from mossa.analysis._correlations import PROPERTIES, correlations
from mossa.analysis._outliers import OUTLIER_COLUMNS, OUTLIER_RULE, outlier_dims, outlier_table, top_direction_share
from mossa.analysis._pool import JobPool, choose_workers, usable_cores
from mossa.analysis._readability import readability
from mossa.analysis._robustness import median_gain, robustness
from mossa.analysis._sections import SECTION_MEASURE, find_sections, layer_sections
from mossa.analysis._spectra import spectral_table
from mossa.analysis._study import EVALUATED, LEARNED_RULE, StudyTables, analyze_study, evaluation_records, not_learned
from mossa.analysis._tsne import check_tsne_layers, default_tsne_layers, tsne_embeddings, tsne_of_runs
from mossa.analysis._similarity import (
    COMPARED,
    DEFAULT_MEASURES,
    HELDOUT,
    SIMILARITY_COLUMNS,
    VALUES_ONLY,
    DepthMapped,
    align,
    aligned_rows,
    analyze,
    check_measures,
    depth_map,
    mean_loss,
    on_grid,
    scan,
    task_cross_layer,
    task_similarity,
)

__all__ = ["SectionChecks", "section_checks", "COMPARED", "DEFAULT_MEASURES", "EVALUATED", "HELDOUT", "LEARNED_RULE", "StudyTables", "analyze_study",
           "evaluation_records", "not_learned", "OUTLIER_COLUMNS", "OUTLIER_RULE", "PROPERTIES", "SECTION_MEASURE",
           "SIMILARITY_COLUMNS", "VALUES_ONLY", "DepthMapped", "JobPool", "median_gain", "outlier_dims",
           "outlier_table", "robustness", "top_direction_share", "align", "aligned_rows", "analyze", "check_measures",
           "check_tsne_layers", "choose_workers", "correlations", "default_tsne_layers", "depth_map",
           "example_intervals", "find_sections", "layer_sections", "mean_loss", "median_over_tasks", "on_grid",
           "readability", "scan", "usable_cores", "spectral_table", "task_cross_layer", "task_similarity",
           "tsne_embeddings", "tsne_of_runs"]
