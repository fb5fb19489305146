"""`mossa plan`: a study's cost counted before it runs equals what the run then does; a study the disk cannot
hold is refused; a paper-scale plan works offline from a config and the hub table's stated sizes."""

import json
import shutil

import pytest

from mossa.cli import main
from mossa.config import resolve_config
from mossa.errors import MossaError
from mossa.plan import GPUS, STAGES, plan_study
from mossa.progress import Reporter
from mossa.study import run_study

# The plan's time on this machine against the run's measured train and extract seconds, on the tiny model
# (where per-unit overheads the calibration does not see weigh most): the stated bound (docs/plan.md).
TIME_FACTOR = 3.0


def _config(tiny_model, tiny_tasks, out, **extra):
    return resolve_config({"model": str(tiny_model), "tasks_dir": tiny_tasks, "preset": "quick",
                           "tasks": ["tiny_sentiment", "tiny_struct"], "out": out, "measures": ["linear_cka"],
                           "threads": 1, "ceiling_tasks": ["tiny_sentiment"], "holdout": ["tiny_struct"],
                           "n_permutations": 0, "n_boot": 0, **extra})


def _stored_bytes(root):
    return sum(f.stat().st_size for f in (root / "activations").rglob("*.npy"))


@pytest.mark.parametrize("store", ["float32", "float16"])
def test_the_plans_counts_are_what_the_run_writes(tiny_model, tiny_tasks, tmp_path, monkeypatch, store):
    cfg = _config(tiny_model, tiny_tasks, tmp_path / "study", activation_dtype=store)
    plan = plan_study(cfg)
    assert not (tmp_path / "study").exists()  # planning writes nothing
    monkeypatch.setattr("mossa.plan._free_bytes", lambda root: (root, 0))  # a full disk: told to go on anyway
    run_study(cfg, reporter=Reporter(quiet=True), ignore_disk_space=True)
    study = json.loads((tmp_path / "study" / "study.json").read_text())
    tokens: dict[str, int] = {}
    for unit, log in study["training"].items():
        kind = study["units"][unit]["kind"]
        tokens[kind] = tokens.get(kind, 0) + log["tokens"]
    planned = {k.kind: k.train_tokens for k in plan.kinds if k.train_tokens}
    assert planned == tokens and set(tokens) == {"control", "ceiling", "experimental", "heldout"}
    assert plan.total.activation_bytes == _stored_bytes(tmp_path / "study")
    assert plan.disk["needed"] == plan.total.activation_bytes
    steps = {k.kind: k.steps for k in plan.kinds if k.steps}
    assert steps == {kind: sum(log["steps"] for unit, log in study["training"].items()
                               if study["units"][unit]["kind"] == kind) for kind in steps}
    measured = study["seconds"]["train"] + study["seconds"]["extract"]
    estimated = sum(plan.machine["seconds"][s] for s in STAGES[:3])
    assert plan.machine["calibration"] == "the model's own passes"
    assert measured / TIME_FACTOR <= estimated <= measured * TIME_FACTOR, (estimated, measured)


def test_a_rerun_plans_only_what_is_not_stored(tiny_model, tiny_tasks, tmp_path):
    cfg = _config(tiny_model, tiny_tasks, tmp_path / "study", ceiling_tasks="none", holdout="none")
    run_study(cfg, reporter=Reporter(quiet=True))
    plan = plan_study(cfg, calibrate=False)
    assert plan.total.train_tokens == 0 and plan.total.activation_bytes == 0 and plan.total.units > 0
    assert plan.machine.get("seconds") is None


def test_run_refuses_a_study_its_disk_cannot_hold(tiny_model, tiny_tasks, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr("mossa.plan._free_bytes", lambda root: (root, 1000))
    out = tmp_path / "study"
    code = main(["run", "--model", str(tiny_model), "--tasks-dir", str(tiny_tasks), "--preset", "quick",
                 "--tasks", "tiny_sentiment,tiny_struct", "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert "activations need" in err and "has 1.0 KB free" in err and "--ignore-disk-space" in err
    assert not out.exists()  # nothing half-written


def test_plan_prints_its_tables_and_refuses_bad_input_in_one_line(tiny_model, tiny_tasks, tmp_path, capsys):
    args = ["plan", "--model", str(tiny_model), "--tasks-dir", str(tiny_tasks), "--preset", "quick", "--out",
            str(tmp_path / "s")]
    assert main([*args, "--tasks", "tiny_sentiment,tiny_struct", "--no-calibrate"]) == 0
    printed = capsys.readouterr().out
    for words in ("cost per unit kind", "control", "experimental", "estimated wall time", "H100-SXM", "disk:"):
        assert words in printed
    assert "this machine:" not in printed and "│ this machine " not in printed  # not calibrated: no time here
    assert main([*args, "--tasks", "tiny_sentiment,nope"]) == 2
    assert "unknown task 'nope'" in capsys.readouterr().err
    assert not (tmp_path / "s").exists()


def test_paper_scale_plan_offline_from_a_config_and_the_hub_tables_sizes(tmp_path, monkeypatch):
    """A Llama-2-7B-shaped folder (config only: no weights, no tokenizer) and hub tasks whose data are not here:
    the stated sizes give the prompts' counts, flan-mini's rows of the same task their lengths."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    folder = tmp_path / "llama-2-7b"
    folder.mkdir()
    shutil.copy("bench/configs/llama-2-7b/config.json", folder)
    cfg = resolve_config({"preset": "paper", "model": str(folder), "tasks_dir": "hub:flan2021",
                          "tasks": ["sst2", "cb", "rte"], "out": tmp_path / "paper", "device": "cpu",
                          "dtype": "bfloat16", "holdout": ["cb"], "activation_dtype": "float32"})
    plan = plan_study(cfg, calibrate=False)
    m = plan.model
    assert (m.n_layers, m.hidden, m.vocab) == (32, 4096, 32000)
    assert 6.7e9 < m.params < 6.8e9 and 6.4e9 < m.block_params < 6.5e9  # Llama-2-7B: 6.74B, 6.48B in blocks
    assert m.lora_params == 32 * 2 * 8 * (4096 + 4096)  # rank 8 on q_proj and v_proj of every block
    assert "gemma-3-270m" in m.tokenizer  # the folder has none: the default model's counts, said so
    assert plan.estimated_tasks == ["cb", "rte", "sst2"]
    assert plan.test_prompts == 872 + 56 + 277  # min(n_test 10,000, the stated validation rows)
    base = next(k for k in plan.kinds if k.kind == "base")
    assert base.activation_bytes == sum(33 * n * 4096 * 4 + 128 for n in (872, 56, 277))
    assert set(plan.gpus) == set(GPUS) and plan.gpus["H100-SXM"]["seconds"]["training"] > 0
    assert not plan.gpus["RTX-4090"]["fits"] and plan.gpus["H200"]["fits"]  # 27 GB of fp32 weights + activations
    assert not (tmp_path / "paper").exists()


def test_a_hub_task_without_a_stated_size_or_stand_in_is_one_error(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setattr("mossa.plan.load_tasks", lambda source, names=None: (_ for _ in ()).throw(
        MossaError("offline")) if source is not None else [])
    cfg = resolve_config({"preset": "paper", "model": "bench/configs/llama-2-7b", "tasks_dir": "hub:flan2021",
                          "tasks": ["sst2"], "out": tmp_path / "p"})
    with pytest.raises(MossaError, match=r"task 'sst2': its data are not here and flan-mini has no task of its "
                                         r"cluster \(Sentiment\)"):
        plan_study(cfg, calibrate=False)
