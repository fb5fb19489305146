"""Per-task, per-layer similarity of B and E to each control C_t, and the controls' scores.

Stage: analysis (reads activation files from the store; writes results/). Loads no model.

Rows of the three models are matched by example id, never by position; an example whose
state is non-finite in any of them at any layer is dropped from all of them and counted.
A layer whose representation does not vary across examples (layer 0 at a shared answer cue)
has no defined CKA: its row carries `value = NaN` and the reason in `undefined_reason`.
"""

from __future__ import annotations

import zlib

import numpy as np
import pandas as pd

from mossa.analysis._bootstrap import example_bootstrap, median_over_tasks
from mossa.errors import MossaError
from mossa.similarity import cross_layer_linear_cka, get_measure, layerwise_linear_cka
from mossa.store import Activations, StudyDir, atomic_path

COMPARED = ("base", "experimental")
HELDOUT = "heldout"  # E', trained without the held-out tasks, compared on those tasks only
SIMILARITY_COLUMNS = ["task", "cluster", "model", "layer", "measure", "value", "ci_low", "ci_high", "n_examples",
                      "n_dropped", "undefined_reason"]


def align(runs: dict[str, Activations]) -> tuple[list[str], dict[str, np.ndarray], int]:
    """Rows shared by every run, in the first run's order, with non-finite rows dropped jointly.

    Returns the kept ids, each run's acts restricted to them ([layers+1, n_kept, d]) and the
    number of shared ids that were dropped for non-finite values.
    """
    first = next(iter(runs.values()))
    shared = set(first.ids)
    for run in runs.values():
        shared &= set(run.ids)
    ids = [i for i in first.ids if i in shared]
    picked = {}
    for name, run in runs.items():
        pos = {ex_id: k for k, ex_id in enumerate(run.ids)}
        picked[name] = run.acts[:, [pos[i] for i in ids]]
    finite = np.ones(len(ids), dtype=bool)
    for acts in picked.values():
        finite &= np.isfinite(acts).all(axis=(0, 2))
    kept = [i for i, ok in zip(ids, finite) if ok]
    return kept, {name: acts[:, finite] for name, acts in picked.items()}, int((~finite).sum())


# The kernel CKAs: their bootstrap intervals come from indexing precomputed kernels, so the
# whole table with intervals takes seconds. The other registered measures are opt-in
# (--measures); their intervals recompute the measure on every resample.
DEFAULT_MEASURES = ("linear_cka", "debiased_cka", "rbf_cka")
_LAYERWISE = {"linear_cka": False, "debiased_cka": True}  # measures with a batched layer path


def _layer_values(measure: str, A: np.ndarray, B: np.ndarray, names: tuple[str, str]) -> list[tuple[float, str]]:
    """(value, reason) per layer for one measure; an estimator that cannot run on these data
    (too few examples for the kept dimensions, say) gives NaN with the error as the reason."""
    if measure in _LAYERWISE:
        try:
            return [(r.value, r.reason or "") for r in
                    layerwise_linear_cka(A, B, debiased=_LAYERWISE[measure], names=names)]
        except MossaError as exc:
            return [(float("nan"), str(exc))] * len(A)
    func = get_measure(measure)
    out = []
    for a, b in zip(A, B):
        try:
            res = func(a, b)
            out.append((res.value, res.reason or ""))
        except MossaError as exc:
            out.append((float("nan"), str(exc)))
    return out


def task_similarity(task: str, cluster: str, runs: dict[str, Activations],
                    measures: tuple[str, ...] = DEFAULT_MEASURES, *, n_boot: int = 0, seed: int = 0) -> list[dict]:
    """Every measure of each model vs the control, per layer, for one task.

    With `n_boot > 0`, each value gets a bootstrap-over-examples 95% interval (`ci_low`,
    `ci_high`); the resamples depend only on (seed, task, measure), not on the order of work.
    """
    ids, acts, n_dropped = align(runs)
    rows = []
    for measure in measures:
        for model in [m for m in runs if m != "control"]:
            values = _layer_values(measure, acts[model], acts["control"], (model, "control"))
            cis = [(np.nan, np.nan)] * len(values)
            if n_boot:
                rng = np.random.default_rng([seed, zlib.crc32(task.encode()), zlib.crc32(measure.encode())])
                cis = example_bootstrap(measure, acts[model], acts["control"], n_boot=n_boot, rng=rng)
            for layer, ((value, reason), (lo, hi)) in enumerate(zip(values, cis)):
                if not np.isfinite(value):
                    lo = hi = np.nan
                rows.append({"task": task, "cluster": cluster, "model": model, "layer": layer,
                             "measure": measure, "value": value, "ci_low": lo, "ci_high": hi,
                             "n_examples": len(ids), "n_dropped": n_dropped, "undefined_reason": reason})
    return rows


def task_cross_layer(task: str, runs: dict[str, Activations]) -> list[dict]:
    """Linear CKA of every layer of B and E with every layer of C_t, for one task (long rows)."""
    _, acts, _ = align(runs)
    rows = []
    for model in COMPARED:
        matrix = cross_layer_linear_cka(acts[model], acts["control"])  # [layers, layers]
        for i, j in np.ndindex(matrix.shape):
            rows.append({"task": task, "model": model, "layer": i, "control_layer": j, "value": matrix[i, j]})
    return rows


def mean_loss(run: Activations) -> float:
    """Mean negative log-likelihood per target token over a task's test prompts."""
    return float(run.target_nll.sum() / max(int(run.target_tokens.sum()), 1))


def write_table(df: pd.DataFrame, path_stem) -> None:
    """Write a table as parquet and csv, each atomically."""
    with atomic_path(path_stem.with_suffix(".parquet")) as tmp:
        df.to_parquet(tmp, index=False)
    with atomic_path(path_stem.with_suffix(".csv")) as tmp:
        df.to_csv(tmp, index=False)


def check_measures(measures: tuple[str, ...]) -> tuple[str, ...]:
    """Validate measure names against the registry (before any work starts)."""
    for name in measures:
        get_measure(name)
    return tuple(measures)


def analyze(study: StudyDir, tasks: dict[str, str], *, measures: tuple[str, ...] = DEFAULT_MEASURES,
            heldout: tuple[str, ...] = (), n_boot: int = 200, seed: int = 0
            ) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Compute and write `results/similarity.*`, `results/layer_by_layer_cka.csv`, `results/controls.csv`.

    Parameters
    ----------
    study : StudyDir
    tasks : dict
        Task name -> cluster, in study order.
    measures : tuple of str
        Registered measure names (see `mossa.similarity.available_measures`).
    heldout : tuple of str
        Tasks held out of E' (their rows get `model = "heldout"` too).
    n_boot : int
        Bootstrap resamples for the confidence intervals (0: no intervals).
    seed : int

    Returns
    -------
    similarity, controls, cross_layer, medians : pandas.DataFrame
        `medians` holds the per-layer median over tasks (group "all", and one group per
        cluster) with bootstrap intervals; it is also written to `results/medians.csv`.
    """
    measures = check_measures(measures)
    sim_rows, control_rows, cross_rows = [], [], []
    for task, cluster in tasks.items():
        runs = {m: study.read_activations(m, task) for m in ("control", *COMPARED)}
        if task in heldout:
            runs[HELDOUT] = study.read_activations(HELDOUT, task)
        sim_rows += task_similarity(task, cluster, runs, measures, n_boot=n_boot, seed=seed)
        cross_rows += task_cross_layer(task, {m: runs[m] for m in ("control", *COMPARED)})
        control_rows.append({"task": task, "metric": "loss", "base": mean_loss(runs["base"]),
                             "control": mean_loss(runs["control"]),
                             "experimental": mean_loss(runs["experimental"]),
                             HELDOUT: mean_loss(runs[HELDOUT]) if HELDOUT in runs else float("nan"),
                             "cluster": cluster, "n_examples": len(runs["control"].ids)})
    sim = pd.DataFrame(sim_rows, columns=SIMILARITY_COLUMNS)
    controls = pd.DataFrame(control_rows)
    controls["control_better"] = controls["control"] < controls["base"]
    cross = pd.DataFrame(cross_rows)
    boot = max(n_boot, 1)
    medians = pd.concat([median_over_tasks(sim, n_boot=boot, seed=seed, by_cluster=False),
                         median_over_tasks(sim, n_boot=boot, seed=seed, by_cluster=True)], ignore_index=True)
    write_table(sim, study.path("results", "similarity"))
    with atomic_path(study.path("results", "medians.csv")) as tmp:
        medians.to_csv(tmp, index=False)
    with atomic_path(study.path("results", "controls.csv")) as tmp:
        controls.to_csv(tmp, index=False)
    with atomic_path(study.path("results", "layer_by_layer_cka.csv")) as tmp:
        cross.to_csv(tmp, index=False)
    return sim, controls, cross, medians


__all__ = ["COMPARED", "DEFAULT_MEASURES", "HELDOUT", "SIMILARITY_COLUMNS", "align", "analyze",
           "check_measures", "mean_loss", "task_cross_layer", "task_similarity"]
