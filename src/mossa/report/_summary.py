"""The numbers a report states, computed from the result tables (never canned text).

Stage: report (reads results/ and study.json; writes nothing).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from mossa.analysis import CROSS, SECOND_SEED, SPECIFICITY, median_interval, swap_test
from mossa.causal import holm

MEASURES = ("debiased_cka", "linear_cka")  # the conclusions' estimator: debiased CKA whenever it was measured
MEASURE_WORDS = {"debiased_cka": "debiased CKA", "linear_cka": "linear CKA"}
BIASED_NOTE = ("These conclusions use biased linear CKA, the only CKA measured: at fewer examples than features it "
               "is inflated by an amount that depends on each model's spectrum, so a difference in spectrum alone "
               "can move E - B; add debiased_cka to the measures.")


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
    loss_scored: tuple[int, int, int] | None = None  # (fewest, most scored, most test prompts) when not all were
    not_learned: list[str] | None = None  # tasks whose control failed the task-metric check (None: no check)
    n_values: int = 0
    n_undefined: int = 0
    undefined_reasons: list[str] = field(default_factory=list)
    reference: dict = field(default_factory=dict)
    measure: str = "debiased_cka"  # the estimator every sentence reads
    specificity: dict = field(default_factory=dict)  # `_specificity`: E's, B's and the controls' own

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


def _per_task(sim: pd.DataFrame, model: str, layers: list[int], column: str = "value") -> pd.Series:
    """Each task's mean of `column` over `layers` for one model."""
    sub = sim[(sim["model"] == model) & sim["layer"].isin(layers)]
    return sub.groupby("task")[column].mean() if column in sub else pd.Series(dtype=float)


def _reference(sim: pd.DataFrame, layers: list[int]) -> dict:
    """E and B over `layers` read against chance (their permutation nulls) and seed agreement (two seeds
    of one control, with E and B on those same tasks): medians over tasks, chance-adjusted scores, and the median over tasks of the paired
    E - B difference with its distribution-free interval over tasks (`mossa.analysis.median_interval`;
    none below 5 tasks)."""
    out = {}
    for model in ("base", "experimental"):
        out[model] = {k: float(_per_task(sim, model, layers, k).median()) for k in ("value", "null_mean", "null_q95",
                                                                                   "adjusted")
                      if k in sim}
    ceiling = _per_task(sim, "ceiling", layers).dropna()
    tasks = sorted(ceiling.index)
    out["ceiling"] = {"value": float(ceiling.median()) if len(ceiling) else float("nan"), "tasks": tasks,
                      **{model: float(_per_task(sim, model, layers).reindex(tasks).median()) if tasks else float("nan")
                         for model in ("base", "experimental")}}  # on the same tasks: like with like
    diff = (_per_task(sim, "experimental", layers) - _per_task(sim, "base", layers)).dropna()
    if len(diff):
        lo, hi, coverage = median_interval(diff.to_numpy())
        out["difference"] = {"median": float(diff.median()), "ci": [lo, hi], "coverage": coverage,
                             "n_tasks": len(diff)}
    return out


def _task_summary(per_task: pd.Series) -> dict:
    """Median over tasks of per-task values with its distribution-free interval (`median_interval`)."""
    d = per_task.dropna()
    if not len(d):
        return {}
    lo, hi, coverage = median_interval(d.to_numpy())
    return {"median": float(d.median()), "ci": [lo, hi], "coverage": coverage, "n_tasks": len(d),
            "per_task": {str(t): float(v) for t, v in d.items()}}


def _reference_tables(sim: pd.DataFrame, refs: pd.DataFrame, model: str, layers: list[int]) -> dict[str, np.ndarray]:
    """Per task, `model`'s mean over `layers` against C_t, then against each other task's control (in order)."""
    own = _per_task(sim, model, layers)
    cross = refs[refs["reference"].astype(str).str.startswith(CROSS) & (refs["model"] == model)
                 & refs["layer"].isin(layers)]
    per = cross.groupby(["task", "reference"], sort=False)["value"].mean()
    tables = {str(t): np.array([own[t], *per[t].to_numpy()]) for t in own.index if t in per.index.get_level_values(0)}
    return {t: v for t, v in tables.items() if np.all(np.isfinite(v))}


def _specificity(refs: pd.DataFrame, sim: pd.DataFrame, layers: list[int], study_json: dict) -> dict:
    """Over `layers` (rows of one measure): each model's task specificity (its CKA with C_t minus its mean CKA
    with other tasks' controls on t's prompts; mean over tasks and the exact swap test over tasks,
    `mossa.analysis.swap_test`) and E's gain in it over B, per E seed; the controls' own specificity (their
    second seed's); the agreement of E's two seeds; and E - B with E's second seed and recomputed against C_t'
    (the gain's noise scales), as medians over tasks with their intervals over tasks."""
    if refs is None or not len(refs) or "reference" not in refs:
        return {}
    seed = int(study_json.get("config", {}).get("seed", 0))
    seeds = [m for m in ("experimental", SECOND_SEED["experimental"])
             if ((refs["model"] == m) & refs["reference"].astype(str).str.startswith(CROSS)).any()]
    out = {"seeds": seeds, "n_sources": {t: len(v) for t, v in
                                         study_json.get("cross_tasks", {}).get("chosen", {}).items()}}
    tables = {m: _reference_tables(sim, refs, m, layers) for m in ("base", *seeds, "ceiling")}
    out["models"] = {}
    for m, t in tables.items():
        if t:
            test = swap_test(list(t.values()), seed=seed)
            out["models"][m] = test | {"per_task": dict(zip(t, test["per_task"]))}
    out["gain"] = {m: swap_test([tables[m][t] - tables["base"][t] for t in tables[m] if t in tables["base"]],
                                seed=seed) for m in seeds}
    out["where"] = _where(sim, refs, seeds, int(study_json["model"]["n_layers"]), seed)
    spec = refs[(refs["reference"] == SPECIFICITY) & (refs["model"] == "ceiling") & refs["layer"].isin(layers)]
    above = {str(t): int((rows["ci_low"] > 0).sum()) for t, rows in spec.groupby("task")}
    out["controls"] = {str(t): {"value": float(rows["value"].mean()), "layers_above": above[str(t)],
                                "n_layers": len(rows), "specific": bool(2 * above[str(t)] >= len(rows) > 0)}
                       for t, rows in spec.groupby("task")}
    if len(seeds) > 1:
        agree = refs[(refs["model"] == seeds[1]) & (refs["reference"] == seeds[0])]
        out["agreement"] = _task_summary(_per_task(agree, seeds[1], layers))
        out["gain_seed2"] = _task_summary(_per_task(sim, seeds[1], layers) - _per_task(sim, "base", layers))
    versus = refs[refs["reference"] == "ceiling"]
    if len(versus):
        own = _per_task(sim, "experimental", layers) - _per_task(sim, "base", layers)
        second = _per_task(versus, "experimental", layers) - _per_task(versus, "base", layers)
        tasks = second.dropna().index
        out["control_seed"] = {"against_control": _task_summary(own.reindex(tasks)),
                               "against_second": _task_summary(second),
                               "change": float((own.reindex(tasks) - second).abs().median()) if len(tasks)
                               else float("nan")}
    return out


PAPER_SECTIONS = {"shared": (1, 9), "transition": (10, 15), "refinement": (16, 32)}  # Llama-2-7b, read by eye
PAPER_DEPTH = 32
PAPER_HOLDS = {"shared": False, "transition": True, "refinement": True}  # E high with C_t from layer 10 on


def paper_sections(n_layers: int) -> dict[str, list[int]]:
    """The paper's Llama-2 sections (layers 1-9 / 10-15 / 16-32 of 32) carried to a model of `n_layers` layers by
    relative depth: layer l belongs to the section (a, b) with (a - 1) / 32 < l / n_layers <= b / 32 (empty
    sections left out)."""
    out = {}
    for name, (a, b) in PAPER_SECTIONS.items():
        layers = [lay for lay in range(1, n_layers + 1) if (a - 1) / PAPER_DEPTH < lay / n_layers <= b / PAPER_DEPTH]
        if layers:
            out[name] = layers
    return out


def _where(sim: pd.DataFrame, refs: pd.DataFrame, seeds: list[str], n_layers: int, seed: int) -> dict:
    """Where E holds each task's own information: per E seed, the swap test of E's task specificity and of its
    gain in specificity over B in each of the paper's sections carried to this depth (fixed before looking, so
    no range is chosen by the data), Holm-corrected over the ranges within each seed (`p_value` adjusted, `p_raw`
    as tested)."""
    ranges = paper_sections(n_layers)
    out = {"ranges": ranges, "specificity": {}, "gain": {}}
    for m in seeds:
        spec, gain = {}, {}
        for name, layers in ranges.items():
            own, base = _reference_tables(sim, refs, m, layers), _reference_tables(sim, refs, "base", layers)
            level = ALPHA / len(ranges)  # Holm's first step: what a lone effect must pass
            spec[name] = swap_test(list(own.values()), seed=seed, alpha=level)
            gain[name] = swap_test([own[t] - base[t] for t in own if t in base], seed=seed, alpha=level)
        for tests in (spec, gain):
            live = [name for name, t in tests.items() if t]
            for name, adj in zip(live, holm([tests[name].get("p_value", np.nan) for name in live])):
                if np.isfinite(tests[name].get("p_value", np.nan)):
                    tests[name] = tests[name] | {"p_value": float(adj), "p_raw": tests[name]["p_value"]}
        out["specificity"][m], out["gain"][m] = spec, gain
    return out


SPECIFIC_RULE = ("a control is specific to its task when its own specificity (its second seed's CKA with C_t minus "
                 "its mean CKA with the other tasks' controls, on the task's test prompts) is above 0 by the paired "
                 "95% interval over examples in at least half the layers of the upper third: an interval given these "
                 "controls (with a few other tasks' controls no exact test per task reaches 5%); whether the controls "
                 "are specific as a group is the swap test over tasks")


def summarize(study_json: dict, sim: pd.DataFrame, controls: pd.DataFrame, sections: dict,
              references: pd.DataFrame | None = None) -> StudySummary:
    """Compute the summary numbers of one study, on debiased CKA (biased linear CKA when it is the only CKA).
    `references` are the long table's rows against other references than C_t, with the specificity rows."""
    measure = next((m for m in MEASURES if (sim["measure"] == m).any()), MEASURES[-1])
    sim = sim[sim["measure"] == measure]
    refs = references[references["measure"] == measure] if references is not None and len(references) else None
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
                   "heldout_seed2_upper": _median(held, SECOND_SEED["heldout"], upper),
                   "experimental_upper_seen": _median(seen, "experimental", upper),
                   "base_upper_seen": _median(seen, "base", upper)}
    better = int(controls["control_better"].sum()) if "control_better" in controls else 0
    partial = "n_scored" in controls and bool((controls["n_scored"] < controls["n_examples"]).any())
    loss_scored = (int(controls["n_scored"].min()), int(controls["n_scored"].max()),
                   int(controls["n_examples"].max())) if partial else None
    not_learned = ([str(t) for t, ok in zip(controls["task"], controls["learned"]) if not (ok is True or ok == 1)]
                   if "learned" in controls else None)
    return StudySummary(
        model=study_json["model"]["name"], n_layers=n_layers, n_tasks=sim["task"].nunique(), clusters=clusters,
        sections={k: v for k, v in sections.items() if k != "heldout"}, heldout_sections=sections.get("heldout", {}),
        upper_layers=upper, base_upper_by_cluster=base_upper, gain_by_cluster=gains,
        median_base_upper=_median(sim, "base", upper), median_experimental_upper=_median(sim, "experimental", upper),
        heldout=heldout, controls_better=(better, len(controls)), loss_scored=loss_scored, not_learned=not_learned,
        n_values=len(sim),
        n_undefined=int((~np.isfinite(sim["value"].to_numpy(dtype=float))).sum()),
        undefined_reasons=undefined_reasons(sim), reference=_reference(sim, upper), measure=measure,
        specificity=_specificity(refs, sim, upper, study_json))


def _fmt(x: float) -> str:
    return "undefined" if x is None or not np.isfinite(x) else f"{x:.2f}"


def _signed(x: float) -> str:
    return "undefined" if x is None or not np.isfinite(x) else f"{x:+.2f}"


def _section_sentence(sec: dict, who: str, model: str = "E") -> str:
    """One sentence on the layer sections: found (with the plateau test, E against B in the shared section and
    the seed check), not found and why, or too few tasks to say."""
    if sec.get("too_few_tasks"):
        return (f"For {who}, no layer sections are stated: too few tasks ({sec.get('n_tasks')}; the test of a "
                f"transition needs at least {sec.get('min_tasks')}).")
    seeds = sec.get("seed_check")
    if not sec.get("transition_found"):
        checked = f" (E seeds: {seeds})" if seeds and "not measured" not in seeds else ""
        return (f"For {who}, the data show no clear transition section: {sec.get('reason', 'no reason recorded')}"
                f"{checked}.")
    measure = sec.get("measure", "CKA").replace("_cka", " CKA").replace("_", " ")
    ci = sec.get("ci", {})
    start, end = ci.get("transition_start", [None, None]), ci.get("transition_end", [None, None])
    out = (f"For {who}, layers {sec['shared'][0]}-{sec['shared'][1]} are shared, "
           f"{sec['transition'][0]}-{sec['transition'][1]} are the transition "
           f"(start 95% CI {start[0]}-{start[1]}, end 95% CI {end[0]}-{end[1]}) and "
           f"{sec['refinement'][0]}-{sec['refinement'][1]} the refinement section; the median {measure} gain of "
           f"{model} over B rises by {_fmt(sec.get('jump', float('nan')))} "
           f"(95% CI {_fmt(sec.get('jump_ci', [np.nan])[0])} to {_fmt(sec.get('jump_ci', [np.nan, np.nan])[1])}).")
    plateaus = sec.get("plateaus")
    if plateaus:
        ratio = lambda name: " to ".join("unbounded" if v is None else _fmt(v)
                                         for v in plateaus[name]["slope_ratio_ci"])
        out += (f" Both sections beside the rise are plateaus: each changes at most {plateaus['max_ratio']:g} times "
                f"as steeply as the transition ({100 * plateaus['level']:g}% intervals of that ratio: shared "
                f"{ratio('shared')}, refinement {ratio('refinement')}).")
    if "shared_e_vs_b" in sec:
        lo, hi = sec["shared_gain_ci"]
        verdict = {"at or below B": f"{model} is at or below B",
                   "above B": f"{model} is above B, unlike the paper's shared layers",
                   "within noise of B": f"{model} is within noise of B (not shown to be at or below it)"}
        out += (f" In the shared section {verdict[sec['shared_e_vs_b']]}: mean gain {_signed(sec['shared_gain'])} "
                f"(95% CI {_signed(lo)} to {_signed(hi)}).")
    if seeds:
        out += (f" {seeds[0].upper()}{seeds[1:]}, so noise common to all tasks is not in the test." if "not measured"
                in seeds else f" Seed check: {seeds} ({', '.join(sec.get('seeds', {}))}).")
    return out


def _undefined_sentence(s: StudySummary) -> str:
    reasons = "; ".join(s.undefined_reasons) or "no reason recorded"
    return (f"Every {MEASURE_WORDS[s.measure]} value of this study is undefined ({s.n_undefined} of {s.n_values}), so no "
            f"similarity, layer section or gain can be stated: {reasons}. (CKA is 0/0 for a representation "
            f"that is the same for every test example, as when all of a task's test prompts are the same text.) "
            f"The tables list each value as undefined and the figures built on them are empty.")


ALPHA = 0.05  # the level of every "beyond noise" over tasks


def _side(entry: dict) -> str:
    """'above' / 'below' 0 beyond noise, 'within' noise, or 'too few' tasks: by the swap test's p-value when the
    entry has one (`swap_test`), else by its interval over tasks (none under 5 tasks)."""
    if "p_value" in entry:
        if not np.isfinite(entry["p_value"]):
            return "too few"
        return "within" if entry["p_value"] > ALPHA else "above" if entry["mean"] > 0 else "below"
    lo, hi = entry.get("ci", [np.nan, np.nan])
    if not (np.isfinite(lo) and np.isfinite(hi)):
        return "too few"
    return "above" if lo > 0 else "below" if hi < 0 else "within"


def _interval(entry: dict) -> str:
    n = entry["n_tasks"]
    if "p_value" in entry:
        p = entry["p_value"]
        test = (f"swap test over tasks p = {p:.2g}" if np.isfinite(p) else
                f"too few tasks for the swap test ({entry['n_assignments']:.0f} assignments)")
        return f"mean over {n} task{'s' * (n != 1)}, {entry['n_above']} above 0; {test}"
    lo, hi = entry["ci"]
    if not np.isfinite(lo):
        return f"median over {n} task{'s' * (n != 1)}; too few tasks for an interval"
    return (f"median over {n} tasks; interval over tasks {_signed(lo)} to {_signed(hi)}, covering "
            f"{entry['coverage']:.2f}")


def _centre(entry: dict) -> float:
    return entry["mean"] if "p_value" in entry else entry["median"]


def seed_verdict(entries: list[dict], what: str) -> str:
    """The verdict on a quantity measured on each E seed (`entries`, one per seed): beyond noise only when every
    seed's test (or interval over tasks) puts it beyond 0 on the same side; with one seed, said to be unchecked
    against E's seed."""
    sides = {_side(e) for e in entries}
    one = "" if len(entries) > 1 else " (one E seed: its seed variation is not measured)"
    both = "both E seeds show it" if len(entries) > 1 else "by its " + ("test" if "p_value" in entries[0] else
                                                                       "interval over tasks")
    if sides == {"above"} or sides == {"below"}:
        return f"{what} is {'above' if sides == {'above'} else 'below'} 0 beyond noise ({both}){one}"
    if "too few" in sides:
        return f"no verdict on {what}: too few tasks{one}"
    if {"above", "below"} <= sides:
        return f"{what} is not established: the two E seeds put it beyond 0 with opposite signs"
    if len(entries) > 1 and len(sides) > 1:
        shown = next(iter(sides - {"within"}))
        return (f"{what} is not established: only one of the two E seeds puts it {shown} 0 beyond noise, the other "
                f"within noise of 0")
    return f"{what} is within noise of 0{one}"


def _upper_first(text: str) -> str:
    return text[:1].upper() + text[1:]


def _layer_span(layers: list[int]) -> str:
    return f"{layers[0]}-{layers[-1]}" if len(layers) > 1 else f"{layers[0]}"


def _layer_words(layers: list[int]) -> str:
    return f"layer{'s' * (len(layers) > 1)} {_layer_span(layers)}"


def _range_verdict(entries: list[dict]) -> str:
    """One range's verdict over the E seeds: 'holds' (every seed above 0 beyond noise), 'below', 'within',
    'mixed' (the seeds differ) or 'too few'."""
    sides = {_side(e) if e else "too few" for e in entries}
    if len(sides) > 1:
        return "too few" if "too few" in sides else "mixed"
    return {"above": "holds"}.get(next(iter(sides)), next(iter(sides)))


def where_sentences(sp: dict, words: str, n_layers: int) -> list[str]:
    """The summary's first lines: in which of the paper's sections, carried to this model's depth, E holds each
    task's own information (E's task specificity beyond noise on every E seed, Holm over the ranges), how that
    compares with the paper's Llama-2 finding, and, for a null result, what the test could have detected."""
    where = sp.get("where") or {}
    seeds = [m for m in sp.get("seeds", []) if where.get("specificity", {}).get(m)]
    if not seeds:
        return []
    ranges, spec, gain = where["ranges"], where["specificity"], where["gain"]
    names = {"experimental": "E", SECOND_SEED["experimental"]: "E's second seed"}
    who = " / ".join(names[m] for m in seeds)
    carried = ", ".join(f"{a}-{b} as {_layer_span(ranges[r])}" for r, (a, b) in PAPER_SECTIONS.items() if r in ranges)
    verdict = {r: _range_verdict([spec[m][r] for m in seeds]) for r in ranges}

    def values(tests: dict, r: str) -> str:
        entries = [tests[m][r] for m in seeds]
        if not all(entries) or not all(np.isfinite(e.get("p_value", np.nan)) for e in entries):
            return "too few tasks for the swap test"
        return (" / ".join(_signed(e["mean"]) for e in entries) + ", p = "
                + " / ".join(f"{e['p_value']:.2g}" for e in entries))

    holds = [r for r in ranges if verdict[r] == "holds"]
    parts = [f"{_layer_words(ranges[r])} ({r}: {values(spec, r)})" for r in ranges]
    how = (f"E's task specificity ({who}; its {words} with C_t minus its mean {words} with other tasks' controls, on "
           f"each task's test prompts; swap test over {spec[seeds[0]][next(iter(ranges))].get('n_tasks', 0)} tasks, "
           f"Holm-corrected over the {len(ranges)} ranges) in the paper's sections carried to this model's "
           f"{n_layers} layers by relative depth (Llama-2's {carried})")
    if holds:
        lead = ("Where E holds each task's own information: in "
                + " and ".join(f"{_layer_words(ranges[r])} (the {r} section)" for r in holds)
                + f", where every E seed puts it above 0 beyond noise. By {how}: " + "; ".join(parts) + ".")
    elif any(v == "too few" for v in verdict.values()):
        return [f"Where E holds each task's own information is not decided: too few tasks for the swap test in "
                f"some range ({how}: " + "; ".join(parts) + ")."]
    else:
        floor = max(spec[m][r].get("detectable", np.nan) for m in seeds for r in ranges)
        null = ("nowhere beyond noise on every E seed" if "mixed" in verdict.values() else
                "nowhere beyond noise, a null result")
        lead = (f"Where E holds each task's own information: {null}. By {how}: "
                + "; ".join(parts) + f". With these tasks the test could have detected a mean specificity of "
                f"{floor:.2f} or more in a range (its critical value at the corrected level).")
    mixed = [r for r in ranges if verdict[r] == "mixed"]
    if mixed:
        lead += (" In " + ", ".join(_layer_words(ranges[r]) for r in mixed)
                 + " only one E seed shows it, so it is not established there.")
    paper = {r for r, on in PAPER_HOLDS.items() if on and r in ranges}
    found = " and ".join(holds) or "none of them"
    compare = (f"the same pattern (beyond noise in the {found} section{'s' * (len(holds) > 1)})" if set(holds) == paper
               else f"another pattern: beyond noise in {'the ' * bool(holds)}{found}"
                    f"{' section' + 's' * (len(holds) > 1) if holds else ''}, against the paper's "
                    + " and ".join(sorted(paper, key=list(ranges).index)))
    out = [lead, f"In the paper (Llama-2-7b, CKA with C_t alone, no other tasks' controls), E is close to each "
                 f"task's control from the transition section on (about 0.96 from layer 10 of 32) and slightly below B "
                 f"in the shared section (layers 1-9); E's task specificity here shows {compare}."]
    g = [r for r in ranges if _range_verdict([gain[m][r] for m in seeds]) == "holds"]
    out.append("Instruction tuning moved E towards each task's own specialist beyond B (E's gain in task "
               "specificity over B, per range: " + "; ".join(f"{_layer_words(ranges[r])} {values(gain, r)}"
                                                             for r in ranges)
               + (f"): beyond noise on every E seed in {' and '.join(_layer_words(ranges[r]) for r in g)}." if g
                  else "): in no range beyond noise on every E seed."))
    return out


def specificity_sentences(sp: dict, up: str, words: str) -> list[str]:
    """The summary's first conclusion: is what E shares with each task's control that task's information?
    E's specificity (per seed), B's, E's gain over B in specificity, and the controls' own specificity."""
    if not sp.get("models") or not sp.get("seeds"):
        return [f"Whether E holds each task's own information is not measured: no task has other tasks' controls "
                f"read on its prompts (cross_tasks none, or a single task), so a high {words} with C_t cannot be "
                f"told from what every adapter of this base shares."]
    k = sorted(set(sp["n_sources"].values())) or [0]
    n_src = f"{k[0]} other task{'s' * (k[0] != 1)}'" if len(k) == 1 else f"{k[0]}-{k[-1]} other tasks'"
    names = {"experimental": "E", SECOND_SEED["experimental"]: "E (second seed)"}
    seeds = [m for m in sp["seeds"] if sp["models"].get(m)]
    parts = "; ".join(f"{names[m]} {_signed(sp['models'][m]['mean'])} ({_interval(sp['models'][m])})" for m in seeds)
    out = [f"Is it each task's own information? Over {up}, on each task's test prompts, E's {words} with the task's "
           f"control minus its mean {words} with {n_src} controls (task specificity) is {parts}. "
           + _upper_first(seed_verdict([sp["models"][m] for m in seeds], "E's task specificity")) + "."]
    base = sp["models"].get("base")
    gains = [m for m in seeds if sp["gain"].get(m)]
    if base and gains:
        g = "; ".join(f"{names[m]} {_signed(sp['gain'][m]['mean'])} ({_interval(sp['gain'][m])})" for m in gains)
        out.append(f"B's specificity is {_signed(base['mean'])} ({_interval(base)}); E's gain in specificity over B, "
                   f"its move towards t's specialist beyond its move towards every specialist, is {g}: "
                   + seed_verdict([sp["gain"][m] for m in gains], "the gain in specificity") + ".")
    own = sp["models"].get("ceiling")
    if own:
        listed = ", ".join(f"{t} {_signed(c['value'])} ({c['layers_above']} of {c['n_layers']} layer"
                           f"{'s' * (c['n_layers'] != 1)} above 0 by the paired interval over examples)"
                           for t, c in sp.get("controls", {}).items())
        controls = sp.get("controls", {})
        unspecific = [t for t, c in controls.items() if not c["specific"]]
        out.append(f"The controls' own specificity (their second seed's {words} with C_t minus its mean with the "
                   f"other tasks' controls: 0 in expectation for a control that learned nothing of its task) over "
                   f"{up} is {_signed(own['mean'])} ({_interval(own)}): {listed}. "
                   f"{len(controls) - len(unspecific)} of {len(controls)} controls are specific to their task "
                   f"({SPECIFIC_RULE})" + (f"; not: {', '.join(unspecific)}." if unspecific else "."))
    else:
        out.append("The controls' own specificity is not measured: no control was trained twice (ceiling_tasks).")
    return out


def _seed_sentences(sp: dict, up: str, words: str) -> list[str]:
    """E's two seeds side by side, and E - B recomputed against the control's second seed (noise scales)."""
    out = []
    if sp.get("agreement"):
        a, g = sp["agreement"], sp.get("gain_seed2") or {}
        out.append(f"E's two seeds agree at {_fmt(a['median'])} {words} over {up} ({_interval(a)})"
                   + (f"; E - B with the second seed is {_signed(g['median'])} ({_interval(g)})" if g else "") + ".")
    cs = sp.get("control_seed")
    if cs and cs["against_second"]:
        a, b = cs["against_control"], cs["against_second"]
        out.append(f"Read against the control's seed: on the {b['n_tasks']} task{'s' * (b['n_tasks'] != 1)} with a "
                   f"second control, E - B over {up} is {_signed(a.get('median', np.nan))} against C_t and "
                   f"{_signed(b['median'])} against C_t' (medians over those tasks); recomputed against the other "
                   f"seed, a task's gain moves by a median {_fmt(cs['change'])}, the scale of a gain's seed noise.")
    return out


def _reference_sentences(ref: dict, up: str, seed2: dict | None = None) -> list[str]:
    """E and B against chance and against seed agreement (on the same tasks), and whether E - B is within
    noise (by its interval over tasks; a difference is never read against a level)."""
    b, e, ceiling = ref.get("base", {}), ref.get("experimental", {}), ref.get("ceiling", {})
    out = []
    if np.isfinite(b.get("null_mean", np.nan)) and np.isfinite(e.get("null_mean", np.nan)):
        out.append(f"Read against chance: re-pairing the test examples at random (each within its template when a "
                   f"task's prompts use several) gives B {_fmt(b['null_mean'])} and E "
                   f"{_fmt(e['null_mean'])} over {up} (median permutation-null means; 95% bounds "
                   f"{_fmt(b['null_q95'])} and {_fmt(e['null_q95'])}), so chance-adjusted, "
                   f"(value - null) / (1 - null), "
                   f"E scores {_fmt(e['adjusted'])} and B {_fmt(b['adjusted'])}.")
    if np.isfinite(ceiling.get("value", np.nan)):
        tasks = ceiling["tasks"]
        out.append(f"Read against seed agreement: on the {len(tasks)} task{'s' * (len(tasks) != 1)} whose control was "
                   f"trained twice ({', '.join(tasks)}), the two seeds agree at {_fmt(ceiling['value'])} over {up}; "
                   f"on the same tasks E reaches {_fmt(ceiling['experimental'])} and B {_fmt(ceiling['base'])} "
                   f"(medians). Seed agreement is a level, not an upper bound: each seed moves away from B in "
                   f"directions of its own.")
    diff = ref.get("difference")
    if diff:
        lo, hi = diff["ci"]
        n = diff["n_tasks"]
        if not np.isfinite(lo):
            out.append(f"E - B over {up} is {_signed(diff['median'])} (median over {n} task{'s' * (n != 1)}); too "
                       f"few tasks for an interval (even min to max would cover the median of the tasks' "
                       f"population only {diff['coverage']:.2f} of the time), so no verdict on noise is stated.")
            return out
        out.append(f"E - B over {up} is {_signed(diff['median'])} (median over {n} tasks; interval over tasks "
                   f"{_signed(lo)} to {_signed(hi)}, covering {diff['coverage']:.2f}): "
                   + seed_verdict([diff] + ([seed2] if seed2 else []), "E - B") + ".")
    return out


def summary_sentences(s: StudySummary) -> list[str]:
    """The report's summary, one sentence per finding, written from the numbers; when no similarity
    value is defined, the controls' losses and why the values are undefined."""
    scored = ""
    if s.loss_scored:
        lo, hi, n = s.loss_scored
        share = f"{lo}" if lo == hi else f"{lo} to {hi}"
        scored = f" (scored on {share} of each task's {n} test prompts, the same ones for both)"
    controls = (f"{s.controls_better[0]} of {s.controls_better[1]} control models beat the base model on their "
                f"own task's test loss{scored}.")
    if s.not_learned is not None:
        n = s.controls_better[1]
        missed = (f"; not learned: {', '.join(s.not_learned)}" if s.not_learned else "")
        controls += (f" By their task metric (accuracy over the options, or ROUGE-L / chrF of a greedy answer), "
                     f"{n - len(s.not_learned)} of {n} controls beat B with a paired 95% interval of the gain above "
                     f"0{missed}.")
    if s.all_undefined:
        return [controls, _undefined_sentence(s)]
    up = f"layers {s.upper_layers[0]}-{s.upper_layers[-1]}"
    out = [*where_sentences(s.specificity, MEASURE_WORDS[s.measure], s.n_layers),
           *specificity_sentences(s.specificity, up, MEASURE_WORDS[s.measure]), controls,
           f"Over the last third of the layers ({up}), the median {MEASURE_WORDS[s.measure]} with the controls is "
           f"{_fmt(s.median_experimental_upper)} for E and {_fmt(s.median_base_upper)} for B."]
    if s.measure == "linear_cka":
        out.append(BIASED_NOTE)
    out += _reference_sentences(s.reference, up, s.specificity.get("gain_seed2"))
    out += _seed_sentences(s.specificity, up, MEASURE_WORDS[s.measure])
    out.append(_section_sentence(s.sections, "E"))
    ranked = sorted(s.base_upper_by_cluster.items(), key=lambda kv: -np.nan_to_num(kv[1], nan=-9))
    k = min(3, len(ranked) // 2)  # the best and the worst clusters never overlap
    if k:
        top = ", ".join(f"{c} ({_fmt(v)})" for c, v in ranked[:k])
        low = ", ".join(f"{c} ({_fmt(v)})" for c, v in ranked[-k:])
        out.append(f"B already matches its controls best in {top}, and least in {low} (median {MEASURE_WORDS[s.measure]} over {up}).")
    elif ranked:
        out.append(f"B matches its controls at {_fmt(ranked[0][1])} in its one cluster, {ranked[0][0]} (median "
                   f"{MEASURE_WORDS[s.measure]} over {up}).")
    gains = sorted(s.gain_by_cluster.items(), key=lambda kv: -np.nan_to_num(kv[1][0], nan=-9))
    out.append("E's largest gains over B: " + ", ".join(
        f"{c} ({_signed(g)} at layer {layer})" if layer is not None else f"{c} (undefined at every layer)"
        for c, (g, layer) in gains[:3]) + ".")
    if s.heldout:
        h = s.heldout
        second = (f" (its second seed {_fmt(h['heldout_seed2_upper'])})"
                  if np.isfinite(h.get("heldout_seed2_upper", np.nan)) else "")
        out.append(f"On the {len(h['tasks'])} tasks held out of E' ({', '.join(h['tasks'])}), E' reaches "
                   f"{_fmt(h['heldout_upper'])}{second} against B's {_fmt(h['base_upper'])} over {up}, while on the "
                   f"tasks "
                   f"it was trained on E reaches {_fmt(h['experimental_upper_seen'])} against B's "
                   f"{_fmt(h['base_upper_seen'])}.")
        out.append(_section_sentence(s.heldout_sections, "E' on the held-out tasks", model="E'"))
    return out


METRIC_WORDS = {"primary": "each task's primary metric", "nll_per_token": "the NLL per target token"}


def _share_words(part: dict | None) -> str:
    """A share of E's gain with its interval, e.g. "0.83 [0.78, 0.89]"."""
    part = part or {}
    low, high = part.get("low"), part.get("high")
    interval = f" [{_fmt(low)}, {_fmt(high)}]" if low is not None and high is not None else ""
    return f"{_fmt(part.get('share'))}{interval}"


def _causal_task_words(check: dict, task: str, ranges: dict) -> str:
    """What decided one task's status in the causal verdict, with the intervals it rests on."""
    def the(name: str) -> str:
        return name if name.startswith("layers") else f"the {name}"

    def fact(mask: str) -> str:
        kind, name = mask.split(" ", 1)
        share = _share_words(check[kind].get(name))
        return f"{the(name)} alone keeps {share}" if kind == "only" else f"without {the(name)} {share} is left"

    if check["status"] == "carried":
        top = check["carrier"]
        return f"{task}: {fact('only ' + top)}, {fact('outside ' + top)}, Holm-adjusted p {check['p_holm'][top]:.2g}"
    if check["status"] == "spread":
        masks = list(dict.fromkeys(v["mask"] for v in check["not_carrier"].values()))
        return f"{task}: {', '.join(fact(m) for m in masks)}"
    nearest = min(ranges, key=lambda r: check["p"][r])
    return f"{task}: {fact('only ' + nearest)}, {fact('outside ' + nearest)}"


def _causal_tasks(tasks: list[str], words, limit: int = 3) -> str:
    """Up to `limit` tasks with what decided them, and how many more there are."""
    said = "; ".join(words(t) for t in tasks[:limit])
    more = len(tasks) - limit
    return f"{said}; and {more} more (results/causal.json)" if more > 0 else said


def causal_sentence(verdict: dict | None) -> str | None:
    """One sentence on which layer range of E's adapter carries E's gain over B (results/causal.json), or
    None when the study ran no causal check. It states the verdict's rule (`mossa.causal.RULE`: a range
    carries the gain on a task only when Holm-corrected paired tests establish that alone it keeps at least
    half, no other range alone does and without it less than half is left), per metric the tasks carried,
    spread (no single range carries it), undetermined (intervals too wide) or not tested (no established gain),
    and the share intervals each rests on; where nothing could be tested, it says so and why."""
    if not verdict or "ranges" not in verdict:
        return None
    ranges = verdict["ranges"]

    def where(name: str) -> str:
        a, b = ranges[name]
        span = f"layer {a}" if a == b else f"layers {a}-{b}"
        return name if name.startswith("layers") else f"{span} ({name})"

    head = (f"The causal check (E's adapter on in one layer range only, and everywhere but there; ranges: "
            f"{verdict.get('source', 'as configured')})")
    if "rule" not in verdict:
        return (f"{head} has a results/causal.json from an earlier mossa, which judged from point estimates without "
                "intervals; `mossa analyze` recomputes it with intervals and the corrected verdict.")
    labels = [k for k in ("primary", "nll_per_token") if k in verdict]
    if not any(verdict[k]["n_tested"] for k in labels):
        reasons = [c["reason"] for k in labels for c in verdict[k]["tasks"].values()]
        why = reasons[0] if reasons else verdict.get("reason", "no causal records")
        return (f"{head} could test nothing, on any task or metric: {why}; with no gain to share out, no layer range "
                "can be said to carry it.")
    parts = []
    for label in labels:
        v = verdict[label]
        checks = v["tasks"]
        words = lambda t: _causal_task_words(checks[t], t, ranges)  # noqa: E731
        if not v["n_tested"]:
            parts.append(f"By {METRIC_WORDS[label]} nothing could be tested ({next(iter(checks.values()))['reason']})")
            continue
        bits = [f"{where(r)} carries it on {_causal_tasks(ts, words)}" for r, ts in v["carriers"].items()]
        if v["spread"]:
            bits.append(f"no single range carries it on {_causal_tasks(v['spread'], words)}")
        if v["undetermined"]:
            bits.append(f"it is undetermined, the intervals too wide, on {_causal_tasks(v['undetermined'], words)}")
        if v["not_tested"]:
            bits.append(f"nothing could be tested on {', '.join(v['not_tested'])}, where E's gain over B is not "
                        "established")
        parts.append(f"By {METRIC_WORDS[label]} ({v['n_tested']} of {len(checks)} tasks tested), " + "; ".join(bits))
    carriers = verdict.get("carriers") or []
    claim = (f"finds E's gain over B carried by its adapter in {' or '.join(where(r) for r in carriers)} on some tasks"
             if carriers else "finds no layer range that carries E's gain over B")
    return (f"{head} {claim}. {'. '.join(parts)}. A range carries the gain on a task when alone it keeps at least "
            f"half of it, no other range alone does and without it less than half is left, each by a paired t test "
            f"over examples, with Holm's correction over the {verdict['n_claims']} claims checked (each range carrying "
            f"it, or none, per task and metric; family-wise error {verdict['alpha']:g}); each share is given with its "
            f"95% Fieller interval over examples.")


def section_check_sentences(root) -> list[str]:
    """The summary's sentences on the causal check and the outlier controls (results/causal.json,
    results/robustness.json), for the studies that have them."""
    out = []
    for name, sentence in (("causal", causal_sentence), ("robustness", robustness_sentence)):
        path = Path(root) / "results" / f"{name}.json"
        said = sentence(json.loads(path.read_text(encoding="utf-8"))) if path.is_file() else None
        if said:
            out.append(said)
    return out


VARIANT_WORDS = {"debiased_cka_standardized": "debiased CKA on standardised features",
                 "linear_cka_standardized": "biased linear CKA on standardised features",
                 "debiased_cka_no_outliers": "debiased CKA with the outlier dimensions removed",
                 "debiased_cka_random_dims": "debiased CKA with as many random dimensions removed",
                 "debiased_cka_top_pcs_removed": "debiased CKA with C_t's dominant principal directions projected out"}


def _pct(x) -> str:
    return "undefined" if x is None or not np.isfinite(x) else f"{x:.0%}"


def _gains(values) -> np.ndarray:
    """A JSON list of gains (null for undefined) as floats."""
    return np.array([np.nan if g is None else g for g in values or []], float)


def _span(ci, i: int) -> str:
    """The 95% interval over tasks at position `i` of a [lows, highs] pair, in words."""
    lo, hi = (_gains(bound)[i] if len(bound or []) > i else np.nan for bound in (ci or [[], []]))
    return f"{_signed(lo)} to {_signed(hi)}" if np.isfinite(lo) and np.isfinite(hi) else "none"


def _nothing_words(original: dict) -> str:
    """Why the original leaves nothing to test: no transition, and its E - B beyond noise at no layer."""
    noise = original.get("beyond_noise") or {}
    lows, highs = (_gains(b) for b in (original.get("median_gain_ci") or [[], []]))
    spans = np.isfinite(lows) & np.isfinite(highs)
    with_zero = int(np.sum(spans & (lows <= 0) & (highs >= 0)))
    n = noise.get("n_layers", len(lows))
    short = (f" ({noise['n_tasks']} tasks; at least {noise['min_tasks']} are needed)"
             if noise.get("n_tasks", 0) < noise.get("min_tasks", 0) else "")
    intervals = (f"has a 95% interval over tasks that includes 0 at {with_zero} of {int(spans.sum())} layers"
                 if spans.any() else "has no 95% interval over tasks (fewer than 5 tasks)")
    return (f"the original finds no transition, its median E - B {intervals}, and corrected over its {n} layers it "
            f"is beyond noise at none{short}")


def robustness_sentence(rob: dict | None) -> str | None:
    """One sentence on whether the sections and the sign of E - B survive the robust CKA variants
    (results/robustness.json): which survive (with the power check: at how many layers each moves E - B by more
    than its noise), which do not, which change too little to test the result, where there was nothing to test,
    and the largest change of the median gain they make, with its 95% intervals over tasks."""
    if not rob or not rob.get("variants"):
        return None
    o = rob.get("outliers", {})
    if not np.isfinite(o.get("median_count", np.nan)):
        return ("No outlier dimensions can be counted and no robust CKA variant compared: the states do not vary "
                "across examples at any layer.")
    dims = ", ".join(str(d) for d in o.get("frequent_dims", [])[:3])
    head = (f"Outlier dimensions (median |h| above the layer's 99th percentile of |h|: a median of "
            f"{o['median_count']:.0f} per layer{', most often ' + dims if dims else ''}, carrying a median "
            f"{_pct(o.get('median_variance_share'))} of the variance, the top principal direction "
            f"{_pct(o.get('median_top_direction_share'))})")
    labels = ("survives", "does not survive", "not tested", "nothing to test")
    done = {k: v for k, v in rob["variants"].items() if v.get("verdict") in labels}
    if not done:
        return f"{head}: no robust CKA variant could be compared with the original."
    by = {label: [k for k, v in done.items() if v["verdict"] == label] for label in labels}

    def words(keys: list[str]) -> str:
        return ", ".join(VARIANT_WORDS.get(k, k) for k in keys)

    def reach(keys: list[str]) -> str:
        counts = [(done[k].get("power") or {}) for k in keys]
        if not counts or not all(c.get("n_layers") for c in counts):
            return ""
        return (f"{', '.join(str(c['n_able']) for c in counts)} of {counts[0]['n_layers']} layers"
                if len({c["n_layers"] for c in counts}) == 1 else
                ", ".join(f"{c['n_able']} of {c['n_layers']}" for c in counts) + " layers")

    parts = []
    if by["survives"]:
        where = reach(by["survives"])
        parts.append(f"the sections and the sign of E - B survive {words(by['survives'])}"
                     + (f" (each moves a task's E - B by more than its noise at {where})" if where else "")
                     + (f", but not {words(by['does not survive'])}" if by["does not survive"] else ""))
    elif by["does not survive"]:
        parts.append(f"the sections and the sign of E - B do not survive {words(by['does not survive'])}")
    if by["not tested"]:
        where = reach(by["not tested"])
        beyond = f" (beyond it at {where})" if where else ""
        parts.append(f"{words(by['not tested'])} change{'s' if len(by['not tested']) == 1 else ''} the compared CKA "
                     f"values by less than the noise of E - B at most layers{beyond}, so agreement there tests nothing")
    if by["nothing to test"]:
        parts.append(f"there is nothing to test for {words(by['nothing to test'])}: "
                     f"{_nothing_words(rob.get('original', {}))}")
    original = rob.get("original", {})
    before = _gains(original.get("median_gain"))
    layers = original.get("layers") or list(range(len(before)))
    moved = []
    for k, v in done.items():
        if not k.startswith("debiased"):  # the same estimator as the sections': only the features differ
            continue
        gain = _gains(v.get("median_gain"))
        if len(gain) == len(before) and np.isfinite(gain - before).any():
            i = int(np.nanargmax(np.abs(gain - before)))
            moved.append((abs(gain[i] - before[i]), k, i, gain[i]))
    change = ""
    if moved:
        _, k, i, value = max(moved)
        intervals = (f" (95% intervals over tasks: {_span(original['median_gain_ci'], i)} and "
                     f"{_span(done[k]['median_gain_ci'], i)})"
                     if "median_gain_ci" in original and "median_gain_ci" in done[k] else "")
        change = (f"; the largest change of the median gain is at layer {layers[i]}, from {_signed(before[i])} to "
                  f"{_signed(value)} under {VARIANT_WORDS.get(k, k)}{intervals}")
    return f"{head}: {'; '.join(parts)}{change}."
