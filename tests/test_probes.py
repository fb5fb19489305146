"""Linear probes per layer: planted signal vs noise and the permuted-label control, the projection's
equivalence to a plain sklearn fit, labels from prompts.jsonl, the study table, degenerate tasks."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from scipy.optimize import minimize
from scipy.special import logsumexp, softmax
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from mossa.workers import JobPool
from mossa.errors import MossaError
from mossa.probes import (
    PROBE_C,
    PROBE_COLUMNS,
    PROBE_TABLE_COLUMNS,
    _fold_probabilities,
    _projected,
    probe_layers,
    probe_table,
    prompt_labels,
    write_probes,
)
from mossa.store import Activations, StudyDir

N, D, K = 96, 64, 3
SIGNAL, NOISE = (2, 3), (0, 1)
# Held-out accuracy of a probe that knows nothing is about Binomial(96, 1/3) / 96: sd 0.048, so 0.15 is
# ~3 sd (the fixed seeds make the test deterministic; the bound says what "at chance" means).
CHANCE_TOL = 0.15
PROBS_TOL = 5e-3  # held-out probabilities of a fit at sklearn's default tol vs an exact one (seen: up to 1.6e-3)


def _planted(seed: int = 0, n: int = N, d: int = D, k: int = K, shift: float = 6.0):
    """States [4, n, d]: layers 0-1 pure noise, layers 2-3 the class mean shifted along random directions."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % k
    rng.shuffle(y)
    X = rng.standard_normal((4, n, d)).astype(np.float32)
    for layer in SIGNAL:
        directions = rng.standard_normal((k, d))
        directions /= np.linalg.norm(directions, axis=1, keepdims=True)
        X[layer] += shift * directions[y].astype(np.float32)
    return X, y


def test_planted_signal_is_found_and_the_control_stays_at_chance():
    X, y = _planted()
    df = probe_layers(X, y, n_folds=5, seed=0)
    assert list(df.columns) == PROBE_COLUMNS
    assert df["layer"].tolist() == [0, 1, 2, 3]
    assert (df["n_examples"] == N).all() and (df["n_classes"] == K).all() and (df["n_folds"] == 5).all()
    assert np.allclose(df["chance"], 1 / 3)
    sig, noise = df.iloc[list(SIGNAL)], df.iloc[list(NOISE)]
    assert (sig["accuracy"] >= 0.95).all()
    assert (abs(sig["control_accuracy"] - 1 / 3) <= CHANCE_TOL).all()
    assert (sig["selectivity"] >= 0.5).all()
    assert (abs(noise["accuracy"] - 1 / 3) <= CHANCE_TOL).all()
    assert (abs(df["control_accuracy"] - 1 / 3) <= CHANCE_TOL).all()
    assert np.allclose(df["selectivity"], df["accuracy"] - df["control_accuracy"])
    assert df.attrs["C"] == pytest.approx(PROBE_C / D)


def test_seeded_and_layer_independent():
    X, y = _planted()
    a, b = probe_layers(X, y, seed=3), probe_layers(X, y, seed=3)
    pd.testing.assert_frame_equal(a, b)
    # the same folds for every layer: probing one layer alone gives its row of the full table
    one = probe_layers(X[2:3], y, seed=3)
    assert one.loc[0, ["accuracy", "control_accuracy"]].tolist() == a.loc[2, ["accuracy", "control_accuracy"]].tolist()
    assert not probe_layers(X, y, seed=4)[["accuracy", "control_accuracy"]].equals(a[["accuracy", "control_accuracy"]])


def _softmax_probe(phi_train, y, phi_test, k, C):
    """Held-out probabilities of the minimiser of ``C * sum(log loss) + |W|^2 / 2`` (intercept unpenalised),
    the objective the module documents for its C, by plain L-BFGS on the softmax model."""
    A, B = (np.hstack([np.ones((len(phi), 1)), phi]) for phi in (phi_train, phi_test))
    onehot, pen = np.eye(k)[y], np.r_[0.0, np.ones(A.shape[1] - 1)][:, None]

    def objective(w):
        W = w.reshape(-1, k)
        Z = A @ W
        return (C * (logsumexp(Z, axis=1) - (onehot * Z).sum(axis=1)).sum() + 0.5 * (pen * W * W).sum(),
                (C * A.T @ (softmax(Z, axis=1) - onehot) + pen * W).ravel())

    w = minimize(objective, np.zeros(A.shape[1] * k), jac=True, method="L-BFGS-B",
                 options={"gtol": 1e-12, "ftol": 1e-15, "maxiter": 100_000}).x
    return softmax(B @ w.reshape(-1, k), axis=1)


@pytest.mark.parametrize("k", [2, 3, 5])
def test_projection_gives_the_plain_fits_probabilities(k):
    """Fitting in the span of the standardised training rows = sklearn's fit on all d features, and C means
    the documented objective (sklearn's at C, or at 2 C with 2 classes)."""
    rng = np.random.default_rng(k)
    n, d, n_train = 70, 150, 56
    X, y = _planted(seed=k, n=n, d=d, k=k, shift=1.5)
    X[:, :, 7] = 2.5  # a constant feature (left unscaled, as StandardScaler does)
    X[:, 1] = X[:, 0]  # a repeated row: the span has fewer directions than training rows
    y[1] = y[0]
    order = rng.permutation(n)
    train, test = np.sort(order[:n_train]), np.sort(order[n_train:])
    C = PROBE_C / d
    X = X.astype(np.float64)
    phi_train, phi_test = _projected(X, train, test)
    probs = _fold_probabilities(X, [(y, train, test)], k, C)[0]
    for layer in range(X.shape[0]):
        exact = LogisticRegression(C=C if k > 2 else 2 * C, tol=1e-12, max_iter=100_000)
        expected = make_pipeline(StandardScaler(), exact).fit(X[layer, train], y[train]).predict_proba(X[layer, test])
        projected = exact.fit(phi_train[layer], y[train]).predict_proba(phi_test[layer])
        np.testing.assert_allclose(projected, expected, rtol=0, atol=1e-6)
        softmax_fit = _softmax_probe(phi_train[layer], y[train], phi_test[layer], k, C)
        np.testing.assert_allclose(softmax_fit, expected, rtol=0, atol=1e-6)
        # the probe itself stops at sklearn's default tol (1e-4 on the gradient), close to the exact fit
        np.testing.assert_allclose(probs[layer], expected, rtol=0, atol=PROBS_TOL)


def test_identical_rows_predict_the_training_majority():
    """A layer where every prompt has the same state (layer 0 at a shared cue) carries no information."""
    X, y = _planted()
    X[0] = X[0, :1]
    df = probe_layers(X, y)
    assert abs(df.loc[0, "accuracy"] - 1 / 3) <= CHANCE_TOL
    assert df.loc[2, "accuracy"] >= 0.95


def test_degenerate_tasks_give_rows_not_errors():
    X, y = _planted(n=30)
    one = probe_layers(X, np.zeros(30, dtype=int))
    assert len(one) == 4 and one["accuracy"].isna().all() and one["control_accuracy"].isna().all()
    assert (one["n_classes"] == 1).all() and (one["n_folds"] == 0).all() and (one["n_examples"] == 30).all()
    assert (one["chance"] == 1.0).all()

    singleton = y.copy()
    singleton[0] = 7  # one example of class 7: dropped, and reported
    df = probe_layers(X, singleton)
    assert (df["n_examples"] == 29).all() and (df["n_classes"] == 3).all() and df.attrs["dropped"] == 1
    assert df["accuracy"].notna().all()

    small = np.zeros(30, dtype=int)
    small[:2] = 1  # a class of 2: only 2 stratified folds fit
    df = probe_layers(X, small)
    assert (df["n_folds"] == 2).all() and df["accuracy"].notna().all()

    lone = np.zeros(30, dtype=int)
    lone[0] = 1  # two classes, one a singleton: one class is left
    df = probe_layers(X, lone)
    assert (df["n_examples"] == 29).all() and (df["n_classes"] == 1).all() and df["accuracy"].isna().all()

    none = probe_layers(X[:, :0], np.zeros(0, dtype=int))  # no example left (all non-finite, say)
    assert (none["n_examples"] == 0).all() and none["accuracy"].isna().all() and none["chance"].isna().all()


@pytest.mark.parametrize("states, labels, kwargs, message", [
    (np.zeros((10, 4)), np.zeros(10, int), {}, "3-D array"),
    (np.zeros((2, 10, 4)), np.zeros(9, int), {}, "one entry per example"),
    (np.zeros((2, 10, 4)), np.zeros(10), {}, "integer class labels"),
    (np.full((2, 10, 4), np.nan), np.zeros(10, int), {}, "finite states"),
    (np.zeros((2, 10, 4)), np.zeros(10, int), {"n_folds": 1}, "n_folds"),
    (np.zeros((2, 10, 4)), np.zeros(10, int), {"C": 0}, "C to be"),
])
def test_invalid_input_is_a_value_error(states, labels, kwargs, message):
    with pytest.raises(ValueError, match=message):
        probe_layers(states, labels, **kwargs)


def _write_prompts(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


def test_prompt_labels_reads_gold_indices(tmp_path):
    rows = [{"task": "cls", "id": "cls:test:3", "target": "b", "options": ["a", "b"], "gold": 1},
            {"task": "cls", "id": "cls:test:1", "target": "a", "options": ["a", "b"], "gold": 0},
            {"task": "gen", "id": "gen:test:1", "target": "free text", "options": None, "gold": None},
            {"task": "old", "id": "old:test:1", "target": "no options field"},
            {"task": "mc", "id": "mc:test:9", "target": "z", "options": ["x", "y", "z"], "gold": 2}]
    _write_prompts(tmp_path / "prompts.jsonl", rows)
    labels = prompt_labels(tmp_path / "prompts.jsonl")
    assert labels == {"cls": {"cls:test:3": 1, "cls:test:1": 0}, "mc": {"mc:test:9": 2}}
    assert list(labels["cls"]) == ["cls:test:3", "cls:test:1"]  # the file's order


@pytest.mark.parametrize("line, message", [
    ('{"task": "t", "id": "a", "options": ["x"], "gold": 1}', "index 'options'"),
    ('{"task": "t", "id": "a", "options": ["x"], "gold": true}', "index 'options'"),
    ('{"task": "t", "id": "a"', "invalid JSON"),
    ('{"id": "a"}', "'task' and 'id'"),
])
def test_prompt_labels_rejects_malformed_rows(tmp_path, line, message):
    (tmp_path / "prompts.jsonl").write_text(line + "\n")
    with pytest.raises(MossaError, match=message):
        prompt_labels(tmp_path / "prompts.jsonl")
    with pytest.raises(MossaError, match="cannot read"):
        prompt_labels(tmp_path / "missing.jsonl")


def _study(tmp_path):
    """A study with tasks 'sig' (signal, 3 classes) and 'two' (2 classes), models base, copy (base's rows in
    reverse order), control (for 'sig' only), plus an unlabelled row in 'sig'."""
    study = StudyDir(tmp_path / "study")
    labels = {}
    for task, k in (("sig", 3), ("two", 2)):
        X, y = _planted(seed=k, n=48, d=32, k=k)
        ids = [f"{task}:test:{i}" for i in range(48)]
        labels[task] = dict(zip(ids, (int(v) for v in y)))
        if task == "sig":
            ids, X = ids + ["sig:test:unlabelled"], np.concatenate([X, X[:, :1]], axis=1)
        n = len(ids)
        variants = {"base": (ids, X), "copy": (ids[::-1], X[:, ::-1])}
        if task == "sig":
            variants["control"] = (ids, np.random.default_rng(5).standard_normal(X.shape).astype(np.float32))
        for model, (row_ids, acts) in variants.items():
            study.write_activations(model, task, Activations(ids=list(row_ids), acts=np.ascontiguousarray(acts),
                                                             target_nll=np.full(n, np.nan),
                                                             target_tokens=np.zeros(n, int), meta={}), inputs="x")
    models = {"sig": ["base", "copy", "control"], "two": ["base", "copy", "control"], "unprobed": ["base"]}
    return study, labels, models, {"sig": "A", "two": "B"}


def test_probe_table_aligns_rows_and_shares_folds_across_models(tmp_path):
    study, labels, models, clusters = _study(tmp_path)
    table = probe_table(study.root, labels, models, clusters)
    assert list(table.columns) == PROBE_TABLE_COLUMNS
    assert sorted(set(zip(table["task"], table["model"]))) == [("sig", "base"), ("sig", "control"),
                                                               ("sig", "copy"), ("two", "base"), ("two", "copy")]
    assert table.attrs["skipped"] == [("two", "control")]
    assert (table["n_examples"] == 48).all()  # the unlabelled row is left out
    assert set(table.groupby("task")["cluster"].first().items()) == {("sig", "A"), ("two", "B")}
    for task in ("sig", "two"):
        base = table[(table.task == task) & (table.model == "base")].reset_index(drop=True)
        copy = table[(table.task == task) & (table.model == "copy")].reset_index(drop=True)
        pd.testing.assert_frame_equal(base.drop(columns="model"), copy.drop(columns="model"))
    sig = table[table.task == "sig"].set_index(["model", "layer"])["accuracy"]
    assert sig.loc["base", 2] >= 0.9 and sig.loc["control", 2] < 0.7

    capped = probe_table(study.root, labels, models, clusters, max_examples=30)
    assert (capped["n_examples"] == 30).all()
    path = write_probes(table, study.root)
    assert path == study.path("results", "probes.csv")
    pd.testing.assert_frame_equal(pd.read_csv(path), table, check_dtype=False)


def test_probe_table_is_the_same_with_one_or_two_workers(tmp_path):
    study, labels, models, clusters = _study(tmp_path)
    with JobPool(1) as pool:
        one = probe_table(study.root, labels, models, clusters, seed=2, pool=pool)
    with JobPool(2) as pool:
        two = probe_table(study.root, labels, models, clusters, seed=2, pool=pool)
    pd.testing.assert_frame_equal(one, two)


def test_probe_table_checks_its_arguments(tmp_path):
    study, labels, models, clusters = _study(tmp_path)
    with pytest.raises(MossaError, match="cluster for every probed task"):
        probe_table(study.root, labels, models, {"sig": "A"})
    with pytest.raises(MossaError, match="seed"):
        probe_table(study.root, labels, models, clusters, seed=-1)
    with pytest.raises(MossaError, match="max_examples"):
        probe_table(study.root, labels, models, clusters, max_examples=0)
    with pytest.raises(MossaError, match="models as"):
        probe_table(study.root, labels, {"sig": "base"}, clusters)
    empty = probe_table(study.root, {}, models, clusters)
    assert list(empty.columns) == PROBE_TABLE_COLUMNS and empty.empty
