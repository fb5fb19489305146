"""Linear probes per layer with a permuted-label control: where a task's answer is linearly readable.

Stage: probes (reads stored activations and prompts.jsonl; writes results/probes.csv).

Method
------
For one (model, task) and each layer, an L2-regularised multinomial (softmax) logistic probe
predicts the gold option index from the last prompt token's state:

1. examples of a class seen once are dropped (a stratified split cannot hold them out);
2. stratified ``k``-fold cross-validation, ``k = min(n_folds, smallest class count)``, seeded,
   the same folds for every layer; features are standardised on each training fold (as
   :class:`sklearn.preprocessing.StandardScaler`, near-constant features left unscaled);
3. the probe is :class:`sklearn.linear_model.LogisticRegression` (lbfgs), whose multinomial fit
   minimises ``C * sum(log loss) + |W|^2 / 2`` with an unpenalised intercept (``C = PROBE_C / d``,
   see below); with 2 classes sklearn fits a binary probe, equal to the softmax one at ``C`` when
   given ``2 * C``, so it is given ``2 * C``;
4. ``accuracy`` is the mean held-out accuracy over the folds; ``control_accuracy`` is the same
   procedure on the labels permuted once within the task (seeded; folds stratified on the
   permuted labels) and ``selectivity = accuracy - control_accuracy`` (Hewitt and Liang 2019:
   accuracy a probe of this capacity reaches on labels the states do not encode is not evidence
   that they encode the task); ``chance`` is the majority-class share.

Speed
-----
With an L2 penalty the optimal weights lie in the span of the standardised training rows, so each
fold is fitted on its rows' coordinates in an orthonormal basis of that span (from the
eigendecomposition of the fold's Gram matrix): ``n_train`` features instead of ``d``, the same
objective and predictions (tests check them against a plain sklearn fit to 1e-6). Each layer, fold
and label set is one :class:`~sklearn.linear_model.LogisticRegression` fit (lbfgs, default ``tol``):
190 fits for one (19, 96, 640) float32 (model, task) with 4 classes and 5 folds, ~1.2 s of one core
on synthetic states (~13 lbfgs iterations a fit, mostly sklearn's per-call overhead) and 1.4-3 s on
the demo study's (40-300 iterations), whose 36 labelled (model, task) pairs take ~80 s (measured on a
shared 2-core CPU). The work runs under one BLAS thread (:func:`probe_layers` sets it): on these
small matrices more threads only spin, 10-20 times slower on a busy machine.

Regularisation
--------------
``C = PROBE_C / d``: scaling the penalty with the width ``d`` keeps it the same relative to the
data term (the standardised Gram matrix grows with ``d``), so one value serves every model. It
was fixed by a sweep on the demo study (gemma-3-270m, d=640; 10 tasks with options; base,
experimental and control models; layers 1-18; 5 folds; 540 (model, task, layer) cells). Mean
accuracy minus chance for ``PROBE_C`` = 0.1, 0.3, 1, 3, 10, 30, 100, 300 was 0.003, 0.019, 0.028,
0.034, 0.039, 0.041, 0.041, 0.041: strong penalties shrink every probe towards the majority
class, and from 30 on the curve is flat (trec still gains, glue_mrpc loses), so
``PROBE_C = 30`` (C = 0.047 at d=640) is the smallest value on the plateau; larger values cost
more solver iterations for nothing. Control accuracy falls slightly below chance as the penalty
weakens (-0.009 to -0.051), as a probe fitted to random labels stops predicting the majority
class. The sweep used the demo's test prompts themselves, a mild selection effect shared by the
probe and its control. An inner cross-validation choosing ``C`` per layer and fold would cost
~15 times as much and, on ~77 training rows, mostly pick noise.

References
----------
Hewitt and Liang, "Designing and Interpreting Probes with Control Tasks", EMNLP 2019.
"""

from __future__ import annotations

import json
import zlib
from numbers import Integral, Real
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold
from threadpoolctl import threadpool_limits

from mossa.errors import MossaError
from mossa.store import StudyDir, atomic_path
from mossa.workers import JobPool


__all__ = ["PROBE_C", "PROBE_COLUMNS", "PROBE_TABLE_COLUMNS", "probe_layers", "probe_table", "prompt_labels",
           "write_probes"]

PROBE_C = 30.0  # inverse L2 strength times the width d (see the module docstring for the sweep)
PROBE_COLUMNS = ["layer", "accuracy", "control_accuracy", "selectivity", "chance", "n_examples", "n_classes",
                 "n_folds"]
PROBE_TABLE_COLUMNS = ["task", "cluster", "model", *PROBE_COLUMNS]
_MAX_ITER = 1000  # lbfgs iterations at most (sklearn's default tol decides when it stops)
_RANK_RTOL = 1e-10  # Gram eigenvalues below this share of the largest span no direction (float noise)
_EPS = np.finfo(np.float64).eps


def _check_settings(where: str, n_folds, seed, C) -> None:
    if isinstance(n_folds, bool) or not isinstance(n_folds, Integral) or n_folds < 2:
        raise MossaError(f"{where}: expected n_folds to be an integer >= 2, got {n_folds!r}; fix: use n_folds=5")
    if isinstance(seed, bool) or not isinstance(seed, Integral) or seed < 0:
        raise MossaError(f"{where}: expected seed to be an integer >= 0, got {seed!r}; fix: use seed=0")
    if isinstance(C, bool) or not isinstance(C, Real) or not np.isfinite(C) or C <= 0:
        raise MossaError(f"{where}: expected C to be a finite number > 0, got {C!r}; fix: use C=PROBE_C")


def _check_probe_inputs(states, labels, n_folds, seed, C) -> tuple[np.ndarray, np.ndarray]:
    where = "probe_layers"
    arr = np.asarray(states)
    if arr.ndim != 3 or arr.shape[0] == 0 or arr.shape[2] == 0:
        raise MossaError(f"{where}: expected states as a 3-D array [n_layers, n_examples, d] with at least one "
                         f"layer and feature, got shape {arr.shape}; fix: pass ActivationFile.read() (one row per "
                         "example at every layer), or states[None] for a single layer")
    if not np.issubdtype(arr.dtype, np.number) or np.issubdtype(arr.dtype, np.complexfloating):
        raise MossaError(f"{where}: expected real-valued states, got dtype {arr.dtype}; fix: pass float activations")
    y = np.asarray(labels)
    if y.ndim != 1 or len(y) != arr.shape[1]:
        raise MossaError(f"{where}: expected labels as a 1-D array with one entry per example ({arr.shape[1]}), "
                         f"got shape {y.shape}; fix: pass the gold index of each row of states, in row order")
    if len(y) and (y.dtype == bool or not np.issubdtype(y.dtype, np.integer)):
        raise MossaError(f"{where}: expected integer class labels, got dtype {y.dtype}; fix: pass gold option "
                         "indices (prompt_labels gives them)")
    if not np.all(np.isfinite(arr)):
        bad = sorted({int(i) for i in np.nonzero(~np.isfinite(arr))[1]})
        raise MossaError(f"{where}: expected finite states, got NaN or inf in examples {bad[:10]}; fix: drop those "
                         "rows (ActivationFile.finite_rows() marks them)")
    _check_settings(where, n_folds, seed, C)
    return arr, y.astype(np.int64)


def _projected(X: np.ndarray, train: np.ndarray, test: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Coordinates of train and test rows in an orthonormal basis of the standardised training rows' span.

    Returns ``phi_train [L, n_train, n_train]`` and ``phi_test [L, n_test, n_train]``; directions the
    training rows do not span (Gram eigenvalues below ``_RANK_RTOL`` of the largest) are zero columns.
    """
    Xtr, Xte = X[:, train].astype(np.float64), X[:, test].astype(np.float64)
    n = len(train)
    mean = Xtr.mean(axis=1, keepdims=True)
    Xtr -= mean
    Xte -= mean
    var = np.einsum("lnd,lnd->ld", Xtr, Xtr)[:, None] / n
    constant = var <= n * _EPS * var + (n * mean * _EPS) ** 2  # StandardScaler's rule for a constant feature
    inv = 1.0 / np.sqrt(np.where(constant, 1.0, var))
    Xtr *= inv
    Xte *= inv
    XtrT = Xtr.transpose(0, 2, 1)
    lam, Q = np.linalg.eigh(Xtr @ XtrT)
    used = lam > _RANK_RTOL * lam[:, -1:]
    root = np.sqrt(np.where(used, lam, 0.0))
    inv_root = np.divide(1.0, root, out=np.zeros_like(root), where=used)
    return Q * root[:, None, :], (Xte @ XtrT) @ Q * inv_root[:, None, :]


def _fold_probabilities(X: np.ndarray, folds, n_classes: int, C: float) -> list[np.ndarray]:
    """Held-out class probabilities ``[L, n_test, K]`` per (labels, train, test) fold, one sklearn fit per layer.

    With 2 classes sklearn fits one logit difference ``w`` instead of the softmax pair ``(w/2, -w/2)``, whose
    penalty is half as large: its fit at ``2 C`` is the softmax probe at ``C``.
    """
    probe = LogisticRegression(C=2 * C if n_classes == 2 else C, max_iter=_MAX_ITER)
    out = []
    for y, train, test in folds:
        phi_train, phi_test = _projected(X, train, test)
        P = np.zeros((X.shape[0], len(test), n_classes))
        for layer in range(X.shape[0]):
            probe.fit(phi_train[layer], y[train])
            P[layer][:, probe.classes_] = probe.predict_proba(phi_test[layer])
        out.append(P)
    return out


def _cv_accuracy(X, y, n_splits, seed, C) -> tuple[np.ndarray, np.ndarray]:
    """Per-layer mean held-out accuracy for true labels ``y[0]`` and control labels ``y[1]``."""
    splitter = StratifiedKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    folds = [(lab, tr, te) for lab in y for tr, te in splitter.split(np.zeros((len(lab), 1)), lab)]
    probs = _fold_probabilities(X, folds, int(y[0].max()) + 1, C)
    accs = np.array([(P.argmax(axis=2) == lab[te]).mean(axis=1) for (lab, _, te), P in zip(folds, probs)])
    return accs[:n_splits].mean(axis=0), accs[n_splits:].mean(axis=0)


def probe_layers(states: np.ndarray, labels: np.ndarray, *, n_folds: int = 5, seed: int = 0,
                 C: float = PROBE_C) -> pd.DataFrame:
    """Cross-validated linear-probe accuracy per layer, with a permuted-label control.

    Parameters
    ----------
    states : ndarray of shape (n_layers, n_examples, d)
        One (model, task)'s last-prompt-token states (``ActivationFile.read()``), finite.
    labels : ndarray of shape (n_examples,)
        Integer class of each example (the gold option index).
    n_folds : int, default=5
        Stratified folds; fewer (``min(n_folds, smallest class count)``) when a class is that small.
    seed : int, default=0
        Seeds the folds and the control permutation (the same folds for every layer).
    C : float, default=PROBE_C
        Inverse L2 strength times ``d``: the probe is ``LogisticRegression(C=C / d)`` on standardised
        features (``2 * C / d`` with 2 classes, the same softmax probe; module docstring: the sweep
        behind the default).

    Returns
    -------
    DataFrame
        One row per layer with columns ``PROBE_COLUMNS``. ``n_examples`` counts the rows used: examples of
        a class seen once are dropped (``attrs["dropped"]`` says how many, ``attrs["C"]`` holds ``C / d``).
        With fewer than 2 classes left (or no example) the accuracies are NaN and ``n_folds`` is 0.

    Raises
    ------
    MossaError
        (a ValueError) for states that are not a finite 3-D array, labels that are not integers with one per
        example, or an invalid ``n_folds``, ``seed`` or ``C``.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> y = np.repeat([0, 1], 20)
    >>> X = rng.standard_normal((2, 40, 8)); X[1, :, 0] += 6 * y
    >>> probe_layers(X, y)[["layer", "accuracy", "chance"]].round(2).to_dict("list")
    {'layer': [0, 1], 'accuracy': [0.38, 1.0], 'chance': [0.5, 0.5]}
    """
    X, y = _check_probe_inputs(states, labels, n_folds, seed, C)
    with threadpool_limits(1):  # small matrices: one BLAS thread is fastest, more spin (see mossa.analysis)
        return _probe_layers(X, y, n_folds, seed, float(C))


def _probe_layers(X: np.ndarray, y: np.ndarray, n_folds: int, seed: int, C: float) -> pd.DataFrame:
    n_layers, n, d = X.shape
    values, counts = np.unique(y, return_counts=True)
    keep = np.isin(y, values[counts >= 2])
    y = np.searchsorted(values[counts >= 2], y[keep])
    n_classes = int((counts >= 2).sum())
    chance = float(np.bincount(y).max() / len(y)) if len(y) else np.nan
    n_splits = int(min(n_folds, np.bincount(y).min())) if n_classes >= 2 else 0
    acc = ctl = np.full(n_layers, np.nan)
    if n_classes >= 2:
        rng = np.random.default_rng(seed)
        fold_seed = int(rng.integers(2 ** 31))
        control = rng.permutation(y)
        acc, ctl = _cv_accuracy(X[:, keep], (y, control), n_splits, fold_seed, C / d)
    df = pd.DataFrame({"layer": np.arange(n_layers), "accuracy": acc, "control_accuracy": ctl,
                       "selectivity": acc - ctl, "chance": chance, "n_examples": int(keep.sum()),
                       "n_classes": n_classes, "n_folds": n_splits})
    df.attrs.update(dropped=int(n - keep.sum()), C=C / d)
    return df


def prompt_labels(path) -> dict[str, dict[str, int]]:
    """Gold option index of each labelled example in a study's prompts.jsonl: ``{task: {id: gold}}``.

    Rows whose ``options`` or ``gold`` is missing or null (generation tasks) are skipped, and a task with
    no labelled row is absent. Ids keep the file's order.

    Raises
    ------
    MossaError
        For an unreadable file, a line that is not a JSON object with ``task`` and ``id``, or a ``gold``
        that is not an index into its row's ``options``.
    """
    path = Path(path)
    labels: dict[str, dict[str, int]] = {}
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise MossaError(f"{path}: cannot read the prompts file ({exc.strerror}); fix: pass the study's "
                         "prompts.jsonl, written by `mossa run`") from None
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise MossaError(f"{path}:{number}: expected a JSON object, got invalid JSON ({exc.msg}); fix: "
                             "rerun `mossa run` to rewrite the file") from None
        if not isinstance(row, dict) or not isinstance(row.get("task"), str) or row.get("id") is None:
            raise MossaError(f"{path}:{number}: expected an object with 'task' and 'id', got {line[:80]!r}; fix: "
                             "rerun `mossa run` to rewrite the file")
        options, gold = row.get("options"), row.get("gold")
        if options is None or gold is None:
            continue
        if (not isinstance(options, list) or isinstance(gold, bool) or not isinstance(gold, int)
                or not 0 <= gold < len(options)):
            raise MossaError(f"{path}:{number}: expected 'gold' to index 'options', got gold={gold!r} with "
                             f"{len(options) if isinstance(options, list) else options!r} options; fix: set "
                             "gold to the target's position in options, or both to null")
        labels.setdefault(row["task"], {})[str(row["id"])] = gold
    return labels


def _task_seed(seed: int, task: str) -> int:
    """The seed of every model of one task: from (seed, task) only, so they share folds and permutation."""
    return int(np.random.SeedSequence([seed, zlib.crc32(task.encode())]).generate_state(1)[0])


def _probe_job(root: str, model: str, task: str, rows: np.ndarray, labels: np.ndarray, n_folds: int,
               seed: int, C: float) -> pd.DataFrame:
    """One (model, task): read its labelled rows, drop non-finite ones, probe every layer (a pool job)."""
    file = StudyDir(root).activation_file(model, task, verify=False)
    finite = file.finite_rows()[rows]
    return probe_layers(file.read(rows=rows[finite]), labels[finite], n_folds=n_folds, seed=seed, C=C)


def probe_table(root, labels: dict[str, dict[str, int]], models: dict[str, list[str]],
                clusters: dict[str, str], *, n_folds: int = 5, seed: int = 0, pool: JobPool | None = None,
                max_examples: int | None = None, C: float = PROBE_C) -> pd.DataFrame:
    """Probe accuracy per (task, model, layer) for a study's stored activations.

    For each task of ``labels`` (sorted) and each model of ``models[task]`` whose activation folder
    exists, one job runs :func:`probe_layers` on the examples that have a label, in the order of
    ``labels[task]`` (prompts.jsonl's), so every model of a task sees the same rows, folds and control
    permutation (seeded by ``(seed, task)`` only). Examples with non-finite states are dropped.

    Parameters
    ----------
    root : path
        The study folder.
    labels : dict
        ``{task: {example id: gold index}}``, as from :func:`prompt_labels`.
    models : dict
        ``{task: [model label, ...]}`` to probe (e.g. ``["base", "experimental", "control"]``).
    clusters : dict
        ``{task: cluster name}`` for the table's ``cluster`` column; every probed task needs one.
    n_folds, seed, C
        As in :func:`probe_layers`.
    pool : JobPool, optional
        Runs the jobs (the table does not depend on its number of workers); None runs them here.
    max_examples : int, optional
        Keep only the first ``max_examples`` labelled examples of each task (a budget knob); None keeps all.

    Returns
    -------
    DataFrame
        Columns ``PROBE_TABLE_COLUMNS``; ``attrs["skipped"]`` lists the ``(task, model)`` pairs without an
        activation folder or without any labelled example in it.

    Raises
    ------
    MossaError
        For a task without a cluster, a malformed ``models``, ``max_examples``, ``n_folds``, ``seed`` or ``C``,
        or an unreadable activation folder.
    """
    if not isinstance(models, dict) or any(not isinstance(v, (list, tuple)) or not all(isinstance(m, str) for m in v)
                                           for v in models.values()):
        raise MossaError(f"probe_table: expected models as {{task: [model label, ...]}}, got {models!r:.80}; fix: "
                         "pass e.g. {'sst2': ['base', 'control']}")
    _check_settings("probe_table", n_folds, seed, C)
    if max_examples is not None and (isinstance(max_examples, bool) or not isinstance(max_examples, Integral)
                                     or max_examples < 1):
        raise MossaError(f"probe_table: expected max_examples to be None or an integer >= 1, got {max_examples!r}; "
                         "fix: use None (all examples) or e.g. 64")
    tasks = sorted(t for t in labels if labels[t] and models.get(t))
    missing = [t for t in tasks if t not in clusters]
    if missing:
        raise MossaError(f"probe_table: expected a cluster for every probed task, got none for {missing}; fix: add "
                         "them to clusters (study.json lists each task's cluster)")
    study = StudyDir(root)
    pool = pool if pool is not None else JobPool(1)
    jobs, skipped = [], []
    for task in tasks:
        ids = list(labels[task])[:max_examples]
        for model in models[task]:
            if not (study.activation_dir(model, task) / "meta.json").is_file():
                skipped.append((task, model))
                continue
            position = {i: r for r, i in enumerate(study.activation_file(model, task, verify=False).ids)}
            present = [i for i in ids if i in position]
            if not present:
                skipped.append((task, model))
                continue
            rows = np.array([position[i] for i in present], dtype=np.int64)
            gold = np.array([labels[task][i] for i in present], dtype=np.int64)
            future = pool.submit(_probe_job, str(study.root), model, task, rows, gold, n_folds,
                                 _task_seed(seed, task), C)
            jobs.append((task, model, future))
    frames = [df.assign(task=task, cluster=clusters[task], model=model)
              for task, model, df in ((t, m, f.result()) for t, m, f in jobs)]
    table = (pd.concat(frames, ignore_index=True)[PROBE_TABLE_COLUMNS] if frames
             else pd.DataFrame(columns=PROBE_TABLE_COLUMNS))
    table.attrs = {"skipped": skipped}
    return table


def write_probes(df: pd.DataFrame, root) -> Path:
    """Write the probe table to ``results/probes.csv`` in the study folder, atomically; returns the path."""
    path = StudyDir(root).path("results", "probes.csv")
    with atomic_path(path) as tmp:
        df.to_csv(tmp, index=False)
    return path
