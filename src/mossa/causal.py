"""Do the sections do anything? E's adapter switched on in one section of layers only, and everywhere but
there, on the same test prompts: how much of E's gain over B each section keeps, by the task metrics and
the target NLL; and how much the adapter changes each block's output.

Stage: causal (reads the study's sections and E's adapter on the loaded base; the study stores each
task's record under causal/; `causal_table` turns the records into results/causal.csv, no model).

A LoRA adapter is on or off per block at no training cost (`AdapterHost.use(name, layers=...)`): with it
on everywhere the model is E, with it off everywhere B, exactly. If the refinement layers hold E's
task-specific gain, E with its adapter on only there keeps most of that gain, and E with it on only in
the shared layers does not. The share kept is (metric(masked) - metric(B)) / (metric(E) - metric(B)) on
the same prompts, with a paired bootstrap interval over examples; it is stated only where E's own gain
over B is above 0 by its paired interval (no gain, nothing to share out).

Layers are numbered as the study's states: block l (1-based) writes layer l's state, so a section
[a, b] of layers is blocks a..b, and masking a block changes the states from its layer on.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from mossa.errors import MossaError
from mossa.evaluation import (
    LOWER_IS_BETTER,
    gain_share_interval,
    metric_interval,
    named_stream,
    paired_gain_interval,
    primary_metric,
    record_metrics,
    task_metrics,
)
from mossa.models import AdapterHost, collate, length_batches

SECTIONS = ("shared", "transition", "refinement")
CAUSAL_COLUMNS = ["task", "cluster", "model", "mask", "section", "active_layers", "metric", "value", "ci_low",
                  "ci_high", "share", "share_low", "share_high", "share_reason", "n_examples"]
UPDATE_COLUMNS = ["task", "model", "layer", "median", "q25", "q75", "n_examples"]


@dataclass(frozen=True)
class Mask:
    """One way of running E: its adapter on in the blocks `layers` (1-based) only."""

    name: str  # "only shared", "outside shared", ...
    section: str
    layers: tuple[int, ...]

    @property
    def active(self) -> str:
        """The active layers as ranges, e.g. "1-7,12-18" ("none" when empty)."""
        return layer_ranges(self.layers)


def layer_ranges(layers) -> str:
    """Sorted layer numbers as comma-separated ranges: (1, 2, 3, 7) -> "1-3,7"; () -> "none"."""
    out, run = [], []
    for layer in sorted(layers):
        if run and layer == run[-1] + 1:
            run.append(layer)
            continue
        if run:
            out.append(f"{run[0]}-{run[-1]}" if len(run) > 1 else str(run[0]))
        run = [layer]
    if run:
        out.append(f"{run[0]}-{run[-1]}" if len(run) > 1 else str(run[0]))
    return ",".join(out) or "none"


def section_ranges(sections: dict, n_layers: int,
                   causal_layers: list | str = "sections") -> tuple[dict[str, tuple[int, int]], str]:
    """The layer ranges to mask by, with where they come from: the ranges `causal_layers` names ([[a, b], ...]),
    else (`causal_layers` "sections") the
    sections found (`sections.json`), else, when no transition was found, the thirds of the depth (a causal
    check of depth is still informative; the source string says so)."""
    if isinstance(causal_layers, list):
        ranges = {f"layers {a}-{b}": (int(a), int(b)) for a, b in causal_layers}
        for name, (a, b) in ranges.items():
            if not 1 <= a <= b <= n_layers:
                raise MossaError(f"field 'causal_layers': {name} is not within layers 1-{n_layers}")
        return ranges, "the layer ranges named in causal_layers"
    if sections.get("transition_found"):
        return {s: tuple(sections[s]) for s in SECTIONS}, "the sections found (sections.json)"
    edges = np.linspace(0, n_layers, 4).round().astype(int)
    thirds = [(f"{which} third", int(edges[i]) + 1, int(edges[i + 1])) for i, which in
              enumerate(("first", "second", "last"))]
    ranges = {name: (a, b) for name, a, b in thirds if a <= b}  # a model of 1 or 2 layers has fewer thirds
    return ranges, "the thirds of the depth, as no sections were found"


def masks(ranges: dict[str, tuple[int, int]], n_layers: int) -> list[Mask]:
    """For each range: the adapter on there only, and everywhere but there."""
    every = set(range(1, n_layers + 1))
    out = []
    for name, (a, b) in ranges.items():
        inside = tuple(range(a, b + 1))
        out += [Mask(f"only {name}", name, inside), Mask(f"outside {name}", name, tuple(sorted(every - set(inside))))]
    return out


def run_masks(host: AdapterHost, adapter: str, prompts: list, masks_: list[Mask], *, token_budget: int,
              extract) -> dict:
    """The evaluation record of E (`adapter`) under each mask on `prompts`, and the adapter's per-block
    update at each prompt's last token ([n_layers][n], `AdapterHost.updates`).

    `extract(layers)` runs the study's evaluated extraction of these prompts with the adapter on in
    `layers` and returns its evaluation record (the study passes its own settings in)."""
    records = {m.name: {"section": m.section, "layers": list(m.layers), "evaluation": extract(m.layers)}
               for m in masks_}
    n_layers = host.loaded.n_layers
    updates = np.full((n_layers, len(prompts)), np.nan)
    for idx in length_batches(prompts, token_budget, with_targets=False):
        batch = collate([prompts[i] for i in idx], host.loaded.tokenizer.pad_token_id, host.loaded.device,
                        with_targets=False)
        updates[:, idx] = host.updates(adapter, batch).numpy()
    return {"masks": records, "updates": updates.tolist()}


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


__all__ = ["CAUSAL_COLUMNS", "Mask", "SECTIONS", "UPDATE_COLUMNS", "causal_table", "layer_ranges", "masks",
           "primary_rows",
           "run_masks", "section_ranges", "section_verdict", "update_table"]
