"""Every table of a finished study, recomputed from its stored activations and evaluation records
(no model): similarity, cross-layer, medians, sections, spectra, correlations, t-SNE, task
performance with the controls' check, the logit lens, the linear probes, the outlier dimensions and
the robustness of the sections to them.

Stage: analysis (reads study.json, activations/ and prompts.jsonl; writes results/). The
figures and the report are drawn from what this returns (`mossa.report`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from mossa.analysis._task_intervals import median_over_tasks
from mossa.analysis._correlations import PROPERTIES, correlations
from mossa.analysis._outliers import outlier_table
from mossa.workers import JobPool, choose_workers
from mossa.analysis._robustness import robustness
from mossa.analysis._sections import layer_sections
from mossa.analysis._similarity import (
    COMPARED,
    DEFAULT_MEASURES,
    HELDOUT,
    SECOND_SEED,
    analyze,
    check_measures,
    on_grid,
    write_table,
)
from mossa.analysis._spectra import spectral_table
from mossa.analysis._tsne import check_tsne_layers, default_tsne_layers, tsne_of_runs
from mossa.errors import MossaError
from mossa.evaluation import control_check, performance_table
from mossa.lens import lens_table
from mossa.probes import probe_table, prompt_labels, write_probes
from mossa.store import StudyDir, atomic_path, read_json, write_json

EXPERIMENTAL = "experimental"
CEILING = "ceiling"
EVALUATED = ("base", EXPERIMENTAL, "control", HELDOUT, CEILING)  # every model label a study may have
LEARNED_RULE = ("a control has learned its task when its primary metric beats B's on the same evaluated test prompts "
                "with a paired 95% bootstrap interval of the gain above 0")


@dataclass
class StudyTables:
    """What `analyze_study` computed: the tables (also written to results/) and what the figures need."""

    root: Path
    title: str
    similarity: pd.DataFrame
    controls: pd.DataFrame
    cross_layer: pd.DataFrame
    medians: pd.DataFrame
    sections: dict
    spectral: pd.DataFrame
    tsne: pd.DataFrame
    correlations: pd.DataFrame | None
    performance: pd.DataFrame
    lens: pd.DataFrame
    probes: pd.DataFrame
    heldout: tuple[str, ...]
    heldout_medians: pd.DataFrame | None
    references: pd.DataFrame | None = None  # the long table's rows against other references, and specificity
    outliers: pd.DataFrame | None = None  # results/outliers.csv
    robustness: dict = field(default_factory=dict)  # results/robustness.json
    timings: dict = field(default_factory=dict)


def _provenance(study: StudyDir, provenance: dict | None) -> dict:
    if provenance is not None:
        return provenance
    path = study.path("study.json")
    if not path.is_file():
        raise MossaError(f"{path}: not found; STUDY_DIR must be a folder written by `mossa run`")
    provenance = read_json(path)
    if provenance.get("status") != "complete":
        raise MossaError(f"{path}: the study is not complete (status {provenance.get('status')!r}); rerun "
                         f"`mossa run` with the same --out first")
    return provenance


def evaluation_records(study: StudyDir, tasks: list[str]) -> dict[tuple[str, str], dict | None]:
    """(task, model) -> the stored evaluation record of every activation folder the study has (None
    for a folder written without one: states only, or by an earlier version)."""
    out = {}
    for task in tasks:
        for model in EVALUATED:
            if (study.activation_dir(model, task) / "meta.json").is_file():
                out[(task, model)] = study.activation_file(model, task, verify=False).evaluation
    return out


def _control_table(controls: pd.DataFrame, check: pd.DataFrame) -> pd.DataFrame:
    """controls.csv: each control's test loss next to B's (as before) and its task metric check."""
    if check.empty:
        return controls
    check = check.rename(columns={"metric": "task_metric", "base": "metric_base", "control": "metric_control",
                                  "ci_low": "gain_low", "ci_high": "gain_high", "n_examples": "n_evaluated",
                                  "interval": "gain_interval"}).drop(columns=["cluster"])
    return controls.merge(check, on="task", how="left")


def analyze_study(root: Path, *, measures: tuple[str, ...] = DEFAULT_MEASURES, n_boot: int | None = None,
                  n_permutations: int | None = None, tsne_layers: list[int] | None = None,
                  workers: int | str | None = None, probe_examples: int | None | str = "config",
                  provenance: dict | None = None, log=None) -> StudyTables:
    """Recompute and write every table of a study from its stored activations (no model).

    `workers` (default: the study's `analysis_workers`) sets the analysis processes; the tables do
    not depend on it. `probe_examples` (default: the study's) caps the test prompts per task the
    probes are fitted on (None = all).

    Raises
    ------
    MossaError
        When the folder is not a study, an activation file is missing, or a measure is unknown.
    """
    measures = check_measures(measures)
    study = StudyDir(Path(root))
    provenance = _provenance(study, provenance)
    try:
        clusters = {task: info["cluster"] for task, info in provenance["tasks"].items()}
        title = provenance["model"]["name"]
        heldout = tuple(provenance.get("heldout_tasks", ()))
        ceiling = tuple(provenance.get("ceiling_tasks", ()))
        seeds = max(1, len(provenance.get("experimental_seeds", ())))
        held_seeds = int(provenance.get("heldout_seeds", seeds))
        cross = {t: tuple(s) for t, s in provenance.get("cross_tasks", {}).get("chosen", {}).items()}
        config = provenance["config"]
        seed = int(config.get("seed", 0))
        n_boot = int(config.get("n_boot", 200)) if n_boot is None else n_boot
        n_permutations = int(config.get("n_permutations", 200)) if n_permutations is None else n_permutations
        n_layers = int(provenance["model"]["n_layers"])
        tsne_layers = tsne_layers or config.get("tsne_layers") or default_tsne_layers(n_layers)
        workers = config.get("analysis_workers", "auto") if workers is None else workers
        probe_examples = config.get("probe_examples") if probe_examples == "config" else probe_examples
        work = sum(int(info.get("n_test", 0)) * (n_layers + 1)
                   * (len(COMPARED) * seeds + (t in heldout) * held_seeds + (t in ceiling) + len(cross.get(t, ())))
                   for t, info in provenance["tasks"].items())
    except (KeyError, TypeError, AttributeError, ValueError):
        raise MossaError(f"{study.path('study.json')}: missing 'tasks', 'model' or 'config'; not a mossa study "
                         f"file") from None
    if n_boot < 0:
        raise MossaError(f"--n-boot must be 0 or more, got {n_boot}")
    if n_permutations < 0:
        raise MossaError(f"--n-permutations must be 0 or more, got {n_permutations}")
    if probe_examples is not None and (isinstance(probe_examples, bool) or not isinstance(probe_examples, int)
                                       or probe_examples < 2):
        raise MossaError(f"--probe-examples must be an integer of 2 or more, got {probe_examples!r}")
    check_tsne_layers(list(tsne_layers), n_layers, where="--tsne-layers")  # before any table is recomputed
    workers = choose_workers(workers, work, jobs=len(clusters))
    timings = {}
    t0 = time.perf_counter()
    labels_path = study.path("prompts.jsonl")
    labels = prompt_labels(labels_path) if labels_path.is_file() else {}
    with JobPool(workers) as pool:
        sim, controls, cross_layer, medians, references = analyze(
            study, clusters, measures=measures, heldout=heldout, n_boot=n_boot, seed=seed, ceiling=ceiling,
            n_permutations=n_permutations, pool=pool, seeds=seeds, heldout_seeds=held_seeds, cross=cross)
        runs = {m: {t: on_grid({m: study.activation_file(m, t, verify=False)}, n_layers + 1)[m] for t in clusters}
                for m in ("base", EXPERIMENTAL)}
        tsne = tsne_of_runs(runs, clusters, list(tsne_layers), seed=seed, n_threads=1, pool=pool)
        probe_models = {t: ["base", EXPERIMENTAL, "control", *([HELDOUT] if t in heldout else [])] for t in labels}
        t1 = time.perf_counter()
        probes = probe_table(study.root, labels, probe_models, clusters, seed=seed, pool=pool,
                             max_examples=probe_examples)
        timings["probes"] = time.perf_counter() - t1
        t1 = time.perf_counter()
        outliers = outlier_table(study, clusters, heldout=heldout, ceiling=ceiling, pool=pool)
        timings["outliers"] = time.perf_counter() - t1
    with atomic_path(study.path("results", "outliers.csv")) as tmp:
        outliers.to_csv(tmp, index=False)
    write_probes(probes, study.root)
    t1 = time.perf_counter()
    records = evaluation_records(study, list(clusters))
    performance = performance_table(records, clusters, n_boot=n_boot, seed=seed)
    write_table(performance, study.path("results", "performance"))
    controls = _control_table(controls, control_check(records, clusters, n_boot=n_boot, seed=seed))
    with atomic_path(study.path("results", "controls.csv")) as tmp:
        controls.to_csv(tmp, index=False)
    lens = lens_table(records, clusters)
    with atomic_path(study.path("results", "lens.csv")) as tmp:
        lens.to_csv(tmp, index=False)
    timings["evaluation"] = time.perf_counter() - t1
    spectral = spectral_table(study, clusters, threshold=float(config.get("variance_threshold", 0.99)), seed=seed)
    with atomic_path(study.path("results", "spectral.csv")) as tmp:
        spectral.to_csv(tmp, index=False)
    props = pd.DataFrame({t: info.get("properties", {}) for t, info in provenance["tasks"].items()}).T
    corr = correlations(sim, props) if set(PROPERTIES) <= set(props.columns) else None
    if corr is not None:
        with atomic_path(study.path("results", "correlations.csv")) as tmp:
            corr.to_csv(tmp, index=False)
    sections = {**layer_sections(sim, n_boot=n_boot, seed=seed, second_seed=SECOND_SEED[EXPERIMENTAL]),
                HELDOUT: layer_sections(sim[sim["task"].isin(heldout)], model=HELDOUT, n_boot=n_boot, seed=seed,
                                        second_seed=SECOND_SEED[HELDOUT])
                if heldout else {"transition_found": False, "reason": "no tasks were held out"}}
    write_json(study.path("results", "sections.json"), sections)
    t1 = time.perf_counter()
    robust = robustness(sim, sections, outliers, n_boot=n_boot, seed=seed, second_seed=SECOND_SEED[EXPERIMENTAL])
    write_json(study.path("results", "robustness.json"), robust)
    timings["robustness"] = time.perf_counter() - t1
    with atomic_path(study.path("results", "tsne.csv")) as tmp:
        tsne.to_csv(tmp, index=False)
    timings["analyze"] = time.perf_counter() - t0
    if log:
        log(f"analysis: {len(measures)} measures, {len(clusters)} tasks, tables in {study.path('results')}")
    return StudyTables(root=study.root, title=title, similarity=sim, controls=controls, cross_layer=cross_layer,
                       medians=medians, sections=sections, spectral=spectral, tsne=tsne, correlations=corr,
                       performance=performance, lens=lens, probes=probes, heldout=heldout,
                       heldout_medians=median_over_tasks(sim[sim["task"].isin(heldout)], n_boot=n_boot, seed=seed,
                                                         by_cluster=False) if heldout else None, outliers=outliers,
                       robustness=robust, timings=timings, references=references)


def not_learned(controls: pd.DataFrame) -> list[str]:
    """The tasks whose control did not learn by `LEARNED_RULE` (a task without a check is listed too)."""
    if "learned" not in controls.columns:
        return []
    return [str(t) for t, ok in zip(controls["task"], controls["learned"]) if not (isinstance(ok, (bool, np.bool_))
                                                                                   and ok)]
