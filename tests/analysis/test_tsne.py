"""t-SNE of pooled last-token representations (Fig 4): separation, determinism, skips, checks."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.neighbors import NearestNeighbors

from mossa.analysis._tsne import TSNE_COLUMNS, default_tsne_layers, tsne_embeddings
from mossa.errors import MossaError

TASKS = {"t_a": "A", "t_b": "A", "t_c": "B", "t_d": "C"}  # task -> cluster
N, D, N_LAYERS = 40, 24, 2


def _reps(seed: int = 0, n: int = N) -> dict[str, dict[str, np.ndarray]]:
    """acts [3, n, D]: layer 0 constant (same last token), layers 1-2 one tight blob per cluster."""
    rng = np.random.default_rng(seed)
    centres = {c: rng.normal(scale=10.0, size=D) for c in sorted(set(TASKS.values()))}
    token = rng.normal(size=D)
    reps = {}
    for model in ("base", "experimental"):
        reps[model] = {}
        for task, cluster in TASKS.items():
            acts = np.empty((N_LAYERS + 1, n, D), dtype=np.float32)
            acts[0] = token
            for layer in (1, 2):
                acts[layer] = centres[cluster] * layer + rng.normal(size=(n, D))
            reps[model][task] = acts
    return reps


def _purity(xy: np.ndarray, labels: np.ndarray, k: int = 10) -> float:
    idx = NearestNeighbors(n_neighbors=k + 1).fit(xy).kneighbors(xy, return_distance=False)[:, 1:]
    return float((labels[idx] == labels[:, None]).mean())


def test_separated_clusters_stay_separated_and_constant_layer_is_skipped():
    emb = tsne_embeddings(_reps(), TASKS, [0, 1, 2], max_iter=250)
    assert list(emb.columns) == TSNE_COLUMNS
    assert len(emb) == 2 * 2 * len(TASKS) * N  # layer 0 skipped for both models
    assert sorted(emb["layer"].unique()) == [1, 2]
    for (model, layer), panel in emb.groupby(["model", "layer"]):
        assert _purity(panel[["x", "y"]].to_numpy(), panel["cluster"].to_numpy()) > 0.9, (model, layer)
        assert (panel["cluster"] == panel["task"].map(TASKS)).all()
        assert np.isfinite(panel[["x", "y"]].to_numpy()).all()
    skipped = emb.attrs["skipped"]
    assert [(m, layer) for m, layer, _ in skipped] == [("base", 0), ("experimental", 0)]
    assert all("constant" in reason for _, _, reason in skipped)


def test_same_seed_same_table_and_subsample():
    reps = _reps()
    one = tsne_embeddings(reps, TASKS, [1], seed=3, per_task=15, max_iter=250)
    two = tsne_embeddings(reps, TASKS, [1], seed=3, per_task=15, max_iter=250)
    pd.testing.assert_frame_equal(one, two)
    assert len(one) == 2 * len(TASKS) * 15
    # the same examples for both models
    ex = {m: g.sort_values(["task", "example"])[["task", "example"]].to_numpy() for m, g in one.groupby("model")}
    assert (ex["base"] == ex["experimental"]).all()
    other = tsne_embeddings(reps, TASKS, [1], seed=4, per_task=15, max_iter=250)
    assert not np.array_equal(one["example"].to_numpy(), other["example"].to_numpy())
    assert one.attrs["params"]["per_task"] == 15


def test_float_noise_only_counts_as_constant_and_one_model_alone_works():
    reps = {"experimental": _reps()["experimental"]}
    rng = np.random.default_rng(1)
    for acts in reps["experimental"].values():
        acts[0] = acts[0] * (1 + 1e-7 * rng.normal(size=acts[0].shape)).astype(np.float32)
    emb = tsne_embeddings(reps, TASKS, [0, 2], max_iter=250)
    assert set(emb["model"]) == {"experimental"}
    assert [(m, layer) for m, layer, _ in emb.attrs["skipped"]] == [("experimental", 0)]
    assert "float noise" in emb.attrs["skipped"][0][2]


def test_small_but_real_variation_is_embedded():
    reps = _reps()
    rng = np.random.default_rng(2)
    for model in reps.values():
        for acts in model.values():  # 1e-3 of the scale: real structure, not float noise
            acts[0] = acts[0] + 1e-3 * rng.normal(size=acts[0].shape).astype(np.float32)
    emb = tsne_embeddings(reps, TASKS, [0], max_iter=250)
    assert emb.attrs["skipped"] == [] and len(emb) == 2 * len(TASKS) * N


def test_all_layers_constant_gives_empty_table_with_reasons():
    emb = tsne_embeddings(_reps(), TASKS, [0])
    assert emb.empty and list(emb.columns) == TSNE_COLUMNS
    assert len(emb.attrs["skipped"]) == 2


@pytest.mark.parametrize(("n_layers", "k", "expected"), [
    (32, 5, [1, 9, 17, 24, 32]),
    (18, 5, [1, 5, 10, 14, 18]),
    (18, 2, [1, 18]),
    (18, 1, [18]),
    (3, 5, [1, 2, 3]),
    (1, 5, [1]),
])
def test_default_layers(n_layers, k, expected):
    assert default_tsne_layers(n_layers, k) == expected


@pytest.mark.parametrize(("n_layers", "k", "match"), [(0, 5, "n_layers"), (4.0, 5, "n_layers"), (4, 0, "k to be")])
def test_default_layers_rejects(n_layers, k, match):
    with pytest.raises(MossaError, match=match):
        default_tsne_layers(n_layers, k)


def _bad(kind):
    reps, clusters, layers, kw = _reps(n=6), dict(TASKS), [1], {}
    if kind == "model":
        reps["tuned"] = reps.pop("base")
    elif kind == "cluster":
        del clusters["t_c"]
    elif kind == "ndim":
        reps["base"]["t_a"] = reps["base"]["t_a"][1]
    elif kind == "n_layers":
        reps["base"]["t_b"] = reps["base"]["t_b"][:2]
    elif kind == "width":
        reps["base"]["t_b"] = reps["base"]["t_b"][:, :, :5]
    elif kind == "nan":
        reps["experimental"]["t_a"][2, 0, 0] = np.nan
    elif kind == "layer":
        layers = [1, 3]
    elif kind == "repeat":
        layers = [1, 1]
    elif kind == "per_task":
        kw = {"per_task": 0}
    elif kind == "perplexity":
        kw = {"perplexity": -1.0}
    elif kind == "max_iter":
        kw = {"max_iter": 100}
    elif kind == "few":
        kw = {"per_task": 1}
    return reps, clusters, layers, kw


@pytest.mark.parametrize(("kind", "match"), [
    ("model", r"expected model keys.*got \['tuned'\].*fix"),
    ("cluster", r"expected a cluster for every task.*\['t_c'\].*fix"),
    ("ndim", r"expected reps\['base'\]\['t_a'\] as a 3-D array.*got shape \(6, 24\).*fix"),
    ("n_layers", r"same number of layers.*fix"),
    ("width", r"same width d.*d=5.*fix"),
    ("nan", r"finite activations.*layers \[2\].*fix"),
    ("layer", r"layers in 0\.\.2.*got \[3\].*fix"),
    ("repeat", r"unique layers.*fix"),
    ("per_task", r"per_task.*got 0.*fix"),
    ("perplexity", r"perplexity.*got -1\.0.*fix"),
    ("max_iter", r"max_iter.*got 100.*fix"),
    ("few", r"at least 5 pooled rows.*got 4.*fix"),
])
def test_validation_errors(kind, match):
    reps, clusters, layers, kw = _bad(kind)
    with pytest.raises(MossaError, match=match):
        tsne_embeddings(reps, clusters, layers, **kw)


def test_stored_runs_embed_a_subsample_of_the_named_layers(tmp_path):
    from mossa.analysis._tsne import tsne_of_runs
    from mossa.store import Activations, StudyDir

    rng = np.random.default_rng(0)
    study = StudyDir(tmp_path)
    runs = {}
    for model in ("base", "experimental"):
        for task in ("a", "b"):
            acts = rng.normal(size=(4, 30, 6)).astype(np.float32)
            study.write_activations(model, task, Activations([f"{task}:{i}" for i in range(30)], acts, np.zeros(30),
                                                             np.zeros(30, np.int64), {}), inputs="x")
            runs.setdefault(model, {})[task] = study.activation_file(model, task)
    df = tsne_of_runs(runs, {"a": "A", "b": "B"}, [1, 3], seed=0, per_task=10)
    assert sorted(df["layer"].unique()) == [1, 3]
    assert len(df) == 2 * 2 * 2 * 10 and df["example"].between(0, 29).all()
    assert df.groupby(["model", "layer", "task"])["example"].nunique().eq(10).all()
