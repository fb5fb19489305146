"""The tables of the causal check and of the restricted E's, from the records the study stored: what each
layer range of E's adapter keeps of E's gain over B (results/causal.csv, causal.json), the adapter's
update per block (results/adapter_updates.csv), and the task metrics of each E trained on one range only
beside E's (results/restricted.csv).

Stage: analysis (reads causal/ and activations/ from the store and results/sections.json; writes results/).
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from mossa.causal import causal_table, section_ranges, section_verdict, update_table
from mossa.analysis._study import evaluation_records
from mossa.evaluation import performance_table
from mossa.store import StudyDir, atomic_path, read_json, write_json

EXPERIMENTAL = "experimental"
RESTRICTED = "restricted-"


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
