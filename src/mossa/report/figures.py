"""The study's figures, drawn from the long similarity table."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from mossa.store import atomic_path  # noqa: E402

MODEL_STYLE = {"base": ("B (base) vs C_t", "#4c72b0"), "experimental": ("E (multi-task) vs C_t", "#dd8452"),
               "heldout": ("E' (multi-task, task held out) vs C_t", "#55a868")}


def plot_cka_by_layer(sim: pd.DataFrame, path: Path, *, title: str, measure: str = "linear_cka",
                      models: tuple[str, ...] = ("base", "experimental")) -> None:
    """The paper's Fig 2: per layer, boxplots over tasks of CKA(B, C_t) and CKA(E, C_t).

    Undefined values (NaN with a reason) are left out; layers with no defined value for a model
    are noted under the axis instead of drawn.
    """
    data = sim[sim["measure"] == measure]
    layers = sorted(data["layer"].unique())
    fig, ax = plt.subplots(figsize=(max(8.0, 0.55 * len(layers) + 2), 4.8))
    width = 0.36
    undefined = []
    for k, model in enumerate(models):
        label, colour = MODEL_STYLE[model]
        sub = data[data["model"] == model]
        values, positions = [], []
        for layer in layers:
            v = sub.loc[(sub["layer"] == layer), "value"].to_numpy(dtype=float)
            v = v[np.isfinite(v)]
            if len(v):
                values.append(v)
                positions.append(layer + (k - 0.5) * width)
            else:
                undefined.append((model, layer))
        if not values:
            continue
        box = ax.boxplot(values, positions=positions, widths=width * 0.9, patch_artist=True,
                         showfliers=True, flierprops={"markersize": 3})
        for patch in box["boxes"]:
            patch.set_facecolor(colour)
            patch.set_alpha(0.75)
        for median in box["medians"]:
            median.set_color("black")
        ax.plot([], [], color=colour, linewidth=8, alpha=0.75, label=label)
        med = [np.median(v) for v in values]
        ax.plot(positions, med, color=colour, linewidth=1, alpha=0.9)
    ax.set_xticks(layers)
    ax.set_xticklabels([str(layer) for layer in layers])
    ax.set_xlabel("layer (0 = embedding output)")
    ax.set_ylabel(f"{measure.replace('_', ' ')} with control C_t")
    n_tasks = data["task"].nunique()
    ax.set_title(f"{title}: similarity to per-task controls ({n_tasks} tasks)")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(loc="lower left")
    undefined_layers = sorted({layer for _, layer in undefined})
    if undefined_layers:
        ax.text(0.99, 0.02, f"undefined (no variation across examples) at layer(s) "
                f"{', '.join(map(str, undefined_layers))}", transform=ax.transAxes, ha="right", va="bottom",
                fontsize=8, color="dimgray")
    fig.tight_layout()
    _save(fig, path)


def _save(fig, path: Path) -> None:
    with atomic_path(Path(path)) as tmp:
        fig.savefig(tmp, format=Path(path).suffix.lstrip("."), dpi=130)
    plt.close(fig)


def plot_cka_by_cluster(sim: pd.DataFrame, path: Path, *, title: str, measure: str = "linear_cka") -> None:
    """The paper's Fig 3: one panel per task cluster, median over its tasks of CKA(B, C_t) and
    CKA(E, C_t) per layer (with the min-max range over the cluster's tasks as a band)."""
    data = sim[(sim["measure"] == measure)]
    clusters = sorted(data["cluster"].unique())
    cols = min(4, len(clusters))
    rows = int(np.ceil(len(clusters) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 2.7 * rows), sharex=True, sharey=True,
                             squeeze=False)
    for ax, cluster in zip(axes.flat, clusters):
        sub = data[data["cluster"] == cluster]
        for model in ("base", "experimental"):
            label, colour = MODEL_STYLE[model]
            per_layer = sub[sub["model"] == model].groupby("layer")["value"]
            med, lo, hi = per_layer.median(), per_layer.min(), per_layer.max()
            ax.plot(med.index, med.to_numpy(), marker="o", markersize=2.5, color=colour, label=label)
            ax.fill_between(med.index, lo.to_numpy(), hi.to_numpy(), color=colour, alpha=0.15, linewidth=0)
        n_tasks = sub["task"].nunique()
        ax.set_title(f"{cluster} ({n_tasks} task{'s' if n_tasks > 1 else ''})", fontsize=9)
        ax.grid(alpha=0.3)
    for ax in axes.flat[len(clusters):]:
        ax.axis("off")
    for ax in axes[-1]:
        ax.set_xlabel("layer")
    for ax in axes[:, 0]:
        ax.set_ylabel(measure.replace("_", " "))
    axes.flat[0].legend(fontsize=7, loc="lower left")
    fig.suptitle(f"{title}: similarity to per-task controls by task cluster (median, band = task range)")
    fig.tight_layout()
    _save(fig, path)


def plot_layer_by_layer(cross: pd.DataFrame, path: Path, *, title: str) -> None:
    """Linear CKA between every layer of B (or E) and every layer of C_t, averaged over tasks."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.8))
    for ax, model in zip(axes, ("base", "experimental")):
        label = MODEL_STYLE[model][0]
        mean = cross[cross["model"] == model].pivot_table(index="layer", columns="control_layer", values="value",
                                                          aggfunc="mean")
        image = ax.imshow(mean.to_numpy(dtype=float), origin="lower", cmap="viridis", vmin=0, vmax=1,
                          aspect="auto")
        ax.set_xlabel("layer of control C_t")
        ax.set_ylabel(f"layer of {'B' if model == 'base' else 'E'}")
        ax.set_title(label, fontsize=10)
        step = int(np.ceil(len(mean) / 10))
        ax.set_xticks(range(0, len(mean.columns), step))
        ax.set_yticks(range(0, len(mean.index), step))
        ax.set_xticklabels(mean.columns[::step])
        ax.set_yticklabels(mean.index[::step])
    fig.colorbar(image, ax=axes, label="linear CKA (mean over tasks; blank = undefined)")
    fig.suptitle(f"{title}: which layer matches which")
    _save(fig, path)
