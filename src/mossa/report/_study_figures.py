"""Every figure of a study, drawn from the tables the analysis stage computed."""

from __future__ import annotations

from mossa.analysis import PROPERTIES
from mossa.report._layer_figures import plot_answer_by_layer, plot_probes_by_layer
from mossa.report._robustness_figures import plot_outliers
from mossa.report._tsne_figure import plot_tsne
from mossa.report.figures import (
    plot_cka_by_cluster,
    plot_cka_by_layer,
    plot_correlations,
    plot_layer_by_layer,
    plot_variance_dims,
)

HELDOUT = "heldout"


def plot_study(tables) -> None:
    """Draw figures/ of a study from its `mossa.analysis.StudyTables`."""
    figures = tables.root / "figures"
    title, sim, sections = tables.title, tables.similarity, tables.sections
    ceiling_rows = sim[sim["model"] == "ceiling"]
    plot_cka_by_layer(sim, figures / "cka_by_layer.png", title=title, medians=tables.medians, sections=sections,
                      ceiling=ceiling_rows)
    plot_cka_by_cluster(tables.medians, figures / "cka_by_cluster.png", title=title)
    plot_layer_by_layer(tables.cross_layer, figures / "layer_by_layer_cka.png", title=title)
    plot_variance_dims(tables.spectral, figures / "variance_dims.png", title=title)
    plot_tsne(tables.tsne, figures / "tsne_layers.png", title=title)
    if tables.correlations is not None:
        plot_correlations(tables.correlations, figures / "correlations.png", title=title, labels=PROPERTIES)
    if tables.heldout:
        held = sim[sim["task"].isin(tables.heldout)]
        plot_cka_by_layer(held, figures / "heldout_cka_by_layer.png",
                          title=f"{title}, {len(tables.heldout)} tasks held out of E'", models=("base", HELDOUT),
                          medians=tables.heldout_medians,
                          sections=sections[HELDOUT], ceiling=ceiling_rows)
    plot_answer_by_layer(tables.lens, figures / "answer_by_layer.png", title=title, sections=sections)
    plot_probes_by_layer(tables.probes, figures / "probes_by_layer.png", title=title, sections=sections)
    if tables.outliers is not None:
        plot_outliers(tables.outliers, sim, figures / "outliers.png", title=title, sections=sections)
