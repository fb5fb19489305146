"""Report: figures, the summary written from the numbers, and the HTML report, from the result tables.

Stage: report (reads results/ tables; writes figures/). Loads no model and no activations.
"""

from mossa.report._causal_figures import plot_causal, plot_section_checks
from mossa.report._layer_figures import plot_answer_by_layer, plot_probes_by_layer
from mossa.report._robustness_figures import plot_outliers
from mossa.report._study_figures import plot_study
from mossa.report._summary import StudySummary, section_check_sentences, summarize, summary_sentences
from mossa.report._tsne_figure import plot_tsne
from mossa.report.figures import (
    plot_cka_by_cluster,
    plot_cka_by_layer,
    plot_correlations,
    plot_layer_by_layer,
    plot_variance_dims,
)

__all__ = ["StudySummary", "plot_answer_by_layer", "plot_causal", "plot_probes_by_layer", "plot_section_checks", "plot_study", "plot_cka_by_cluster",
           "plot_cka_by_layer", "plot_correlations", "plot_layer_by_layer", "plot_outliers", "plot_tsne",
           "plot_variance_dims", "section_check_sentences", "summarize", "summary_sentences"]
