"""The numbers a report states, computed from the result tables (never canned text).

Stage: report (reads results/ and study.json; writes nothing).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

MEASURE = "linear_cka"


@dataclass
class StudySummary:
    """Everything the report's summary says, each number traceable to a table in results/."""

    model: str
    n_layers: int
    n_tasks: int
    clusters: list[str]
    sections: dict
    heldout_sections: dict
    upper_layers: list[int]
    base_upper_by_cluster: dict[str, float]
    gain_by_cluster: dict[str, tuple[float, int | None]]
    median_base_upper: float
    median_experimental_upper: float
    heldout: dict = field(default_factory=dict)
    controls_better: tuple[int, int] = (0, 0)
    n_values: int = 0
    n_undefined: int = 0
    undefined_reasons: list[str] = field(default_factory=list)

    @property
    def all_undefined(self) -> bool:
        """Whether no similarity value of the study is defined (nothing to state from them)."""
        return self.n_values > 0 and self.n_undefined == self.n_values


def undefined_reasons(sim: pd.DataFrame) -> list[str]:
    """The distinct reasons recorded for the undefined (non-finite) values of a similarity table."""
    undefined = sim[~np.isfinite(sim["value"].to_numpy(dtype=float))]
    return sorted(set(undefined["undefined_reason"].fillna("")) - {""})


def upper_third(n_layers: int) -> list[int]:
    """The last third of the layers (the paper's 'refinement' region, where E should exceed B)."""
    start = n_layers - n_layers // 3 + 1 if n_layers >= 3 else 1
    return list(range(start, n_layers + 1))


def _median(sim: pd.DataFrame, model: str, layers: list[int]) -> float:
    """Median over tasks of each task's mean value over `layers`."""
    sub = sim[(sim["model"] == model) & sim["layer"].isin(layers)]
    per_task = sub.groupby("task")["value"].mean()
    return float(per_task.median()) if len(per_task) else float("nan")


def summarize(study_json: dict, sim: pd.DataFrame, controls: pd.DataFrame, sections: dict) -> StudySummary:
    """Compute the summary numbers of one study."""
    sim = sim[sim["measure"] == MEASURE]
    n_layers = int(study_json["model"]["n_layers"])
    upper = upper_third(n_layers)
    clusters = sorted(sim["cluster"].unique())
    base_upper, gains = {}, {}
    for cluster in clusters:
        sub = sim[sim["cluster"] == cluster]
        base_upper[cluster] = _median(sub, "base", upper)
        per_layer = sub.groupby(["layer", "model"])["value"].median().unstack()  # all-NaN models kept
        diff = (per_layer["experimental"] - per_layer["base"]).dropna()
        gains[cluster] = (float(diff.max()), int(diff.idxmax())) if len(diff) else (float("nan"), None)
    heldout = {}
    held_tasks = list(study_json.get("heldout_tasks", []))
    if held_tasks:
        seen = sim[~sim["task"].isin(held_tasks)]
        held = sim[sim["task"].isin(held_tasks)]
        heldout = {"tasks": held_tasks,
                   "base_upper": _median(held, "base", upper),
                   "heldout_upper": _median(held, "heldout", upper),
                   "experimental_upper_seen": _median(seen, "experimental", upper),
                   "base_upper_seen": _median(seen, "base", upper)}
    better = int(controls["control_better"].sum()) if "control_better" in controls else 0
    return StudySummary(
        model=study_json["model"]["name"], n_layers=n_layers, n_tasks=sim["task"].nunique(), clusters=clusters,
        sections={k: v for k, v in sections.items() if k != "heldout"}, heldout_sections=sections.get("heldout", {}),
        upper_layers=upper, base_upper_by_cluster=base_upper, gain_by_cluster=gains,
        median_base_upper=_median(sim, "base", upper), median_experimental_upper=_median(sim, "experimental", upper),
        heldout=heldout, controls_better=(better, len(controls)), n_values=len(sim),
        n_undefined=int((~np.isfinite(sim["value"].to_numpy(dtype=float))).sum()),
        undefined_reasons=undefined_reasons(sim))


def _fmt(x: float) -> str:
    return "undefined" if x is None or not np.isfinite(x) else f"{x:.2f}"


def _signed(x: float) -> str:
    return "undefined" if x is None or not np.isfinite(x) else f"{x:+.2f}"


def _section_sentence(sec: dict, who: str, model: str = "E") -> str:
    if not sec.get("transition_found"):
        return f"For {who}, the data show no clear transition section: {sec.get('reason', 'no reason recorded')}."
    ci = sec.get("ci", {})
    start, end = ci.get("transition_start", [None, None]), ci.get("transition_end", [None, None])
    return (f"For {who}, layers {sec['shared'][0]}-{sec['shared'][1]} are shared, "
            f"{sec['transition'][0]}-{sec['transition'][1]} are the transition "
            f"(start 95% CI {start[0]}-{start[1]}, end 95% CI {end[0]}-{end[1]}) and "
            f"{sec['refinement'][0]}-{sec['refinement'][1]} the refinement section; the median gain of {model} over B "
            f"rises by {_fmt(sec.get('jump', float('nan')))} "
            f"(95% CI {_fmt(sec.get('jump_ci', [np.nan])[0])} to {_fmt(sec.get('jump_ci', [np.nan, np.nan])[1])}).")


def _undefined_sentence(s: StudySummary) -> str:
    reasons = "; ".join(s.undefined_reasons) or "no reason recorded"
    return (f"Every linear CKA value of this study is undefined ({s.n_undefined} of {s.n_values}), so no "
            f"similarity, layer section or gain can be stated: {reasons}. (CKA is 0/0 for a representation "
            f"that is the same for every test example, as when all of a task's test prompts are the same text.) "
            f"The tables list each value as undefined and the figures built on them are empty.")


def summary_sentences(s: StudySummary) -> list[str]:
    """The report's summary, one sentence per finding, written from the numbers; when no similarity
    value is defined, the controls' losses and why the values are undefined."""
    controls = (f"{s.controls_better[0]} of {s.controls_better[1]} control models beat the base model on their "
                f"own task's test loss.")
    if s.all_undefined:
        return [controls, _undefined_sentence(s)]
    up = f"layers {s.upper_layers[0]}-{s.upper_layers[-1]}"
    out = [controls,
           f"Over the last third of the layers ({up}), the median linear CKA with the controls is "
           f"{_fmt(s.median_experimental_upper)} for E and {_fmt(s.median_base_upper)} for B."]
    out.append(_section_sentence(s.sections, "E"))
    ranked = sorted(s.base_upper_by_cluster.items(), key=lambda kv: -np.nan_to_num(kv[1], nan=-9))
    k = min(3, len(ranked) // 2)  # the best and the worst clusters never overlap
    if k:
        top = ", ".join(f"{c} ({_fmt(v)})" for c, v in ranked[:k])
        low = ", ".join(f"{c} ({_fmt(v)})" for c, v in ranked[-k:])
        out.append(f"B already matches its controls best in {top}, and least in {low} (median CKA over {up}).")
    elif ranked:
        out.append(f"B matches its controls at {_fmt(ranked[0][1])} in its one cluster, {ranked[0][0]} (median CKA "
                   f"over {up}).")
    gains = sorted(s.gain_by_cluster.items(), key=lambda kv: -np.nan_to_num(kv[1][0], nan=-9))
    out.append("E's largest gains over B: " + ", ".join(
        f"{c} ({_signed(g)} at layer {layer})" if layer is not None else f"{c} (undefined at every layer)"
        for c, (g, layer) in gains[:3]) + ".")
    if s.heldout:
        h = s.heldout
        out.append(f"On the {len(h['tasks'])} tasks held out of E' ({', '.join(h['tasks'])}), E' reaches "
                   f"{_fmt(h['heldout_upper'])} against B's {_fmt(h['base_upper'])} over {up}, while on the tasks "
                   f"it was trained on E reaches {_fmt(h['experimental_upper_seen'])} against B's "
                   f"{_fmt(h['base_upper_seen'])}.")
        out.append(_section_sentence(s.heldout_sections, "E' on the held-out tasks", model="E'"))
    return out
