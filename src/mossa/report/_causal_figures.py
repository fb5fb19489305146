"""The causal check's figure (causal.png): the share of E's gain over B that each layer range of its
adapter keeps, alone and removed, and the adapter's update to each block's output."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from mossa.causal import primary_rows  # noqa: E402
from mossa.report import figures  # noqa: E402
from mossa.report.figures import _note_empty  # noqa: E402

MODEL = "experimental"
COLOURS = {"only": "#dd8452", "outside": "#8172b3"}
SHADES = ("#4c72b0", "#dd8452", "#55a868")


def _share_panel(ax, causal: pd.DataFrame, metric_label: str, pick) -> None:
    """Per range, the share kept with the adapter only there and everywhere but there: each task a dot
    (its 95% interval a line), the median over tasks a bar."""
    rows = pick(causal[(causal["model"] == MODEL) & ~causal["mask"].isin(["all", "none"])])
    ranges = list(dict.fromkeys(rows["section"]))
    if not ranges or not rows["share"].notna().any():
        _note_empty(ax, "no share to show: E's gain over B is not above 0 on any task")
        return
    width = 0.38
    for k, kind in enumerate(("only", "outside")):
        for i, name in enumerate(ranges):
            part = rows[(rows["section"] == name) & rows["mask"].str.startswith(kind)]
            shares = part["share"].to_numpy(dtype=float)
            x = i + (k - 0.5) * width
            if np.isfinite(shares).any():
                ax.bar(x, np.nanmedian(shares), width * 0.9, color=COLOURS[kind], alpha=0.35,
                       label=("adapter on in the range only" if kind == "only" else
                              "adapter on everywhere but the range") + ", median over tasks" if i == 0 else None)
            jitter = np.linspace(-width / 4, width / 4, max(len(part), 1))
            for j, (_, r) in enumerate(part.iterrows()):
                if np.isfinite(r["share"]):
                    lo, hi = np.clip([r["share_low"], r["share_high"]], -1.5, 2.5)
                    ax.plot([x + jitter[j]] * 2, [lo, hi], color=COLOURS[kind], linewidth=0.8, alpha=0.6)
                    ax.plot(x + jitter[j], r["share"], "o", color=COLOURS[kind], markersize=3)
    only = rows[rows["mask"].str.startswith("only")].drop_duplicates("section").set_index("section")["active_layers"]
    labels = [f"{n}\n(layers {only.get(n, '?')})" for n in ranges]
    ax.set_xticks(range(len(ranges)), labels, fontsize=8)
    ax.axhline(0, color="grey", linewidth=0.8)
    ax.axhline(1, color="grey", linewidth=0.8, linestyle="--")
    ax.set_ylim(-1.5, 2.5)
    ax.set_ylabel(f"share of E's gain over B kept ({metric_label})")
    ax.legend(fontsize=7, loc="upper left")
    ax.grid(alpha=0.3, axis="y")


def _update_panel(ax, updates: pd.DataFrame, ranges: dict) -> None:
    """The adapter's update to each block's output relative to that output: median over prompts per task
    (thin), median over tasks (thick), the ranges shaded."""
    rows = updates[updates["model"] == MODEL]
    if rows.empty:
        _note_empty(ax, "no adapter updates recorded")
        return
    for i, (name, (a, b)) in enumerate(ranges.items()):
        ax.axvspan(a - 0.5, b + 0.5, color=SHADES[i % len(SHADES)], alpha=0.08, linewidth=0)
        ax.text((a + b) / 2, 0.02, name, transform=ax.get_xaxis_transform(), ha="center", va="bottom", fontsize=7)
    for _, part in rows.groupby("task"):
        ax.plot(part["layer"], part["median"], color="#dd8452", linewidth=0.6, alpha=0.4)
    per = rows.groupby("layer")["median"].median()
    ax.plot(per.index, per.to_numpy(), ".-", color="#dd8452", linewidth=1.8,
            label=f"median over {rows['task'].nunique()} tasks (thin: each task)")
    ax.set_xlabel("layer (block l writes layer l)")
    ax.set_ylabel("|adapter's update| / |block output|, last prompt token")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper right")


def plot_causal(causal: pd.DataFrame, updates: pd.DataFrame, verdict: dict, path: Path) -> Path:
    """causal.png: left and middle, the share of E's gain kept per layer range (primary metric, NLL);
    right, the adapter's update per block."""
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.4))
    _share_panel(axes[0], causal, "each task's primary metric", primary_rows)
    _share_panel(axes[1], causal, "NLL per target token", lambda t: t[t["metric"] == "nll_per_token"])
    _update_panel(axes[2], updates, verdict.get("ranges", {}))
    fig.suptitle(f"Which layers of E's adapter carry its gain? Ranges: {verdict.get('source', '')}", fontsize=10)
    fig.tight_layout()
    figures.save_figure(fig, path)
    return path


def plot_section_checks(root, checks) -> list[Path]:
    """The causal figure of a study's `SectionChecks` into figures/ (nothing when it has no causal records)."""
    if checks.causal.empty:
        return []
    return [plot_causal(checks.causal, checks.updates, checks.verdict, Path(root) / "figures" / "causal.png")]
