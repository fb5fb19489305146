"""Every figure of a study, drawn from the tables the analysis stage computed."""

from __future__ import annotations

from mossa.analysis import PROPERTIES, cross_task_means
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
    cross = cross_task_means(tables.references) if tables.references is not None else None
    measured = set(sim["measure"])  # the paper's biased linear CKA when measured, else the first measure
    measure = "linear_cka" if "linear_cka" in measured or not len(sim) else str(sim["measure"].iloc[0])
    plot_cka_by_layer(sim, figures / "cka_by_layer.png", title=title, measure=measure, medians=tables.medians,
                      sections=sections, ceiling=ceiling_rows, cross=cross)
    plot_cka_by_cluster(tables.medians, figures / "cka_by_cluster.png", title=title, measure=measure, cross=cross)
    plot_layer_by_layer(tables.cross_layer, figures / "layer_by_layer_cka.png", title=title)
    plot_variance_dims(tables.spectral, figures / "variance_dims.png", title=title)
    plot_tsne(tables.tsne, figures / "tsne_layers.png", title=title)
    if tables.correlations is not None:
        plot_correlations(tables.correlations, figures / "correlations.png", title=title, labels=PROPERTIES)
    if tables.heldout:
        held = sim[sim["task"].isin(tables.heldout)]
        plot_cka_by_layer(held, figures / "heldout_cka_by_layer.png", measure=measure,
                          title=f"{title}, {len(tables.heldout)} tasks held out of E'", models=("base", HELDOUT),
                          medians=tables.heldout_medians,
                          sections=sections[HELDOUT], ceiling=ceiling_rows,
                          cross=None if cross is None else cross[cross["task"].isin(tables.heldout)])
    plot_answer_by_layer(tables.lens, figures / "answer_by_layer.png", title=title, sections=sections)
    plot_probes_by_layer(tables.probes, figures / "probes_by_layer.png", title=title, sections=sections)
    if tables.outliers is not None:
        plot_outliers(tables.outliers, sim, figures / "outliers.png", title=title, sections=sections)
