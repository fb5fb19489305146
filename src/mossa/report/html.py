"""`report.html`: one self-contained file (figures embedded, no network resource) per study.

Stage: report (reads study.json, results/ and figures/; writes report.html).
"""

from __future__ import annotations

import base64
from importlib.resources import files
from pathlib import Path

import numpy as np
import pandas as pd
import yaml
from jinja2 import Environment
from markupsafe import Markup

from mossa.config import DEMO_TASKS, DEMO_UNCOVERED
from mossa.errors import MossaError
from mossa.report._performance import (
    causal_pivot,
    control_check_table,
    lens_reading,
    performance_pivot,
    probe_reading,
    read_optional,
)
from mossa.report._summary import (
    MEASURE_WORDS,
    SPECIFIC_RULE,
    StudySummary,
    causal_sentence,
    section_check_sentences,
    summarize,
    summary_sentences,
    upper_third,
)
from mossa.similarity import ROBUST_MEASURES as VALUES_ONLY
from mossa.store import atomic_path, read_json

CAPTIONS = {
    "cka_by_layer": "Fig 2 of the paper, on its measure: biased linear CKA, inflated at fewer examples than "
                    "features by an amount that depends on each model's spectrum (the summary reads debiased CKA). "
                    "Per layer, boxplots over tasks of the linear CKA between the base model B "
                    "and each task's control C_t (blue) and between the multi-task model E and C_t (orange); red "
                    "bars are distribution-free intervals of the medians over tasks (none below 5 tasks). Grey: chance, the permutation null "
                    "(the same CKA with the examples re-paired at random, within their template when a task's prompts "
                    "use several; median over tasks from its mean to its "
                    "95% bound). Purple: seed agreement, CKA between two seeds of the same control (median over the "
                    "tasks trained twice, band = their range; a level, not an upper bound: each seed moves away "
                    "from B in directions of its own). Shaded layer bands are the layer "
                    "sections found by the stated criterion on the debiased-CKA gain of E over B "
                    "(results/sections.json), drawn only when a transition is found.",
    "cka_by_cluster": "Fig 3. The same medians, one panel per task cluster; bands are intervals over tasks, "
                      "given from 5 tasks on (fewer: too few tasks for an interval, no band; a one-task cluster is "
                      "that task's value). Grey: the cluster's chance band (permutation null of "
                      "B and E, mean to 95% bound); dashed purple: the study's seed agreement (two seeds of one "
                      "control, median over the tasks trained twice), the same line in every panel.",
    "heldout_cka_by_layer": "Fig 7. Tasks held out of a second multi-task model E' (green): B vs C_t and E' vs C_t "
                            "on those tasks only, with their chance band (grey) and seed agreement (purple, over the "
                            "tasks trained twice).",
    "tsne_layers": "Fig 4. t-SNE of B's and E's last-token states, all tasks pooled, coloured by cluster, at layers "
                   "spread over the depth (axes carry no meaning).",
    "variance_dims": "Fig 5. Left: principal directions needed for 99% of the variance of each task's "
                     "representation (mean over tasks, band = range) for B, E and the controls, every task on "
                     "the same number n of examples (a seeded subsample down to the smallest task, after "
                     "dropping examples with non-finite states), since n examples span at most min(n-1, d) "
                     "directions (dashed line). A triangle marks a layer where some task sits at that cap: "
                     "its count is a lower bound, not a measurement. Right: the share of variance on the "
                     "single top direction.",
    "correlations": "Fig 6. Per layer, Pearson r across tasks between CKA with the control and the readability "
                    "of the task's test inputs (Flesch-Kincaid, Coleman-Liau) and the number of training examples "
                    "its control saw (a constant, and so no correlation, when every control saw as many); circles "
                    "mark Benjamini-Hochberg adjusted p < 0.05 over every layer, property and model. No r is "
                    "computed on fewer than 5 tasks.",
    "layer_by_layer_cka": "Linear CKA between every layer of B (left) or E (right) and every layer of C_t, averaged "
                          "over tasks: which layer of one model matches which of the other.",
}
EVALUATION_CAPTIONS = {
    "answer_by_layer": "The logit lens: each layer's last-prompt-token state through the model's final norm and "
                       "output head, on the evaluated test prompts. Left: mean log-probability of the gold answer's "
                       "first token; right (tasks with options): how often the option whose first token has the "
                       "highest lens logit is the gold one, against chance (dotted). Lines are medians over tasks, "
                       "bands their middle half; E' on its held-out tasks only; shaded: the layer sections.",
    "probes_by_layer": "Linear probes: a cross-validated, L2-regularised logistic probe predicting the gold option "
                       "from each layer's stored state (tasks with options), its penalty chosen per fold and layer by "
                       "an inner cross-validation on the training folds. Its control task (Hewitt and Liang) gives "
                       "every template one random label, which a probe that tells templates apart can memorise (one "
                       "random label per prompt-length quartile where a task has one template). Left: held-out "
                       "accuracy (solid, band: middle half of the tasks) against the same probe on the control task "
                       "(dashed), and both majority shares (dotted, dash-dot); right: selectivity, accuracy above "
                       "chance agreement minus the same on the control task, band: its 95% interval over folds "
                       "(median of the tasks' ends). Medians over tasks; shaded: the layer sections.",
}

SECTION_CAPTIONS = {
    "causal": "The causal check. E's LoRA adapter is switched on in one layer range only (orange), or in every "
              "layer but that range (purple), on the same test prompts; no retraining (a masked block's update is "
              "multiplied by 0, so the adapter on everywhere is E and nowhere is B, exactly). Left and middle: "
              "the share of E's gain over B each keeps, (masked - B) / (E - B), on each task's primary metric and "
              "on the NLL per target token: dots are tasks with their paired 95% bootstrap intervals over "
              "examples, bars the median over tasks; only tasks where E's own gain is above 0 by its paired "
              "interval are shown. 1 (dashed) = all of E's gain, 0 = none of it. Right: the adapter's update to "
              "each block's output at the last prompt token, |output with the block's adapter - without it| / "
              "|output|, E's adapter on everywhere.",
    "outliers": "Outlier dimensions. Left: per layer, the share of the variance of the last-token states on the "
                "top principal direction (solid, left axis) and the number of outlier dimensions (dotted, right "
                "axis: a dimension whose median |h| over examples exceeds the layer's 99th percentile of |h|), "
                "medians over tasks. Right: the median over tasks of the sections' gain, debiased CKA(E, C_t) - "
                "debiased CKA(B, C_t), under each robust variant: on standardised features (every dimension "
                "z-scored), with each side's outlier dimensions removed, and, the removal's control, with as many "
                "random dimensions removed (results/robustness.json states whether the sections and the sign of "
                "E - B survive each).",
}


UNDEFINED = "undefined"


def _table(df: pd.DataFrame) -> Markup:
    """A sortable HTML table; a missing value reads 'undefined' whatever its column's type."""
    shown = df.apply(lambda col: col if col.dtype.kind == "f" or col.notna().all()
                     else col.astype(object).where(col.notna(), UNDEFINED))
    html = shown.to_html(index=False, classes="sortable", border=0, na_rep=UNDEFINED,
                         float_format=lambda x: f"{x:.3f}")
    return Markup(html)


SPECIFICITY_COLUMNS = {"experimental": "E specificity, upper third", "experimental_seed2": "E seed 2 specificity",
                       "base": "B specificity", "ceiling": "control's own specificity"}


def _task_table(sim: pd.DataFrame, controls: pd.DataFrame, heldout: list[str], n_layers: int,
                measure: str, specificity: dict | None = None) -> pd.DataFrame:
    """Per task: B's and E's value with C_t at the last layer and over the upper third, and each model's task
    specificity over the upper third (`StudySummary.specificity`)."""
    models = (specificity or {}).get("models", {})
    lin = sim[sim["measure"] == measure]
    upper = upper_third(n_layers)
    rows = []
    for task, group in lin.groupby("task", sort=False):
        last = group[group["layer"] == n_layers].set_index("model")
        up = group[group["layer"].isin(upper)].groupby("model")["value"].mean()
        rows.append({"task": task, "cluster": group["cluster"].iloc[0],
                     "held out of E'": "yes" if task in heldout else "",
                     "B last layer": last["value"].get("base"), "E last layer": last["value"].get("experimental"),
                     "B upper third": up.get("base"), "E upper third": up.get("experimental"),
                     **{label: models[m]["per_task"].get(str(task)) for m, label in SPECIFICITY_COLUMNS.items()
                        if m in models},
                     "n examples": int(group["n_examples"].iloc[0])})
    return pd.DataFrame(rows)


def _cluster_table(summary: StudySummary, sim: pd.DataFrame) -> pd.DataFrame:
    lin = sim[sim["measure"] == summary.measure]
    rows = []
    for cluster in summary.clusters:
        gain, layer = summary.gain_by_cluster[cluster]
        rows.append({"cluster": cluster, "tasks": lin[lin["cluster"] == cluster]["task"].nunique(),
                     "B upper third (median)": summary.base_upper_by_cluster[cluster],
                     "largest median gain of E over B": gain, "at layer": layer})
    return pd.DataFrame(rows).astype({"at layer": "Int64"})


def _share(values: dict) -> str:
    return ", ".join(f"{field} {share:.0%}" for field, share in values.items()) or "-"


def _prompts_table(study: dict) -> pd.DataFrame:
    """Per task: its templates and what truncation did to its test (and training) prompts."""
    rows = []
    for task, info in study["tasks"].items():
        counts = info.get("prompts")
        if not counts:  # a study of an earlier version
            continue
        test, train = counts["test"], counts["train"]
        rows.append({"task": task, "templates": info.get("n_templates"), "template source": info["template"],
                     "test prompts": test["n"], "cut": test["cut"], "uncut share": test["uncut_share"],
                     "median share kept (cut fields)": _share(test["kept_median"]),
                     "least kept": _share(test["kept_min"]), "left out, replaced": test["left_out"],
                     "train prompts": train["n"], "train cut": train["cut"], "train left out": train["left_out"]})
    return pd.DataFrame(rows)


def _coverage_sentences(study: dict) -> list[str]:
    """The demo's study states the Flan 2021 clusters it lacks and why: no task of them learned within the demo's
    budgets on the validation screen (`DEMO_UNCOVERED`, with the screen's numbers)."""
    if study["config"].get("preset") != "demo" or set(study["tasks"]) != set(DEMO_TASKS):
        return []
    missing = "; ".join(f"{cluster}: {numbers}" for cluster, numbers in DEMO_UNCOVERED.items())
    return [f"The demo covers {len({info['cluster'] for info in study['tasks'].values()})} of the 12 Flan 2021 "
            f"clusters. In the other {len(DEMO_UNCOVERED)}, no task's control learned its task within the demo's "
            f"budgets on the screen of training examples (bench/screen.py; gain of C_t over B on validation prompts, "
            f"paired 95% interval, examples x passes): {missing}. A control that has not learned its task is no "
            f"specialist to compare E with, so those clusters are left out rather than read."]


def _training_table(study: dict) -> pd.DataFrame:
    """Per trained unit: steps, the examples it saw per task (budget parity shows as equal counts
    for E and each control) and its mean training loss over the first and the last tenth of its
    steps (a single step of a small batch is noisy)."""
    rows = []
    for unit, log in (study.get("training") or {}).items():
        seen = log.get("examples_seen") or {}
        counts = sorted(seen.values())
        losses = log["train_loss"]
        tenth = max(1, len(losses) // 10)
        rows.append({"unit": unit, "steps": log.get("steps"), "tasks": len(seen) or None,
                     "examples seen": sum(counts) if counts else log.get("n_examples"),
                     "per task": (f"{counts[0]}" if counts[0] == counts[-1] else f"{counts[0]}-{counts[-1]}")
                     if counts else "not recorded",
                     "loss, first tenth of steps": float(np.mean(losses[:tenth])),
                     "loss, last tenth": float(np.mean(losses[-tenth:]))})
    return pd.DataFrame(rows)


def _format_text(fmt: dict | None) -> str:
    if not fmt:
        return "not recorded (a study of an earlier version)"
    text = f"plain, cue {fmt['cue']!r}" if fmt["mode"] == "plain" else f"chat template {fmt['chat_template']}"
    system = fmt.get("system_prompt")
    return text + (f", system prompt {system[:60] + '...' if len(system) > 60 else system!r}" if system else
                   ", no system prompt")


def load_results(root: Path) -> tuple[dict, pd.DataFrame, pd.DataFrame, dict, pd.DataFrame]:
    """study.json, the similarity table's rows against C_t, controls, sections and the table's other rows
    (against other references, and specificity) of a finished, analysed study."""
    root = Path(root)
    needed = [root / "study.json", root / "results" / "similarity.parquet", root / "results" / "controls.csv",
              root / "results" / "sections.json"]
    for path in needed:
        if not path.is_file():
            raise MossaError(f"{path}: not found; run `mossa run` (or `mossa analyze {root}`) first")
    full = pd.read_parquet(needed[1])
    against_control = full["reference"] == "control" if "reference" in full else np.ones(len(full), bool)
    return (read_json(needed[0]), full[against_control].reset_index(drop=True), pd.read_csv(needed[2]),
            read_json(needed[3]), full[~against_control].reset_index(drop=True))


def _experimental_row(study: dict, cfg: dict) -> tuple[str, str]:
    """The set-up line for E: its training, or the given model and how its layers were matched to B's."""
    info = study.get("experimental") or {"mode": "trained"}
    if info["mode"] != "given":
        budget = cfg.get("experimental_budget", "settings")
        settings = {k: v for k, v in cfg["experimental"].items()
                    if budget != "parity" or k not in ("epochs", "max_steps")}
        return ("experimental E (and E'), trained", ", ".join(f"{k} {v}" for k, v in settings.items())
                + f", cluster cap {cfg['cluster_cap']}"
                + ("; budget parity: each task's examples as often as its control sees them"
                   if budget == "parity" else "; budget: its own epochs and max_steps"))
    text = f"{info['spec']}, not trained here"
    if info.get("prompt_format"):
        text += f"; prompt format: {_format_text(info['prompt_format'])}"
    if "n_layers" in info:
        text += f" ({info['n_layers']} layers, d={info['hidden_size']}"
        text += (f"; its states matched to B's {len(info['layer_map'])} by relative depth: "
                 f"{info['layer_map']})" if "layer_map" in info else ")")
    return "experimental E, given", text


def write_report(root: Path) -> Path:
    """Write `<root>/report.html` from the study's tables and figures; returns its path."""
    root = Path(root)
    study, sim, controls, sections, references = load_results(root)
    summary = summarize(study, sim, controls, sections, references)
    cfg = study["config"]
    model = study["model"]
    heldout = list(study.get("heldout_tasks", []))
    by_cluster: dict[str, list[str]] = {}
    for task, info in study["tasks"].items():
        by_cluster.setdefault(info["cluster"], []).append(task + (" (held out of E')" if task in heldout else ""))
    robust = sorted(set(sim["measure"]) & set(VALUES_ONLY))
    setup = [("base model B", f"{model['name']} ({model['kind']}: {model['location']})"),
             ("layers / width", f"{model['n_layers']} / {model['hidden_size']}"),
             ("compute", f"{model['dtype']} on {model['device']} ({model['dtype_reason']})"),
             ("prompt format (B, E, E', every C_t)", _format_text(study.get("prompt_format"))),
             ("prompts", f"at most {cfg['max_prompt_tokens']} tokens, a cut field keeps at least "
                         f"{cfg.get('truncation_floor', 0.5):.0%} of its tokens; templates: {cfg.get('templates', 'first')}"
                         f"; targets at most {cfg['max_target_tokens']} tokens"),
             ("preset / seed", f"{cfg['preset']} / {cfg['seed']}"),
             ("examples per task", f"{cfg['n_train']} train (at most), {cfg['n_test']} test"),
             *([("tasks' own budgets", "; ".join(
                 f"{task}: " + ", ".join(f"{k} {v:g}" for k, v in budget.items() if v is not None)
                 for task, budget in cfg["task_budgets"].items()))] if cfg.get("task_budgets") else []),
             ("LoRA", ", ".join(f"{k} {v}" for k, v in cfg["lora"].items())),
             ("controls C_t", ", ".join(f"{k} {v}" for k, v in cfg["control"].items())),
             _experimental_row(study, cfg),
             ("held out of E'", ", ".join(heldout) or "none"),
             ("measures / intervals / null", f"{', '.join(sorted(sim['measure'].unique()))} / jackknife over "
              f"examples, order statistics over tasks (from 5 tasks) / {cfg.get('n_permutations', 0)} "
              f"permutations" + (f"; the robust variants ({', '.join(robust)}) are values only" if robust else "")),
             ("last layer", cfg["last_layer"])]
    figures, evaluation_figures, section_figures = [], [], []
    lens, probes, performance = (read_optional(root, name) for name in ("lens", "probes", "performance"))
    readings = {"answer_by_layer": lens_reading(lens), "probes_by_layer": probe_reading(probes)}
    for captions, out in ((CAPTIONS, figures), (EVALUATION_CAPTIONS, evaluation_figures),
                          (SECTION_CAPTIONS, section_figures)):
        for name, caption in captions.items():
            path = root / "figures" / f"{name}.png"
            if path.is_file():
                out.append({"name": name, "caption": caption, "reading": readings.get(name),
                            "data": base64.b64encode(path.read_bytes()).decode("ascii")})
    check = control_check_table(controls, summary.specificity.get("controls") if summary.specificity else None)
    causal, restricted = read_optional(root, "causal"), read_optional(root, "restricted")
    verdict_path = root / "results" / "causal.json"
    verdict = read_json(verdict_path) if verdict_path.is_file() else None
    sentences = summary_sentences(summary) + _coverage_sentences(study) + section_check_sentences(root)
    said = causal_sentence(verdict)
    robustness_path = root / "results" / "robustness.json"
    robustness = read_json(robustness_path) if robustness_path.is_file() else None
    provenance = [(f"version: {k}", v) for k, v in study.get("versions", {}).items()]
    provenance += [("model fingerprint", model["fingerprint"])]
    provenance += [(f"task fingerprint: {t}", f"{info['fingerprint']} ({info['path']}, {info['template']})")
                   for t, info in study["tasks"].items()]
    provenance += [(f"unit fingerprint: {u}", f"{v['fingerprint']} ({v['kind']})")
                   for u, v in study.get("units", {}).items()]
    provenance += [(f"seconds: {k}", f"{v:.1f}") for k, v in study.get("seconds", {}).items()]
    provenance += [("command", study.get("command", "")), ("started", study.get("started", ""))]
    env = Environment(autoescape=True)
    template = env.from_string(files("mossa.report").joinpath("templates/report.html.j2").read_text("utf-8"))
    html = template.render(
        title=f"Layer by layer: {model['name']} on {summary.n_tasks} tasks", root=str(root),
        finished=study.get("finished", ""), versions=study.get("versions", {}), model=model["name"],
        n_layers=model["n_layers"], sentences=sentences, setup=setup,
        tasks_by_cluster=[(c, ", ".join(ts)) for c, ts in sorted(by_cluster.items())], figures=figures,
        task_table=_table(_task_table(sim, controls, heldout, model["n_layers"], summary.measure,
                                      summary.specificity)),
        measure_word=MEASURE_WORDS[summary.measure],
        cluster_table=_table(_cluster_table(summary, sim)),
        controls_table=_table(controls), prompts_table=_table(_prompts_table(study)),
        performance_table=_table(performance_pivot(performance)) if performance is not None and len(performance)
        else None, check_table=_table(check) if check is not None else None, evaluation_figures=evaluation_figures,
        specific_rule=f"With a second seed of a control (ceiling_tasks), {SPECIFIC_RULE}.",
        eval_examples=cfg.get("eval_examples") or cfg.get("loss_examples"),
        generate_examples=cfg.get("generate_examples"),
        causal_sentence=said, section_figures=[f for f in section_figures if f["name"] != "outliers"],
        outlier_figures=[f for f in section_figures if f["name"] == "outliers"],
        robustness_sentences=[v["sentence"] for v in (robustness or {}).get("variants", {}).values()
                              if v.get("sentence")],
        robustness_rule=(robustness or {}).get("criterion"),
        causal_table=_table(causal_pivot(causal)) if causal is not None and len(causal) else None,
        causal_source=(verdict or {}).get("source"), causal_examples=cfg.get("causal_examples"),
        causal_tasks=cfg.get("causal_tasks"),
        restricted_table=_table(performance_pivot(restricted)) if restricted is not None and len(restricted) else None,
        training_table=_table(_training_table(study)), rerun=f"mossa run --config {root / 'config.yaml'}",
        provenance=provenance, config=yaml.safe_dump(cfg, sort_keys=False),
        given=(study.get("experimental") or {}).get("mode") == "given",
        given_spec=(study.get("experimental") or {}).get("spec", ""))
    out = root / "report.html"
    with atomic_path(out) as tmp:
        tmp.write_text(html, encoding="utf-8")
    return out


__all__ = ["CAPTIONS", "load_results", "write_report"]
