"""The paper's Fig 4: t-SNE panels of B's and E's representations, coloured by task cluster.

Stage: report. Reads the long table from :func:`mossa.analysis.tsne_embeddings`
(columns ``model, layer, task, cluster, x, y`` and ``attrs["skipped"]``); writes one image.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.backend_bases import FigureCanvasBase  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from mossa.errors import MossaError  # noqa: E402
from mossa.store import atomic_path  # noqa: E402

MODEL_LABELS = {"base": "B (base)", "experimental": "E (multi-task)"}
_REQUIRED = ("model", "layer", "cluster", "x", "y")
_MARKERS = ("o", "^", "s", "D", "v")


def cluster_colours(clusters: list[str]) -> dict[str, tuple]:
    """Distinct colours per cluster: tab20's ten saturated hues first, then its ten light ones.

    Beyond 20 clusters colours repeat; :func:`plot_tsne` then varies the marker too.
    """
    cmap = plt.get_cmap("tab20")
    order = list(range(0, 20, 2)) + list(range(1, 20, 2))
    return {c: cmap(order[i % 20]) for i, c in enumerate(clusters)}


def plot_tsne(emb: pd.DataFrame, path: Path, *, title: str) -> None:
    """Draw t-SNE embeddings as a grid: rows = models (B, E), columns = layers.

    Points are coloured by task cluster with one legend shared by all panels. t-SNE axes have
    no units or meaning, so panels carry no ticks; distances between far-apart groups are not
    meaningful either, only which points group together. A (model, layer) listed in
    ``emb.attrs["skipped"]`` gets an empty panel stating why it was not embedded.

    Parameters
    ----------
    emb : pandas.DataFrame
        Table from :func:`mossa.analysis.tsne_embeddings`; needs columns ``model, layer,
        cluster, x, y``.
    path : Path
        Output image; its suffix (``.png``, ``.pdf``, ``.svg``) picks the format. Written
        atomically.
    title : str
        Study name, put before the figure's own description.

    Raises
    ------
    MossaError
        If columns are missing, there is nothing to draw, or the suffix is not an image format.
    """
    path = Path(path)
    missing = [c for c in _REQUIRED if c not in getattr(emb, "columns", [])]
    if not isinstance(emb, pd.DataFrame) or missing:
        raise MossaError(f"plot_tsne: expected a DataFrame with columns {list(_REQUIRED)}, got "
                         f"{type(emb).__name__} missing {missing}; fix: pass the table from tsne_embeddings")
    skipped = list(emb.attrs.get("skipped", []))
    if emb.empty and not skipped:
        raise MossaError("plot_tsne: expected at least one embedded (model, layer), got an empty table with nothing "
                         "skipped; fix: call tsne_embeddings with at least one layer")
    fmt = path.suffix.lstrip(".").lower()
    supported = FigureCanvasBase.get_supported_filetypes()
    if fmt not in supported:
        raise MossaError(f"plot_tsne: expected {path} to end in an image suffix ({', '.join(sorted(supported))}), "
                         f"got {path.suffix!r}; fix: use e.g. {path.with_suffix('.png').name}")

    reasons = {(m, int(layer)): r for m, layer, r in skipped}
    present = set(emb["model"]) | {m for m, _ in reasons}
    models = [m for m in MODEL_LABELS if m in present] + sorted(present - set(MODEL_LABELS))
    layers = sorted({int(v) for v in emb["layer"]} | {layer for _, layer in reasons})
    clusters = sorted(emb["cluster"].astype(str).unique())
    colours = cluster_colours(clusters)

    n_rows, n_cols = len(models), len(layers)
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(2.7 * n_cols + 0.6, 2.7 * n_rows + 1.4), squeeze=False)
    for i, model in enumerate(models):
        for j, layer in enumerate(layers):
            ax = axes[i, j]
            sub = emb[(emb["model"] == model) & (emb["layer"] == layer)]
            if sub.empty:
                why = reasons.get((model, layer), "no embedding")
                short = why.split(":")[0]
                ax.text(0.5, 0.5, f"not embedded:\n{short}", ha="center", va="center", fontsize=8,
                        color="0.4", transform=ax.transAxes, wrap=True)
            else:
                for k, cluster in enumerate(clusters):
                    pts = sub[sub["cluster"].astype(str) == cluster]
                    if len(pts):
                        ax.scatter(pts["x"], pts["y"], s=5, color=colours[cluster], marker=_MARKERS[k // 20 % 5],
                                   linewidths=0, alpha=0.85, rasterized=True)
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(f"layer {layer}", fontsize=10)
            if j == 0:
                ax.set_ylabel(MODEL_LABELS.get(model, model), fontsize=11)
    handles = [plt.Line2D([], [], linestyle="", marker=_MARKERS[k // 20 % 5], markersize=7,
                          markerfacecolor=colours[c], markeredgewidth=0, label=c)
               for k, c in enumerate(clusters)]
    n_legend_cols = min(len(clusters), max(3, n_cols + 1)) if clusters else 1
    n_legend_rows = int(np.ceil(len(clusters) / n_legend_cols)) if clusters else 0
    if handles:
        fig.legend(handles=handles, loc="lower center", ncol=n_legend_cols, fontsize=8, frameon=False,
                   title="task cluster", title_fontsize=9, handletextpad=0.2, columnspacing=1.0)
    n_points = emb.groupby(["model", "layer"]).size()
    per_panel = int(n_points.iloc[0]) if len(n_points) else 0
    fig.suptitle(f"{title}: t-SNE of last-token representations, all tasks pooled "
                 f"({per_panel} points per panel), coloured by task cluster", fontsize=11)
    legend_h = (0.35 + 0.2 * n_legend_rows) / fig.get_figheight()
    fig.tight_layout(rect=(0, legend_h, 1, 0.95))
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=fmt, dpi=130)
    if fmt == "png":  # the vector twin, for papers
        with atomic_path(path.with_suffix(".svg")) as tmp:
            fig.savefig(tmp, format="svg")
    plt.close(fig)


__all__ = ["MODEL_LABELS", "cluster_colours", "plot_tsne"]
