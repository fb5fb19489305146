"""The causal check's tables and verdicts, and the restricted E's table, from the records the study stored:
what each layer range of E's adapter keeps of E's gain over B (results/causal.csv, causal.json), the
adapter's update per block (results/adapter_updates.csv), which range carries the gain, and the task
metrics of each E trained on one range only beside E's (results/restricted.csv).

The share kept and the verdict rest on one paired test over examples: with d_E = E - B and d_M = masked - B
(signed so that a gain is positive) and their jackknife covariance, share >= s exactly when the contrast
d_M - s d_E is >= 0 (given E's gain), which a Student t test over the examples decides. Inverting it gives
the share's Fieller interval; testing it at s = 1/2 gives the verdict's parts (`RULE`).

Stage: causal, tables (reads causal/ and activations/ from the store and results/sections.json; writes
results/; loads no model).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import pandas as pd
from scipy import stats as sps

from mossa.analysis import evaluation_records
from mossa.causal._masks import layer_ranges, section_ranges
from mossa.errors import MossaError
from mossa.evaluation import (
    LOWER_IS_BETTER,
    MetricScores,
    metric_interval,
    named_stream,
    performance_table,
    primary_metric,
    record_metrics,
    task_metrics,
)
from mossa.store import StudyDir, atomic_path, read_json, write_json

EXPERIMENTAL = "experimental"
RESTRICTED = "restricted-"
CAUSAL_COLUMNS = ["task", "cluster", "model", "mask", "section", "active_layers", "metric", "value", "ci_low",
                  "ci_high", "share", "share_low", "share_high", "share_reason", "n_examples", "gain_p",
                  "above_half_p", "below_half_p"]
BAR = 0.5  # a range carries the gain when alone it keeps at least this share of it
ALPHA = 0.05  # the family-wise error of the verdict's claims
RULE = ("A layer range carries E's gain over B on a task and metric when, with E's adapter on in that range only, E "
        "keeps at least half of its gain, with it on in any other single range only less than half, and with it on "
        "everywhere but that range less than half. No single range carries it (the gain is spread) when for every "
        "range one of these parts is established false: alone it keeps less than half, another range alone keeps "
        "at least half, or without it at least half is left. Each part is a one-sided paired t test over the task's "
        "examples of share - 1/2 (the contrast d_masked - d_E / 2, jackknife variances), and E's own gain over B "
        "is a part of every claim. A claim's p-value is the largest of its parts' (an intersection-union test; for "
        "a part established false, the smallest p-value of the ways it fails times their number), and the claim "
        f"stands when its Holm-adjusted p-value over every claim checked (each range carrying it, and none "
        f"carrying it, on each task and metric) is at most {ALPHA:g}. Otherwise the task is undetermined (the "
        "intervals are too wide), or not tested where E's gain over B is not established.")
SHARE_INTERVAL = ("95% Fieller interval over examples (the shares s whose contrast d_masked - s d_E a two-sided "
                  "paired t test does not reject; jackknife variances), stated where E's gain over B is above 0 by "
                  "the same test")
UPDATE_COLUMNS = ["task", "model", "layer", "median", "q25", "q75", "n_examples"]


class ShareTest(NamedTuple):
    """The share of E's gain over B a masked run keeps, its Fieller interval and its tests against a bar."""

    share: float
    low: float
    high: float
    gain_p: float  # one-sided p-value of "E's gain over B is above 0"
    above_p: float  # one-sided p-value of "the share is above the bar"
    below_p: float  # one-sided p-value of "the share is below the bar"
    reason: str  # why no share is stated ("" when it is)


def gain_share_test(base: MetricScores, full: MetricScores, part: MetricScores, *, lower_better: bool,
                    bar: float = BAR, confidence: float = 0.95) -> ShareTest:
    """The share (part - base) / (full - base) with its Fieller interval, and one-sided paired t tests of E's
    gain and of share - `bar`, over the examples the three share.

    With d_F = full - base and d_P = part - base, signed so that a gain is positive, share >= s exactly when
    d_P - s d_F >= 0 (given d_F > 0). That contrast's variance is quadratic in s, from the jackknife
    covariance of (d_P, d_F) (for a mean it is the sample covariance / n; for a ratio or corpus statistic
    the jackknife linearises it). A Student t test (n - 1 degrees of freedom) of the contrast at s = `bar`
    gives `above_p` and `below_p`; the shares it does not reject at `confidence` (two-sided) are Fieller's
    interval, bounded exactly when E's gain passes the same test, so the share is stated only then. Unlike
    a percentile bootstrap of the ratio, the interval keeps its coverage when E's gain is only just
    significant (bench/share_coverage.py).
    """
    if not (base.name == full.name == part.name and np.array_equal(base.rows, full.rows)
            and np.array_equal(base.rows, part.rows)):
        raise MossaError(f"gain share: expected one metric on the same rows, got {base.name}, {full.name} and "
                         f"{part.name} on {base.n_examples}, {full.n_examples} and {part.n_examples} rows; restrict "
                         "all three to their shared rows first")
    if not 0 < confidence < 1:
        raise MossaError(f"confidence: expected a level between 0 and 1, got {confidence!r}; use e.g. 0.95")
    nan = float("nan")
    n = base.n_examples
    if n < 2:
        return ShareTest(nan, nan, nan, nan, nan, nan, f"{n} example{'s' * (n != 1)}: too few for an interval")
    sign = -1.0 if lower_better else 1.0
    d_part, d_full = sign * (part.value - base.value), sign * (full.value - base.value)
    left_out = [_jackknife(s) for s in (base, full, part)]
    if not all(np.isfinite(v).all() for v in left_out):
        return ShareTest(nan, nan, nan, nan, nan, nan, "the metric is undefined on some leave-one-out sample")
    b, f, p = left_out
    cov = np.cov(sign * np.stack([p - b, f - b]), bias=True) * (n - 1)  # the jackknife covariance
    v_pp, v_pf, v_ff = float(cov[0, 0]), float(cov[0, 1]), float(cov[1, 1])
    df = n - 1
    tol = 1e-9 * max(abs(d_full), abs(d_part), np.finfo(float).tiny)  # below it a difference is rounding
    gain_p = _above_p(d_full, v_ff, df, tol)
    q = float(sps.t.ppf(0.5 + confidence / 2, df))
    a = d_full * d_full - q * q * v_ff
    if not (d_full > 0 and a > 0):
        return ShareTest(nan, nan, nan, gain_p, nan, nan,
                         f"gain over B is not above 0 by its paired {confidence:.0%} interval")
    half_b = d_part * d_full - q * q * v_pf  # the roots of a s^2 - 2 half_b s + c = 0
    c = d_part * d_part - q * q * v_pp
    root = np.sqrt(max(half_b * half_b - a * c, 0.0))
    contrast = d_part - bar * d_full
    variance = v_pp - 2 * bar * v_pf + bar * bar * v_ff
    share = d_part / d_full  # its contrast is 0, so it lies in the interval (kept there against rounding)
    return ShareTest(share, min((half_b - root) / a, share), max((half_b + root) / a, share), gain_p,
                     _above_p(contrast, variance, df, tol), _above_p(-contrast, variance, df, tol), "")


def _jackknife(scores: MetricScores) -> np.ndarray:
    """The metric on each leave-one-out sample of its examples."""
    return scores.score(scores.stats.sum(axis=0)[None] - scores.stats)


def _above_p(estimate: float, variance: float, df: int, tol: float) -> float:
    """One-sided t-test p-value of "the true value is above 0"; with no variance (below `tol` squared), 0 when
    the estimate is above `tol`, else 1 (constant differences: established, or never)."""
    if variance <= tol * tol:
        return 0.0 if estimate > tol else 1.0
    return float(sps.t.sf(estimate / np.sqrt(variance), df))


def causal_table(causal: dict[tuple[str, str], dict], records: dict[tuple[str, str], dict | None],
                 clusters: dict[str, str], *, n_boot: int = 200, seed: int = 0) -> pd.DataFrame:
    """results/causal.csv: per (task, model, mask, metric) the masked model's value with its interval over
    examples, and the share of the model's gain over B it keeps, with its Fieller interval and the p-values
    of the model's gain and of the share being above or below one half (`gain_share_test`).

    `causal[(task, model)]` is a stored causal record (`run_masks`); `records[(task, model)]` and
    `records[(task, "base")]` the study's evaluation records of the full model and of B, restricted here to
    the causal record's prompts. Rows with mask "all" and "none" are the full model and B themselves.
    `n_boot` 0 (the study's setting for no intervals) states no share.
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
            for mask, section, layers, scores in runs:
                m = scores[metric]
                low, high, _ = metric_interval(m, n_boot=n_boot, rng=named_stream(seed, task, model, mask, metric))
                test = ShareTest(*[float("nan")] * 6, "")
                if mask in ("all", "none"):
                    pass
                elif not n_boot:
                    test = test._replace(reason="no intervals (n_boot 0)")
                else:
                    kept = np.intersect1d(keep, m.rows)
                    test = gain_share_test(base_m.on_rows(kept), full_m.on_rows(kept), m.on_rows(kept),
                                           lower_better=metric in LOWER_IS_BETTER)
                    if test.reason.startswith("gain"):
                        test = test._replace(reason=f"{model}'s {test.reason}")
                rows.append([task, cluster, model, mask, section, layer_ranges(layers), metric, m.value, low, high,
                             test.share, test.low, test.high, test.reason, m.n_examples, test.gain_p, test.above_p,
                             test.below_p])
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


def section_verdict(table: pd.DataFrame, *, alpha: float = ALPHA) -> dict:
    """Which layer range carries E's gain, from causal.csv, by `RULE`: per task, on its primary metric and on
    the NLL per token, the range that carries the gain ("carried"), "spread" (no single range does),
    "undetermined" (with why) or "not tested" (E's gain not established: no share to test).

    "r carries it" needs all its parts (E's gain, r alone at or above half, every other range alone below,
    without r below), so its p-value is the largest of its parts' one-sided p-values (an intersection-union
    test needs no correction within a claim). Across claims, Holm's step-down correction over every claim
    checked (each range carrying it and none carrying it, on each task and both metrics; a claim not tested
    counts with p = 1) keeps the chance of any false claim at most `alpha`, whatever the dependence between
    metrics, ranges and tasks. The test is per task, not pooled over tasks: a pooled test could be carried by
    one task, and the sentence says on which tasks a range carries the gain. The medians over tasks of the
    shares are descriptive only. Every number is a plain float or None (JSON).
    """
    if not 0 < alpha < 1:
        raise MossaError(f"alpha: expected a level between 0 and 1, got {alpha!r}; use e.g. 0.05")
    head = {"rule": RULE, "bar": BAR, "alpha": alpha, "correction": "Holm", "share_interval": SHARE_INTERVAL}
    e = table[(table["model"] == EXPERIMENTAL) & table["mask"].str.startswith(("only ", "outside "))] \
        if not table.empty else table
    if e.empty:
        return {**head, "stated": False, "n_claims": 0, "reason": "no causal records of E"}
    ranges = list(dict.fromkeys(e["section"]))
    tasks = sorted(set(e["task"]))
    picks = {"primary": primary_rows, "nll_per_token": lambda t: t[t["metric"] == "nll_per_token"]}
    checks = {}
    for label, pick in picks.items():
        mine = pick(e)
        checks[label] = {task: _task_check(mine[mine["task"] == task], ranges) for task in tasks}
    keys = [(label, task, claim) for label in checks for task in tasks for claim in [*ranges, "spread"]]
    adjusted = dict(zip(keys, holm([checks[label][task]["p"][claim] for label, task, claim in keys])))
    out = {**head, "n_claims": len(keys)}
    for label, by_task in checks.items():
        summary = {"tasks": {}, "carriers": {}, "spread": [], "undetermined": [], "not_tested": []}
        for task, check in by_task.items():
            check["p_holm"] = {claim: adjusted[(label, task, claim)] for claim in [*ranges, "spread"]}
            _decide(check, ranges, alpha)
            summary["tasks"][task] = _json(check)
            status = check["status"]
            if status == "carried":
                summary["carriers"].setdefault(check["carrier"], []).append(task)
            else:
                summary[status.replace(" ", "_")].append(task)
        tested = [t for t, c in by_task.items() if c["status"] != "not tested"]
        summary["n_tested"] = len(tested)
        for kind in ("only", "outside"):
            summary[kind] = {}
            for r in ranges:
                shares = [v for t in tested if np.isfinite(v := by_task[t][kind][r]["share"])]
                summary[kind][r] = float(np.median(shares)) if shares else None
        out[label] = summary
    out["carriers"] = sorted({r for label in picks for r in out[label]["carriers"]})
    out["stated"] = any(out[label]["carriers"] or out[label]["spread"] for label in picks)
    return out


def holm(p_values) -> np.ndarray:
    """Holm's step-down adjusted p-values (NaN counts as 1): rejecting where the adjusted p-value is at most
    alpha keeps the family-wise error at most alpha under any dependence between the tests."""
    p = np.nan_to_num(np.asarray(p_values, dtype=float), nan=1.0)
    order = np.argsort(p, kind="stable")
    m = len(p)
    stepped = np.minimum(1.0, np.maximum.accumulate((m - np.arange(m)) * p[order]))
    out = np.empty(m)
    out[order] = stepped
    return out


def _task_check(rows: pd.DataFrame, ranges: list[str]) -> dict:
    """One task's shares, intervals and tests on one metric, and each claim's p-value.

    "r carries": the largest p-value of its parts (E's gain, r alone at or above half, each other range alone
    below, without r below). "Spread" (no single range carries): for every range, some part of its carrying
    is established false (r alone below half, another range alone at or above, or without r at or above
    half); per range the smallest such p-value times the number of parts (Bonferroni over the ways to fail),
    and the claim's p-value the largest of these and of E's gain's. A part without a test counts as p = 1.
    """
    by_mask = {r["mask"]: r for r in rows.to_dict("records")}

    def run(kind: str, name: str) -> dict:
        r = by_mask.get(f"{kind} {name}")
        if r is None:
            return {"share": np.nan, "low": np.nan, "high": np.nan, "above_p": np.nan, "below_p": np.nan,
                    "gain_p": np.nan, "reason": f"no '{kind} {name}' run on this metric"}
        return {"share": r["share"], "low": r["share_low"], "high": r["share_high"], "above_p": r["above_half_p"],
                "below_p": r["below_half_p"], "gain_p": r["gain_p"], "reason": r["share_reason"]}

    runs = {(kind, name): run(kind, name) for kind in ("only", "outside") for name in ranges}
    gain_p = max(_p_or_one(r["gain_p"]) for r in runs.values())
    p, weakest, not_carrier = {}, {}, {}
    for name in ranges:
        parts = [("only", name, "above"), *(("only", o, "below") for o in ranges if o != name),
                 ("outside", name, "below")]
        tested = [(part, _p_or_one(runs[part[:2]][f"{part[2]}_p"])) for part in parts]
        weak = max(tested, key=lambda t: t[1])
        p[name] = max(gain_p, weak[1])
        weakest[name] = {"part": _part_text(*weak[0]), "p": weak[1]}
        opposite = {"above": "below", "below": "above"}
        flipped = [((kind, r, opposite[d]), _p_or_one(runs[(kind, r)][f"{opposite[d]}_p"])) for kind, r, d in parts]
        (kind, r, d), fail_p = min(flipped, key=lambda t: t[1])
        not_carrier[name] = {"part": _part_text(kind, r, d), "mask": f"{kind} {r}",
                             "p": min(1.0, len(parts) * fail_p)}
    p["spread"] = max(gain_p, *(v["p"] for v in not_carrier.values()))
    stated = [r for r in runs.values() if np.isfinite(r["share"])]
    reasons = [r["reason"] for r in runs.values() if r["reason"]]
    fields = ("share", "low", "high", "above_p", "below_p")
    return {"metric": next((str(r["metric"]) for r in by_mask.values()), None), "gain_p": gain_p,
            "tested": bool(stated), "untested_reason": reasons[0] if reasons else "no share stated",
            "only": {n: {f: runs[("only", n)][f] for f in fields} for n in ranges},
            "outside": {n: {f: runs[("outside", n)][f] for f in fields} for n in ranges},
            "p": p, "weakest": weakest, "not_carrier": not_carrier}


def _p_or_one(p) -> float:
    """A p-value, 1 where there is no test (a part that cannot be established)."""
    return 1.0 if p is None or not np.isfinite(p) else float(p)


def _part_text(kind: str, name: str, direction: str) -> str:
    """A part of a claim in words, e.g. "without last third less than half is left"."""
    bar = "at least half" if direction == "above" else "less than half"
    return f"{name} alone keeps {bar}" if kind == "only" else f"without {name} {bar} is left"


def _decide(check: dict, ranges: list[str], alpha: float) -> None:
    """The task's status from its Holm-adjusted claims, with the reason in words."""
    adj = check["p_holm"]
    check["carrier"] = None
    if not check.pop("tested"):
        check["status"], check["reason"] = "not tested", check.pop("untested_reason")
        return
    check.pop("untested_reason")
    carried = [r for r in ranges if adj[r] <= alpha]
    if carried:
        top = carried[0]
        check["status"], check["carrier"] = "carried", top
        check["reason"] = (f"{top} alone keeps at least half, every other range alone less than half, and without "
                           f"{top} less than half is left (Holm-adjusted p {adj[top]:.2g} <= {alpha:g})")
    elif adj["spread"] <= alpha:
        check["status"] = "spread"
        why = "; ".join(f"not {r}: {v['part']}" for r, v in check["not_carrier"].items())
        check["reason"] = f"no single range carries the gain: {why} (Holm-adjusted p {adj['spread']:.2g} <= {alpha:g})"
    else:
        nearest = min(ranges, key=lambda r: check["p"][r])
        open_range = max(ranges, key=lambda r: check["not_carrier"][r]["p"])
        weak, fail = check["weakest"][nearest], check["not_carrier"][open_range]
        check["status"] = "undetermined"
        check["reason"] = (f"the intervals are too wide: that {nearest} carries the gain fails on '{weak['part']}' "
                           f"(p {weak['p']:.2g}, Holm-adjusted {adj[nearest]:.2g} > {alpha:g}), and that no single "
                           f"range does on {open_range} (at best '{fail['part']}', p {fail['p']:.2g} after "
                           f"Bonferroni, Holm-adjusted {adj['spread']:.2g})")


def _num(x) -> float | None:
    """A float for JSON: None for NaN or an infinity."""
    return float(x) if x is not None and np.isfinite(x) else None


def _json(obj):
    """The check with every number a plain float or None."""
    if isinstance(obj, dict):
        return {k: _json(v) for k, v in obj.items()}
    if isinstance(obj, (float, np.floating, int, np.integer)) and not isinstance(obj, bool):
        return _num(obj)
    return obj


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


__all__ = ["ALPHA", "BAR", "CAUSAL_COLUMNS", "RULE", "SHARE_INTERVAL", "SectionChecks", "ShareTest", "UPDATE_COLUMNS",
           "causal_records", "causal_table", "gain_share_test", "holm", "primary_rows", "section_checks",
           "section_verdict", "update_table"]
