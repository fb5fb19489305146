"""The causal check's tables and verdicts, and the restricted E's table, from the records the study stored:
what each layer range of E's adapter keeps of E's gain over B (results/causal.csv, causal.json), the
adapter's update per block (results/adapter_updates.csv), which range carries the gain, and the task
metrics of each E trained on one range only beside E's (results/restricted.csv).

Stage: causal, tables (reads causal/ and activations/ from the store and results/sections.json; writes
results/; loads no model).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from mossa.analysis import evaluation_records
from mossa.causal._masks import layer_ranges, section_ranges
from mossa.evaluation import (
    LOWER_IS_BETTER,
    gain_share_interval,
    metric_interval,
    named_stream,
    paired_gain_interval,
    performance_table,
    primary_metric,
    record_metrics,
    task_metrics,
)
from mossa.store import StudyDir, atomic_path, read_json, write_json

EXPERIMENTAL = "experimental"
RESTRICTED = "restricted-"
CAUSAL_COLUMNS = ["task", "cluster", "model", "mask", "section", "active_layers", "metric", "value", "ci_low",
                  "ci_high", "share", "share_low", "share_high", "share_reason", "n_examples"]
UPDATE_COLUMNS = ["task", "model", "layer", "median", "q25", "q75", "n_examples"]


def causal_table(causal: dict[tuple[str, str], dict], records: dict[tuple[str, str], dict | None],
                 clusters: dict[str, str], *, n_boot: int = 200, seed: int = 0) -> pd.DataFrame:
    """results/causal.csv: per (task, model, mask, metric) the masked model's value with its interval over
    examples, and the share of the model's gain over B it keeps, with a paired interval.

    `causal[(task, model)]` is a stored causal record (`run_masks`); `records[(task, model)]` and
    `records[(task, "base")]` the study's evaluation records of the full model and of B, restricted here to
    the causal record's prompts. Rows with mask "all" and "none" are the full model and B themselves.
    """
    rows = []
    for (task, model), stored in sorted(causal.items()):
        full, base = records.get((task, model)), records.get((task, "base"))
        if full is None or base is None:
            continue
        cluster = clusters[task]
        first = next(iter(stored["masks"].values()))["evaluation"]
        shared = first["rows"]
        has_options = any(g is not None for g in first["gold"])
        names = task_metrics(cluster, has_options=has_options, has_generation=not has_options)
        where = f"causal record ({task}, {model})"
        b = record_metrics(base, cluster, names=names, rows=shared, where=where)
        e = record_metrics(full, cluster, names=names, rows=shared, where=where)
        n_layers = len(stored["updates"])
        runs = [("all", "", tuple(range(1, n_layers + 1)), e), ("none", "", (), b)]
        runs += [(name, m["section"], tuple(m["layers"]),
                  record_metrics(m["evaluation"], cluster, names=names, where=where))
                 for name, m in stored["masks"].items()]
        for metric in names:
            base_m, full_m = b[metric], e[metric]
            keep = np.intersect1d(base_m.rows, full_m.rows)
            low, high, _ = paired_gain_interval(base_m.on_rows(keep), full_m.on_rows(keep), n_boot=n_boot,
                                                rng=named_stream(seed, task, model, metric, "gain"))
            gained = high < 0 if metric in LOWER_IS_BETTER else low > 0
            for mask, section, layers, scores in runs:
                m = scores[metric]
                low, high, _ = metric_interval(m, n_boot=n_boot, rng=named_stream(seed, task, model, mask, metric))
                share = share_low = share_high = float("nan")
                reason = ""
                if mask in ("all", "none"):
                    pass
                elif not n_boot:
                    reason = "no intervals (n_boot 0)"
                elif not gained:
                    reason = f"{model}'s gain over B is not above 0 by its paired interval"
                else:
                    kept = np.intersect1d(keep, m.rows)
                    share, (share_low, share_high, _) = gain_share_interval(
                        base_m.on_rows(kept), full_m.on_rows(kept), m.on_rows(kept), n_boot=n_boot,
                        rng=named_stream(seed, task, model, mask, metric, "share"))
                rows.append([task, cluster, model, mask, section, layer_ranges(layers), metric, m.value, low, high,
                             share, share_low, share_high, reason, m.n_examples])
    return pd.DataFrame(rows, columns=CAUSAL_COLUMNS)


def update_table(causal: dict[tuple[str, str], dict]) -> pd.DataFrame:
    """results/adapter_updates.csv: per (task, model, layer) the median (and quartiles) over prompts of the
    adapter's update to the block's output relative to that output, at the last prompt token."""
    rows = []
    for (task, model), stored in sorted(causal.items()):
        values = np.asarray(stored["updates"], dtype=float)
        for layer, v in enumerate(values, start=1):
            v = v[np.isfinite(v)]
            q25, med, q75 = np.quantile(v, [0.25, 0.5, 0.75]) if len(v) else (np.nan,) * 3
            rows.append([task, model, layer, med, q25, q75, len(v)])
    return pd.DataFrame(rows, columns=UPDATE_COLUMNS)


def section_verdict(table: pd.DataFrame) -> dict:
    """Which section carries E's gain, from causal.csv: per section, the median over tasks of the share kept
    with E's adapter on there only, on each task's primary metric and on the NLL per token."""
    out = {}
    if table.empty:
        return {"stated": False, "reason": "no causal records"}
    e = table[table["model"] == "experimental"]
    for label, pick in (("primary", primary_rows), ("nll_per_token", lambda t: t[t["metric"] == "nll_per_token"])):
        only = pick(e[e["mask"].str.startswith("only ")])
        shares = {s: float(np.nanmedian(g["share"])) if g["share"].notna().any() else float("nan")
                  for s, g in only.groupby("section", sort=False)}
        n_tasks = {s: int(g["share"].notna().sum()) for s, g in only.groupby("section", sort=False)}
        outside = pick(e[e["mask"].str.startswith("outside ")])
        removed = {s: float(np.nanmedian(g["share"])) if g["share"].notna().any() else float("nan")
                   for s, g in outside.groupby("section", sort=False)}
        finite = {s: v for s, v in shares.items() if np.isfinite(v)}
        out[label] = {"only": shares, "outside": removed, "n_tasks": n_tasks,
                      "carrier": max(finite, key=finite.get) if finite else None}
    out["stated"] = any(out[k]["carrier"] is not None for k in ("primary", "nll_per_token"))
    return out


def primary_rows(table: pd.DataFrame) -> pd.DataFrame:
    """The rows of each task's primary metric (accuracy for a task with options)."""
    options = table.groupby("task")["metric"].transform(lambda m: (m == "accuracy").any())
    primary = [primary_metric(c, bool(o)) for c, o in zip(table["cluster"], options)]
    return table[table["metric"].to_numpy() == np.array(primary, dtype=object)]


@dataclass
class SectionChecks:
    """The causal check's tables (empty when the study has no causal records) and the restricted E's."""

    causal: pd.DataFrame
    updates: pd.DataFrame
    verdict: dict
    restricted: pd.DataFrame


def causal_records(study: StudyDir, ranges: dict) -> dict[tuple[str, str], dict]:
    """(task, model) -> the stored causal record, for the records made with these layer ranges (a record of
    earlier sections is left out: its masks are not the ones the report names)."""
    out = {}
    folder = study.path("causal")
    if not folder.is_dir():
        return out
    want = {k: list(v) for k, v in ranges.items()}
    for path in sorted(folder.glob("*/*.json")):
        record = read_json(path)
        if record.get("ranges") == want:
            out[(record["task"], record["model"])] = record
    return out


def _write_csv(df: pd.DataFrame, path) -> None:
    with atomic_path(path) as tmp:
        df.to_csv(tmp, index=False)


def section_checks(root, provenance: dict, *, n_boot: int | None = None) -> SectionChecks:
    """Compute and write the causal and restricted tables of a study from what it stored (`provenance` is
    its study.json; `n_boot` defaults to the study's). The study's evaluation records give the full model's
    and B's rows of causal.csv, and E's rows of restricted.csv."""
    study = StudyDir(root)
    config = provenance["config"]
    clusters = {task: info["cluster"] for task, info in provenance["tasks"].items()}
    records = evaluation_records(study, list(clusters))
    seed = int(config.get("seed", 0))
    n_boot = int(config.get("n_boot", 200)) if n_boot is None else n_boot
    ranges, source = section_ranges(read_json(study.path("results", "sections.json")),
                                    int(provenance["model"]["n_layers"]), config.get("causal_layers", "sections"))
    stored = causal_records(study, ranges)
    causal = causal_table(stored, records, clusters, n_boot=n_boot, seed=seed)
    updates = update_table(stored)
    verdict = {**section_verdict(causal), "source": source, "ranges": {k: list(v) for k, v in ranges.items()},
               "n_examples": {f"{t} {m}": len(r["updates"][0]) for (t, m), r in stored.items()}}
    if stored:
        _write_csv(causal, study.path("results", "causal.csv"))
        _write_csv(updates, study.path("results", "adapter_updates.csv"))
        write_json(study.path("results", "causal.json"), verdict)
    restricted_records = _restricted_records(study, list(clusters))
    restricted = pd.DataFrame()
    if restricted_records:
        both = {**restricted_records, **{(t, m): r for (t, m), r in records.items() if m == EXPERIMENTAL}}
        restricted = performance_table(both, clusters, n_boot=n_boot, seed=seed)
        _write_csv(restricted, study.path("results", "restricted.csv"))
    return SectionChecks(causal=causal, updates=updates, verdict=verdict, restricted=restricted)


def _restricted_records(study: StudyDir, tasks: list[str]) -> dict[tuple[str, str], dict | None]:
    """(task, 'restricted-<range>') -> the evaluation record of each restricted E the study trained."""
    out = {}
    folder = study.path("activations")
    if not folder.is_dir():
        return out
    for model_dir in sorted(p for p in folder.iterdir() if p.name.startswith(RESTRICTED)):
        for task in tasks:
            if (model_dir / task / "meta.json").is_file():
                out[(task, model_dir.name)] = study.activation_file(model_dir.name, task, verify=False).evaluation
    return out


__all__ = ["CAUSAL_COLUMNS", "SectionChecks", "UPDATE_COLUMNS", "causal_records", "causal_table", "primary_rows",
           "section_checks", "section_verdict", "update_table"]
