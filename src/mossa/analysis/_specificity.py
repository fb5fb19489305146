"""Is it this task's information? Each model against other tasks' controls on the same prompts, its task
specificity, and the agreement of E's two seeds.

Stage: analysis (pure functions over one task's aligned states; the study writes the rows into the long
similarity table beside the rows against C_t, told apart by their `reference`).

A high CKA(M, C_t) says that M and task t's control represent t's prompts alike. It does not say that M
holds what C_t learned *about t*: two adapters on one base share the base, its prompt format and whatever
any fine-tuning does, and a control that learned nothing of its task is still close to B. The reference
that answers the question is the controls of other tasks s, read on t's own test prompts (the same rows):

    specificity(M, t) = CKA(M, C_t) - mean over s of CKA(M, C_s)

It is 0 in expectation when C_t is exchangeable with the other controls as seen from M: a control that is
B plus a change with no task in it, fine-tuning that moves every control alike, a spectrum of its own. The
control's own specificity is that of its second seed, CKA(C_t', C_t) - mean over s of CKA(C_t', C_s): two
specialists of t agree beyond what a specialist of t shares with one of s only if they learned something of
t. E's gain over B in specificity, specificity(E, t) - specificity(B, t), is E's move towards t's specialist
beyond its move towards every specialist.

Interval: one delete-a-group jackknife over examples shared by every pair of the contrast (the same groups
deleted from M, C_t and every C_s; `contrast_intervals`), so what the pairs share example by example cancels
instead of adding up. Null: the references are exchangeable under "nothing specific to t", so the exact
randomisation test swaps which of the k + 1 controls plays C_t: the p-value is the share of the k + 1
assignments whose specificity is at least the observed one (at least 1 / (k + 1): 0.25 with the default
k = 3; the verdict over tasks is the report's, by intervals over tasks).
"""

from __future__ import annotations

import zlib
from typing import Callable

import numpy as np
import pandas as pd

from mossa.analysis._jackknife import contrast_intervals, example_intervals
from mossa.analysis._permutation import NULL_COLUMNS
from mossa.similarity import layerwise_linear_cka

CONTROL = "control"
CEILING = "ceiling"
EXPERIMENTAL = "experimental"
HELDOUT = "heldout"  # E', trained without the held-out tasks, compared on those tasks only
SECOND_SEED = {EXPERIMENTAL: "experimental_seed2", HELDOUT: "heldout_seed2"}  # E and E' trained again, seed 2
CROSS = "cross-"  # the label of C_s read on another task's test prompts is CROSS + s
SPECIFICITY = "specificity"  # the `reference` of a specificity row
SPECIFICITY_MEASURES = {"debiased_cka": True, "linear_cka": False}  # measure -> debiased
INTERVAL_METHOD = "paired jackknife over examples (same deletions in every pair)"


def _values(A: np.ndarray, B: np.ndarray, debiased: bool, names: tuple[str, str]) -> list[tuple[float, str]]:
    return [(r.value, r.reason or "") for r in layerwise_linear_cka(A, B, debiased=debiased, names=names)]


def _swap_null(table: np.ndarray) -> list[dict]:
    """Per layer, the randomisation null of specificity over which of the k + 1 references [k + 1, layers] is
    task t's control (row 0): NULL_COLUMNS with the exact p-value."""
    n_refs = table.shape[0]
    out = []
    for column in table.T:
        if not np.all(np.isfinite(column)):
            out.append(dict.fromkeys(NULL_COLUMNS, np.nan) | {"n_permutations": n_refs, "null_n": n_refs})
            continue
        swapped = column - (column.sum() - column) / (n_refs - 1)  # each reference in C_t's place
        out.append({"null_mean": float(swapped.mean()), "null_q95": float(np.quantile(swapped, 0.95)),
                    "p_value": float(np.mean(swapped >= swapped[0] - 1e-12)), "adjusted": np.nan,
                    "n_permutations": n_refs, "null_n": n_refs, "null_strata": np.nan})
    return out


def cross_label(source: str) -> str:
    """The model label of task `source`'s control read on another task's prompts."""
    return CROSS + source


def references(model: str, models: list[str], sources: list[str]) -> list[str]:
    """What `model` is read against beyond C_t: the other tasks' controls; C_t' for B and E (the gain recomputed
    against the control's second seed is the gain's seed noise); the first seed for a second-seed model (the
    two seeds' agreement)."""
    refs = [cross_label(s) for s in sources]
    if CEILING in models and model in ("base", EXPERIMENTAL, SECOND_SEED[EXPERIMENTAL]):
        refs.append(CEILING)
    first = {second: one for one, second in SECOND_SEED.items()}
    if first.get(model) in models:
        refs.append(first[model])
    return refs


def specificity_rows(task: str, cluster: str, full: Callable[[str], np.ndarray], models: list[str],
                     sources: list[str], measures: tuple[str, ...], *, intervals: bool, seed: int,
                     base_row: dict) -> list[dict]:
    """One task's rows against every reference but C_t, and its specificity rows, for the kernel CKAs measured.

    `full(label)` gives a model's aligned states [layers, n, d]; `models` are those compared with C_t (B, E,
    E', the second seeds, C_t'); `sources` the tasks whose controls were read on this task's prompts;
    `base_row` the columns every row shares (n_examples, n_dropped). Rows carry `reference`: the label read
    against (a cross label, "ceiling", a first seed) or "specificity".
    """
    key = zlib.crc32(task.encode())
    out = []
    for measure in [m for m in measures if m in SPECIFICITY_MEASURES]:
        debiased = SPECIFICITY_MEASURES[measure]
        for model in models:
            A = full(model)
            refs = references(model, models, sources)
            values = {ref: _values(A, full(ref), debiased, (model, ref)) for ref in [CONTROL, *refs]}
            rows = {ref: values[ref] for ref in refs}
            cis = {ref: example_intervals(measure, A, full(ref), rng=np.random.default_rng([seed, key, 4]),
                                          values=[v for v, _ in values[ref]]) if intervals else None for ref in refs}
            cross = [cross_label(s) for s in sources]
            if cross:
                table = np.array([[v for v, _ in values[ref]] for ref in [CONTROL, *cross]])
                spec = table[0] - table[1:].mean(axis=0)
                reasons = [next((values[ref][layer][1] for ref in [CONTROL, *cross] if values[ref][layer][1]),
                                "a CKA of the contrast is undefined") for layer in range(len(spec))]
                rows[SPECIFICITY] = [(v, "" if np.isfinite(v) else why) for v, why in zip(spec, reasons)]
                weights = [1.0] + [-1.0 / len(cross)] * len(cross)
                cis[SPECIFICITY] = contrast_intervals(
                    measure, A, [full(ref) for ref in [CONTROL, *cross]], weights,
                    rng=np.random.default_rng([seed, key, 4]), values=list(spec)) if intervals else None
                nulls = _swap_null(table)
            for ref, vals in rows.items():
                for layer, (value, reason) in enumerate(vals):
                    lo, hi, method = cis[ref][layer] if cis[ref] is not None else (np.nan, np.nan, "")
                    null = nulls[layer] if ref == SPECIFICITY else (
                        dict.fromkeys(NULL_COLUMNS, np.nan) | {"n_permutations": 0})
                    out.append({"task": task, "cluster": cluster, "model": model, "reference": ref, "layer": layer,
                                "measure": measure, "value": value, "ci_low": lo, "ci_high": hi,
                                "ci_method": (INTERVAL_METHOD if ref == SPECIFICITY else method)
                                if np.isfinite(lo) else "", **null, **base_row, "undefined_reason": reason})
    return out


MIN_ASSIGNMENTS = 40  # fewest distinct assignments for the swap test to reach p <= 0.05 at all (with room)


def swap_test(tables: list[np.ndarray], *, n_draws: int = 20_000, seed: int = 0, alpha: float = 0.05) -> dict:
    """The exact randomisation test of task specificity over tasks.

    Each task contributes its values against its k + 1 controls (`tables[i][0]` against its own C_t, the rest
    against the other tasks' controls; the vectors may differ in length). Its specificity is the first value
    minus the mean of the others; the statistic is the mean over tasks. If no control holds anything of its
    own task, each task's controls are exchangeable, so every choice of which one plays C_t is as likely: the
    p-value (two-sided) is the share of such choices, drawn independently per task (all of them when there are
    at most `n_draws`), whose mean specificity is at least as far from 0 as the observed one. The test is exact
    for any distribution of the values: the per-task specificity of exchangeable controls has mean 0 but is
    skewed (a single CKA against the mean of k), so a median over tasks, or an interval built on symmetry, is
    not centred on 0 under that null.

    Returns mean, p_value (NaN when fewer than MIN_ASSIGNMENTS assignments exist: "too few"), n_tasks,
    n_above (tasks with specificity above 0), per_task, n_assignments and detectable: the 1 - `alpha` quantile
    of |mean| under the null, the smallest mean specificity these tasks' values could have shown beyond noise at
    level `alpha` (what a null result could have detected).
    """
    tables = [np.asarray(t, dtype=float) for t in tables if len(t) > 1 and np.all(np.isfinite(t))]
    if not tables:
        return {}
    swaps = [t - (t.sum() - t) / (len(t) - 1) for t in tables]  # each control in C_t's place; [0] = observed
    observed = float(np.mean([w[0] for w in swaps]))
    sizes = np.array([len(w) for w in swaps])
    total = float(np.prod(sizes.astype(float)))
    out = {"mean": observed, "n_tasks": len(swaps), "n_above": int(sum(w[0] > 0 for w in swaps)),
           "per_task": [float(w[0]) for w in swaps], "n_assignments": total}
    if total < MIN_ASSIGNMENTS:
        return out | {"p_value": float("nan")}
    if total <= n_draws:
        grids = np.meshgrid(*[np.arange(k) for k in sizes], indexing="ij")
        picks = np.stack([g.ravel() for g in grids], axis=1)
        stats = np.mean([swaps[i][picks[:, i]] for i in range(len(swaps))], axis=0)
        p = float(np.mean(np.abs(stats) >= abs(observed) - 1e-12))
    else:
        rng = np.random.default_rng(seed)
        stats = np.mean([w[rng.integers(len(w), size=n_draws)] for w in swaps], axis=0)
        p = float((1 + np.sum(np.abs(stats) >= abs(observed) - 1e-12)) / (n_draws + 1))
    return out | {"p_value": p, "detectable": float(np.quantile(np.abs(stats), 1 - alpha))}


def cross_task_means(references: pd.DataFrame) -> pd.DataFrame:
    """Per task, model, measure and layer, the mean over the other tasks s of CKA(M, C_s) on the task's prompts
    (columns task, cluster, model, measure, layer, value, n_sources): the level M reaches with a specialist of
    another task, the band C_t's curve is read against."""
    rows = references[references["reference"].astype(str).str.startswith(CROSS)]
    keys = ["task", "cluster", "model", "measure", "layer"]
    if not len(rows):
        return pd.DataFrame(columns=[*keys, "value", "n_sources"])
    return (rows.groupby(keys, sort=False)["value"].agg(value="mean", n_sources="size").reset_index())


__all__ = ["CROSS", "HELDOUT", "SECOND_SEED", "SPECIFICITY", "SPECIFICITY_MEASURES", "cross_label", "cross_task_means",
           "references", "specificity_rows", "swap_test"]
