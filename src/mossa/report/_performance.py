"""The report's task-performance section: each model's metric on each task, the controls' check,
and one-sentence readings of the logit lens and the probes, all computed from results/ tables."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

MODEL_NAMES = {"base": "B", "experimental": "E", "heldout": "E'", "control": "C_t", "ceiling": "C_t'"}


def read_optional(root: Path, name: str) -> pd.DataFrame | None:
    """results/<name>.csv, or None for a study analysed before it existed."""
    path = Path(root) / "results" / f"{name}.csv"
    return pd.read_csv(path) if path.is_file() else None


def _cell(value: float, low: float, high: float, metric: str) -> str:
    if not np.isfinite(value):
        return "undefined"
    digits = 1 if metric in ("bleu", "chrf") else 3
    interval = f" [{low:.{digits}f}, {high:.{digits}f}]" if np.isfinite(low) and np.isfinite(high) else ""
    return f"{value:.{digits}f}{interval}"


def model_name(model: str) -> str:
    """A model's name in the report: B, E, ... and 'E, LoRA on <range> only' for a restricted E."""
    if model.startswith("restricted-"):
        return f"E, LoRA on {model[len('restricted-'):].replace('-', ' ', 1)} only"
    return MODEL_NAMES.get(model, model)


def causal_pivot(causal: pd.DataFrame) -> pd.DataFrame:
    """One row per (task, model, metric), one column per way of running the model: value [95% interval], and
    for a masked model the share of the gain over B it keeps [95% interval] (or why there is none)."""
    rows = []
    for (task, model, metric), group in causal.groupby(["task", "model", "metric"], sort=False):
        row = {"task": task, "model": model_name(model), "metric": metric}
        for _, r in group.iterrows():
            name = {"none": "B (adapter nowhere)", "all": f"{model_name(model)} (adapter everywhere)"}.get(
                r["mask"], f"{r['mask']} ({r['active_layers']})")
            cell = _cell(r["value"], r["ci_low"], r["ci_high"], metric)
            if r["mask"] not in ("all", "none"):
                share = _cell(r["share"], r["share_low"], r["share_high"], "share")
                cell += f"; keeps {share}" if np.isfinite(r["share"]) else "; no share: no gain to keep"
            row[name] = cell
        row["n examples"] = int(group["n_examples"].max())
        rows.append(row)
    return pd.DataFrame(rows)


def performance_pivot(performance: pd.DataFrame) -> pd.DataFrame:
    """One row per (task, metric), one column per model: value [95% interval]."""
    rows = []
    present = set(performance["model"])
    models = [m for m in MODEL_NAMES if m in present] + sorted(present - set(MODEL_NAMES))
    for (task, cluster, metric), group in performance.groupby(["task", "cluster", "metric"], sort=False):
        by = group.set_index("model")
        row = {"task": task, "cluster": cluster, "metric": metric}
        for m in models:
            row[model_name(m)] = (_cell(by.at[m, "value"], by.at[m, "ci_low"], by.at[m, "ci_high"], metric)
                                  if m in by.index else "")
        row["n examples"] = int(group["n_examples"].max())
        rows.append(row)
    return pd.DataFrame(rows)


def control_check_table(controls: pd.DataFrame, specific: dict | None = None) -> pd.DataFrame | None:
    """Per task: the primary metric of B and of C_t on the same prompts, the gain, its interval and the verdict;
    with `specific` (`StudySummary.specificity["controls"]`), the control's own specificity over the upper third
    and whether it is specific to its task ("not measured" without a second seed of the control)."""
    if "learned" not in controls.columns:
        return None
    own = {t: specific[t] for t in controls["task"] if t in (specific or {})}
    extra = {} if specific is None else {
        "own specificity, upper third": [own[t]["value"] if t in own else np.nan for t in controls["task"]],
        "specific": [("yes" if own[t]["specific"] else "no") if t in own else "not measured" for t in controls["task"]]}
    return pd.DataFrame({
        "task": controls["task"], "metric": controls["task_metric"], "B": controls["metric_base"],
        "C_t": controls["metric_control"], "gain": controls["gain"],
        "gain 95% interval": [f"[{lo:.3f}, {hi:.3f}]" if np.isfinite(lo) and np.isfinite(hi) else "undefined"
                              for lo, hi in zip(controls["gain_low"], controls["gain_high"])],
        "n examples": controls["n_evaluated"],
        "learned": ["yes" if ok is True or ok == 1 else "no" for ok in controls["learned"]], **extra})


def _peak(table: pd.DataFrame, column: str, model: str) -> tuple[int, float] | None:
    rows = table[(table["model"] == model) & np.isfinite(table[column].to_numpy(dtype=float))]
    if not len(rows):
        return None
    per = rows.groupby("layer")[column].median()
    return int(per.idxmax()), float(per.max())


def lens_reading(lens: pd.DataFrame | None) -> str | None:
    """Where, through the logit lens, each model's gold answer becomes most probable."""
    if lens is None or not len(lens):
        return None
    parts = []
    for model in ("control", "experimental", "base"):
        peak = _peak(lens, "logprob", model)
        if peak:
            parts.append(f"{MODEL_NAMES[model]} at layer {peak[0]} (median log-probability {peak[1]:.2f})")
    last = int(lens["layer"].max())
    top = lens[(lens["layer"] == last) & (lens["n_option_examples"] > 0)]
    acc = {m: float(top[top["model"] == m]["option_accuracy"].median()) for m in ("control", "base") if
           (top["model"] == m).any()}
    tail = ""
    if acc:
        chance = float(top["option_chance"].median())
        tail = ("; at the last layer the lens picks the gold option's first token for "
                + ", ".join(f"{MODEL_NAMES[m]} {v:.2f}" for m, v in acc.items()) + f" of the time (chance {chance:.2f})")
    return ("Through the logit lens the gold answer's first token is most probable for " + ", for ".join(parts)
            + " (medians over tasks)" + tail + ".")


_CONTROL_KEYS = {"template": "template", "length quartile": "prompt-length quartile"}


def _selectivity_part(tested: pd.DataFrame, model: str) -> tuple[str, int] | None:
    """One model's clause, selectivity at its best layer with the interval (one task) or the number of tasks whose
    interval is above 0 there (several), and how many of its intervals lie above and below 0; and that first
    number (None for a model without a tested row)."""
    rows = tested[tested["model"] == model]
    peak = _peak(tested, "selectivity", model)
    if peak is None:
        return None
    at = rows[rows["layer"] == peak[0]]
    above, below = int((rows["selectivity_low"] > 0).sum()), int((rows["selectivity_high"] < 0).sum())
    if at["task"].nunique() == 1:
        value = f"{peak[1]:.2f} [{at['selectivity_low'].iloc[0]:.2f}, {at['selectivity_high'].iloc[0]:.2f}]"
        cells = f"{len(rows)} layers"
    else:
        value = (f"{peak[1]:.2f} (median over {len(at)} tasks; its interval above 0 in "
                 f"{int((at['selectivity_low'] > 0).sum())})")
        cells = f"{len(rows)} (task, layer) pairs"
    clause = f"{MODEL_NAMES[model]} {value} at layer {peak[0]}, above 0 at {above} and below 0 at {below} of {cells}"
    return clause, above


def probe_reading(probes: pd.DataFrame | None) -> str | None:
    """How well the linear probes read the gold option against their Hewitt-Liang control task: selectivity at
    each model's best layer with its interval, and where nothing could be tested (no labelled task, too few
    examples, no control task), says so."""
    if probes is None:
        return None
    if not len(probes):
        return "No task has options with a gold label: the linear probes had nothing to test."
    if "selectivity_low" not in probes.columns:
        return ("results/probes.csv predates the probes' control task and intervals: rerun `mossa analyze` to "
                "read the probes.")
    n = probes["task"].nunique()
    probed = probes[np.isfinite(probes["accuracy"].to_numpy(dtype=float))]
    if not len(probed):
        return (f"The {n} option task{'s' if n != 1 else ''} had too few labelled examples of two or more classes: "
                "the linear probes tested nothing.")
    tested = probed[np.isfinite(probed["selectivity"].to_numpy(dtype=float))]
    untested = sorted(set(probed["task"]) - set(tested["task"]))
    if not len(tested):
        return (f"Linear probes read the gold option at up to {probed['accuracy'].max():.2f} accuracy, but no task "
                "has a control task (a single template and no prompt lengths): selectivity is not tested, and "
                "accuracy alone says nothing of what the states encode.")
    parts = [p for p in (_selectivity_part(tested, m) for m in ("base", "experimental", "control")) if p]
    if not parts:
        return None
    keys = " or ".join(_CONTROL_KEYS.get(k, k) for k in sorted(set(tested["control_type"])))
    top = tested.loc[tested["control_task_accuracy"].idxmax()]
    n_tested = tested["task"].nunique()
    verdict = ("better, at some layers, than" if any(above for _, above in parts)
               else "no better, by any layer's interval, than")
    return (f"Over {n_tested} option task{'s' if n_tested != 1 else ''}, linear probes read the gold option {verdict} "
            f"a control task of one random label per {keys}, which they decode at up to "
            f"{top['control_task_accuracy']:.2f} (chance agreement {top['control_chance_agreement']:.2f}). "
            "Selectivity (accuracy above chance agreement, minus the control task's) at each model's best layer, "
            "with its 95% interval over folds (not corrected for picking that layer): "
            + "; ".join(p for p, _ in parts) + "."
            + (f" {', '.join(untested)}: no control task (a single template and no prompt lengths), selectivity not "
               "tested." if untested else ""))
