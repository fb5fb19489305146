"""Linear probes per layer: planted signal vs noise, the Hewitt-Liang control task (template-keyed labels a
high-capacity probe memorises) and selectivity's interval, C chosen on training rows only, the projection's
equivalence to a plain sklearn fit, labels and types from prompts.jsonl, the study table, degenerate tasks."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from scipy.optimize import minimize
from scipy.special import logsumexp, softmax
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

from mossa.workers import JobPool
from mossa.errors import MossaError
from mossa.probes import (
    PROBE_CS,
    PROBE_COLUMNS,
    PROBE_TABLE_COLUMNS,
    _chosen_C,
    _layer_probabilities,
    _projected,
    control_task,
    probe_layers,
    probe_table,
    prompt_labels,
    prompt_types,
    write_probes,
)
from mossa.store import Activations, StudyDir

N, D, K = 96, 64, 3
SIGNAL, NOISE = (2, 3), (0, 1)
N_TYPES = 4
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


def _types(seed: int = 0, n: int = N, n_types: int = N_TYPES) -> np.ndarray:
    """A template index per example, balanced and independent of the labels (as prompts.jsonl draws them)."""
    types = np.arange(n) % n_types
    np.random.default_rng(seed + 100).shuffle(types)
    return types


def _template_states(seed: int = 0, n: int = N, d: int = D, n_layers: int = 2, shift: float = 8.0):
    """States that carry each example's template (its mean shifted along one direction per template) and
    nothing about its label: what a model's last-token state looks like on an instruction it cannot solve."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 2
    rng.shuffle(y)
    types = _types(seed, n)
    directions = rng.standard_normal((N_TYPES, d))
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    X = rng.standard_normal((n_layers, n, d)) + shift * directions[types]
    return X.astype(np.float32), y, types


def _covers_zero(df: pd.DataFrame) -> pd.Series:
    return (df["selectivity_low"] <= 0) & (df["selectivity_high"] >= 0)


def test_planted_signal_is_selective_and_noise_is_not():
    X, y = _planted()
    df = probe_layers(X, y, _types())
    assert list(df.columns) == PROBE_COLUMNS
    assert df["layer"].tolist() == [0, 1, 2, 3]
    assert (df["n_examples"] == N).all() and (df["n_classes"] == K).all() and (df["n_folds"] == 5).all()
    assert (df["n_types"] == N_TYPES).all() and np.allclose(df["chance"], 1 / 3)
    assert df["C"].isin(PROBE_CS).all()
    sig, noise = df.iloc[list(SIGNAL)], df.iloc[list(NOISE)]
    assert (sig["accuracy"] >= 0.95).all()
    # the states carry no template: the control task is at its own chance, and the signal is selective
    assert (abs(df["control_task_accuracy"] - df["control_chance_agreement"]) <= CHANCE_TOL).all()
    assert (sig["selectivity"] >= 0.5).all() and (sig["selectivity_low"] > 0).all()
    assert (abs(noise["accuracy"] - 1 / 3) <= CHANCE_TOL).all() and _covers_zero(noise).all()
    gain = df["accuracy"] - df["chance_agreement"]
    control_gain = df["control_task_accuracy"] - df["control_chance_agreement"]
    assert np.allclose(df["selectivity"], gain - control_gain)
    assert ((df["selectivity_low"] < df["selectivity"]) & (df["selectivity"] < df["selectivity_high"])).all()


def test_template_keyed_control_is_decoded_by_a_high_capacity_probe():
    """Hewitt and Liang's point: a probe that can tell templates apart memorises one random label per template,
    well above that control's chance, while the task's own labels stay at chance. Selectivity is then below 0:
    the probe's accuracy is no evidence that the states encode the task. A control keyed on each example alone
    (a per-example random labelling, as the permuted-label control was) sits at chance and would hide this."""
    X, y, types = _template_states()
    df = probe_layers(X, y, types, C=1000.0)
    assert (df["C"] == 1000.0).all()
    assert (df["control_chance"] <= 0.75).all()
    assert (df["control_task_accuracy"] >= df["control_chance"] + 0.2).all()
    assert (df["control_task_accuracy"] >= 0.9).all()
    assert (abs(df["accuracy"] - 0.5) <= CHANCE_TOL).all()
    assert (df["selectivity_high"] < 0).all()
    per_example = probe_layers(X, y, np.arange(N), C=1000.0)
    assert (abs(per_example["control_task_accuracy"] - per_example["control_chance_agreement"]) <= CHANCE_TOL).all()


def test_selectivity_interval_covers_zero_without_label_information():
    """Pure noise, balanced labels: the probe sits near its control and the 95% interval covers 0 on nearly every
    layer (at least 17 of 19: each misses 0 with probability about 0.05, and the seeds are fixed)."""
    rng = np.random.default_rng(7)
    y = np.arange(N) % 2
    rng.shuffle(y)
    df = probe_layers(rng.standard_normal((19, N, 32)), y, _types(7))
    assert _covers_zero(df).sum() >= 17
    assert abs(df["selectivity"].mean()) <= 0.05
    # at chance a fold's selectivity has sd about sqrt(0.5 / 19) = 0.16, so the corrected t half-width is about
    # t(4) * sqrt(1/5 + 1/4) * 0.16 = 0.30: an interval of that size, not the whole range
    width = df["selectivity_high"] - df["selectivity_low"]
    assert np.isfinite(width).all() and 0.3 <= width.median() <= 0.8


def test_C_is_chosen_without_the_test_fold():
    """Rewriting the labels of fold 0's rows leaves the C chosen for fold 0 as it was, while the other folds,
    whose choice sees those rows, change theirs; the choice follows the data (the strongest penalty on noise,
    the weakest on a planted signal)."""
    X, y = _planted(seed=1)
    folds = list(StratifiedKFold(5, shuffle=True, random_state=0).split(np.zeros((N, 1)), y))
    grid = np.asarray(PROBE_CS) / D
    with threadpool_limits(1):  # as probe_layers runs it: on these small matrices more BLAS threads only spin
        C = _chosen_C(X, y, folds, grid, K)
    assert C.shape == (4, 5)
    assert (C[list(NOISE)] == grid[0]).all() and (C[list(SIGNAL)] == grid[-1]).all()
    test = folds[0][1]
    scrambled = y.copy()
    scrambled[test] = (y[test] + 1) % K
    with threadpool_limits(1):
        C2 = _chosen_C(X, scrambled, folds, grid, K)
    np.testing.assert_array_equal(C2[:, 0], C[:, 0])
    assert (C2[list(SIGNAL), 1:] != C[list(SIGNAL), 1:]).any()
    fixed = probe_layers(X, y, C=30.0)
    assert (fixed["C"] == 30.0).all()


def test_control_task_keys_random_labels_on_types():
    y = np.r_[np.zeros(60, int), np.ones(40, int)]
    types = np.arange(100) % 50
    control = control_task(y, types, seed=3)
    assert control.shape == y.shape and set(np.unique(control)) == {0, 1}
    for t in np.unique(types):  # one label per type
        assert len(set(control[types == t])) == 1
    assert abs(control.mean() - 0.4) <= 0.05  # the real shares (the closest of the seeded draws)
    np.testing.assert_array_equal(control, control_task(y, types, seed=3))
    assert not np.array_equal(control, control_task(y, types, seed=4))
    strings = control_task(y, np.array([f"t{t}" for t in types]), seed=3)
    assert len(set(zip(types, strings))) == 50
    assert control_task(y, np.zeros(100, int), seed=0) is None  # one type: nothing to key on


def test_seeded_and_layer_independent():
    X, y = _planted()
    types = _types()
    cols = ["accuracy", "control_task_accuracy", "C"]
    a, b = probe_layers(X, y, types, seed=3), probe_layers(X, y, types, seed=3)
    pd.testing.assert_frame_equal(a, b)
    # the same folds, inner folds and control labels for every layer: one layer alone gives its row of the table
    one = probe_layers(X[2:3], y, types, seed=3)
    assert one.loc[0, cols].tolist() == a.loc[2, cols].tolist()
    assert not probe_layers(X, y, types, seed=4)[cols].equals(a[cols])


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
    C = PROBE_CS[1] / d
    X = X.astype(np.float64)
    phi_train, phi_test = _projected(X, train, test)
    probs = _layer_probabilities(phi_train, y[train], phi_test, k, np.full(len(X), C))
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
    assert len(one) == 4 and one["accuracy"].isna().all() and one["control_task_accuracy"].isna().all()
    assert one[["selectivity", "selectivity_low", "selectivity_high", "C"]].isna().all().all()
    assert (one["n_classes"] == 1).all() and (one["n_folds"] == 0).all() and (one["n_examples"] == 30).all()
    assert (one["chance"] == 1.0).all()

    singleton = y.copy()
    singleton[0] = 7  # one example of class 7: dropped, and reported
    df = probe_layers(X, singleton)
    assert (df["n_examples"] == 29).all() and (df["n_classes"] == 3).all() and df.attrs["dropped"] == 1
    assert df["accuracy"].notna().all()

    small = np.zeros(30, dtype=int)
    small[:2] = 1  # a class of 2: only 2 stratified folds fit, and no inner split: the middle candidate C
    df = probe_layers(X, small, _types(n=30))
    assert (df["n_folds"] == 2).all() and df["accuracy"].notna().all() and (df["C"] == PROBE_CS[1]).all()

    untyped = probe_layers(X, y)  # no types, or a single one: no control task, so no selectivity
    single = probe_layers(X, y, np.full(30, "same"))
    for df in (untyped, single):
        assert df["accuracy"].notna().all() and df["control_task_accuracy"].isna().all()
        assert df[["selectivity", "selectivity_low", "selectivity_high", "control_chance"]].isna().all().all()
    assert (untyped["n_types"] == 0).all() and (single["n_types"] == 1).all()

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
    (np.zeros((2, 10, 4)), np.zeros(10, int), {"C": []}, "C to be"),
    (np.zeros((2, 10, 4)), np.zeros(10, int), {"C": [1.0, -1.0]}, "C to be"),
    (np.zeros((2, 10, 4)), np.zeros(10, int), {"C": "30"}, "C to be"),
    (np.zeros((2, 10, 4)), np.zeros(10, int), {"types": np.zeros(9, int)}, "types as a 1-D array"),
    (np.zeros((2, 10, 4)), np.zeros(10, int), {"types": np.zeros(10)}, "types as a 1-D array"),
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


def test_prompt_types_keys_on_templates_else_length(tmp_path):
    def row(task, i, template, tokens, gold=0):
        return {"task": task, "id": f"{task}:{i}", "template": template, "tokens": tokens,
                "options": None if gold is None else ["a", "b"], "gold": gold}

    rows = ([row("multi", i, i % 3, 50) for i in range(6)] + [row("single", i, 0, 10 + i) for i in range(8)]
            + [row("flat", i, 0, 20) for i in range(4)]
            + [row("gen", 0, 1, 5, gold=None), row("gen", 1, 2, 9, gold=None)]
            + [{"task": "bare", "id": "bare:0", "options": ["a", "b"], "gold": 1}])
    _write_prompts(tmp_path / "prompts.jsonl", rows)
    types = prompt_types(tmp_path / "prompts.jsonl")
    assert set(types) == {"multi", "single"}  # one template and one length: nothing to key on; gen: no labels
    assert types["multi"] == ("template", {f"multi:{i}": i % 3 for i in range(6)})
    kind, quartiles = types["single"]
    assert kind == "length quartile" and list(quartiles.values()) == [0, 0, 1, 1, 2, 2, 3, 3]
    (tmp_path / "bad.jsonl").write_text('{"task": "t", "id": "a", "options": ["x"], "gold": 0, "template": "1"}\n')
    with pytest.raises(MossaError, match="'template' to be an integer"):
        prompt_types(tmp_path / "bad.jsonl")


def _study(tmp_path):
    """A study with tasks 'sig' (signal, 3 classes) and 'two' (2 classes), models base, copy (base's rows in
    reverse order), control (for 'sig' only), plus an unlabelled row in 'sig'."""
    study = StudyDir(tmp_path / "study")
    labels, prompts = {}, []
    for task, k in (("sig", 3), ("two", 2)):
        X, y = _planted(seed=k, n=48, d=32, k=k)
        ids = [f"{task}:test:{i}" for i in range(48)]
        labels[task] = dict(zip(ids, (int(v) for v in y)))
        # 'sig' draws among 4 templates, 'two' uses one (its control task keys on the prompt's length)
        prompts += [{"task": task, "id": i, "template": int(t) if task == "sig" else 0, "tokens": 40 + j,
                     "options": [str(c) for c in range(k)], "gold": labels[task][i]}
                    for j, (i, t) in enumerate(zip(ids, _types(k, n=48)))]
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
    prompts.append({"task": "sig", "id": "sig:test:unlabelled", "template": 0, "tokens": 40, "options": None,
                    "gold": None})
    _write_prompts(study.path("prompts.jsonl"), prompts)
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
    kinds = table.groupby("task")["control_type"].unique().map(list).to_dict()
    assert kinds == {"sig": ["template"], "two": ["length quartile"]}
    assert (table["n_types"] == 4).all() and table["selectivity_low"].notna().all()
    assert prompt_labels(study.path("prompts.jsonl")) == labels

    untyped = probe_table(study.root, labels, models, clusters, types={})
    assert (untyped["control_type"] == "none").all() and untyped["selectivity"].isna().all()
    assert untyped["accuracy"].notna().all()

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
