from pathlib import Path

import pytest

from mossa.config import DEMO_TASKS, PRESETS, preset_tasks, resolve_config
from mossa.errors import MossaError


def test_preset_then_file_then_flags(tmp_path):
    cfg_file = tmp_path / "study.yaml"
    cfg_file.write_text("preset: quick\nn_test: 20\ncontrol:\n  lr: 0.01\n")
    cfg = resolve_config({"n_test": 30}, config_file=cfg_file)
    assert cfg.preset == "quick"
    assert cfg.n_test == 30  # flag beats file
    assert cfg.control.lr == 0.01  # file beats preset
    assert cfg.control.max_steps == PRESETS["quick"]["control"]["max_steps"]  # preset fills the rest


def test_demo_preset_tasks_span_clusters_with_enough_test_prompts():
    from mossa.tasks import load_tasks
    from tests.conftest import FLAN_MINI
    cfg = resolve_config({})
    assert cfg.preset == "demo" and cfg.tasks is None and preset_tasks("demo") == DEMO_TASKS
    tasks = load_tasks(FLAN_MINI, DEMO_TASKS)
    assert len(tasks) >= 12 and len({t.cluster for t in tasks}) >= 6
    assert cfg.n_test == 48 and all(len(t.split("test")) >= cfg.n_test for t in tasks)
    assert all(len(t.split("train")) >= cfg.task_n_train(t.name) for t in tasks)
    assert cfg.generate_examples <= cfg.n_test and cfg.lens_examples <= cfg.n_test


@pytest.mark.parametrize("override, field", [
    ({"n_test": 0}, "n_test"),
    ({"seed": -1}, "seed"),
    ({"dtype": "int8"}, "dtype"),
    ({"tasks": ["a", "a"]}, "tasks"),
    ({"preset": "huge"}, "preset"),
    ({"executor": "dask"}, "executor"),
    ({"threads": 0}, "threads"),
    ({"executor": "ray", "ray_address": "auto", "ray_cpus": 2}, "ray_cpus"),
])
def test_bad_values_name_the_field(override, field):
    with pytest.raises(MossaError, match=f"'{field}"):
        resolve_config(override)


def test_unknown_key_in_file_is_named(tmp_path):
    f = tmp_path / "s.yaml"
    f.write_text("n_tset: 3\n")
    with pytest.raises(MossaError, match=r"s\.yaml.*n_tset"):
        resolve_config({}, config_file=f)


def test_bad_yaml_names_file_and_line(tmp_path):
    f = tmp_path / "s.yaml"
    f.write_text("n_test: 3\ncontrol: [1, 2\n")
    with pytest.raises(MossaError, match=r"s\.yaml:\d+: not valid YAML"):
        resolve_config({}, config_file=f)


def test_env_tasks_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("MOSSA_TASKS_DIR", str(tmp_path))
    assert resolve_config({}).tasks_dir == Path(tmp_path)


def test_init_writes_a_commented_config_that_runs_the_preset(tmp_path, capsys):
    from mossa.cli import main
    from mossa.config import StudyConfig, read_config_file

    path = tmp_path / "study.yaml"
    assert main(["init", str(path)]) == 0
    text = path.read_text()
    assert "# Base model B" in text and "#   mossa run --config" in text
    assert set(read_config_file(path)) == set(StudyConfig.model_fields)  # every setting is listed
    assert resolve_config(config_file=path) == resolve_config({})  # and gives the demo preset exactly
    assert main(["init", str(path)]) == 2
    assert "exists; pass --force" in capsys.readouterr().err
    path.write_text("x")
    assert main(["init", str(path), "--force"]) == 0 and path.read_text() == text


def test_ceiling_tasks_words_and_lists():
    assert resolve_config({}).ceiling_tasks == "all" and resolve_config({"preset": "quick"}).ceiling_tasks == "none"
    assert resolve_config({"preset": "paper"}).ceiling_tasks == "auto"
    assert resolve_config({"ceiling_tasks": []}).ceiling_tasks == "none"
    assert resolve_config({"ceiling_tasks": ["none"]}).ceiling_tasks == "none"  # --ceiling-tasks none
    assert resolve_config({"ceiling_tasks": ["sst2", "trec"]}).ceiling_tasks == ["sst2", "trec"]
    with pytest.raises(MossaError, match=r"^config: field 'ceiling_tasks': .*names a task twice: sst2"):
        resolve_config({"ceiling_tasks": ["sst2", "sst2"]})


def test_an_earlier_configs_evaluation_settings_are_upgraded(tmp_path):
    """loss_examples is eval_examples; test_loss 'all' also evaluated C_t'. A file's earlier key overrides
    the preset's new one; both keys at once is an error naming them."""
    old = tmp_path / "old.yaml"
    old.write_text("loss_examples: 12\ntest_loss: all\n")
    cfg = resolve_config({"preset": "demo"}, config_file=old)
    assert cfg.eval_examples == 12 and cfg.evaluate_ceiling is True
    old.write_text("test_loss: base_and_controls\n")
    assert resolve_config({}, config_file=old).evaluate_ceiling is False
    old.write_text("loss_examples: 12\neval_examples: 8\n")
    with pytest.raises(MossaError, match="both loss_examples .* and eval_examples"):
        resolve_config({}, config_file=old)


def test_activation_dtype_defaults_to_the_half_size_store_and_is_checked():
    """float16 by the measurement in docs/analyses.md ('The half-size activation store'), in every preset."""
    for preset in PRESETS:
        assert resolve_config({"preset": preset}).activation_dtype == "float16"
    assert resolve_config({"activation_dtype": "float32"}).activation_dtype == "float32"
    with pytest.raises(MossaError, match="field 'activation_dtype'"):
        resolve_config({"activation_dtype": "int8"})
