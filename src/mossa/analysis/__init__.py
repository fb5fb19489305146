"""Analysis: tables and statistics computed from stored activations and evaluation records, and
`analyze_study`, which computes every table of a finished study. Loads no model.

Stage: analysis (reads activation files from the store; writes results/).

Exported here is what other rooms (and the benchmarks) use; every helper stays in its own module
(`_similarity`, `_sections`, `_outliers`, ...), where its tests import it from.
"""

from mossa.analysis._correlations import PROPERTIES
from mossa.analysis._grams import KERNEL_MEASURES
from mossa.analysis._jackknife import example_intervals
from mossa.analysis._readability import readability
from mossa.analysis._robustness import median_gain
from mossa.analysis._sections import SECTION_MEASURE
from mossa.analysis._similarity import (
    CROSS,
    DEFAULT_MEASURES,
    HELDOUT,
    SECOND_SEED,
    aligned_rows,
    analyze,
    check_measures,
    cross_label,
    depth_map,
    scan,
)
from mossa.analysis._specificity import SPECIFICITY, cross_task_means, swap_test
from mossa.analysis._spectra import spectral_table
from mossa.analysis._study import LEARNED_RULE, StudyTables, analyze_study, evaluation_records, not_learned
from mossa.analysis._task_intervals import median_interval
from mossa.analysis._tsne import check_tsne_layers, tsne_embeddings

__all__ = ["CROSS", "DEFAULT_MEASURES", "KERNEL_MEASURES", "HELDOUT", "LEARNED_RULE", "PROPERTIES", "SECOND_SEED", "SECTION_MEASURE",
           "SPECIFICITY", "StudyTables", "aligned_rows", "analyze", "analyze_study", "check_measures", "check_tsne_layers",
           "cross_label", "cross_task_means", "depth_map", "evaluation_records", "example_intervals", "median_gain",
           "median_interval", "not_learned", "readability", "scan", "spectral_table", "swap_test", "tsne_embeddings"]
