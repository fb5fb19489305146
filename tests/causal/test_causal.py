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
    only_a = nll.loc["only a"]  # constant differences over examples: the paired interval is the point itself
    assert only_a["share_low"] == pytest.approx(0.75) and only_a["share_high"] == pytest.approx(0.75)
    assert nll.loc["none", "value"] == pytest.approx(np.mean(b_nll)) and nll.loc["all", "active_layers"] == "1-2"
    acc = table[table["metric"] == "accuracy"].set_index("mask")
    assert acc.loc["only a", "share"] == 1.0 and acc.loc["outside a", "share"] == 0.0
    verdict = section_verdict(table)
    assert verdict["primary"]["carriers"] == {"a": ["t"]}
    assert verdict["nll_per_token"]["only"]["a"] == pytest.approx(0.75)
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


def test_gain_share_test_is_fieller_on_a_paired_t_test():
    """For a mean the share's interval is the set of shares s whose contrast d_masked - s d_E a paired t test
    does not reject, and the tests against one half are one-sided paired t tests (scipy's, independently)."""
    from scipy import stats as sps

    from mossa.causal import gain_share_test
    from mossa.evaluation._metrics import mean_scores

    rng = np.random.default_rng(3)
    n = 40
    z = rng.normal(size=n)
    b, e, m = (z + rng.normal(0, 0.5, n) + shift for shift in (0.0, 1.0, 0.7))
    rows = np.arange(n)
    test = gain_share_test(*(mean_scores("rougeL", rows, v) for v in (b, e, m)), lower_better=False)
    assert test.reason == "" and test.share == pytest.approx((m.mean() - b.mean()) / (e.mean() - b.mean()))
    q = sps.t.ppf(0.975, n - 1)
    for bound in (test.low, test.high):
        d = (m - b) - bound * (e - b)
        assert abs(d.mean() / (d.std(ddof=1) / np.sqrt(n))) == pytest.approx(q)
    assert test.low < test.share < test.high
    half = (m - b) - 0.5 * (e - b)
    assert test.above_p == pytest.approx(sps.ttest_1samp(half, 0, alternative="greater").pvalue)
    assert test.below_p == pytest.approx(sps.ttest_1samp(half, 0, alternative="less").pvalue)
    assert test.gain_p == pytest.approx(sps.ttest_1samp(e - b, 0, alternative="greater").pvalue)
    lower = gain_share_test(*(mean_scores("nll", rows, -v) for v in (b, e, m)), lower_better=True)
    assert lower.share == pytest.approx(test.share) and lower.low == pytest.approx(test.low)
    weak = gain_share_test(*(mean_scores("rougeL", rows, v) for v in (b, b + np.where(rows % 2, 1.0, -0.9), m)),
                           lower_better=False)  # E's gain 0.05, t 0.3: no share
    assert np.isnan(weak.share) and np.isnan(weak.low) and weak.reason.startswith("gain over B is not above 0")


def test_holm_adjusts_step_down():
    from mossa.causal import holm

    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([np.nan, 0.001]) == pytest.approx([1.0, 0.002])


RANGES3 = ("a", "b", "c")


def _option_record(n, right):
    """An option record of n examples: right (a set of rows) answered correctly, the NLL the same for all."""
    gold = [0] * n
    loglik = [[0.0, -1.0] if i in right else [-1.0, 0.0] for i in range(n)]
    return _record(list(range(n)), gold, loglik, [2.0 + 0.01 * (i % 3) for i in range(n)])


def _verdict_of(tasks: dict[str, dict[str, set]], n: int):
    """causal.csv and its verdict for tasks whose models get these rows right: keys 'base', 'experimental',
    'only a', 'outside a', ... (E's adapter on 'a' = layer 1, 'b' = 2, 'c' = 3)."""
    stored, records = {}, {}
    for task, right in tasks.items():
        masks_ = {f"{kind} {r}": {"section": r, "layers": [k + 1] if kind == "only" else
                                  [j + 1 for j in range(3) if j != k],
                                  "evaluation": _option_record(n, right[f"{kind} {r}"])}
                  for k, r in enumerate(RANGES3) for kind in ("only", "outside")}
        stored[(task, "experimental")] = {"masks": masks_, "updates": [[0.1] * n] * 3}
        records[(task, "experimental")] = _option_record(n, right["experimental"])
        records[(task, "base")] = _option_record(n, right["base"])
    table = causal_table(stored, records, dict.fromkeys(tasks, "NLI"), n_boot=50, seed=0)
    verdict = section_verdict(table)
    verdict.update(ranges={"a": [1, 1], "b": [2, 2], "c": [3, 3]}, source="three test ranges")
    return table, verdict


def _rights(only: dict[str, int], outside: dict[str, int], n: int) -> dict[str, set]:
    """B right on none, E on all; each masked run right on its first k rows (k per range)."""
    out = {"base": set(), "experimental": set(range(n))}
    out.update({f"only {r}": set(range(k)) for r, k in only.items()})
    out.update({f"outside {r}": set(range(n - k, n)) for r, k in outside.items()})
    return out


def test_a_planted_carrier_is_found_and_an_even_spread_names_none():
    """Accuracy, E right on every example and B on none. t1: only a keeps 112 of 120 examples, b and c 8,
    without a 12 are kept: a carries the gain. t2: each range alone keeps a third, without any range two
    thirds are kept: the gain is spread, no range is named. The NLL is the same for every model: nothing to
    test there."""
    from mossa.report._summary import causal_sentence

    n = 120
    table, verdict = _verdict_of({"t1": _rights({"a": 112, "b": 8, "c": 8}, {"a": 12, "b": 114, "c": 114}, n),
                                  "t2": _rights(dict.fromkeys(RANGES3, 40), dict.fromkeys(RANGES3, 80), n)}, n)
    primary = verdict["primary"]
    assert primary["carriers"] == {"a": ["t1"]} and primary["spread"] == ["t2"] and verdict["carriers"] == ["a"]
    t1 = primary["tasks"]["t1"]
    assert t1["status"] == "carried" and t1["p_holm"]["a"] <= 0.05 and t1["only"]["a"]["low"] >= 0.5
    assert t1["outside"]["a"]["high"] < 0.5 and all(t1["only"][r]["high"] < 0.5 for r in ("b", "c"))
    assert primary["tasks"]["t2"]["carrier"] is None and primary["tasks"]["t2"]["p_holm"]["spread"] <= 0.05
    assert verdict["nll_per_token"]["not_tested"] == ["t1", "t2"] and verdict["n_claims"] == 2 * 2 * 4
    json.dumps(verdict, allow_nan=False)  # results/causal.json is plain JSON
    said = causal_sentence(verdict)
    assert "finds E's gain over B carried by its adapter in layer 1 (a)" in said
    assert "layer 1 (a) carries it on t1: the a alone keeps 0.93 [" in said
    assert "no single range carries it on t2" in said
    assert "By the NLL per target token nothing could be tested (experimental's gain over B is not above 0" in said


def test_a_point_estimate_above_half_is_no_carrier_without_its_corrected_test():
    """At 30 examples, a alone keeps 20 (0.67), b and c 5, without a 8 are kept: the point estimates would name a
    (the rule before intervals), and a's claim passes at p < 0.05 uncorrected, but not after Holm's correction
    over the 8 claims; a noisier spread (a alone 17 of 30) is undetermined too."""
    from mossa.report._summary import causal_sentence

    n = 30
    _, verdict = _verdict_of({"t": _rights({"a": 20, "b": 5, "c": 5}, {"a": 8, "b": 25, "c": 25}, n)}, n)
    check = verdict["primary"]["tasks"]["t"]
    assert check["only"]["a"]["share"] > 0.5 > check["outside"]["a"]["share"]
    assert check["p"]["a"] < 0.05 < check["p_holm"]["a"]
    assert check["status"] == "undetermined" and verdict["carriers"] == [] and "too wide" in check["reason"]
    _, noisy = _verdict_of({"t": _rights({"a": 17, "b": 9, "c": 9}, {"a": 13, "b": 21, "c": 21}, n)}, n)
    assert noisy["carriers"] == [] and noisy["primary"]["undetermined"] == ["t"]
    said = causal_sentence(noisy)
    assert said.startswith("The causal check (E's adapter on in one layer range only")
    assert "finds no layer range" in said
    assert "undetermined, the intervals too wide, on t: the a alone keeps 0.57 [" in said


def test_nothing_tested_is_said_so():
    """E no better than B anywhere: no share, every task 'not tested', and the sentence says why."""
    from mossa.report._summary import causal_sentence

    n = 30
    same = {"base": set(range(10)), "experimental": set(range(10)),
            **{f"{k} {r}": set(range(10)) for r in RANGES3 for k in ("only", "outside")}}
    table, verdict = _verdict_of({"t": same}, n)
    masked = table[~table["mask"].isin(["all", "none"])]
    assert masked["share"].isna().all() and not verdict["stated"]
    assert verdict["primary"]["not_tested"] == ["t"] and verdict["primary"]["n_tested"] == 0
    said = causal_sentence(verdict)
    assert "could test nothing" in said and "gain over B is not above 0" in said
