from pathlib import Path

import pytest

from mossa.config import DEMO_TASKS, PRESETS, resolve_config
from mossa.errors import MossaError


def test_preset_then_file_then_flags(tmp_path):
    cfg_file = tmp_path / "study.yaml"
    cfg_file.write_text("preset: quick\nn_test: 20\ncontrol:\n  lr: 0.01\n")
    cfg = resolve_config({"n_test": 30}, config_file=cfg_file)
    assert cfg.preset == "quick"
    assert cfg.n_test == 30  # flag beats file
    assert cfg.control.lr == 0.01  # file beats preset
    assert cfg.control.max_steps == PRESETS["quick"]["control"]["max_steps"]  # preset fills the rest


def test_demo_preset_covers_twelve_tasks():
    cfg = resolve_config({})
    assert cfg.preset == "demo" and cfg.tasks == DEMO_TASKS and len(DEMO_TASKS) == 12
    assert cfg.n_test >= 96


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
