"""Does the study's result survive the CKA variants that outlier dimensions cannot dominate?
(results/robustness.json)

Stage: analysis (reads the similarity table, the sections and the outlier table; no store access, no
model). For each variant of `mossa.similarity.ROBUST_MEASURES`, the sections are recomputed with
`layer_sections` on that variant's gain CKA(E, C_t) - CKA(B, C_t) and compared with the study's
(`SECTION_MEASURE`), and so is the sign of the per-layer median over tasks of that gain. The outlier
removal is also compared with its control, as many random dimensions removed. The rule is `CRITERION`.

Agreement is evidence only when there was a result to overturn and the variant could have overturned it.
So a study without sections whose E - B is beyond noise at no layer (`TEST_RULE`: per-layer intervals at
the level 1 - 0.05 / L, Bonferroni over the L layers, since a pure-noise gain at 5 tasks puts some
per-layer 95% interval off 0 in most studies) has nothing to test, and "survives" also needs the power
check (`POWER_RULE`): the variant must change the compared CKA values by more than the noise of E - B.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from mossa.analysis._task_intervals import median_interval, median_over_tasks
from mossa.analysis._sections import SECTION_MEASURE, layer_sections
from mossa.similarity import OUTLIER_RULE, ROBUST_MEASURES, TOP_PCS_RULE, get_measure

NO_OUTLIERS, RANDOM_DIMS = "debiased_cka_no_outliers", "debiased_cka_random_dims"
TOP_PCS = "debiased_cka_top_pcs_removed"
FAMILY_ALPHA = 0.05
NOTHING, UNTESTED = "nothing to test", "not tested"
TEST_RULE = ("There is something to test when the original finds a transition or its E - B is beyond noise at some "
             "layer over the whole curve: the distribution-free interval over tasks of that layer's median, at the "
             "level 1 - 0.05 / L for L layers (Bonferroni), excludes 0. Min to max reaches that level only from "
             "1 + log2(L / 0.05) tasks (10 at 18 layers). Without something to test, a variant that finds a "
             "transition or an E - B beyond noise by the same rule changes the answer (does not survive); one that "
             "finds neither leaves nothing to test.")
POWER_RULE = ("The variant's reach at a layer is the median over tasks of |dE| + |dB|, where dE and dB are the "
              "changes it makes to CKA(E, C_t) and CKA(B, C_t): the most it moves a task's E - B. Its noise is half "
              "the width of the original's 95% interval over tasks of the median E - B there: a median whose "
              "interval excludes 0 lies about that far from 0 or farther, so a smaller change cannot flip it, nor "
              "move a boundary that task noise pins to its interval. The variant can move the result when its reach "
              "is at least the noise at most of the layers with both (more than half: the sections are fitted to "
              "the whole curve); otherwise its agreement is not tested.")
CRITERION = ("The sections survive a variant when it finds a transition exactly when the reference does and, when "
             "both do, each boundary of the variant's (its first and last transition layers: where the shared "
             "section ends and the refinement section starts) lies inside the reference's 95% bootstrap interval "
             "of that boundary (or equals it where there is no interval). E - B flips at a layer when the median "
             "over tasks of value(E) - value(B) has another sign with the variant than with the reference (layers "
             "where either is undefined are set aside); every flip is listed, and it counts against the result "
             "where the reference's sign is established: its 95% interval over tasks excludes 0 (a missing "
             "interval, below 5 tasks, establishes nothing). The result survives a variant when there is something "
             "to test, the sections survive, no established sign flips and the variant can move the result (the "
             "power check); it does not survive when the sections move or an established sign flips. "
             + TEST_RULE + " " + POWER_RULE)
LEADS = {
    "debiased_cka_standardized": "With debiased CKA on standardised features (every dimension z-scored)",
    "linear_cka_standardized": "With biased linear CKA on standardised features (every dimension z-scored; biased, "
                               "so inflated when there are fewer examples than dimensions)",
    NO_OUTLIERS: "With each side's outlier dimensions removed{outliers}",
    RANDOM_DIMS: "With as many random dimensions removed from each side instead (the control of the removal)",
    TOP_PCS: "With the dominant principal directions of C_t (each over 10% of its variance, at least the top one) "
             "projected out of both sides{top}",
}
_SUMMARY_KEYS = ("transition_found", "shared", "transition", "refinement", "ci", "jump", "p_value", "reason")


def _task_values(sim: pd.DataFrame, measure: str, model: str) -> pd.DataFrame | None:
    """value of `measure` for `model` and for base per (task, layer) (the index), or None when either is absent."""
    rows = sim[(sim["measure"] == measure) & sim["model"].isin(("base", model))]
    data = rows.pivot_table(index=["task", "layer"], columns="model", values="value", dropna=False)
    return None if data.empty or model not in data or "base" not in data else data[[model, "base"]]


def median_gain(sim: pd.DataFrame, measure: str, *, model: str = "experimental", n_boot: int = 0,
                seed: int = 0) -> pd.DataFrame:
    """Per layer (the index), the median over tasks of value(model) - value(base) of `measure` (tasks where it
    is undefined left out; NaN where none has it), with its distribution-free interval over tasks when `n_boot`
    > 0 (`median_over_tasks` on the gains; columns median, ci_low, ci_high, n_tasks)."""
    data = _task_values(sim, measure, model)
    if data is None:
        return pd.DataFrame(columns=["median", "ci_low", "ci_high", "n_tasks"], dtype=float)
    gains = (data[model] - data["base"]).rename("value").reset_index().assign(measure=measure, model=model)
    medians = median_over_tasks(gains, n_boot=n_boot, seed=seed, by_cluster=False)
    return medians.set_index("layer")[["median", "ci_low", "ci_high", "n_tasks"]].astype(float)


def beyond_noise(sim: pd.DataFrame, measure: str, *, model: str = "experimental", alpha: float = FAMILY_ALPHA
                 ) -> dict:
    """The layers where the median over tasks of value(model) - value(base) is beyond noise over the whole
    curve (`TEST_RULE`): its distribution-free interval at the level 1 - alpha / L (L: the layers with a defined
    gain) excludes 0. Returns level, n_layers, n_tasks (the most at a layer), min_tasks (the fewest for which
    min to max reaches the level) and layers."""
    data = _task_values(sim, measure, model)
    gains = pd.Series(dtype=float) if data is None else (data[model] - data["base"]).dropna()
    per_layer = {int(la): g.to_numpy(dtype=float) for la, g in gains.groupby(level="layer")}
    level = 1.0 - alpha / max(len(per_layer), 1)
    layers = []
    for layer, values in per_layer.items():
        lo, hi, coverage = median_interval(values, level)
        if np.isfinite(coverage) and coverage >= level and (lo > 0 or hi < 0):
            layers.append(layer)
    n_tasks = max((len(v) for v in per_layer.values()), default=0)
    return {"level": level, "n_layers": len(per_layer), "n_tasks": n_tasks,
            "min_tasks": int(math.ceil(1 + math.log2(max(len(per_layer), 1) / alpha))), "layers": layers}


def _power(sim: pd.DataFrame, variant: str, model: str, reference: pd.DataFrame) -> dict:
    """`POWER_RULE`: per layer of `reference` (the original's median gain with its intervals), the variant's
    reach (median over tasks of |dE| + |dB|) and the noise (half the width of the interval), the layers where
    the reach is at least the noise, and whether that holds at more than half of the layers with both."""
    ours, theirs = _task_values(sim, SECTION_MEASURE, model), _task_values(sim, variant, model)
    if ours is None or theirs is None:
        reach = pd.Series(np.nan, index=reference.index)
    else:
        change = (theirs - ours.reindex(theirs.index)).abs()
        reach = (change[model] + change["base"]).groupby(level="layer").median().reindex(reference.index)
    noise = (reference["ci_high"] - reference["ci_low"]) / 2
    both = np.isfinite(reach.to_numpy(dtype=float)) & np.isfinite(noise.to_numpy(dtype=float))
    able = both & (reach.to_numpy(dtype=float) >= noise.to_numpy(dtype=float))
    n, n_able = int(both.sum()), int(able.sum())
    return {"reach": _listed(reach), "noise": _listed(noise), "n_layers": n, "n_able": n_able,
            "able_layers": [int(la) for la, a in zip(reference.index, able) if a],
            "median_reach": float(np.median(reach[both])) if n else None,
            "median_noise": float(np.median(noise[both])) if n else None,
            "can_move": bool(2 * n_able > n)}


def _power_phrase(power: dict) -> str:
    if not power["n_layers"]:
        return ("its power cannot be checked: the original's E - B has no 95% interval over tasks at any layer "
                "(fewer than 5 tasks, or no intervals)")
    if not any(power["reach"]):  # every defined reach is 0: the variant's values are the original's
        return "it leaves both CKA values as they are at every layer, so it could not move E - B"
    return (f"its changes to the two CKA values could move a task's E - B by a median of up to "
            f"{power['median_reach']:.2g} (|dE| + |dB|) against a noise of {power['median_noise']:.2g} (half the "
            f"original's 95% interval over tasks), reaching that noise at {power['n_able']} of {power['n_layers']} "
            f"layers")


def _something(sections: dict, noise: dict) -> bool:
    return bool(sections.get("transition_found")) or bool(noise["layers"])


def _nothing_phrase(noise: dict) -> str:
    """Why the original (`noise`: its `beyond_noise`) leaves nothing to test, as a clause."""
    short = (f"; {noise['n_tasks']} tasks, at least {noise['min_tasks']} needed for any layer"
             if noise["n_tasks"] < noise["min_tasks"] else "")
    return (f"the original finds no transition and E - B beyond noise at none of {noise['n_layers']} layers "
            f"(intervals over tasks at {noise['level']:.2%}, Bonferroni over the layers{short})")


def _summary(sections: dict) -> dict:
    return {k: sections[k] for k in _SUMMARY_KEYS if k in sections} | {"too_few_tasks": bool(sections.get(
        "too_few_tasks", False))}


def _span_text(sections: dict) -> str:
    return ", ".join(f"{name} {sections[name][0]}-{sections[name][1]}" for name in ("shared", "transition",
                                                                                   "refinement"))


def _compare_sections(ref: dict, var: dict, ref_name: str) -> dict:
    """Whether `var`'s sections survive against `ref`'s (called `ref_name` in the phrase), with each boundary's
    check and a phrase."""
    out = {"survive": False, "boundaries": {}}
    stated = "criterion" in ref, "criterion" in var  # without it, layer_sections could not fit (its reason says why)
    if not all(stated):
        out.update(survive=not any(stated), phrase="no sections can be stated either way" if not any(stated) else
                   f"no sections can be stated with {'the variant' if stated[0] else ref_name} "
                   f"({(var if stated[0] else ref)['reason']})")
    elif ref.get("too_few_tasks") or var.get("too_few_tasks"):
        out.update(survive=True, phrase="there are too few tasks to state sections either way")
    elif bool(ref["transition_found"]) != bool(var["transition_found"]):
        out["phrase"] = (f"a transition appears ({_span_text(var)}) where {ref_name} has none"
                         if var["transition_found"] else
                         f"no transition is found where {ref_name} has one ({_span_text(ref)})")
    elif not ref["transition_found"]:
        out.update(survive=True, phrase=f"no transition is found, as with {ref_name}")
    else:
        for k, key in enumerate(("transition_start", "transition_end")):
            value, ref_value = var["transition"][k], ref["transition"][k]
            interval = ref.get("ci", {}).get(key, [ref_value, ref_value])
            out["boundaries"][key] = {"value": value, "reference": ref_value, "interval": interval,
                                      "inside": bool(interval[0] <= value <= interval[1])}
        out["survive"] = all(b["inside"] for b in out["boundaries"].values())
        if var["transition"] == ref["transition"]:
            out["phrase"] = f"the sections are unchanged ({_span_text(var)})"
        elif out["survive"]:
            out["phrase"] = (f"the sections survive ({_span_text(var)}; both boundaries inside the 95% intervals of "
                             f"{ref_name})")
        else:
            outside = [f"{'start' if key == 'transition_start' else 'end'} {b['value']} outside "
                       f"[{b['interval'][0]}, {b['interval'][1]}]" for key, b in out["boundaries"].items()
                       if not b["inside"]]
            out["phrase"] = (f"the sections move (transition {var['transition'][0]}-{var['transition'][1]} against "
                             f"{ref['transition'][0]}-{ref['transition'][1]} with {ref_name}; {', '.join(outside)})")
    return out


def _layers_text(layers: list[int]) -> str:
    return f"layer{'s' if len(layers) > 1 else ''} {', '.join(map(str, layers))}"


def _compare_signs(ref: pd.DataFrame, var: pd.DataFrame, ref_name: str, keeps: str = "keeps its sign") -> dict:
    """Layers where the per-layer median gains of `ref` (called `ref_name`; with its intervals) and `var`
    differ in sign, those of them where `ref`'s sign is established, and a phrase (E - B `keeps` ...)."""
    layers = sorted(set(ref.index) | set(var.index))
    ref, var = ref.reindex(layers), var.reindex(layers)
    a, b = ref["median"].to_numpy(dtype=float), var["median"].to_numpy(dtype=float)
    lo, hi = ref["ci_low"].to_numpy(dtype=float), ref["ci_high"].to_numpy(dtype=float)
    defined = np.isfinite(a) & np.isfinite(b)
    flips = defined & (np.sign(a) != np.sign(b))
    established = (lo > 0) | (hi < 0)  # the interval excludes 0; a missing one (NaN) establishes nothing
    missing = ~np.isfinite(lo) | ~np.isfinite(hi)
    flipped = [int(la) for la, f in zip(layers, flips) if f]
    counted = [int(la) for la, f, e in zip(layers, flips, established) if f and e]
    n = int(defined.sum())
    if not n:
        phrase = "E - B is undefined at every layer"
    elif not flipped:
        phrase = f"E - B {keeps} at all {n} layers"
    else:
        noise = [la for la in flipped if la not in counted]
        size = float(np.nanmax(np.abs(ref.loc[noise, "median"]))) if noise else 0.0
        lacking = any(m for la, m in zip(layers, missing) if la in noise)
        within = (f"{ref_name}'s median gain is at most {size:.2g} in size and its 95% interval over tasks "
                  f"{'includes 0 or is missing (fewer than 5 tasks)' if lacking else 'includes 0'}")
        if not counted:
            why = f", where {within}"
        elif not noise:
            why = f", where {ref_name}'s sign is established"
        else:
            why = f": at {_layers_text(noise)} {within}, at {_layers_text(counted)} {ref_name}'s sign is established"
        phrase = f"E - B {keeps} at {n - len(flipped)} of {n} layers (it flips at {_layers_text(flipped)}{why})"
    return {"n_layers": n, "n_same": n - len(flipped), "flipped_layers": flipped, "established_flips": counted,
            "undefined_layers": [int(la) for la, ok in zip(layers, defined) if not ok], "phrase": phrase}


def _verdict(sections: dict, signs: dict) -> dict:
    survives = bool(sections["survive"] and not signs["established_flips"])
    return {"survives": survives, "verdict": "survives" if survives else "does not survive",
            "sections_survive": sections["survive"], "section_boundaries": sections["boundaries"],
            "sign": {k: v for k, v in signs.items() if k != "phrase"}}


def _tested(verdict: dict, *, something: bool, changes_answer: bool, power: dict) -> dict:
    """`verdict` with `TEST_RULE` and `POWER_RULE` applied: nothing to test (unless the variant changes the
    answer), and "survives" only when the variant can move the result."""
    if not something:
        label = "does not survive" if changes_answer else NOTHING
    elif not verdict["survives"]:
        label = "does not survive"
    else:
        label = "survives" if power["can_move"] else UNTESTED
    return {**verdict, "survives": {"survives": True, "does not survive": False}.get(label), "verdict": label}


def _outlier_summary(outliers: pd.DataFrame | None) -> dict:
    """How many outlier dimensions B, E and C_t have per layer that varies, and which are most frequent."""
    if outliers is None or outliers.empty:
        return {}
    rows = outliers[outliers["model"].isin(("base", "experimental", "control"))
                    & np.isfinite(outliers["top_direction_share"].to_numpy(dtype=float))]
    if rows.empty:
        return {}
    dims = pd.Series([int(d) for s in rows["outlier_dims"].fillna("").astype(str) for d in s.split(";") if d])
    counts = dims.value_counts()
    frequent = counts[counts >= 0.1 * len(rows)].head(3)  # in at least a tenth of the layers, at most three
    return {"median_count": float(rows["n_outliers"].median()), "max_count": int(rows["n_outliers"].max()),
            "frequent_dims": [int(d) for d in frequent.index],
            "frequent_dims_share_of_rows": [float(c / len(rows)) for c in frequent],
            "median_variance_share": float(rows["outlier_variance_share"].median()),
            "median_top_direction_share": float(rows["top_direction_share"].median()),
            "n_rows": len(rows)}


def _top_phrase(summary: dict) -> str:
    if not summary:
        return ""
    return (f" (the top principal direction carries a median {summary['median_top_direction_share']:.0%} of the "
            f"variance of B, E and C_t per varying layer)")


def _outlier_phrase(summary: dict) -> str:
    if not summary:
        return ""
    if summary["max_count"] == 0:
        return " (there are none: no dimension is removed)"
    dims = ", ".join(map(str, summary["frequent_dims"]))
    often = f", most often dimension{'s' if len(summary['frequent_dims']) > 1 else ''} {dims}" if dims else ""
    return (f" (a median of {summary['median_count']:g} and at most {summary['max_count']} per varying layer of B, "
            f"E and C_t{often}, carrying a median {summary['median_variance_share']:.0%} of the variance)")


def _listed(series: pd.Series) -> list:
    """A float series as a JSON list, NaN as null."""
    return [float(v) if np.isfinite(v) else None for v in series.to_numpy(dtype=float)]


def _overall(variants: dict, original: str) -> str:
    """One sentence over all variants: which the result survives, which it does not, which could not test it,
    and where there was nothing to test (`original`: what the original lacks, then)."""
    done = {v: e for v, e in variants.items() if e["computed"]}
    if not done:
        return "No robust CKA variant was computed, so the robustness of the sections is not known."
    by = {label: [v for v, e in done.items() if e["verdict"] == label]
          for label in ("survives", "does not survive", UNTESTED, NOTHING)}
    parts = []
    if by["survives"]:
        parts.append(f"survive {len(by['survives'])} of the {len(done)} robust CKA variants "
                     f"({', '.join(by['survives'])}), each able to move them")
    if by["does not survive"]:
        parts.append(f"do not survive {', '.join(by['does not survive'])}")
    if by[UNTESTED]:
        parts.append(f"are not tested by {', '.join(by[UNTESTED])}, which change the compared values by less than "
                     "the noise of E - B")
    head = f"The sections and the sign of E - B {'; they '.join(parts)}." if parts else ""
    if by[NOTHING]:
        head += (f"{' ' if head else ''}There is nothing to test for {', '.join(by[NOTHING])}: {original}, and "
                 f"{'it finds' if len(by[NOTHING]) == 1 else 'they find'} none either.")
    return head


def robustness(sim: pd.DataFrame, sections: dict, outliers: pd.DataFrame | None = None, *, n_boot: int, seed: int,
               model: str = "experimental", variants: tuple[str, ...] = ROBUST_MEASURES,
               second_seed: str | None = None) -> dict:
    """The robustness verdict of each variant, by `CRITERION` (results/robustness.json).

    `sections` are the study's, from ``layer_sections(sim, model=model, n_boot=n_boot, seed=seed,
    second_seed=second_seed)``; every variant's are recomputed with the same call on its measure (so a study
    with two E seeds judges every variant by the same two-seed rule). `outliers` (the outlier table) only feeds
    the summary and the sentences. Returns the keys measure, model, criterion (with test_rule and power_rule
    also apart), outlier_rule, top_pcs_rule, outliers (a summary), original (its sections, per-layer median gain
    with intervals, `beyond_noise` and something_to_test), variants (one entry per variant: its sections, median
    gain with intervals, beyond_noise, power, "verdict" — survives, does not survive, not tested or nothing to
    test — and "sentence") and sentence (over all variants).
    """
    head = {"measure": SECTION_MEASURE, "model": model, "criterion": CRITERION, "outlier_rule": OUTLIER_RULE,
            "top_pcs_rule": TOP_PCS_RULE, "test_rule": TEST_RULE, "power_rule": POWER_RULE,
            "outliers": _outlier_summary(outliers)}
    if not (sim["measure"] == SECTION_MEASURE).any():
        return {**head, "variants": {}, "sentence": f"The sections' measure {SECTION_MEASURE} was not computed, "
                                                    "so their robustness is not known."}
    gains = {m: median_gain(sim, m, model=model, n_boot=n_boot, seed=seed)
             for m in (SECTION_MEASURE, *variants) if (sim["measure"] == m).any()}
    reference = gains[SECTION_MEASURE]
    out = {**head, "original": {**_summary(sections), "layers": [int(la) for la in reference.index],
                                "median_gain": _listed(reference["median"]),
                                "median_gain_ci": [_listed(reference["ci_low"]), _listed(reference["ci_high"])]},
           "variants": {}}
    found = {v: layer_sections(sim, model=model, measure=v, n_boot=n_boot, seed=seed, second_seed=second_seed)
             for v in variants if v in gains}
    noise = {m: beyond_noise(sim, m, model=model) for m in gains}
    something = _something(sections, noise[SECTION_MEASURE])
    out["original"]["beyond_noise"] = noise[SECTION_MEASURE]
    out["original"]["something_to_test"] = something
    for variant in variants:
        entry = {"measure": variant, "description": get_measure(variant).description, "reference": SECTION_MEASURE}
        if variant not in found:
            out["variants"][variant] = {**entry, "computed": False, "survives": None, "verdict": "not computed",
                                        "sentence": f"{variant} was not computed (it is not among the study's "
                                                    "measures), so there is no verdict for it."}
            continue
        against = (_compare_sections(sections, found[variant], "the original"),
                   _compare_signs(reference, gains[variant], "the original"))
        power = _power(sim, variant, model, reference)
        changes = _something(found[variant], noise[variant])
        verdict = _tested(_verdict(*against), something=something, changes_answer=changes, power=power)
        lead = LEADS.get(variant, f"With {variant}").format(outliers=_outlier_phrase(out["outliers"]),
                                                            top=_top_phrase(out["outliers"]))
        if something:
            close = {"survives": "so the result survives", "does not survive": "so the result does not survive",
                     UNTESTED: "so its agreement does not test the result"}[verdict["verdict"]]
            sentence = f"{lead}, {against[0]['phrase']}, and {against[1]['phrase']}; {_power_phrase(power)}, {close}."
        elif changes:
            found_here = ("a transition" if found[variant].get("transition_found") else
                          f"E - B beyond noise at {_layers_text(noise[variant]['layers'])}")
            sentence = (f"{lead}, the variant finds {found_here} where "
                        f"{_nothing_phrase(noise[SECTION_MEASURE])}, so the result does not survive.")
        else:
            sentence = (f"{lead}, there is nothing to test: {_nothing_phrase(noise[SECTION_MEASURE])}, "
                        f"and the variant finds none either; {_power_phrase(power)}.")
        entry.update(computed=True, sections=_summary(found[variant]),
                     median_gain=_listed(gains[variant]["median"].reindex(reference.index)),
                     median_gain_ci=[_listed(gains[variant][c].reindex(reference.index))
                                     for c in ("ci_low", "ci_high")],
                     beyond_noise=noise[variant], power=power, **verdict)
        if variant == NO_OUTLIERS and RANDOM_DIMS in found:
            control = (_compare_sections(found[RANDOM_DIMS], found[variant], "the random removal"),
                       _compare_signs(gains[RANDOM_DIMS], gains[variant], "the random removal",
                                      "has the same sign as under the random removal"))
            entry["against_random_control"] = {"reference": RANDOM_DIMS, **_verdict(*control)}
            random = _verdict(_compare_sections(sections, found[RANDOM_DIMS], "the original"),
                              _compare_signs(reference, gains[RANDOM_DIMS], "the original"))
            versus = f"; {_versus(verdict['verdict'], random)}" if something else ""
            sentence += f" Against removing as many random dimensions, {_against_control(*control)}{versus}."
        entry["sentence"] = sentence
        out["variants"][variant] = entry
    out["sentence"] = _overall(out["variants"], _nothing_phrase(noise[SECTION_MEASURE]))
    return out


def _against_control(sections: dict, signs: dict) -> str:
    """The outlier removal against the random removal, in a short phrase."""
    agree = "the sections agree" if sections["survive"] else sections["phrase"]
    flipped, counted = signs["flipped_layers"], signs["established_flips"]
    if not flipped:
        return f"{agree} and E - B has the same sign at all {signs['n_layers']} layers"
    where = (f"established for the random removal at {_layers_text(counted)}" if counted else
             "each within noise for the random removal")
    return f"{agree} and E - B flips at {_layers_text(flipped)} ({where})"


def _versus(removal: str, random: dict) -> str:
    """What removing the outlier dimensions does beyond removing as many random ones (both against the
    original; `removal` is the removal's verdict), in a phrase."""
    if removal == "survives":
        return "the outlier dimensions do not carry the result"
    if removal == UNTESTED:
        return ("removing them changes the compared values by less than the noise of E - B, so whether they carry "
                "the result is not tested")
    if random["survives"]:
        return "the change comes from the outlier dimensions: removing as many random dimensions keeps the result"
    return "removing as many random dimensions changes the result too, so the change is not specific to the outliers"


__all__ = ["CRITERION", "FAMILY_ALPHA", "POWER_RULE", "TEST_RULE", "beyond_noise", "median_gain", "robustness"]
