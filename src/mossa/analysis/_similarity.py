"""Per-task, per-layer similarity of B and E to each control C_t, and the controls' scores.

Stage: analysis (reads activation files from the store; writes results/). Loads no model.

Rows of the three models are matched by example id, never by position; an example whose
state is non-finite in any of them at any layer is dropped from all of them and counted.
A layer whose representation does not vary across examples (layer 0 at a shared answer cue)
has no defined CKA: its row carries `value = NaN` and the reason in `undefined_reason`.
"""

from __future__ import annotations

import zlib
from typing import Mapping, Union

import numpy as np
import pandas as pd
from threadpoolctl import threadpool_limits

from mossa.analysis._task_intervals import median_over_tasks
from mossa.analysis._jackknife import example_intervals
from mossa.analysis._permutation import NULL_COLUMNS, n_strata, permutation_nulls, permutations
from mossa.analysis._specificity import CROSS, HELDOUT, SECOND_SEED, cross_label, specificity_rows
from mossa.workers import JobPool
from mossa.errors import MossaError
from mossa.similarity import (
    ROBUST_MEASURES,
    StreamingLinearCKA,
    cross_layer_cka,
    cross_layer_linear_cka,
    get_measure,
    layerwise_linear_cka,
    select_form,
)
from mossa.store import ActivationFile, Activations, StudyDir, atomic_path, read_prompt_templates

Run = Union[Activations, ActivationFile]  # .ids .shape .read() .view() .finite_rows() .prefetch()

COMPARED = ("base", "experimental")
SIMILARITY_COLUMNS = ["task", "cluster", "model", "reference", "layer", "measure", "value", "ci_low", "ci_high",
                      "ci_method",
                      *NULL_COLUMNS, "n_examples", "n_dropped", "undefined_reason"]


def depth_map(n_states: int, n_grid: int) -> list[int]:
    """For each state of a grid of `n_grid` states (embeddings + layers), the state at the same
    relative depth in a model with `n_states`: round(j (n_states-1) / (n_grid-1)). The embeddings
    and the last layers map onto each other."""
    if n_grid < 2 or n_states < 2:
        raise MossaError(f"depth map needs at least 2 states on each side, got {n_states} and {n_grid}")
    return [int(np.floor(j * (n_states - 1) / (n_grid - 1) + 0.5)) for j in range(n_grid)]


class DepthMapped:
    """A run read on another model's layer grid (E given with a depth other than B's): state j of
    the grid is the run's state ``depth_map(...)[j]``; everything else is the run's own."""

    def __init__(self, run: Run, n_grid: int):
        self.run, self.layer_map = run, depth_map(run.shape[0], n_grid)
        self.ids, self.n = run.ids, run.shape[1]
        self.shape = (n_grid, *run.shape[1:])
        self.target_nll, self.target_tokens = run.target_nll, run.target_tokens

    def read(self, rows=None, layers=None, *, out: np.ndarray | None = None) -> np.ndarray:
        layers = range(self.shape[0]) if layers is None else layers
        return self.run.read(rows, [self.layer_map[int(j)] for j in layers], out=out)

    def finite_rows(self) -> np.ndarray:
        return self.run.finite_rows()

    def prefetch(self, rows, layers) -> None:
        self.run.prefetch(rows, [self.layer_map[int(j)] for j in layers])

    def view(self, rows, layer: int) -> np.ndarray | None:
        return self.run.view(rows, self.layer_map[int(layer)])


def on_grid(runs: Mapping[str, Run], n_grid: int) -> dict[str, Run]:
    """The runs, each whose depth differs from `n_grid` states read through `DepthMapped`."""
    return {m: run if run.shape[0] == n_grid else DepthMapped(run, n_grid) for m, run in runs.items()}


def aligned_rows(runs: Mapping[str, Run]) -> tuple[list[str], dict[str, np.ndarray]]:
    """Ids shared by every run, in the first run's order, and each run's row index of them."""
    first = next(iter(runs.values()))
    shared = set(first.ids)
    for run in runs.values():
        shared &= set(run.ids)
    ids = [i for i in first.ids if i in shared]
    rows = {}
    for name, run in runs.items():
        if run.ids == ids:
            rows[name] = np.arange(len(ids))
        else:
            pos = {ex_id: k for k, ex_id in enumerate(run.ids)}
            rows[name] = np.array([pos[i] for i in ids], dtype=np.int64)
    return ids, rows


def _read_chunks(runs: Mapping[str, Run], rows: Mapping[str, np.ndarray], size: int, *, by_layer: bool = False):
    """Yield (layers, name -> [k, c, d] float32) blocks of the aligned rows: all layers per block,
    or with `by_layer` one layer at a time (larger row blocks for the same memory).

    Layer by layer, a block whose rows are one ascending run is a read-only view of the stored
    states (`view`); other blocks are read into one reused buffer per run. Either way a yielded
    block is valid until the next one. Reads stay in this thread: a reader thread beside the compute threads on the same cores
    made the chunk products twice as slow in our measurements. Layer by layer, the next layer is
    handed to the kernel's readahead (`prefetch`) first, so disk reads overlap the products.
    """
    n = len(next(iter(rows.values())))
    n_layers = next(iter(runs.values())).shape[0]
    buffers: dict[str, np.ndarray] = {}
    for layers in ([[layer] for layer in range(n_layers)] if by_layer else [None]):
        if layers is not None and layers[0] + 1 < n_layers:  # the kernel reads the next layer meanwhile
            for m in rows:
                runs[m].prefetch(rows[m], [layers[0] + 1])
        for start in range(0, n, size):
            block = {}
            for m in rows:
                view = runs[m].view(rows[m][start:start + size], layers[0]) if layers is not None else None
                if view is not None:  # one run of rows: read in place, no copy
                    block[m] = view[None]
                    continue
                block[m] = runs[m].read(rows[m][start:start + size], layers=layers, out=buffers.get(m))
                if buffers.get(m) is None or buffers[m].size < block[m].size:
                    buffers[m] = block[m]
            yield (layers if layers is not None else list(range(n_layers))), block


def _block_rows(d: int, budget_bytes: int = 32 * 2**20) -> int:
    """Rows per single-layer block: at most `budget_bytes` of float32 per representation."""
    return max(256, budget_bytes // (4 * max(d, 1)))


def scan(runs: Mapping[str, Run], rows: Mapping[str, np.ndarray], pairs: list[tuple[str, str]], *,
         chunk_rows: int | None = None) -> tuple[StreamingLinearCKA, np.ndarray]:
    """One streamed pass, layer by layer: linear-CKA statistics of `pairs` over the aligned rows
    that are finite in every run at every layer.

    Returns the accumulator and the mask of kept (finite) aligned rows. `chunk_rows` (default:
    32 MB of one layer per representation) sets the rows per block.
    """
    finite = joint_finite(runs, rows)
    kept = {m: r[finite] for m, r in rows.items()}
    n_layers, _, d = next(iter(runs.values())).shape
    acc = StreamingLinearCKA(pairs, n_layers=n_layers)
    done: list[int] = []
    for layers, block in _read_chunks(runs, kept, chunk_rows or _block_rows(d), by_layer=True):
        if layers != done:
            acc.seal(done)  # the previous layer's rows are all in: free its d x d sums for this one
            done = layers
        acc.update(block, layers=layers, consume=True)  # the blocks are our own read buffers
    acc.seal()
    return acc, finite


def align(runs: Mapping[str, Run]) -> tuple[list[str], dict[str, np.ndarray], int]:
    """Rows shared by every run, in the first run's order, with non-finite rows dropped jointly.

    Returns the kept ids, each run's states restricted to them ([layers+1, n_kept, d]) and the
    number of shared ids that were dropped for non-finite values. Reads everything into memory.
    """
    ids, rows = aligned_rows(runs)
    finite = joint_finite(runs, rows)
    kept = [i for i, ok in zip(ids, finite) if ok]
    return kept, {name: runs[name].read(rows[name][finite]) for name in runs}, int((~finite).sum())


def joint_finite(runs: Mapping[str, Run], rows: Mapping[str, np.ndarray]) -> np.ndarray:
    """Mask of aligned rows whose states are finite in every run at every layer."""
    return np.logical_and.reduce([runs[m].finite_rows()[rows[m]] for m in rows])


# The kernel CKAs: their bootstrap intervals come from indexing precomputed kernels, so the
# whole table with intervals takes seconds. Then the CKA variants robust to outlier dimensions,
# values only (VALUES_ONLY). The other registered measures are opt-in (--measures); their
# intervals recompute the measure on every resample.
DEFAULT_MEASURES = ("linear_cka", "debiased_cka", "rbf_cka", *ROBUST_MEASURES)
# Measures tabulated without interval or null (those columns NaN, n_permutations 0): the robust
# variants are not rotation invariant, so each jackknife subset and each permutation recomputes the
# measure on the full width. Measured on the demo study (96 examples, 19 states of width 640): 26 s of
# CPU per (task, model) for the four variants' intervals and nulls against 0.4 s for their values, so
# ~7 minutes of CPU instead of ~7 s over its 16 (task, model) pairs.
VALUES_ONLY = frozenset(ROBUST_MEASURES)
_LAYERWISE = {"linear_cka": False, "debiased_cka": True}  # measures with a batched layer path


def _guarded(compute, n_layers: int) -> list[tuple[float, str]]:
    """(value, reason) per layer; an estimator that cannot run on these data (too few examples
    for the kept dimensions, say) gives NaN with the error as the reason."""
    try:
        return [(r.value, r.reason or "") for r in compute()]
    except MossaError as exc:
        return [(float("nan"), str(exc))] * n_layers


def _layer_values(measure: str, A: np.ndarray, B: np.ndarray, names: tuple[str, str]) -> list[tuple[float, str]]:
    """(value, reason) per layer of one measure on in-memory stacks."""
    if measure in _LAYERWISE:
        return _guarded(lambda: layerwise_linear_cka(A, B, debiased=_LAYERWISE[measure], names=names), len(A))
    func = get_measure(measure)
    with threadpool_limits(1, user_api="blas"):  # small NumPy products: one BLAS thread is fastest
        return [_guarded(lambda: [func(a, b)], 1)[0] for a, b in zip(A, B)]


class _TaskData:
    """One task's aligned runs: the streamed statistics, and in-memory reads made on demand."""

    def __init__(self, runs: Mapping[str, Run], chunk_rows: int | None):
        self.runs = runs
        ids, self.rows = aligned_rows(runs)
        self.compared = [m for m in runs if m != "control" and not m.startswith(CROSS)]  # read against C_t
        self.acc, finite = scan(runs, self.rows, [(m, "control") for m in self.compared], chunk_rows=chunk_rows)
        self.ids = [i for i, ok in zip(ids, finite) if ok]
        self.kept = {m: r[finite] for m, r in self.rows.items()}
        self.n_dropped = int((~finite).sum())
        _, n, d = next(iter(runs.values())).shape
        # Few examples: the n x n form in float64, in memory; many: the streamed statistics.
        self.streamed = select_form(len(self.ids), d, d) == "feature"
        self._memory: dict[str, np.ndarray] = {}

    def full(self, model: str) -> np.ndarray:
        if model not in self._memory:
            self._memory[model] = self.runs[model].read(self.kept[model])
        return self._memory[model]

    def values(self, measure: str, model: str) -> list[tuple[float, str]]:
        names = (model, "control")
        if measure in _LAYERWISE and self.streamed:
            n_layers = self.runs[model].shape[0]
            return _guarded(lambda: self.acc.results(model, "control", debiased=_LAYERWISE[measure], names=names),
                            n_layers)
        return _layer_values(measure, self.full(model), self.full("control"), names)

    def intervals(self, measure: str, model: str, *, rng: np.random.Generator,
                  values: list[tuple[float, str]]) -> list[tuple[float, float, str]]:
        """Jackknife-over-examples 95% intervals per layer, centred on the table's values."""
        return example_intervals(measure, self.full(model), self.full("control"), rng=rng,
                                 values=[v for v, _ in values])

    def nulls(self, measure: str, model: str, *, perms: np.ndarray, rng: np.random.Generator,
              values: list[tuple[float, str]], groups: np.ndarray | None) -> list[dict]:
        """Permutation-null summaries per layer (columns NULL_COLUMNS), re-pairing within `groups`."""
        return permutation_nulls(measure, self.full(model), self.full("control"), [v for v, _ in values],
                                 perms=perms, rng=rng, groups=groups)

    def template_groups(self, templates: Mapping[str, int] | None) -> np.ndarray | None:
        """The template of each kept example [n] when the task's prompts use more than one (the null then
        re-pairs within templates), else None."""
        if not templates:
            return None
        missing = [i for i in self.ids if i not in templates]
        if missing:
            raise MossaError(f"prompts.jsonl: no template for {len(missing)} of the task's examples (first: "
                             f"{missing[0]}); fix: rerun `mossa run` on this study to rewrite it")
        groups = np.array([templates[i] for i in self.ids])
        return groups if len(np.unique(groups)) > 1 else None


def task_similarity(task: str, cluster: str, runs: Mapping[str, Run],
                    measures: tuple[str, ...] = DEFAULT_MEASURES, *, intervals: bool = False,
                    n_permutations: int = 0, seed: int = 0, chunk_rows: int | None = None,
                    data: _TaskData | None = None, templates: Mapping[str, int] | None = None) -> list[dict]:
    """Every measure of each model vs the control, per layer, for one task.

    Linear and debiased CKA stream from disk in chunks (memory independent of n) when there
    are more examples than the n x n form suits; other measures read the aligned rows into
    memory. With `intervals`, each value gets a jackknife-over-examples 95% interval
    (`ci_low`, `ci_high`, `ci_method`); with `n_permutations > 0`, its permutation null
    (NULL_COLUMNS). Groups and permutations depend only on (seed, task): every model, measure
    and layer of a task uses the same ones, whatever the order of work. When the task's prompts use
    more than one template (`templates`: example id -> template index, from prompts.jsonl), the null
    re-pairs examples only within a template: two models that share nothing but the template an
    example was written in then sit at chance (`null_strata`: the number of templates). Measures in
    VALUES_ONLY get neither (NaN columns, `n_permutations` 0): they would cost minutes.
    """
    data = data or _TaskData(runs, chunk_rows)
    key = zlib.crc32(task.encode())
    groups = data.template_groups(templates)
    perms = permutations(len(data.ids), n_permutations, np.random.default_rng([seed, key, 2]), groups)
    rows = []
    for measure in measures:
        for model in data.compared:
            values = data.values(measure, model)
            cis = [(np.nan, np.nan, "")] * len(values)
            nulls = [dict.fromkeys(NULL_COLUMNS, np.nan) | {"n_permutations": 0, "null_strata": n_strata(groups)}
                     ] * len(values)
            if intervals and measure not in VALUES_ONLY:
                cis = data.intervals(measure, model, rng=np.random.default_rng([seed, key, 1]), values=values)
            if n_permutations and measure not in VALUES_ONLY:
                nulls = data.nulls(measure, model, perms=perms, rng=np.random.default_rng([seed, key, 3]),
                                   values=values, groups=groups)
            for layer, ((value, reason), (lo, hi, method), null) in enumerate(zip(values, cis, nulls)):
                if not np.isfinite(value):
                    lo = hi = np.nan
                rows.append({"task": task, "cluster": cluster, "model": model, "reference": "control", "layer": layer,
                             "measure": measure, "value": value, "ci_low": lo, "ci_high": hi,
                             "ci_method": method if np.isfinite(lo) else "", **null, "n_examples": len(data.ids),
                             "n_dropped": data.n_dropped, "undefined_reason": reason})
    return rows


def task_cross_layer(task: str, runs: Mapping[str, Run], *, chunk_rows: int | None = None,
                     data: _TaskData | None = None) -> list[dict]:
    """Linear CKA of every layer of B and E with every layer of C_t, for one task (long rows)."""
    data = data or _TaskData(runs, chunk_rows)
    rows = []
    for model in COMPARED:
        if data.streamed:
            def chunks(model=model):
                return (block for _, block in _read_chunks(
                    runs, {model: data.kept[model], "control": data.kept["control"]},
                    chunk_rows or max(1, _block_rows(runs[model].shape[2]) // runs[model].shape[0])))
            matrix = cross_layer_cka(data.acc, model, "control", chunks)
        else:
            matrix = cross_layer_linear_cka(data.full(model), data.full("control"))  # [layers, layers]
        for i, j in np.ndindex(matrix.shape):
            rows.append({"task": task, "model": model, "layer": i, "control_layer": j, "value": matrix[i, j]})
    return rows


def mean_loss(run: Run) -> float:
    """Mean negative log-likelihood per target token over a task's scored test prompts (NaN if none was)."""
    scored = run.target_tokens > 0
    if not scored.any():
        return float("nan")
    return float(run.target_nll[scored].sum() / run.target_tokens[scored].sum())


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


def _task_tables(study: StudyDir, task: str, cluster: str, extra: tuple[str, ...], sources: tuple[str, ...],
                 measures: tuple[str, ...], n_boot: int, n_permutations: int, seed: int, chunk_rows: int | None
                 ) -> tuple[list, list, list, dict, set]:
    """One task's similarity rows against C_t, cross-layer rows, rows against the other references (with the
    specificity rows), loss row and unscored models (a worker job).

    `extra` names the task's models beyond C_t, B and E (the second seeds, HELDOUT, "ceiling"); `sources` the
    tasks whose controls were read on this task's prompts."""
    runs = {m: study.activation_file(m, task) for m in ("control", *COMPARED, *extra, *map(cross_label, sources))}
    runs = on_grid(runs, runs["control"].shape[0])  # a given E of another depth: on B's layers
    data = _TaskData(runs, chunk_rows)
    templates = read_prompt_templates(study.path("prompts.jsonl")).get(task)
    sim_rows = task_similarity(task, cluster, runs, measures, intervals=n_boot > 0,
                               n_permutations=n_permutations, seed=seed, data=data, templates=templates)
    cross_rows = task_cross_layer(task, runs, chunk_rows=chunk_rows, data=data)
    spec_rows = specificity_rows(task, cluster, data.full, data.compared, list(sources), measures,
                                 intervals=n_boot > 0, seed=seed,
                                 base_row={"n_examples": len(data.ids), "n_dropped": data.n_dropped})
    control_row = {"task": task, "metric": "loss", "base": mean_loss(runs["base"]),
                   "control": mean_loss(runs["control"]), "experimental": mean_loss(runs["experimental"]),
                   HELDOUT: mean_loss(runs[HELDOUT]) if HELDOUT in runs else float("nan"),
                   **({"ceiling": mean_loss(runs["ceiling"])} if "ceiling" in runs else {}),
                   "cluster": cluster, "n_examples": len(runs["control"].ids),
                   "n_scored": int(np.sum(runs["control"].target_tokens > 0))}
    unscored = {m for m in ("experimental", HELDOUT, "ceiling")
                if m in runs and not int(runs[m].target_tokens.sum())}  # extracted without its test loss
    return sim_rows, cross_rows, spec_rows, control_row, unscored


def analyze(study: StudyDir, tasks: dict[str, str], *, measures: tuple[str, ...] = DEFAULT_MEASURES,
            heldout: tuple[str, ...] = (), n_boot: int = 200, seed: int = 0, chunk_rows: int | None = None,
            ceiling: tuple[str, ...] = (), n_permutations: int = 0, pool: JobPool | None = None,
            seeds: int = 1, heldout_seeds: int | None = None, cross: Mapping[str, tuple[str, ...]] | None = None
            ) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, pd.DataFrame, pd.DataFrame]:
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
        Bootstrap resamples over tasks for the medians' intervals; 0: no intervals at all (neither
        the medians' nor the jackknife intervals over examples of every value).
    seed : int
    chunk_rows : int, optional
        Rows per streamed block of one layer (default: 32 MB per representation).
    ceiling : tuple of str
        Tasks whose control has a second seed C_t' (their rows get `model = "ceiling"` too: CKA(C_t', C_t),
        what two equally trained specialists share; its loss is in controls.csv when it was scored).
    n_permutations : int
        Re-pairings of the examples for every value's permutation null (0: no null).
    pool : JobPool, optional
        Where the tasks run (one job each, the costliest first); default: one after another in this
        process. The tables do not depend on it.
    seeds : int
        Training runs of E (and E'): with 2, the second seeds' rows (`SECOND_SEED`) are computed too, and their
        agreement with the first.
    heldout_seeds : int, optional
        Training runs of E' when they differ from E's (None = `seeds`).
    cross : mapping, optional
        Task -> the tasks whose controls were read on its test prompts (`cross_label`): the rows against them
        and the task's specificity rows (`_specificity`).

    Returns
    -------
    similarity, controls, cross_layer, medians, references : pandas.DataFrame
        `similarity` holds the rows against C_t (`reference` "control"); `references` those against every other
        reference and the specificity rows; results/similarity.* is the long table of both. `medians` holds the
        per-layer median over tasks of the rows against C_t (group "all", and one group per cluster) with
        intervals over tasks (`median_over_tasks`); it is also written to `results/medians.csv`.
    """
    measures = check_measures(measures)
    cross = cross or {}
    second = seeds > 1
    extra = {t: tuple(m for m, among in ((SECOND_SEED["experimental"], tasks if second else ()), (HELDOUT, heldout),
                                         (SECOND_SEED[HELDOUT], heldout if (heldout_seeds or seeds) > 1 else ()),
                                         ("ceiling", ceiling))
                      if t in among) for t in tasks}
    order = sorted(tasks, key=lambda t: -len(extra[t]))  # the tasks with most models first: a shorter tail
    jobs = pool or JobPool()
    futures = {t: jobs.submit(_task_tables, study, t, tasks[t], extra[t], tuple(cross.get(t, ())), measures, n_boot,
                              n_permutations, seed, chunk_rows) for t in order}
    done = {t: f.result() for t, f in futures.items()}
    sim_rows, cross_rows, ref_rows, control_rows, unscored = [], [], [], [], set()
    for task in tasks:
        sims, crosses, refs, control_row, unscored_here = done[task]
        sim_rows += sims
        cross_rows += crosses
        ref_rows += refs
        control_rows.append(control_row)
        unscored |= unscored_here
    sim = pd.DataFrame(sim_rows, columns=SIMILARITY_COLUMNS)
    references = pd.DataFrame(ref_rows, columns=SIMILARITY_COLUMNS)
    controls = pd.DataFrame(control_rows).drop(columns=sorted(unscored))
    controls["control_better"] = controls["control"] < controls["base"]
    cross = pd.DataFrame(cross_rows)
    medians = pd.concat([median_over_tasks(sim, n_boot=n_boot, seed=seed, by_cluster=False),
                         median_over_tasks(sim, n_boot=n_boot, seed=seed, by_cluster=True)], ignore_index=True)
    write_table(pd.concat([sim, references], ignore_index=True) if len(references) else sim,
                study.path("results", "similarity"))
    with atomic_path(study.path("results", "medians.csv")) as tmp:
        medians.to_csv(tmp, index=False)
    with atomic_path(study.path("results", "controls.csv")) as tmp:
        controls.to_csv(tmp, index=False)
    with atomic_path(study.path("results", "layer_by_layer_cka.csv")) as tmp:
        cross.to_csv(tmp, index=False)
    return sim, controls, cross, medians, references


__all__ = ["COMPARED", "CROSS", "DEFAULT_MEASURES", "HELDOUT", "SECOND_SEED", "SIMILARITY_COLUMNS", "VALUES_ONLY",
           "DepthMapped", "align", "aligned_rows", "analyze", "check_measures", "cross_label", "depth_map", "mean_loss",
           "on_grid", "scan", "task_cross_layer", "task_similarity"]
