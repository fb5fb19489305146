"""Linear probes per layer against a Hewitt-Liang control task: where a task's answer is linearly readable.

Stage: probes (reads stored activations and prompts.jsonl; writes results/probes.csv).

Method
------
For one (model, task) and each layer, an L2-regularised multinomial (softmax) logistic probe
predicts the gold option index from the last prompt token's state:

1. examples of a class seen once are dropped (a stratified split cannot hold them out);
2. stratified ``k``-fold cross-validation, ``k = min(n_folds, smallest class count)``, seeded, the
   same folds for every layer, stratified on the (label, control label) pairs when each is common
   enough (else on the labels); features are standardised on each training fold (as
   :class:`sklearn.preprocessing.StandardScaler`, near-constant features left unscaled);
3. the probe is :class:`sklearn.linear_model.LogisticRegression` (lbfgs), whose multinomial fit
   minimises ``C * sum(log loss) + |W|^2 / 2`` with an unpenalised intercept, ``C = c / d`` for
   ``c`` in ``PROBE_CS``; with 2 classes sklearn fits a binary probe, equal to the softmax one at
   ``C`` when given ``2 * C``, so it is given ``2 * C``;
4. ``c`` is chosen per layer and fold by nested cross-validation on that fold's training rows
   only (see Regularisation); the probe at that ``c`` is fitted on the training rows and predicts
   the test fold; the control probe (the same ``c``) is fitted on the control labels;
5. ``accuracy`` and ``control_task_accuracy`` are the shares of examples predicted right when held
   out; ``selectivity`` compares them (below), with an interval over folds (below).

Control task
------------
Hewitt and Liang's control task gives each input *type* one random label, drawn from the task's
label shares (:func:`control_task`): a probe reaches it only by telling the types apart and
memorising each type's label, so what it scores there is its capacity to memorise, not evidence
that the states encode the task. The type here is the prompt's template when the task's labelled
prompts use 2 or more (templates are drawn per example independently of the label, and their
wording differs, so the last token's state tells them apart: the states of the demo decode a
template-keyed control at 0.97-1.00 from layer 1 on); for a task with one template, the quartile
of the prompt's length in tokens (:func:`prompt_types`; the next input property that varies
whatever the template, and that a state carries less surely, so the control is easier to beat);
without either, no control task and no selectivity. Of ``CONTROL_DRAWS`` seeded draws, the one
whose label shares are closest to the task's is kept. The former control, the labels permuted
across examples, is Hewitt and Liang's task with every example its own type: nothing to memorise,
so it sat at chance whatever the probe's capacity (0.499 at ``c`` = 30 and 0.500 at 30000, as
issue 25 measured) and is no longer computed.

Selectivity
-----------
Four templates cannot copy a task's label shares (over 3 balanced classes the control's majority
is at least 1/2), and a probe that reads nothing scores ``sum_k p_k q_k`` (label shares ``p``,
its prediction shares ``q``), not the majority share. So each accuracy is read above its chance
agreement (Cohen's kappa's chance term, from the held-out predictions): ``selectivity =
(accuracy - chance_agreement) - (control_task_accuracy - control_chance_agreement)``, Hewitt and
Liang's difference of accuracies on a common floor; 0 for any probe whose predictions ignore the
states. ``chance`` and ``control_chance`` (the majority shares) are kept for reading.

Interval: ``LEVEL`` (95%) by Nadeau and Bengio's corrected resampled t over the ``k`` per-fold
selectivities, ``t(k-1) * sqrt(1/k + 1/(k-1)) * sd``: the ``1/(k-1)`` term charges for the
training rows the folds share, which makes the examples' correctness dependent. Measured by
simulation (4-template control, 96 examples, d=128; noise, template only, label and template,
label only; the truth from 100 probes trained on 77 fresh rows and scored on 2000): coverage
0.96-0.97 with 2 classes and 0.945-0.98 with 4 (200 samples each, widths 0.35-0.44), where a
normal interval over examples, ignoring that dependence, covered 0.84-0.92. The interval is per
(task, model, layer): a best layer picked among 19 is not corrected for that choice.

Regularisation
--------------
``C = c / d``: scaling the penalty with the width ``d`` keeps it the same relative to the data
term (the standardised Gram matrix grows with ``d``). ``PROBE_CS = (1, 30, 1000)`` spans a sweep
on the demo (mean accuracy over chance 0.028 at 1, plateau from 30; 0.003 at 0.1, where every
probe shrinks to the majority class). For test fold ``f`` the candidate with the least log loss
in a cross-validation over the other ``k - 1`` folds is chosen (:func:`_chosen_C`): the test fold
never enters, as a test checks by rewriting its labels. The fit that holds out folds ``f`` and
``g`` serves both outer folds, so the ``k (k - 1)`` inner fits take ``k (k - 1) / 2`` per
candidate; they run at ``tol = 1e-2`` from the previous candidate's weights (the same choice as
at the default ``1e-4`` in 516 of 525 (layer, fold) cells, demo and synthetic states). On the
demo's states every choice is ``c = 1``, and the probe still decodes the template-keyed control
at 0.97-1.00. Before, ``c = 30`` was fixed by that sweep on the demo's own test prompts.

Speed
-----
With an L2 penalty the optimal weights lie in the span of the standardised training rows, so each
fit uses its rows' coordinates in an orthonormal basis of that span (from the eigendecomposition
of the Gram matrix): ``n_train`` features instead of ``d``, the same objective and predictions
(tests check them against a plain sklearn fit to 1e-6). Per layer, 10 inner fits per candidate
plus 5 fits on the labels and 5 on the control labels: 40 fits instead of 10 (the permuted
control's). The demo's size (5 tasks, 4 models, 19 layers, 96 examples, d=640, synthetic states)
takes 28 s of one core against 11.5 s before; the demo's own labelled pairs (glue_mrpc, 3
models) 4.9 s against 2.8 s (shared 2-core CPU). The work runs under one BLAS thread
(:func:`probe_layers` sets it) with sklearn's input checks off (inputs are checked here): on these
small matrices more threads only spin.

References
----------
Hewitt and Liang, "Designing and Interpreting Probes with Control Tasks", EMNLP 2019.
Nadeau and Bengio, "Inference for the Generalization Error", Machine Learning 52, 2003.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Sequence
from itertools import combinations
from numbers import Integral, Real
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.stats import t as t_dist
from sklearn import config_context
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold
from threadpoolctl import threadpool_limits

from mossa.errors import MossaError
from mossa.store import StudyDir, atomic_path
from mossa.workers import JobPool


__all__ = ["PROBE_CS", "PROBE_COLUMNS", "PROBE_TABLE_COLUMNS", "control_task", "probe_layers",
           "probe_table", "prompt_labels", "prompt_types", "write_probes"]

PROBE_CS = (1.0, 30.0, 1000.0)  # candidate inverse L2 strengths times d, chosen per fold and layer (nested CV)
PROBE_COLUMNS = ["layer", "accuracy", "chance_agreement", "control_task_accuracy", "control_chance_agreement",
                 "selectivity", "selectivity_low", "selectivity_high", "chance", "control_chance", "C", "n_examples",
                 "n_classes", "n_types", "n_folds"]
PROBE_TABLE_COLUMNS = ["task", "cluster", "model", "control_type", *PROBE_COLUMNS]
CONTROL_DRAWS = 200  # seeded draws of the control labels; the one closest to the real label shares is kept
LEVEL = 0.95  # selectivity's interval
_MAX_ITER = 1000  # lbfgs iterations at most (sklearn's default tol decides when it stops)
_INNER_TOL = 1e-2  # lbfgs tol of the inner fits that choose C (measured: the same choices as at 1e-4)
_RANK_RTOL = 1e-10  # Gram eigenvalues below this share of the largest span no direction (float noise)
_EPS = np.finfo(np.float64).eps


def _check_settings(where: str, n_folds, seed, C) -> tuple[float, ...]:
    """Validate the shared settings; returns the candidate C values, ascending."""
    if isinstance(n_folds, bool) or not isinstance(n_folds, Integral) or n_folds < 2:
        raise MossaError(f"{where}: expected n_folds to be an integer >= 2, got {n_folds!r}; fix: use n_folds=5")
    if isinstance(seed, bool) or not isinstance(seed, Integral) or seed < 0:
        raise MossaError(f"{where}: expected seed to be an integer >= 0, got {seed!r}; fix: use seed=0")
    values = list(C) if isinstance(C, Sequence) and not isinstance(C, str) else [C]
    if not values or any(isinstance(c, bool) or not isinstance(c, Real) or not np.isfinite(c) or c <= 0
                         for c in values):
        raise MossaError(f"{where}: expected C to be a finite number > 0 or a non-empty sequence of them, got "
                         f"{C!r}; fix: use C=PROBE_CS (chosen by nested cross-validation) or e.g. C=30 (fixed)")
    return tuple(sorted({float(c) for c in values}))


def _check_probe_inputs(states, labels, types, n_folds, seed, C):
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
    if types is not None:
        types = np.asarray(types)
        if types.ndim != 1 or len(types) != len(y) or (len(types) and types.dtype.kind not in "iuU"):
            raise MossaError(f"{where}: expected types as a 1-D array of integers or strings with one entry per "
                             f"example ({len(y)}), got shape {types.shape} and dtype {types.dtype}; fix: pass each "
                             "example's input type (its template index, as prompt_types gives), or None")
    if not np.all(np.isfinite(arr)):
        bad = sorted({int(i) for i in np.nonzero(~np.isfinite(arr))[1]})
        raise MossaError(f"{where}: expected finite states, got NaN or inf in examples {bad[:10]}; fix: drop those "
                         "rows (ActivationFile.finite_rows() marks them)")
    grid = _check_settings(where, n_folds, seed, C)
    return arr, y.astype(np.int64), types, grid


def control_task(labels, types, seed: int = 0) -> np.ndarray | None:
    """Hewitt and Liang's control task: one random label per input type, drawn with the real label shares.

    Each distinct value of ``types`` gets one label drawn from the empirical distribution of ``labels``
    (seeded); of ``CONTROL_DRAWS`` such draws that use at least 2 labels, the one whose label shares
    (weighted by the types' sizes) are closest to the real ones in total variation is kept, so the
    control's chance levels stay near the task's (selectivity's chance agreement corrects the rest).
    A probe can reach the control's labels only by telling the types apart and memorising each one's
    label: what it does on them measures its capacity, not the task.

    Returns
    -------
    ndarray of int or None
        The control label of each example, or None when there are fewer than 2 types (or no draw uses
        2 labels): nothing for a control task to key on.
    """
    y = np.asarray(labels, dtype=np.int64)
    kinds, inverse, sizes = np.unique(np.asarray(types), return_inverse=True, return_counts=True)
    if len(kinds) < 2 or not len(y):
        return None
    share = np.bincount(y) / len(y)
    draws = np.random.default_rng(seed).choice(len(share), size=(CONTROL_DRAWS, len(kinds)), p=share)
    shares = np.stack([np.bincount(row, weights=sizes, minlength=len(share)) for row in draws]) / len(y)
    distance = np.where((shares > 0).sum(axis=1) >= 2, np.abs(shares - share).sum(axis=1) / 2, np.inf)
    if not np.isfinite(distance).any():
        return None
    return draws[int(distance.argmin())][inverse.ravel()]


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


def _fit_predict(probe: LogisticRegression, train: np.ndarray, y: np.ndarray, test: np.ndarray, n_classes: int,
                 C: float) -> np.ndarray:
    """Class probabilities ``[n_test, n_classes]`` of ``probe`` fitted at ``C`` (softmax scale).

    With 2 classes sklearn fits one logit difference ``w`` instead of the softmax pair ``(w/2, -w/2)``, whose
    penalty is half as large: its fit at ``2 C`` is the softmax probe at ``C``. A single training class is
    predicted with certainty (a control label can be missing from a training fold).
    """
    P = np.zeros((len(test), n_classes))
    present = np.unique(y)
    if len(present) == 1:
        P[:, present[0]] = 1.0
        return P
    probe.set_params(C=2 * C if len(present) == 2 else C)
    probe.fit(train, y)
    P[:, probe.classes_] = probe.predict_proba(test)
    return P


def _layer_probabilities(phi_train: np.ndarray, y: np.ndarray, phi_test: np.ndarray, n_classes: int,
                         C: np.ndarray) -> np.ndarray:
    """Held-out class probabilities ``[L, n_test, n_classes]``: one fit per layer, at that layer's ``C``."""
    probe = LogisticRegression(max_iter=_MAX_ITER)
    return np.stack([_fit_predict(probe, phi_train[layer], y, phi_test[layer], n_classes, C[layer])
                     for layer in range(len(phi_train))])


def _chosen_C(X: np.ndarray, y: np.ndarray, folds: list, grid: np.ndarray, n_classes: int) -> np.ndarray:
    """The candidate ``C`` of each layer and outer fold ``[L, k]``: the one with the least log loss in a
    cross-validation over the other ``k - 1`` folds (each held out in turn from the fold's training rows).

    The test fold never enters its own choice. The inner fit that holds out folds ``f`` and ``g`` (standardised
    on the rest) serves both outer folds: validated on ``g`` for ``f`` and on ``f`` for ``g``, so the ``k (k - 1)``
    inner fits of a nested cross-validation take ``k (k - 1) / 2``. A single candidate is returned as is; with
    fewer than 3 folds (no inner training rows) the middle candidate is. Candidates run from the strongest
    penalty up, each fit starting from the previous one's weights, at a looser ``tol`` (a choice, not a result).
    """
    n_layers, k = len(X), len(folds)
    if len(grid) == 1 or k < 3:
        return np.full((n_layers, k), grid[0] if len(grid) == 1 else grid[len(grid) // 2])
    loss = np.zeros((n_layers, k, len(grid)))
    for f, g in combinations(range(k), 2):
        held = np.r_[folds[f][1], folds[g][1]]
        train = np.setdiff1d(np.arange(len(y)), held)
        phi_train, phi_held = _projected(X, train, held)
        on_f = np.arange(len(held)) < len(folds[f][1])
        for layer in range(n_layers):
            probe = LogisticRegression(max_iter=_MAX_ITER, tol=_INNER_TOL, warm_start=True)
            for j, C in enumerate(grid):
                P = _fit_predict(probe, phi_train[layer], y[train], phi_held[layer], n_classes, C)
                nll = -np.log(np.maximum(P[np.arange(len(held)), y[held]], _EPS))
                loss[layer, g, j] += nll[on_f].sum()
                loss[layer, f, j] += nll[~on_f].sum()
    return grid[loss.argmin(axis=2)]


def probe_layers(states: np.ndarray, labels: np.ndarray, types: np.ndarray | None = None, *, n_folds: int = 5,
                 seed: int = 0, C: float | Sequence[float] = PROBE_CS) -> pd.DataFrame:
    """Cross-validated linear-probe accuracy per layer against a Hewitt-Liang control task, with selectivity.

    Parameters
    ----------
    states : ndarray of shape (n_layers, n_examples, d)
        One (model, task)'s last-prompt-token states (``ActivationFile.read()``), finite.
    labels : ndarray of shape (n_examples,)
        Integer class of each example (the gold option index).
    types : ndarray of shape (n_examples,), optional
        Each example's input type (integers or strings; :func:`prompt_types` gives the template index) on
        which :func:`control_task` keys the control labels. None (or fewer than 2 types): no control task,
        the control columns and selectivity are NaN.
    n_folds : int, default=5
        Stratified folds; fewer (``min(n_folds, smallest class count)``) when a class is that small.
    seed : int, default=0
        Seeds the folds and the control labels (the same for every layer).
    C : float or sequence of float, default=PROBE_CS
        Inverse L2 strength times ``d`` (the probe is ``LogisticRegression(C=C / d)`` on standardised
        features): several values are candidates, one chosen per fold and layer by a cross-validation over the
        other folds (the fold's training rows only); one value is used as is.

    Returns
    -------
    DataFrame
        One row per layer with columns ``PROBE_COLUMNS``: ``accuracy`` and ``control_task_accuracy`` are the
        shares of examples predicted right when held out (the control probe at the ``C`` chosen for the labels
        in that fold and layer), each with its ``chance_agreement`` (what predictions independent of the labels
        would score); ``selectivity`` is the first's excess over its chance agreement minus the second's, with
        its ``LEVEL`` interval over folds (``selectivity_low``, ``selectivity_high``; module docstring);
        ``chance`` and ``control_chance`` the majority shares; ``C`` the median chosen value (times ``d``);
        ``n_types`` the distinct types. ``n_examples`` counts the rows used: examples of a class seen once are
        dropped (``attrs["dropped"]`` says how many). With fewer than 2 classes left (or no example) the
        accuracies are NaN and ``n_folds`` is 0.

    Raises
    ------
    MossaError
        (a ValueError) for states that are not a finite 3-D array, labels that are not integers with one per
        example, types that are not integers or strings with one per example, or an invalid ``n_folds``,
        ``seed`` or ``C``.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> y = np.repeat([0, 1], 20)
    >>> X = rng.standard_normal((2, 40, 8)); X[1, :, 0] += 6 * y
    >>> probe_layers(X, y, np.arange(40) % 4)[["layer", "accuracy", "C"]].round(2).to_dict("list")
    {'layer': [0, 1], 'accuracy': [0.57, 1.0], 'C': [1.0, 1000.0]}
    """
    X, y, types, grid = _check_probe_inputs(states, labels, types, n_folds, seed, C)
    # small matrices: one BLAS thread is fastest, more spin (see mossa.analysis); inputs are checked above
    with threadpool_limits(1), config_context(assume_finite=True, skip_parameter_validation=True):
        return _probe_layers(X, y, types, n_folds, seed, np.asarray(grid))


def _corrected_half_width(per_fold: np.ndarray) -> np.ndarray:
    """Half-width of the ``LEVEL`` interval of a k-fold mean from its per-fold values ``[L, k]``: Nadeau and
    Bengio's corrected resampled t, ``t(k-1) * sqrt(1/k + n_test/n_train) * sd over folds``, where
    ``n_test/n_train = 1/(k-1)`` charges for the overlap of the training sets that the folds share."""
    k = per_fold.shape[1]
    return t_dist.ppf((1 + LEVEL) / 2, k - 1) * np.sqrt(1 / k + 1 / (k - 1)) * per_fold.std(axis=1, ddof=1)


def _above_chance(pred: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Accuracy ``[L]`` of predictions ``[L, n]`` and its chance agreement ``sum_k p_k q_k`` (label share times
    prediction share, Cohen's kappa's chance term): what predictions independent of the labels would reach."""
    n_classes = int(max(labels.max(), pred.max())) + 1
    label_share = np.bincount(labels, minlength=n_classes) / len(labels)
    pred_share = np.stack([np.bincount(row, minlength=n_classes) for row in pred]) / len(labels)
    return (pred == labels).mean(axis=1), pred_share @ label_share


def _probe_layers(X: np.ndarray, y: np.ndarray, types: np.ndarray | None, n_folds: int, seed: int,
                  grid: np.ndarray) -> pd.DataFrame:
    n_layers, n, d = X.shape
    values, counts = np.unique(y, return_counts=True)
    keep = np.isin(y, values[counts >= 2])
    X, y = X[:, keep], np.searchsorted(values[counts >= 2], y[keep])
    types = types[keep] if types is not None else None
    n_classes = int((counts >= 2).sum())
    fold_seed, control_seed = (int(s) for s in np.random.default_rng(seed).integers(2 ** 31, size=2))
    control = control_task(y, types, control_seed) if types is not None and n_classes >= 2 else None
    n_splits = int(min(n_folds, np.bincount(y).min())) if n_classes >= 2 else 0
    nan = np.full(n_layers, np.nan)
    out = dict(accuracy=nan, chance_agreement=nan, control_task_accuracy=nan, control_chance_agreement=nan,
               selectivity=nan, selectivity_low=nan, selectivity_high=nan, C=nan)
    if n_classes >= 2:
        strata = y if control is None else y * (int(control.max()) + 1) + control
        if np.bincount(strata)[np.unique(strata)].min() < n_splits:
            strata = y  # a (label, control label) pair too rare to stratify on: the labels alone
        splitter = StratifiedKFold(n_splits=n_splits, shuffle=True, random_state=fold_seed)
        folds = list(splitter.split(np.zeros((len(y), 1)), strata))
        chosen = _chosen_C(X, y, folds, grid / d, n_classes)
        tasks = [y] if control is None else [y, control]
        pred = np.empty((len(tasks), n_layers, len(y)), dtype=np.int64)  # held-out predictions per label set
        for fold, (train, test) in enumerate(folds):
            phi_train, phi_test = _projected(X, train, test)
            for task, labels in enumerate(tasks):  # the control: the same probe (the C chosen for the labels)
                pred[task][:, test] = _layer_probabilities(phi_train, labels[train], phi_test, int(labels.max()) + 1,
                                                           chosen[:, fold]).argmax(axis=2)
        out["C"] = np.median(chosen, axis=1) * d
        out["accuracy"], out["chance_agreement"] = _above_chance(pred[0], y)
        if control is not None:
            out["control_task_accuracy"], out["control_chance_agreement"] = _above_chance(pred[1], control)
            selectivity = (out["accuracy"] - out["chance_agreement"]
                           - (out["control_task_accuracy"] - out["control_chance_agreement"]))
            per_fold = np.stack([np.subtract(*_above_chance(pred[0][:, test], y[test]))
                                 - np.subtract(*_above_chance(pred[1][:, test], control[test]))
                                 for _, test in folds], axis=1)
            half = _corrected_half_width(per_fold)
            out.update(selectivity=selectivity, selectivity_low=selectivity - half, selectivity_high=selectivity + half)
    df = pd.DataFrame({"layer": np.arange(n_layers), **out,
                       "chance": float(np.bincount(y).max() / len(y)) if len(y) else np.nan,
                       "control_chance": float(np.bincount(control).max() / len(y)) if control is not None else np.nan,
                       "n_examples": int(keep.sum()), "n_classes": n_classes,
                       "n_types": len(np.unique(types)) if types is not None else 0,
                       "n_folds": n_splits})[PROBE_COLUMNS]
    df.attrs.update(dropped=int(n - keep.sum()))
    return df


def _prompt_rows(path) -> list[tuple[int, dict]]:
    """(line number, row) of each non-blank line of a prompts.jsonl, each a JSON object with task and id."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise MossaError(f"{path}: cannot read the prompts file ({exc.strerror}); fix: pass the study's "
                         "prompts.jsonl, written by `mossa run`") from None
    rows = []
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
        rows.append((number, row))
    return rows


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
    labels: dict[str, dict[str, int]] = {}
    for number, row in _prompt_rows(path):
        options, gold = row.get("options"), row.get("gold")
        if options is None or gold is None:
            continue
        if (not isinstance(options, list) or isinstance(gold, bool) or not isinstance(gold, int)
                or not 0 <= gold < len(options)):
            raise MossaError(f"{Path(path)}:{number}: expected 'gold' to index 'options', got gold={gold!r} with "
                             f"{len(options) if isinstance(options, list) else options!r} options; fix: set "
                             "gold to the target's position in options, or both to null")
        labels.setdefault(row["task"], {})[str(row["id"])] = gold
    return labels


def prompt_types(path) -> dict[str, tuple[str, dict[str, int]]]:
    """The input type each labelled example's control label is keyed on: ``{task: (kind, {id: type})}``.

    ``kind`` is ``"template"`` (the template index) when the task's labelled prompts use 2 or more
    templates: the instruction wording differs between templates, so the last token's state tells them
    apart and a probe can memorise one label per template. Otherwise ``"length quartile"`` (the quartile
    of the prompt's token count among the task's labelled prompts), when every row records ``tokens``
    and the quartiles are not all equal: the next input property a state carries that varies whatever
    the template. A task with neither is absent (no control task; selectivity is not tested).

    Raises
    ------
    MossaError
        As :func:`prompt_labels` for a malformed line, and for a ``template`` or ``tokens`` that is present
        but not an integer.
    """
    found: dict[str, dict[str, tuple]] = {}
    for number, row in _prompt_rows(path):
        if row.get("options") is None or row.get("gold") is None:
            continue
        fields = []
        for key in ("template", "tokens"):
            value = row.get(key)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
                raise MossaError(f"{Path(path)}:{number}: expected '{key}' to be an integer, got {value!r}; fix: "
                                 "rerun `mossa run` to rewrite the file")
            fields.append(value)
        found.setdefault(row["task"], {})[str(row["id"])] = tuple(fields)
    out = {}
    for task, rows in found.items():
        ids = list(rows)
        templates, tokens = ([rows[i][k] for i in ids] for k in (0, 1))
        if None not in templates and len(set(templates)) >= 2:
            out[task] = ("template", dict(zip(ids, templates)))
        elif None not in tokens:
            quartile = np.searchsorted(np.quantile(tokens, [0.25, 0.5, 0.75]), tokens, side="right")
            if len(set(quartile.tolist())) >= 2:
                out[task] = ("length quartile", dict(zip(ids, quartile.tolist())))
    return out


def _task_seed(seed: int, task: str) -> int:
    """The seed of every model of one task: from (seed, task) only, so they share folds and control labels."""
    return int(np.random.SeedSequence([seed, zlib.crc32(task.encode())]).generate_state(1)[0])


def _probe_job(root: str, model: str, task: str, rows: np.ndarray, labels: np.ndarray, types: np.ndarray | None,
               n_folds: int, seed: int, C) -> pd.DataFrame:
    """One (model, task): read its labelled rows, drop non-finite ones, probe every layer (a pool job)."""
    file = StudyDir(root).activation_file(model, task, verify=False)
    finite = file.finite_rows()[rows]
    return probe_layers(file.read(rows=rows[finite]), labels[finite], types[finite] if types is not None else None,
                        n_folds=n_folds, seed=seed, C=C)


def probe_table(root, labels: dict[str, dict[str, int]], models: dict[str, list[str]],
                clusters: dict[str, str], *, n_folds: int = 5, seed: int = 0, pool: JobPool | None = None,
                max_examples: int | None = None, C: float | Sequence[float] = PROBE_CS,
                types: dict[str, tuple[str, dict[str, int]]] | None = None) -> pd.DataFrame:
    """Probe accuracy and selectivity per (task, model, layer) for a study's stored activations.

    For each task of ``labels`` (sorted) and each model of ``models[task]`` whose activation folder
    exists, one job runs :func:`probe_layers` on the examples that have a label, in the order of
    ``labels[task]`` (prompts.jsonl's), so every model of a task sees the same rows, folds and control
    labels (seeded by ``(seed, task)`` only). Examples with non-finite states are dropped.

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
    types : dict, optional
        ``{task: (kind, {example id: type})}`` keying each task's control task, as from :func:`prompt_types`;
        None reads the study's prompts.jsonl (no file: no control task). A task absent, or an example
        without a type, gives ``control_type`` ``"none"`` and NaN selectivity.

    Returns
    -------
    DataFrame
        Columns ``PROBE_TABLE_COLUMNS``; ``attrs["skipped"]`` lists the ``(task, model)`` pairs without an
        activation folder or without any labelled example in it.

    Raises
    ------
    MossaError
        For a task without a cluster, a malformed ``models``, ``max_examples``, ``n_folds``, ``seed`` or ``C``,
        or an unreadable activation folder or prompts file.
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
    if types is None:
        prompts = study.path("prompts.jsonl")
        types = prompt_types(prompts) if prompts.is_file() else {}
    pool = pool if pool is not None else JobPool(1)
    jobs, skipped = [], []
    for task in tasks:
        ids = list(labels[task])[:max_examples]
        kind, keyed = types.get(task, ("none", {}))
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
            typed = np.array([keyed[i] for i in present]) if all(i in keyed for i in present) else None
            future = pool.submit(_probe_job, str(study.root), model, task, rows, gold, typed, n_folds,
                                 _task_seed(seed, task), C)
            jobs.append((task, model, kind if typed is not None else "none", future))
    frames = [df.assign(task=task, cluster=clusters[task], model=model, control_type=kind)
              for task, model, kind, df in ((t, m, k, f.result()) for t, m, k, f in jobs)]
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
