"""E given instead of trained: a released model of another depth and width, or an adapter folder."""

import json

import numpy as np
import pandas as pd
import pytest

from mossa.analysis import depth_map
from mossa.analysis._similarity import DepthMapped
from mossa.cli import main
from mossa.store import Activations
from tests.conftest import build_tiny_model


@pytest.fixture(scope="module")
def deeper_model(tmp_path_factory):
    """Another model as E: 3 layers, d=24 (B, the tiny_model fixture, has 2 layers, d=16)."""
    return build_tiny_model(tmp_path_factory.mktemp("tiny-e"), n_layers=3, hidden=24)


def _run(tiny_model, tiny_tasks, out, *extra):
    return main(["run", "--model", str(tiny_model), "--tasks-dir", str(tiny_tasks), "--preset", "quick",
                 "--tasks", "tiny_sentiment,tiny_struct", "--out", str(out), "--measures", "linear_cka",
                 "--dtype", "float32", *extra])  # fp32: a merged adapter equals the live one to 1e-5


def test_depth_map_matches_relative_depth():
    assert depth_map(4, 4) == [0, 1, 2, 3]
    assert depth_map(31, 19) == [0, 2, 3, 5, 7, 8, 10, 12, 13, 15, 17, 18, 20, 22, 23, 25, 27, 28, 30]
    assert depth_map(4, 3) == [0, 2, 3]  # embeddings to embeddings, last layer to last layer


def test_depth_mapped_reads_the_mapped_states():
    acts = np.arange(4 * 5 * 2, dtype=np.float32).reshape(4, 5, 2)
    run = Activations(ids=[str(i) for i in range(5)], acts=acts, target_nll=np.zeros(5),
                      target_tokens=np.ones(5, dtype=np.int64), meta={})
    mapped = DepthMapped(run, 3)
    assert mapped.shape == (3, 5, 2) and mapped.layer_map == [0, 2, 3]
    np.testing.assert_array_equal(mapped.read([4, 1], [1, 2]), acts[[2, 3]][:, [4, 1]])
    np.testing.assert_array_equal(mapped.read(), acts[[0, 2, 3]])


def test_released_model_as_experimental(tiny_model, tiny_tasks, deeper_model, tmp_path):
    out = tmp_path / "study"
    assert _run(tiny_model, tiny_tasks, out, "--experimental", str(deeper_model)) == 0
    sim = pd.read_parquet(out / "results/similarity.parquet")
    sim = sim[sim["reference"] == "control"]  # the rows against C_t
    assert set(sim["model"]) == {"base", "experimental"}  # no E': nothing was held out of a given E
    assert sorted(sim[sim["model"] == "experimental"]["layer"].unique()) == [0, 1, 2]  # on B's grid
    assert sim[(sim["layer"] > 0)]["value"].between(0, 1).all()
    study = json.loads((out / "study.json").read_text())
    assert study["experimental"] == {"mode": "given", "spec": str(deeper_model), "n_layers": 3, "hidden_size": 24,
                                     "layer_map": [0, 2, 3], "prompt_format": study["prompt_format"]}
    assert study["prompt_format"]["mode"] == "plain"  # B has no chat template: E reads B's plain prompts
    assert "experimental" not in study["training"] and study["heldout_tasks"] == []
    assert (out / "activations/experimental/tiny_sentiment/acts.npy").is_file()
    report = (out / "report.html").read_text()
    assert "experimental E, given" in report and "by relative depth" in report
    cross = pd.read_csv(out / "results/layer_by_layer_cka.csv")
    assert cross[cross["model"] == "experimental"]["layer"].max() == 2


def test_adapter_folder_as_experimental(tiny_model, tiny_tasks, tmp_path):
    first = tmp_path / "first"
    assert _run(tiny_model, tiny_tasks, first) == 0
    adapter = first / "adapters" / "control-tiny_sentiment"
    out = tmp_path / "second"
    assert _run(tiny_model, tiny_tasks, out, "--experimental", str(adapter)) == 0
    study = json.loads((out / "study.json").read_text())
    assert study["experimental"] == {"mode": "given", "spec": str(adapter), "n_layers": 2, "hidden_size": 16,
                                     "prompt_format": study["prompt_format"]}
    sim = pd.read_parquet(out / "results/similarity.parquet").query("reference == 'control'")
    sim = sim.set_index(["task", "model", "layer"])["value"]
    # E is B + the sentiment control's adapter, so E's states on that task are C_t's: CKA 1.
    np.testing.assert_allclose(sim.loc[("tiny_sentiment", "experimental")].iloc[1:], 1.0, atol=1e-6)


def test_base_plus_adapter_of_an_earlier_study_is_a_model(tiny_model, tiny_tasks, tmp_path):
    """`BASE+ADAPTER` merges an adapter mossa wrote into B: as E it gives the control's own states
    (CKA 1 with C_t on that task), and as B it starts a study of its own."""
    first = tmp_path / "first"
    assert _run(tiny_model, tiny_tasks, first) == 0
    spec = f"{tiny_model}+{first / 'adapters' / 'control-tiny_sentiment'}"
    out = tmp_path / "merged-e"
    assert _run(tiny_model, tiny_tasks, out, "--experimental", spec) == 0
    sim = pd.read_parquet(out / "results/similarity.parquet").query("reference == 'control'")
    sim = sim.set_index(["task", "model", "layer"])["value"]
    np.testing.assert_allclose(sim.loc[("tiny_sentiment", "experimental")].iloc[1:], 1.0, atol=1e-5)
    out = tmp_path / "merged-b"
    assert _run(spec, tiny_tasks, out) == 0
    model = json.loads((out / "study.json").read_text())["model"]
    assert model["kind"] == "adapter" and model["name"] == "tiny-llama0+control-tiny_sentiment"


def test_given_and_trained_exclude_each_other(tiny_model, tiny_tasks, tmp_path, capsys):
    assert _run(tiny_model, tiny_tasks, tmp_path / "a", "--experimental", str(tiny_model),
                "--experimental-train") == 2
    assert "exclude each other" in capsys.readouterr().err
    assert _run(tiny_model, tiny_tasks, tmp_path / "b", "--experimental", str(tiny_model),
                "--holdout", "tiny_struct") == 2
    assert "field 'experimental_model': Value error, a given E cannot have tasks held out" in capsys.readouterr().err
    assert _run(tiny_model, tiny_tasks, tmp_path / "c", "--experimental", "no-such-model") == 2
    assert "unknown model 'no-such-model'" in capsys.readouterr().err
    assert not any((tmp_path / x).exists() for x in "abc")


def test_experimental_train_overrides_the_config_file(tiny_model, tiny_tasks, tmp_path):
    from mossa.config import resolve_config

    path = tmp_path / "s.yaml"
    path.write_text(f"experimental_model: {tiny_model}\n")
    assert resolve_config(config_file=path).experimental_model == str(tiny_model)
    assert resolve_config(config_file=path, unset=("experimental_model",)).experimental_model is None
