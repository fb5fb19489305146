"""Figures of where the answer becomes available, layer by layer: the logit lens
(answer_by_layer.png) and the linear probes (probes_by_layer.png), sections shaded."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from mossa.report import figures  # noqa: E402
from mossa.report.figures import _note_empty, shade_sections  # noqa: E402

MODELS = {"base": ("B (base)", "#4c72b0"), "experimental": ("E (multi-task)", "#dd8452"),
          "control": ("C_t (its own task's control)", "#c44e52"),
          "heldout": ("E' (held-out tasks only)", "#55a868")}


def _median_lines(ax, table: pd.DataFrame, column: str, *, style: str = "-", label_suffix: str = "",
                  band: bool = True) -> bool:
    """Per model, the median over tasks of `column` per layer (band: the middle half of the tasks)."""
    drawn = False
    for model, (label, colour) in MODELS.items():
        rows = table[(table["model"] == model) & np.isfinite(table[column].to_numpy(dtype=float))]
        if not len(rows):
            continue
        per = rows.groupby("layer")[column].quantile([0.25, 0.5, 0.75]).unstack()
        n = rows["task"].nunique()
        ax.plot(per.index, per[0.5], style, color=colour, linewidth=1.5, marker="." if style == "-" else None,
                label=f"{label}{label_suffix}, median over {n} task{'s' if n != 1 else ''}")
        if band and n > 1:
            ax.fill_between(per.index, per[0.25], per[0.75], color=colour, alpha=0.12, linewidth=0)
        drawn = True
    return drawn


def _finish(fig, axes, path: Path, sections: dict | None, title: str) -> None:
    """Layer axes with the sections shaded and a legend where something was drawn; title; save."""
    for ax in axes:
        ax.set_xlabel("layer (0 = embedding output)")
        ax.grid(alpha=0.3)
        shade_sections(ax, sections)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7, loc="upper left")
    fig.suptitle(title)
    fig.tight_layout()
    figures.save_figure(fig, path)


def _keep_layer_zero_off_scale(ax, lens: pd.DataFrame) -> None:
    """Fit the log-prob axis to layers 1..L when layer 0 (the embedding of the prompt's last token,
    the same cue for every example) lies far below them, and say where layer 0 is."""
    median = lens.groupby(["model", "layer"])["logprob"].median()
    inner = median[median.index.get_level_values("layer") > 0]
    zero = median[median.index.get_level_values("layer") == 0]
    if not len(inner) or not len(zero):
        return
    low, high = float(inner.min()), float(inner.max())
    span = max(high - low, 1.0)
    if float(zero.min()) < low - span:
        ax.set_ylim(low - 0.08 * span, high + 0.08 * span)
        ax.text(0.98, 0.04, f"layer 0 off the axis: median {float(zero.min()):.0f} to {float(zero.max()):.0f}",
                transform=ax.transAxes, ha="right", fontsize=7, color="#444444")


def plot_answer_by_layer(lens: pd.DataFrame, path: Path, *, title: str, sections: dict | None = None) -> None:
    """Logit lens per layer: the gold answer's first token's mean log-probability (left) and, on tasks
    with options, the option accuracy of the lens logits against chance (right)."""
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.6))
    layers = sorted(lens["layer"].unique()) if len(lens) else []
    left, right = axes
    if not _median_lines(left, lens, "logprob"):
        _note_empty(left, "no evaluated prompts with a lens in this study", layers)
    else:
        _keep_layer_zero_off_scale(left, lens)
    left.set_ylabel("log p(gold answer's first token)")
    options = lens[lens["n_option_examples"] > 0] if len(lens) else lens
    if _median_lines(right, options, "option_accuracy"):
        chance = options.groupby("layer")["option_chance"].median()
        right.plot(chance.index, chance.values, ":", color="#666666", label="chance (1 / number of options)")
        right.set_ylim(-0.02, 1.02)
    else:
        _note_empty(right, "no task with options was evaluated", layers)
    right.set_ylabel("option accuracy of the lens logits (first tokens)")
    _finish(fig, axes, path, sections, f"{title}: the answer through the logit lens (final norm + output head at "
                                       f"every layer)")


def plot_probes_by_layer(probes: pd.DataFrame, path: Path, *, title: str, sections: dict | None = None) -> None:
    """Linear probes per layer: held-out accuracy of the gold option (solid) against the same probe on its
    control task, one random label per template (dashed), and both majority shares (left); selectivity with
    its 95% interval (right), or why it is not tested."""
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.6))
    layers = sorted(probes["layer"].unique()) if len(probes) else []
    left, right = axes
    if _median_lines(left, probes, "accuracy"):
        drawn = len(left.get_lines())
        if _median_lines(left, probes, "control_task_accuracy", style="--", band=False):
            for line in left.get_lines()[drawn:]:  # one legend entry for the dashed lines, not one per model
                line.set_label("_nolegend_")
            left.plot([], [], "--", color="#666666", label="dashed: the same probe on the control task")
        for column, style, label in (("chance", ":", "majority share"),
                                     ("control_chance", "-.", "control task's majority share")):
            share = probes.groupby("layer")[column].median()
            if share.notna().any():
                left.plot(share.index, share.values, style, color="#666666", label=label)
        left.set_ylim(-0.02, 1.45)  # room above 1 for the legend: the control task often reaches 1
        left.set_yticks(np.linspace(0, 1, 6))
        if _median_lines(right, probes, "selectivity", band=False):
            ends = probes.groupby(["model", "layer"])[["selectivity_low", "selectivity_high"]].median()
            for model, (_, colour) in MODELS.items():
                if model in ends.index.get_level_values("model"):
                    band = ends.loc[model].dropna()
                    right.fill_between(band.index, band["selectivity_low"], band["selectivity_high"], color=colour,
                                       alpha=0.15, linewidth=0)
            right.axhline(0, color="#666666", linewidth=0.8)
            low, high = float(ends["selectivity_low"].min()), float(ends["selectivity_high"].max())
            span = max(high, 0.0) - min(low, 0.0) or 1.0
            right.set_ylim(min(low, 0.0) - 0.05 * span, max(high, 0.0) + 0.4 * span)  # room for the legend
        else:
            _note_empty(right, "no control task (each task uses one template and records no prompt lengths): "
                               "selectivity not tested", layers)
    else:
        for ax in axes:
            _note_empty(ax, "no task with options, or too few labelled examples, to probe", layers)
    left.set_ylabel("probe accuracy (cross-validated)")
    right.set_ylabel("selectivity (over the control task)")
    _finish(fig, axes, path, sections, f"{title}: linear probes for the gold option, per layer")
