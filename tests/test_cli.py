"""The whole `mossa run` pipeline on a tiny model and two tiny tasks, and its user errors."""

import json
import subprocess
import sys

import pandas as pd
import pytest

from mossa.cli import main
from mossa.store import StudyDir

OUTPUTS = ["results/similarity.parquet", "results/similarity.csv", "results/controls.csv", "results/medians.csv",
           "results/spectral.csv", "results/correlations.csv", "results/sections.json",
           "results/layer_by_layer_cka.csv", "figures/cka_by_layer.png", "figures/cka_by_cluster.png",
           "figures/layer_by_layer_cka.png", "figures/variance_dims.png", "figures/correlations.png",
           "figures/tsne_layers.png", "results/tsne.csv", "results/outliers.csv", "results/robustness.json",
           "figures/outliers.png", "study.json"]


def _run(tiny_model, tiny_tasks, out, *extra):
    return main(["run", "--model", str(tiny_model), "--tasks-dir", str(tiny_tasks), "--preset", "quick",
                 "--tasks", "tiny_sentiment,tiny_struct", "--out", str(out), *extra])


def test_pipeline_writes_every_output(tiny_model, tiny_tasks, tmp_path, capsys):
    out = tmp_path / "study"
    assert _run(tiny_model, tiny_tasks, out) == 0
    for rel in OUTPUTS:
        assert (out / rel).is_file(), rel
    full = pd.read_parquet(out / "results/similarity.parquet")
    assert {"task", "cluster", "model", "reference", "layer", "measure", "value", "n_examples"} <= set(full.columns)
    assert set(full["reference"]) == {"control", "cross-tiny_sentiment", "cross-tiny_struct", "specificity"}
    assert set(full.loc[full["reference"] == "specificity", "measure"]) == {"linear_cka", "debiased_cka"}
    sim = full[full["reference"] == "control"]
    assert set(sim["model"]) == {"base", "experimental"}
    assert set(sim["task"]) == {"tiny_sentiment", "tiny_struct"}
    assert sorted(sim["layer"].unique()) == [0, 1, 2]
    from mossa.analysis import DEFAULT_MEASURES

    assert set(sim["measure"]) == set(DEFAULT_MEASURES)
    layer0 = sim[sim["layer"] == 0]
    assert layer0["value"].isna().all() and (layer0["undefined_reason"] != "").all()
    sim = sim[sim["measure"] == "linear_cka"]
    assert sim[sim["layer"] == 0]["undefined_reason"].str.contains("not vary across examples").all()
    upper = sim[sim["layer"] > 0]
    assert upper["value"].between(0, 1).all() and (upper["undefined_reason"].fillna("") == "").all()
    assert (upper["ci_low"] <= upper["value"] + 1e-12).all() and (upper["value"] <= upper["ci_high"] + 1e-12).all()
    sections = json.loads((out / "results/sections.json").read_text())
    assert sections["transition_found"] is False and "layers without NaN, got 2" in sections["reason"]
    robust = json.loads((out / "results/robustness.json").read_text())
    assert robust["sentence"] and all(v["sentence"] and v["computed"] for v in robust["variants"].values())
    assert set(pd.read_csv(out / "results/outliers.csv")["model"]) == {"base", "experimental", "control"}
    spectral = pd.read_csv(out / "results/spectral.csv")
    assert set(spectral["model"]) == {"base", "experimental", "control"} and (spectral["dims_for_variance"] <= 11).all()
    corr = pd.read_csv(out / "results/correlations.csv")
    assert corr["r"].isna().all() and corr["reason"].str.contains(r"only \d tasks|no task with a defined value").all()
    assert (sim["n_examples"] == 12).all()
    controls = pd.read_csv(out / "results/controls.csv")
    assert list(controls.columns[:4]) == ["task", "metric", "base", "control"]
    study = json.loads((out / "study.json").read_text())
    assert study["status"] == "complete" and study["model"]["n_layers"] == 2
    assert set(study["seconds"]) >= {"load_model", "train", "extract", "analyze", "total"}
    assert "median linear CKA" in capsys.readouterr().out
    full = pd.read_parquet(out / "results/similarity.parquet")
    pd.testing.assert_frame_equal(pd.read_csv(out / "results/similarity.csv"),
                                  full.replace({"undefined_reason": {"": float("nan")}, "ci_method": {"": float("nan")}}),
                                  check_dtype=False)


def test_analyze_rewrites_tables_and_figures_without_a_model(tiny_model, tiny_tasks, tmp_path, capsys):
    out = tmp_path / "study"
    assert _run(tiny_model, tiny_tasks, out, "--measures", "linear_cka") == 0
    before = pd.read_parquet(out / "results/similarity.parquet")
    for rel in ("results", "figures"):
        for f in (out / rel).iterdir():
            f.unlink()

    assert main(["analyze", str(out), "--measures", "linear_cka,procrustes_distance"]) == 0
    after = pd.read_parquet(out / "results/similarity.parquet")
    pd.testing.assert_frame_equal(after[after["measure"] == "linear_cka"].reset_index(drop=True), before)
    assert set(after["measure"]) == {"linear_cka", "procrustes_distance"}
    for fig in ("cka_by_layer.png", "cka_by_cluster.png", "layer_by_layer_cka.png"):
        assert (out / "figures" / fig).stat().st_size > 10_000
    cross = pd.read_csv(out / "results/layer_by_layer_cka.csv")
    assert set(cross["model"]) == {"base", "experimental"} and cross["control_layer"].max() == 2


def test_analyze_errors(tmp_path, tiny_model, tiny_tasks, capsys):
    assert main(["analyze", str(tmp_path)]) == 2
    assert "study.json: not found" in capsys.readouterr().err
    out = tmp_path / "study"
    assert _run(tiny_model, tiny_tasks, out, "--measures", "linear_cka") == 0
    assert main(["analyze", str(out), "--measures", "cka_lin"]) == 2
    assert "unknown measure 'cka_lin'" in capsys.readouterr().err


def test_rerun_reuses_units_and_gives_the_same_table(tiny_model, tiny_tasks, tmp_path):
    out = tmp_path / "study"
    assert _run(tiny_model, tiny_tasks, out) == 0
    first = pd.read_parquet(out / "results/similarity.parquet")
    stamps = {p: p.stat().st_mtime_ns for p in out.glob("activations/*/*/acts.npy")}
    assert _run(tiny_model, tiny_tasks, out) == 0
    assert {p: p.stat().st_mtime_ns for p in out.glob("activations/*/*/acts.npy")} == stamps
    pd.testing.assert_frame_equal(pd.read_parquet(out / "results/similarity.parquet"), first)
    assert _run(tiny_model, tiny_tasks, out, "--seed", "3") == 0  # new inputs: recomputed
    assert {p: p.stat().st_mtime_ns for p in out.glob("activations/*/*/acts.npy")} != stamps


def _bad_jsonl(tiny_tasks):
    path = tiny_tasks / "tiny_struct.jsonl"
    path.write_text(path.read_text() + '{"input": {"meaning_representation": "x"}, "target": \n')
    return path


@pytest.mark.parametrize("case, message", [
    ("no_dir", r"nonexistent: task folder not found"),
    ("bad_line", r"tiny_struct\.jsonl:\d+: not valid JSON"),
    ("unknown_task", r"unknown task 'nope'"),
    ("unknown_model", r"unknown model 'no-such-model'"),
    ("bad_value", r"field 'n_test'"),
    ("unknown_measure", r"unknown measure 'svcaa'.*did you mean svcca"),
])
def test_user_errors_exit_2_with_one_line_and_leave_nothing(case, message, tiny_model, tiny_tasks, tmp_path):
    out = tmp_path / "study"
    args = ["run", "--model", str(tiny_model), "--tasks-dir", str(tiny_tasks), "--preset", "quick",
            "--tasks", "tiny_sentiment,tiny_struct", "--out", str(out)]
    if case == "no_dir":
        args[4] = "/nonexistent"
    elif case == "bad_line":
        _bad_jsonl(tiny_tasks)
    elif case == "unknown_task":
        args[8] = "tiny_sentiment,nope"
    elif case == "unknown_model":
        args[2] = "no-such-model"
    elif case == "bad_value":
        args += ["--n-test", "0"]
    elif case == "unknown_measure":
        args += ["--measures", "linear_cka,svcaa"]
    proc = subprocess.run([sys.executable, "-m", "mossa.cli", *args], capture_output=True, text=True,
                          env={**__import__("os").environ, "COLUMNS": "400"})
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mossa: error:"), proc.stderr
    assert "Traceback" not in proc.stderr
    import re

    assert re.search(message, lines[0]), lines[0]
    assert not out.exists()


def test_lists(tiny_tasks, capsys):
    assert main(["tasks", "list", "--tasks-dir", str(tiny_tasks)]) == 0
    assert "tiny_sentiment" in capsys.readouterr().out
    assert main(["models", "list"]) == 0
    assert "gemma-3-270m" in capsys.readouterr().out


def test_click_usage_error_is_one_line(capsys):
    assert main(["run", "--seed", "abc"]) == 2
    assert "mossa: error:" in capsys.readouterr().err


def test_heldout_experiment(tiny_model, tiny_tasks, tmp_path):
    out = tmp_path / "study"
    assert _run(tiny_model, tiny_tasks, out, "--holdout", "tiny_struct", "--measures", "linear_cka",
                "--ceiling-tasks", "tiny_struct") == 0
    full = pd.read_parquet(out / "results/similarity.parquet")
    sim = full[full["reference"] == "control"]
    held = sim[sim["model"] == "heldout"]
    assert set(held["task"]) == {"tiny_struct"} and len(held) == 3
    spec = full[(full["reference"] == "specificity") & (full["task"] == "tiny_struct")]
    assert set(spec["model"]) == {"base", "experimental", "heldout", "ceiling"}  # C_t': the control's own
    assert set(sim.loc[sim["model"] == "ceiling", "task"]) == {"tiny_struct"}  # every figure drawn beside them
    assert (out / "figures/heldout_cka_by_layer.png").is_file()
    study = json.loads((out / "study.json").read_text())
    assert study["heldout_tasks"] == ["tiny_struct"]
    assert study["training"]["heldout"]["examples_seen"] == study["training"]["control-tiny_sentiment"]["examples_seen"]
    controls = pd.read_csv(out / "results/controls.csv")
    assert controls.set_index("task")["heldout"].notna().to_dict() == {"tiny_sentiment": False, "tiny_struct": True}
    assert "ceiling" not in controls  # C_t' is not evaluated unless evaluate_ceiling: its states serve the ceiling
    assert controls["learned"].isin([True, False]).all() and controls["task_metric"].tolist() == ["accuracy", "rougeL"]
    performance = pd.read_csv(out / "results/performance.csv")
    models = performance.groupby("task")["model"].unique().map(set).to_dict()
    assert models == {"tiny_sentiment": {"base", "experimental", "control"},
                      "tiny_struct": {"base", "experimental", "control", "heldout"}}
    assert {"accuracy", "accuracy_norm", "rougeL", "exact_match", "bleu", "chrf", "nll_per_token",
            "nll_per_token_no_end"} <= set(performance["metric"])
    lens, probes = pd.read_csv(out / "results/lens.csv"), pd.read_csv(out / "results/probes.csv")
    assert len(lens) == 7 * 3 and set(probes["task"]) == {"tiny_sentiment"}  # 7 (task, model) x 3 layers
    assert (out / "figures/answer_by_layer.png").is_file() and (out / "figures/probes_by_layer.png").is_file()
    report = (out / "report.html").read_text()
    assert "Task performance" in report and "Through the logit lens" in report and "linear probes read" in report


def test_holdout_errors(tiny_model, tiny_tasks, tmp_path, capsys):
    assert _run(tiny_model, tiny_tasks, tmp_path / "a", "--holdout", "tiny_sentiment,tiny_struct") == 2
    assert "holds out every task" in capsys.readouterr().err
    assert _run(tiny_model, tiny_tasks, tmp_path / "b", "--holdout", "sst2") == 2
    assert "field 'holdout': sst2 not among" in capsys.readouterr().err
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_same_seed_gives_bit_identical_tables(tiny_model, tiny_tasks, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    assert _run(tiny_model, tiny_tasks, a, "--measures", "linear_cka") == 0
    assert _run(tiny_model, tiny_tasks, b, "--measures", "linear_cka") == 0
    pa, pb = pd.read_parquet(a / "results/similarity.parquet"), pd.read_parquet(b / "results/similarity.parquet")
    assert pa.equals(pb)  # same values bit for bit, NaNs in the same places


def test_corrupted_shard_is_recomputed_on_rerun(tiny_model, tiny_tasks, tmp_path):
    out = tmp_path / "s"
    assert _run(tiny_model, tiny_tasks, out, "--measures", "linear_cka") == 0
    first = pd.read_parquet(out / "results/similarity.parquet")
    shard = out / "activations/base/tiny_struct/acts.npy"
    data = bytearray(shard.read_bytes())
    data[-40] ^= 0xFF
    shard.write_bytes(bytes(data))
    assert _run(tiny_model, tiny_tasks, out, "--measures", "linear_cka") == 0
    inputs = json.loads((shard.parent / "meta.json").read_text())["inputs"]
    assert StudyDir(out).activations_done("base", "tiny_struct", inputs)  # rewritten, hash checks
    pd.testing.assert_frame_equal(pd.read_parquet(out / "results/similarity.parquet"), first)


@pytest.mark.parametrize("flags, message", [
    (["--executor", "dask"], r"field 'executor': .*unknown executor 'dask'.*\(available: local, ray\)"),
    (["--ray-address", "auto"], r"field 'ray_address': .*only used with executor 'ray'"),
    (["--executor", "ray", "--cpus-per-unit", "0"], r"field 'cpus_per_unit'"),
])
def test_bad_executor_settings_exit_2_with_one_line(flags, message, tiny_model, tiny_tasks, tmp_path, capsys):
    out = tmp_path / "study"
    assert _run(tiny_model, tiny_tasks, out, *flags) == 2
    err = capsys.readouterr().err
    import re

    assert err.count("\n") == 1 and err.startswith("mossa: error:") and re.search(message, err), err
    assert not out.exists()
