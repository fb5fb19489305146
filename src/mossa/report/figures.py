"""The study's figures, drawn from the long similarity table."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from mossa.store import atomic_path  # noqa: E402

MODEL_STYLE = {"base": ("B (base) vs C_t", "#4c72b0"), "experimental": ("E (multi-task) vs C_t", "#dd8452")}


def plot_cka_by_layer(sim: pd.DataFrame, path: Path, *, title: str, measure: str = "linear_cka") -> None:
    """The paper's Fig 2: per layer, boxplots over tasks of CKA(B, C_t) and CKA(E, C_t).

    Undefined values (NaN with a reason) are left out; layers with no defined value for a model
    are noted under the axis instead of drawn.
    """
    data = sim[sim["measure"] == measure]
    layers = sorted(data["layer"].unique())
    fig, ax = plt.subplots(figsize=(max(8.0, 0.55 * len(layers) + 2), 4.8))
    width = 0.36
    undefined = []
    for k, (model, (label, colour)) in enumerate(MODEL_STYLE.items()):
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
    with atomic_path(Path(path)) as tmp:
        fig.savefig(tmp, format=Path(path).suffix.lstrip("."), dpi=130)
    plt.close(fig)
