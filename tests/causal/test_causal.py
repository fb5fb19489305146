"""The causal check and the restricted E's in a whole (tiny) study: the records, the tables, the figure,
and a rerun that redoes nothing."""

import json

import numpy as np
import pandas as pd
import pytest

from mossa.causal import causal_table, layer_ranges, masks, section_ranges, section_verdict
from mossa.config import resolve_config
from mossa.progress import Reporter
from mossa.study import run_study


def test_layer_ranges_and_masks():
    assert layer_ranges((1, 2, 3, 7, 9, 10)) == "1-3,7,9-10" and layer_ranges(()) == "none"
    ranges, source = section_ranges({"transition_found": True, "shared": [1, 4], "transition": [5, 6],
                                     "refinement": [7, 8]}, 8)
    assert ranges == {"shared": (1, 4), "transition": (5, 6), "refinement": (7, 8)} and "found" in source
    thirds, why = section_ranges({"transition_found": False, "reason": "too few tasks"}, 18)
    assert thirds == {"first third": (1, 6), "second third": (7, 12), "last third": (13, 18)}
    assert "no sections were found" in why
    got = {m.name: m.active for m in masks(ranges, 8)}
    assert got == {"only shared": "1-4", "outside shared": "5-8", "only transition": "5-6",
                   "outside transition": "1-4,7-8", "only refinement": "7-8", "outside refinement": "1-6"}


def _record(rows, gold, loglik, nll):
    n = len(rows)
    return {"rows": rows, "target": ["yes"] * n, "nll": nll, "nll_tokens": [1] * n, "nll_no_end": nll,
            "nll_no_end_tokens": [1] * n, "gold": gold, "option_loglik": loglik, "option_chars": [[3, 2]] * n,
            "generated": [None] * n}


def test_causal_table_shares_on_planted_records():
    """E gains 0.8 nats per token over B; the adapter only in 'a' keeps 3/4 of it, outside 'a' 1/4."""
    rng = np.random.default_rng(0)
    n = 40
    rows = list(range(n))
    gold = [int(g) for g in rng.integers(0, 2, n)]
    noise = rng.normal(0, 0.05, n)
    b_nll, e_nll = 2.0 + noise, 1.2 + noise
    hit = [[0.0, -1.0] if g == 0 else [-1.0, 0.0] for g in gold]
    miss = [[-1.0, 0.0] if g == 0 else [0.0, -1.0] for g in gold]

    def rec(nll, right):
        return _record(rows, gold, right, list(nll))

    stored = {"masks": {"only a": {"section": "a", "layers": [1], "evaluation": rec(2.0 - 0.6 + noise, hit)},
                        "outside a": {"section": "a", "layers": [2], "evaluation": rec(2.0 - 0.2 + noise, miss)}},
              "updates": [[0.1] * n, [0.2] * n]}
    records = {("t", "experimental"): rec(e_nll, hit), ("t", "base"): rec(b_nll, miss)}
    table = causal_table({("t", "experimental"): stored}, records, {"t": "NLI"}, n_boot=200, seed=0)
    nll = table[table["metric"] == "nll_per_token"].set_index("mask")
    assert nll.loc["only a", "share"] == pytest.approx(0.75) and nll.loc["outside a", "share"] == pytest.approx(0.25)
    assert nll.loc["only a", "share_low"] < 0.75 < nll.loc["only a", "share_high"]
    assert nll.loc["none", "value"] == pytest.approx(np.mean(b_nll)) and nll.loc["all", "active_layers"] == "1-2"
    acc = table[table["metric"] == "accuracy"].set_index("mask")
    assert acc.loc["only a", "share"] == 1.0 and acc.loc["outside a", "share"] == 0.0
    verdict = section_verdict(table)
    assert verdict["primary"]["carrier"] == "a" and verdict["nll_per_token"]["only"]["a"] == pytest.approx(0.75)
    no_gain = causal_table({("t", "experimental"): stored}, {**records, ("t", "experimental"): rec(b_nll, miss)},
                           {"t": "NLI"}, n_boot=200, seed=0)
    masked = no_gain[~no_gain["mask"].isin(["all", "none"])]
    assert masked["share"].isna().all() and masked["share_reason"].str.contains("not above 0").all()


@pytest.fixture(scope="module")
def causal_study(tiny_model, tmp_path_factory):
    from tests.conftest import write_tiny_tasks

    tasks = write_tiny_tasks(tmp_path_factory.mktemp("tasks"))
    out = tmp_path_factory.mktemp("study") / "s"
    cfg = resolve_config({"model": str(tiny_model), "tasks_dir": tasks, "preset": "quick", "out": out, "n_boot": 20,
                          "n_permutations": 0, "tasks": ["tiny_sentiment", "tiny_struct"], "measures": ["linear_cka"],
                          "tsne_layers": [1], "causal_layers": [[1, 1], [2, 2]], "causal_examples": 6,
                          "causal_tasks": ["tiny_sentiment", "tiny_struct"], "restrict_sections": True,
                          "generate_examples": 4})
    run_study(cfg, reporter=Reporter(quiet=True))
    return cfg, out


def test_study_writes_the_causal_records_tables_and_figure(causal_study):
    _, out = causal_study
    causal = pd.read_csv(out / "results/causal.csv")
    assert set(causal["task"]) == {"tiny_sentiment", "tiny_struct"} and set(causal["model"]) == {"experimental"}
    assert set(causal["mask"]) == {"all", "none", "only layers 1-1", "outside layers 1-1", "only layers 2-2",
                                   "outside layers 2-2"}
    assert (causal["n_examples"] <= 6).all()
    perf = pd.read_csv(out / "results/performance.csv")
    for mask, model in (("none", "base"), ("all", "experimental")):
        mine = causal[(causal["mask"] == mask) & (causal["task"] == "tiny_sentiment") & (causal["metric"] == "accuracy")]
        assert len(mine) == 1 and mine["n_examples"].iloc[0] == 6
    record = json.loads((out / "causal/experimental/tiny_sentiment.json").read_text())
    assert set(record["masks"]) == {"only layers 1-1", "outside layers 1-1", "only layers 2-2", "outside layers 2-2"}
    assert len(record["updates"]) == 2 and len(record["updates"][0]) == 6
    answered = json.loads((out / "causal/experimental/tiny_struct.json").read_text())  # no options: its answered rows
    assert len(answered["updates"][0]) == 4 and len(answered["masks"]["only layers 1-1"]["evaluation"]["rows"]) == 4
    updates = pd.read_csv(out / "results/adapter_updates.csv")
    assert sorted(set(updates["layer"])) == [1, 2] and (updates["median"] >= 0).all()
    verdict = json.loads((out / "results/causal.json").read_text())
    assert verdict["ranges"] == {"layers 1-1": [1, 1], "layers 2-2": [2, 2]}
    assert (out / "figures/causal.png").is_file()
    assert not perf.empty


def test_restricted_e_has_lora_in_its_range_only_and_its_metrics_beside_e(causal_study):
    from safetensors.numpy import load_file

    _, out = causal_study
    for name, block in (("restricted-layers-1-1", 0), ("restricted-layers-2-2", 1)):
        keys = list(load_file(out / "adapters" / name / "adapter_model.safetensors"))
        assert keys and all(f".layers.{block}." in k for k in keys)
    restricted = pd.read_csv(out / "results/restricted.csv")
    assert set(restricted["model"]) == {"experimental", "restricted-layers-1-1", "restricted-layers-2-2"}
    info = json.loads((out / "study.json").read_text())
    assert {"restricted-layers-1-1", "restricted-layers-2-2"} <= set(info["training"])


def test_rerun_redoes_no_causal_record(causal_study):
    cfg, out = causal_study
    path = out / "causal/experimental/tiny_sentiment.json"
    before = path.stat().st_mtime_ns
    run_study(cfg, reporter=Reporter(quiet=True))
    assert path.stat().st_mtime_ns == before
