"""The outlier-dimension figure (outliers.png): how much one direction dominates each model's states, how
many outlier dimensions they have, and whether the sections' gain changes under the robust CKA variants."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from mossa.analysis import SECTION_MEASURE, median_gain  # noqa: E402
from mossa.report.figures import MODEL_STYLE, SPECTRAL_STYLE, _note_empty, save_figure, shade_sections  # noqa: E402
from mossa.similarity import ROBUST_MEASURES  # noqa: E402

OUTLIER_STYLE = {**SPECTRAL_STYLE, "heldout": ("E' (multi-task, task held out)", MODEL_STYLE["heldout"][1]),
                 "ceiling": ("C_t' (second seed)", MODEL_STYLE["ceiling"][1])}
VARIANT_STYLE = {SECTION_MEASURE: ("debiased CKA (the sections' measure)", "black", "-"),
                 "debiased_cka_standardized": ("debiased CKA, standardised features", "#55a868", "-"),
                 "linear_cka_standardized": ("linear CKA, standardised features", "#8172b3", "--"),
                 "debiased_cka_no_outliers": ("debiased CKA, outlier dimensions removed", "#c44e52", "-"),
                 "debiased_cka_random_dims": ("debiased CKA, as many random dimensions removed", "#937860", ":"),
                 "debiased_cka_top_pcs_removed": ("debiased CKA, C_t's dominant principal directions removed",
                                                  "#dd8452", "-.")}


def _dominance(ax, outliers: pd.DataFrame) -> None:
    """Per model, the median over tasks of the top direction's variance share (solid, left axis) and of
    the outlier-dimension count (dotted, right axis)."""
    count_ax = ax.twinx()
    for model, (label, colour) in OUTLIER_STYLE.items():
        rows = outliers[outliers["model"] == model]
        if not len(rows):
            continue
        per = rows.groupby("layer")[["top_direction_share", "n_outliers"]].median()
        n = rows["task"].nunique()
        ax.plot(per.index, per["top_direction_share"], marker="o", markersize=3, color=colour,
                label=f"{label}, median over {n} task{'s' if n != 1 else ''}")
        count_ax.plot(per.index, per["n_outliers"], ":", drawstyle="steps-mid", color=colour, linewidth=1.2)
    ax.plot([], [], ":", color="gray", label="dotted: outlier dimensions (median count, right axis)")
    ax.set_ylim(0, 1)
    ax.set_ylabel("variance share of the top principal direction")
    count_ax.set_ylabel("outlier dimensions (median |h| > 99th pct of |h|)")
    count_ax.set_ylim(0, max(2.0, float(outliers["n_outliers"].max()) + 1))
    ax.set_title("how much one direction dominates, and how many outlier dimensions", fontsize=10)
    ax.legend(fontsize=7, loc="lower left")


def _variant_gains(ax, sim: pd.DataFrame, sections: dict | None) -> bool:
    """The median over tasks of CKA(E, C_t) - CKA(B, C_t) per layer, one line per measure present."""
    drawn = False
    for measure in (SECTION_MEASURE, *ROBUST_MEASURES):
        gain = median_gain(sim, measure)["median"]
        gain = gain[np.isfinite(gain.to_numpy(dtype=float))]
        if not len(gain):
            continue
        label, colour, style = VARIANT_STYLE.get(measure, (measure, None, "-"))
        ax.plot(gain.index, gain, style, color=colour, linewidth=1.8 if measure == SECTION_MEASURE else 1.3,
                marker="." if style == "-" else None, label=label)
        drawn = True
    ax.axhline(0, color="#666666", linewidth=0.8)
    shade_sections(ax, sections)
    ax.set_ylabel("median over tasks of CKA(E, C_t) - CKA(B, C_t)")
    ax.set_title("the sections' gain under each variant (shaded: the original sections)", fontsize=10)
    if drawn:
        ax.legend(fontsize=7, loc="lower right")
    return drawn


def plot_outliers(outliers: pd.DataFrame, sim: pd.DataFrame, path: Path, *, title: str,
                  sections: dict | None = None) -> None:
    """Left: per layer and model, the top principal direction's share of the variance and the number of
    outlier dimensions (results/outliers.csv). Right: the per-layer median gain of E over B of the
    sections' measure and of each robust CKA variant (results/similarity.*), the original sections shaded.
    A panel with nothing to show says why."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 4.6))
    layers = sorted(sim["layer"].unique()) if len(sim) else []
    if outliers is not None and np.isfinite(outliers["top_direction_share"].to_numpy(dtype=float)).any():
        _dominance(left, outliers)
    else:
        _note_empty(left, "no layer of any model varies across examples: no variance to share", layers)
    if not _variant_gains(right, sim, sections):
        _note_empty(right, f"no defined gain of {SECTION_MEASURE} or of its robust variants", layers)
    for ax in (left, right):
        ax.set_xlabel("layer (0 = embedding output)")
        ax.grid(alpha=0.3)
    fig.suptitle(f"{title}: outlier dimensions and the robustness of the sections to them")
    fig.tight_layout()
    save_figure(fig, path)
