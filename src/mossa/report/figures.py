"""The study's figures, drawn from the long similarity table."""

from __future__ import annotations

import textwrap
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from matplotlib.ticker import MaxNLocator  # noqa: E402

from mossa.report._summary import undefined_reasons  # noqa: E402
from mossa.store import atomic_path  # noqa: E402

MODEL_STYLE = {"base": ("B (base) vs C_t", "#4c72b0"), "experimental": ("E (multi-task) vs C_t", "#dd8452"),
               "heldout": ("E' (multi-task, task held out) vs C_t", "#55a868"),
               "ceiling": ("seed agreement: C_t' (second seed) vs C_t", "#8172b3")}
NULL_STYLE = {"color": "#999999", "alpha": 0.3, "linewidth": 0, "zorder": 1}
NULL_LABEL = "chance: permutation null, mean to 95% bound (median over tasks)"


def _null_band(ax, rows: pd.DataFrame) -> None:
    """Shade, per layer, the median over `rows`' tasks of their permutation null, from its mean to its
    95% bound (what re-paired examples score); nothing when the rows carry no null."""
    if not {"null_mean", "null_q95"} <= set(rows.columns):
        return
    per = rows.groupby("layer")[["null_mean", "null_q95"]].median().dropna()
    if len(per):
        ax.fill_between(per.index, per["null_mean"], per["null_q95"], label=NULL_LABEL, **NULL_STYLE)


def _ceiling_line(ax, rows: pd.DataFrame) -> None:
    """Draw the ceiling, the per-layer median over tasks of CKA(C_t', C_t), with its range over tasks."""
    rows = rows[np.isfinite(rows["value"].to_numpy(dtype=float))]
    if not len(rows):
        return
    per = rows.groupby("layer")["value"].agg(["median", "min", "max"])
    label, colour = MODEL_STYLE["ceiling"]
    n = rows["task"].nunique()
    ax.plot(per.index, per["median"], color=colour, linewidth=1.4, marker=".", markersize=4, zorder=4,
            label=f"{label}, median over {n} task{'s' if n != 1 else ''} (band: their range)")
    if n > 1:
        ax.fill_between(per.index, per["min"], per["max"], color=colour, alpha=0.12, linewidth=0, zorder=1)


CROSS_LABEL = "{} vs other tasks' controls C_s on t's prompts (dotted; median over tasks of the mean over s)"


def _cross_lines(ax, cross: pd.DataFrame | None, models, measure: str, *, band: bool) -> None:
    """Per model, the per-layer median over tasks of mean_s CKA(M, C_s) (`cross_task_means` rows) as a dotted
    line, with the tasks' quartiles as a band when `band`: the level a specialist of another task reaches, which
    C_t's curve must beat for the similarity to be this task's."""
    if cross is None or not len(cross):
        return
    for model in models:
        rows = cross[(cross["model"] == model) & (cross["measure"] == measure)]
        rows = rows[np.isfinite(rows["value"].to_numpy(dtype=float))]
        if not len(rows):
            continue
        label, colour = MODEL_STYLE[model]
        per = rows.groupby("layer")["value"].quantile([0.25, 0.5, 0.75]).unstack()
        ax.plot(per.index, per[0.5], color=colour, linestyle=":", linewidth=1.5, zorder=4,
                label=CROSS_LABEL.format(label.split(" vs ")[0]))
        if band and rows["task"].nunique() > 1:
            ax.fill_between(per.index, per[0.25], per[0.75], color=colour, alpha=0.10, linewidth=0, zorder=1,
                            hatch="//")


def _note_empty(ax, text: str, layers=()) -> None:
    """Say on an empty panel why it holds nothing (instead of leaving it blank); `layers` keeps its
    x axis on the layers that have no value."""
    ax.text(0.5, 0.5, textwrap.fill(text, 45), transform=ax.transAxes, ha="center", va="center", fontsize=8,
            color="dimgray", bbox={"facecolor": "white", "edgecolor": "none"})
    if len(layers):
        ax.set_xlim(min(layers) - 0.5, max(layers) + 0.5)


def plot_cka_by_layer(sim: pd.DataFrame, path: Path, *, title: str, measure: str = "linear_cka",
                      models: tuple[str, ...] = ("base", "experimental"), medians: pd.DataFrame | None = None,
                      sections: dict | None = None, ceiling: pd.DataFrame | None = None,
                      cross: pd.DataFrame | None = None) -> None:
    """The paper's Fig 2 (and Fig 7): per layer, boxplots over tasks of CKA(B, C_t) and CKA(E, C_t).

    Undefined values (NaN with a reason) are left out; layers with no defined value for a model
    are noted under the axis instead of drawn, and with no defined value at all the reasons are
    written on the empty axes. With `medians` (from the analysis), each
    median carries its bootstrap-over-tasks 95% interval as an error bar; with `sections`
    (a found transition), the shared / transition / refinement layers are shaded. Every value is
    read against chance, a grey band (the permutation null of the plotted rows), and against the
    ceiling, `ceiling` rows (model "ceiling": two seeds of one control; any tasks) as a line. With `cross`
    (`mossa.analysis.cross_task_means` rows), each model's similarity to other tasks' controls on the same
    prompts is drawn as a dotted line with the tasks' quartiles as a band: the cross-task reference.
    """
    data = sim[sim["measure"] == measure]
    layers = sorted(data["layer"].unique())
    fig, ax = plt.subplots(figsize=(max(8.0, 0.55 * len(layers) + 2), 4.8))
    _null_band(ax, data[data["model"].isin(models)])
    if ceiling is not None:
        _ceiling_line(ax, ceiling[ceiling["measure"] == measure])
    _cross_lines(ax, cross, models, measure, band=True)
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
        if medians is not None:
            ci = medians[(medians["group"] == "all") & (medians["measure"] == measure) & (medians["model"] == model)
                         & medians["layer"].isin([round(p - (k - 0.5) * width) for p in positions])]
            ci = ci.set_index("layer").reindex([round(p - (k - 0.5) * width) for p in positions])
            beside = [p + width * 0.55 for p in positions]  # next to the box, not over its whiskers
            # the interval as drawn from its ends: a percentile interval of few draws may miss the median
            ax.vlines(beside, ci["ci_low"], ci["ci_high"], color="#b2182b", linewidth=1.3, zorder=5)
            ax.plot(beside, ci["median"], "_", color="#b2182b", markersize=4, zorder=5)
    ax.set_xticks(layers)
    ax.set_xticklabels([str(layer) for layer in layers])
    ax.set_xlabel("layer (0 = embedding output)")
    inflated = " (biased: inflated at n < d)" if measure == "linear_cka" else ""
    ax.set_ylabel(f"{measure.replace('_', ' ')} with control C_t{inflated}")
    n_tasks = data["task"].nunique()
    ax.set_title(f"{title}: similarity to per-task controls ({n_tasks} tasks)", pad=8)
    ax.set_ylim(top=max(1.0, ax.get_ylim()[1]) + 0.06)  # room for the section labels
    ax.grid(axis="y", alpha=0.3)
    shade_sections(ax, sections)
    if medians is not None:
        ax.errorbar([], [], yerr=[], fmt="_", color="#b2182b", ecolor="#b2182b",
                    label="median and its 95% CI (over tasks)")
    undefined_layers = sorted({layer for _, layer in undefined})
    if len(undefined) == len(models) * len(layers):  # nothing drawn: say why instead
        reasons = undefined_reasons(data[data["model"].isin(models)])
        _note_empty(ax, "no defined value" + (f": {'; '.join(reasons)}" if reasons else ""))
    else:
        ax.legend(loc="lower left", fontsize=7)
        if undefined_layers:
            ax.text(0.99, 0.02, f"undefined (no variation across examples) at layer(s) "
                    f"{', '.join(map(str, undefined_layers))}", transform=ax.transAxes, ha="right", va="bottom",
                    fontsize=8, color="dimgray")
    fig.tight_layout()
    save_figure(fig, path)


def shade_sections(ax, sections: dict | None) -> None:
    """Shade a found transition's shared / transition / refinement layers, each labelled at the top."""
    if sections and sections.get("transition_found"):
        for name, shade in (("shared", "#dddddd"), ("transition", "#f6e3b4"), ("refinement", "#d5e8d4")):
            first, last = sections[name]
            ax.axvspan(first - 0.5, last + 0.5, color=shade, alpha=0.5, zorder=0, linewidth=0)
            ax.text((first + last) / 2, 0.985, f"{name} {first}-{last}", transform=ax.get_xaxis_transform(),
                    ha="center", va="top", fontsize=8, color="#555555")


def save_figure(fig, path: Path) -> None:
    for ax in fig.axes:
        if ax.get_xlabel().startswith("layer"):
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=path.suffix.lstrip("."), dpi=130)
    if path.suffix == ".png":  # the vector twin, for papers
        with atomic_path(path.with_suffix(".svg")) as tmp:
            fig.savefig(tmp, format="svg")
    plt.close(fig)


def plot_cka_by_cluster(medians: pd.DataFrame, path: Path, *, title: str, measure: str = "linear_cka",
                        cross: pd.DataFrame | None = None) -> None:
    """The paper's Fig 3: one panel per task cluster, the median over its tasks of CKA(B, C_t)
    and CKA(E, C_t) per layer, with its interval over tasks as a band (none for a cluster of fewer
    than 5 tasks; see `ci_source` in results/medians.csv). A cluster with no defined
    value gets an empty panel saying so. Grey: the cluster's chance band (median permutation
    null of B and E, mean to 95% bound); purple: the study's ceiling (median over the tasks with
    a second-seed control), the same line in every panel. With `cross` (`mossa.analysis.cross_task_means` rows),
    dotted: the cluster's median similarity of B and E to other tasks' controls on the same prompts."""
    ceiling = medians[(medians["measure"] == measure) & (medians["group"] == "all") & (medians["model"] == "ceiling")]
    data = medians[(medians["measure"] == measure) & (medians["group"] != "all")]
    clusters = sorted(data["group"].unique())
    cols = min(4, len(clusters))
    rows = int(np.ceil(len(clusters) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(max(3.6 * cols, 10.0), 2.7 * rows + 0.6), sharex=True,
                             sharey=True, squeeze=False)
    for ax, cluster in zip(axes.flat, clusters):
        sub = data[data["group"] == cluster]
        null = sub[sub["model"].isin(("base", "experimental"))].groupby("layer")
        band = pd.DataFrame({"low": null["null_mean"].min(), "high": null["null_q95"].max()}).dropna()
        if len(band):
            ax.fill_between(band.index, band["low"], band["high"], label=NULL_LABEL.replace(" (median over tasks)", ""),
                            **NULL_STYLE)
        if len(ceiling.dropna(subset=["median"])):
            c = ceiling.sort_values("layer")
            n_ceiling = int(c["n_tasks"].max())
            ax.plot(c["layer"], c["median"], color=MODEL_STYLE["ceiling"][1], linewidth=1.1, linestyle="--",
                    label=f"{MODEL_STYLE['ceiling'][0]}, median over {n_ceiling} task{'s' if n_ceiling != 1 else ''}")
        if cross is not None and len(cross):
            _cross_lines(ax, cross[cross["cluster"] == cluster], ("base", "experimental"), measure, band=False)
        for model in ("base", "experimental"):
            label, colour = MODEL_STYLE[model]
            m = sub[sub["model"] == model].sort_values("layer")
            ax.plot(m["layer"], m["median"], marker="o", markersize=2.5, color=colour, label=label)
            ax.fill_between(m["layer"], m["ci_low"], m["ci_high"], color=colour, alpha=0.18, linewidth=0)
        n_tasks = int(sub["n_tasks"].max()) if len(sub) else 0
        if n_tasks:
            ax.set_title(f"{cluster} ({n_tasks} task{'s' if n_tasks != 1 else ''})", fontsize=9)
        else:
            ax.set_title(cluster, fontsize=9)
            _note_empty(ax, "no task has a defined value at any layer (the reasons are in results/similarity.csv)",
                        layers=sub["layer"].to_numpy())
        ax.grid(alpha=0.3)
    for ax in axes.flat[len(clusters):]:
        ax.axis("off")
    for ax in axes[-1]:
        ax.set_xlabel("layer")
    for ax in axes[:, 0]:
        ax.set_ylabel(measure.replace("_", " "))
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper right", fontsize=7, ncol=2)
    fig.suptitle(f"{title}: similarity to per-task controls by cluster (median, band = 95% CI)", x=0.02,
                 ha="left")
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    save_figure(fig, path)


def plot_layer_by_layer(cross: pd.DataFrame, path: Path, *, title: str) -> None:
    """Linear CKA between every layer of B (or E) and every layer of C_t, averaged over tasks.

    A layer pair undefined for every task (a layer that does not vary across examples) is a blank
    cell; a model with no defined pair gets an empty panel saying so.
    """
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.8))
    for ax, model in zip(axes, ("base", "experimental")):
        label = MODEL_STYLE[model][0]
        mean = cross[cross["model"] == model].groupby(["layer", "control_layer"])["value"].mean().unstack()
        values = mean.to_numpy(dtype=float)
        image = ax.imshow(values, origin="lower", cmap="viridis", vmin=0, vmax=1, aspect="auto")
        if not np.isfinite(values).any():
            _note_empty(ax, "no defined value at any layer pair: a layer that does not vary across examples "
                            "has no CKA")
        ax.set_xlabel("layer of control C_t")
        ax.set_ylabel(f"layer of {'B' if model == 'base' else 'E'}")
        ax.set_title(label, fontsize=10)
        step = max(1, int(np.ceil(len(mean) / 10)))
        ax.set_xticks(range(0, len(mean.columns), step))
        ax.set_yticks(range(0, len(mean.index), step))
        ax.set_xticklabels(mean.columns[::step])
        ax.set_yticklabels(mean.index[::step])
    fig.colorbar(image, ax=axes, label="linear CKA (mean over tasks; blank = undefined)")
    fig.suptitle(f"{title}: which layer matches which")
    save_figure(fig, path)


SPECTRAL_STYLE = {"base": ("B (base)", "#4c72b0"), "experimental": ("E (multi-task)", "#dd8452"),
                  "control": ("C_t (controls)", "#8c8c8c")}


def plot_variance_dims(spectral: pd.DataFrame, path: Path, *, title: str) -> None:
    """The paper's Fig 5 on a common number of examples: per layer, directions needed for the
    variance threshold, mean over tasks with the min-max range as a band; a second panel shows the
    share of the top direction.

    Every task is summarised on the same n examples (`n_examples`, see
    `mossa.analysis.spectral_table`), so one cap min(n-1, d) (`max_dims`, dashed) holds for all.
    A layer where some task's count sits at the cap (`at_cap`: the threshold needed every
    direction, so the count is a lower bound, not a measurement) gets an open triangle on the cap.
    Layers that do not vary across examples are left out; with none left, the panels say so."""
    threshold = float(spectral["threshold"].iloc[0])
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(12, 4.4))
    varying = spectral[spectral["note"].fillna("") == ""]  # a constant layer has no spectrum to show
    for model, (label, colour) in SPECTRAL_STYLE.items():
        sub = varying[varying["model"] == model]
        g = sub.groupby("layer")
        dims = g["dims_for_variance"]
        ax.plot(dims.mean().index, dims.mean(), marker="o", markersize=3, color=colour, label=label)
        ax.fill_between(dims.mean().index, dims.min(), dims.max(), color=colour, alpha=0.15, linewidth=0)
        capped = sub[sub["at_cap"].astype(bool)].groupby("layer")["max_dims"].first()
        ax.scatter(capped.index, capped, marker="^", s=36, facecolors="none", edgecolors=colour, zorder=5)
        top = g["top1_variance_fraction"].mean()
        ax2.plot(top.index, top, marker="o", markersize=3, color=colour, label=label)
    n = int(spectral["n_examples"].iloc[0])
    for cap in sorted(varying["max_dims"].unique()):
        ax.axhline(cap, color="gray", linestyle="--", linewidth=0.8)
        ax.text(0.01, cap, f" cap min(n-1, d) = {cap}, n = {n} examples per task", fontsize=7,
                color="gray", va="bottom", transform=ax.get_yaxis_transform())
    if varying["at_cap"].astype(bool).any():
        ax.scatter([], [], marker="^", s=36, facecolors="none", edgecolors="black",
                   label="a task at the cap (a lower bound)")
    ax.set_xlabel("layer")
    ax.set_ylabel(f"principal directions for {threshold:.0%} of variance")
    ax.set_title("dimensionality (mean over tasks; band = range)", fontsize=10)
    ax2.set_xlabel("layer")
    ax2.set_ylabel("variance share of the top direction")
    ax2.set_ylim(0, 1)
    ax2.set_title("how much one direction dominates (mean over tasks)", fontsize=10)
    for a in (ax, ax2):
        a.grid(alpha=0.3)
        if varying.empty:
            _note_empty(a, "no spectrum to show: no layer of B, E or any C_t varies across examples",
                        layers=spectral["layer"].to_numpy())
        else:
            a.legend(fontsize=8)
    fig.suptitle(f"{title}: spectral analysis of last-token representations ({spectral['task'].nunique()} "
                 f"tasks, each on n = {n} examples)")
    fig.tight_layout()
    save_figure(fig, path)


def plot_correlations(corr: pd.DataFrame, path: Path, *, title: str, labels: dict[str, str],
                      alpha: float = 0.05) -> None:
    """The paper's Fig 6: per layer, Pearson r across tasks between CKA(M, C_t) and task properties.

    A circle marks a Benjamini-Hochberg-adjusted p (`p_adjusted`, corrected over every test of the
    table) below `alpha`, not a raw p. A property with no defined r gets an empty panel with the
    table's reasons (e.g. too few tasks for a correlation)."""
    props = list(labels)
    fig, axes = plt.subplots(1, len(props), figsize=(4.2 * len(props), 3.8), sharey=True)
    for ax, prop in zip(np.atleast_1d(axes), props):
        shown = corr[(corr["property"] == prop) & corr["model"].isin(["base", "experimental"])]
        if not np.isfinite(shown["r"].to_numpy(dtype=float)).any():
            where = shown.groupby(shown["reason"].fillna(""))["layer"].unique()  # reason -> its layers
            notes = [f"{reason} (layer{'s' if len(ls) > 1 else ''} {', '.join(map(str, sorted(ls)))})"
                     for reason, ls in where.items() if reason]
            _note_empty(ax, "no defined r" + (f": {'; '.join(notes)}" if notes else ""),
                        layers=shown["layer"].to_numpy())
        for model in ("base", "experimental"):
            label, colour = MODEL_STYLE[model]
            sub = corr[(corr["property"] == prop) & (corr["model"] == model)].sort_values("layer")
            ax.plot(sub["layer"], sub["r"], marker="o", markersize=3, color=colour, label=label)
            sig = sub[sub["p_adjusted"] < alpha]
            ax.scatter(sig["layer"], sig["r"], s=40, facecolors="none", edgecolors=colour)
        ax.axhline(0, color="gray", linewidth=0.8)
        ax.set_ylim(-1, 1)
        ax.set_xlabel("layer")
        ax.set_title(labels[prop], fontsize=10)
        ax.grid(alpha=0.3)
    first = np.atleast_1d(axes)[0]
    first.set_ylabel("Pearson r across tasks")
    first.legend(fontsize=7, loc="lower left")
    n_tasks = int(corr["n_tasks"].max()) if len(corr) else 0
    n_tests = int(corr["p_adjusted"].notna().sum())
    fig.suptitle(f"{title}: what CKA with the controls tracks ({n_tasks} tasks; circled: Benjamini-Hochberg "
                 f"adjusted p < {alpha:g} over {n_tests} tests)")
    fig.tight_layout()
    save_figure(fig, path)
