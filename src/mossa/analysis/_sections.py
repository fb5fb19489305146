"""Functional sections of layers (shared, transition, refinement) by a stated, testable criterion.

Stage: analysis. Reads a per-task, per-layer gain table (no store access, no model); returns a
JSON-serialisable dict that the report stage may write to ``results/``.

Zhao et al. (2024) read three sections of layers off their Fig. 2 by eye: *shared* layers where
the multi-task model E is at or below the base model B, *transition* layers where CKA(E, C_t)
rises steeply, and *refinement* layers where it stays high. This module replaces the reading by
eye with a criterion that anyone can rerun and that carries bootstrap uncertainty.

Curve
-----
The study passes the gain of **debiased** linear CKA (``SECTION_MEASURE``),
``gain[t, l] = dCKA(E, C_t) - dCKA(B, C_t)`` for tasks ``t`` and layers ``l``. Biased linear CKA
is inflated when there are fewer examples than dimensions: two independent Gaussian samples of
n = 96 rows and d = 640 columns (the demo's test prompts and hidden size) score 0.87, against
0.02 for debiased CKA. That inflation depends on each representation's spectrum, not on what E
and C_t share, so a gain of biased CKA can rise or fall with depth for no reason of interest;
debiased CKA (unbiased HSIC) removes the small-n term at the price of more variance, which the
bootstrap below carries.

Criterion
---------
Layers with any NaN are set aside (and reported). The curve analysed is the per-layer median
over tasks, ``m(l)``. It is fitted by least squares with a **continuous plateau-ramp-plateau**
model over the layer numbers ``x``::

    f(x) = a                                      for x <= x_s  (shared: last layer x_s)
    f(x) = a + (b - a) (x - x_s) / (x_r - x_s)    for x_s < x < x_r  (transition)
    f(x) = b                                      for x >= x_r  (refinement: first layer x_r)

Every split of the usable layers into three contiguous sections of at least ``min_size`` layers
each is tried (at most ~n^2/2 candidate pairs, each a closed-form regression), so the fit is
exact, not a local search; ties go to the earliest split. The *jump* is ``b - a``.

Test. The null is a **straight line**: a curve that drifts steadily with depth has no
transition. The statistic is the *bend*, the drop in the residual sum of squares when the best
rising ramp (over all splits) is added to the best straight line: ``RSS(line) -
RSS(line + ramp)``. Its null distribution comes from a bootstrap under the null (Hall and
Wilson's first guideline): the residual rows ``gain[t] - m`` are resampled over tasks and added
to the fitted line, and the bend of each resample's median is recomputed with the split chosen
afresh, so the threshold accounts for the search over splits. The bend does not change when any
straight line is added to the curve, so its null distribution does not depend on the estimated
slope or level (their second guideline: a statistic free of the nuisance parameters). A
transition is declared when all of these hold: the bootstrap p-value of the bend is at most
``alpha``; the plateau-ramp-plateau fits ``m`` better than the best straight line
(``rss < rss_line``); the fit rises (``b - a > 0``); and ``b - a >= min_jump`` when one is given.
An ordinary bootstrap over tasks (rows resampled with replacement, refitted every time) gives
percentile intervals for the transition's first and last layers, for the jump and for each
section's mean, and the fraction of resamples that find exactly the same boundaries.

Too few tasks. The bootstrap over tasks cannot hold its level with a handful of tasks: on the
calibration's null tables the bend's p-value is at most 0.05 in 42% of them at 2 tasks, 9% at 3
and 5% at 4 (6% with other noise), against at most 3% from 5 tasks on. With fewer than
``MIN_SECTION_TASKS`` = 5 tasks no section is stated: the result says "too few tasks".

Calibration (``tests/analysis/test_sections.py``, alpha = 0.05): per-task noise of sd 0.1,
AR(1) across layers (rho = 0.7) with Student-t innovations (4 df), plus a per-task offset. On pure
noise and on a drift of 0.01 per layer, with 5 to 30 tasks, 0.5-3% false positives: the test is
conservative, as the bootstrap of a median over few tasks overstates its spread. A jump of 0.3
over a 3-layer ramp in 18 layers is found at 12 tasks in 97% of replicates (95% with both
boundaries within two layers), over a 6-layer ramp in 76%, and at 5 tasks in 40% and 21%.

Why a ramp and not three constant levels: the paper's transition is a *rise*, not a third
level. A piecewise-constant fit models a ramp as a step, cuts it near its middle and hands its
two ends to the neighbouring plateaus, so the transition it reports is too short and its
boundaries move with the noise on the ramp. In the ramp model the boundaries are the two knots
where the slope changes, which is what "the layers where CKA rises steeply" means. The plateaus
are level by construction; a refinement section that drifts slowly is fitted by its average,
and the residual drift shows in ``segment_means`` and in the fit's residual sum of squares.

References
----------
Zhao, Ziser and Cohen, "Layer by Layer: Uncovering Where Multi-Task Learning Happens in
Instruction-Tuned Large Language Models", EMNLP 2024.
Hall and Wilson, "Two guidelines for bootstrap hypothesis testing", Biometrics 47, 1991.
Song, Smola, Gretton, Bedo and Borgwardt, "Feature selection via dependence maximization",
JMLR 13, 2012 (the unbiased HSIC behind debiased CKA).
"""

from __future__ import annotations

import warnings
from typing import NamedTuple

import numpy as np
import pandas as pd

from mossa.errors import MossaError

SECTION_MEASURE = "debiased_cka"  # the CKA whose gain the study analyses: free of small-n inflation
MIN_SECTION_TASKS = 5  # fewest tasks for which the null bootstrap holds its level (see the module docstring)
_BATCH_FLOATS = 2**22  # floats per vectorised bootstrap batch ([reps, resamples, tasks, layers])

CRITERION = (
    "Per-layer median over tasks m(l) of the gain, layers with any NaN set aside; exact least-squares fit (all "
    "splits tried) of a continuous plateau-ramp-plateau curve: level a on the shared section, a linear rise on "
    "the transition section, level b on the refinement section, each section at least {min_size} layers. A "
    "transition is found when the bend (the drop in residual sum of squares from adding the best rising ramp to "
    "the best straight line) has a null-bootstrap p-value of at most {alpha:g} (residual rows of tasks resampled "
    "around the fitted line, split chosen afresh each time), the plateau-ramp-plateau fits better than the line "
    "and rises{extra}; at least {min_tasks} tasks are required; 95% percentile intervals come from {n_boot} "
    "bootstrap resamples of tasks, refitted each time."
)


def _check_inputs(gain, layers, n_boot, min_size, min_jump, alpha):
    """Validate at the door; return (gain as float array, layer numbers as int array)."""
    arr = np.asarray(gain, dtype=float)
    if arr.ndim != 2:
        raise MossaError(
            f"find_sections: expected gain as a 2-D array [n_tasks, n_layers], got ndim={arr.ndim} "
            f"with shape {arr.shape}; fix: pass one row per task, stack the per-task curves with np.vstack")
    n_tasks, n_layers = arr.shape
    if n_tasks < 1:
        raise MossaError("find_sections: expected at least one task (row), got 0; fix: pass the gain of every "
                         "task, one row each")
    if np.isinf(arr).any():
        rows, cols = np.nonzero(np.isinf(arr))
        raise MossaError(
            f"find_sections: expected finite gains or NaN for undefined layers, got inf at "
            f"(task, column) {list(zip(rows.tolist(), cols.tolist()))[:5]}; fix: replace them with NaN")
    if layers is None:
        lay = np.arange(n_layers)
    else:
        lay_f = np.asarray(layers, dtype=float)
        if lay_f.shape != (n_layers,):
            raise MossaError(
                f"find_sections: expected layers as a 1-D array of {n_layers} layer numbers (one per gain "
                f"column), got shape {lay_f.shape}; fix: pass the layer number of each column, or omit layers")
        if not np.all(np.isfinite(lay_f)) or not np.all(lay_f == np.round(lay_f)) or np.any(np.diff(lay_f) <= 0):
            raise MossaError(
                f"find_sections: expected layers to be strictly increasing integers, got {lay_f.tolist()}; "
                "fix: sort the gain columns by layer and pass integer layer numbers")
        lay = lay_f.astype(int)
    if not (isinstance(n_boot, (int, np.integer)) and n_boot >= 1):
        raise MossaError(f"find_sections: expected n_boot to be an integer >= 1, got {n_boot!r}; "
                         "fix: use n_boot=1000 or more for stable 95% intervals")
    if not (isinstance(min_size, (int, np.integer)) and min_size >= 1):
        raise MossaError(f"find_sections: expected min_size to be an integer >= 1, got {min_size!r}; "
                         "fix: use min_size=2 (the default)")
    if min_jump is not None and not (np.isfinite(min_jump) and min_jump >= 0):
        raise MossaError(f"find_sections: expected min_jump to be None or a finite number >= 0, got "
                         f"{min_jump!r}; fix: pass the smallest rise of the gain (in CKA units) worth "
                         "calling a transition, or None to use the null bootstrap alone")
    if not (0 < alpha < 1):
        raise MossaError(f"find_sections: expected alpha in (0, 1), got {alpha!r}; fix: use alpha=0.05")
    return arr, lay


def _ramp_design(x: np.ndarray, min_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """All admissible splits and their ramp regressors.

    For usable positions ``0..n-1`` a split ``(i, j)`` means shared ``[0, i-1]``, transition
    ``[i, j]``, refinement ``[j+1, n-1]``. Returns the pairs ``[P, 2]``, the ramp ``r`` ``[P, n]``
    (0 on shared, 1 on refinement, linear in ``x`` between), its centred copy and ``|r_c|^2`` ``[P]``.
    """
    n = len(x)
    pairs = [(i, j) for i in range(min_size, n - 2 * min_size + 1)
             for j in range(i + min_size - 1, n - min_size)]
    pairs = np.asarray(pairs, dtype=int).reshape(-1, 2)
    lo = x[pairs[:, 0] - 1].astype(float)  # last shared layer
    hi = x[pairs[:, 1] + 1].astype(float)  # first refinement layer
    ramp = np.clip((x[None, :] - lo[:, None]) / (hi - lo)[:, None], 0.0, 1.0)  # [P, n]
    centred = ramp - ramp.mean(axis=1, keepdims=True)
    return pairs, ramp, centred, np.einsum("pn,pn->p", centred, centred)


def _bend_design(x: np.ndarray, centred: np.ndarray, norm2: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Centred line ``x_c`` [n] and the ramps with the line projected out, ``[P, n]``.

    A ramp that is itself a straight line over the usable layers (possible with ``min_size=1``)
    has nothing left after the projection; its row is zeroed so that it never bends.
    """
    xc = x.astype(float) - x.mean()
    perp = centred - np.outer(centred @ xc / (xc @ xc), xc)
    perp[np.einsum("pn,pn->p", perp, perp) <= 1e-12 * norm2] = 0.0
    return xc, perp


def _fit(curves: np.ndarray, centred: np.ndarray, norm2: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Best split and jump ``b - a`` for each curve in ``curves`` [k, n] -> ([k] pair index, [k] jump).

    With ``f = a + (b - a) r``, least squares on ``[1, r]`` leaves a residual sum of squares of
    ``|m - mean m|^2 - <r_c, m>^2 / |r_c|^2``, so the best split maximises the second term and the
    jump is ``<r_c, m> / |r_c|^2``.
    """
    proj = (curves - curves.mean(axis=1, keepdims=True)) @ centred.T  # [k, P]; centring: exact shift invariance
    best = np.argmax(proj * proj / norm2, axis=1)  # first maximum: ties go to the earliest split
    jump = proj[np.arange(len(curves)), best] / norm2[best]
    return best, jump


def _bend(curves: np.ndarray, perp: np.ndarray) -> np.ndarray:
    """``RSS(line) - RSS(line + best rising ramp)`` of each curve in ``curves`` [..., n] -> [...].

    The ramp, with the line projected out, enters with a coefficient >= 0 (a rise, not a fall);
    the drop in RSS is then ``max_p max(<q_p, m>, 0)^2 / |q_p|^2`` for the projected ramps ``q_p``.
    """
    n2 = np.einsum("pn,pn->p", perp, perp)
    proj = np.maximum((curves - curves.mean(axis=-1, keepdims=True)) @ perp.T, 0.0)
    return np.max(np.divide(proj * proj, n2, out=np.zeros_like(proj), where=n2 > 0), axis=-1)


class _Design(NamedTuple):
    """Everything about the layer numbers that the fits and the test need, computed once."""

    pairs: np.ndarray  # [P, 2] admissible splits
    ramp: np.ndarray  # [P, n] ramp regressors
    centred: np.ndarray  # [P, n] centred ramps
    norm2: np.ndarray  # [P] their squared norms
    xc: np.ndarray  # [n] centred layer numbers
    perp: np.ndarray  # [P, n] centred ramps with the line projected out


def _design(x: np.ndarray, min_size: int) -> _Design:
    """The splits, ramps and line for usable layer numbers ``x``."""
    pairs, ramp, centred, norm2 = _ramp_design(x, min_size)
    return _Design(pairs, ramp, centred, norm2, *_bend_design(x, centred, norm2))


def _null_test(data: np.ndarray, m: np.ndarray, design: _Design, n_boot: int,
               rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Bend of the medians ``m`` [R, n] of ``data`` [R, n_tasks, n] and its null-bootstrap p-value -> ([R], [R]).

    Null tables are the fitted line plus the residual rows ``data - m`` resampled over tasks; each
    layer's median residual is 0, so the population curve of a null table is the line.
    """
    n_rep, n_tasks, _ = data.shape
    xc, perp = design.xc, design.perp
    stat = _bend(m, perp)
    line = m.mean(axis=1, keepdims=True) + np.outer((m - m.mean(axis=1, keepdims=True)) @ xc / (xc @ xc), xc)
    resid = data - m[:, None, :]
    exceed = np.zeros(n_rep)
    chunk = max(1, _BATCH_FLOATS // data.size)
    reps = np.arange(n_rep)[:, None, None]
    for start in range(0, n_boot, chunk):
        k = min(chunk, n_boot - start)
        null_curves = line[:, None, :] + np.median(resid[reps, rng.integers(0, n_tasks, size=(n_rep, k, n_tasks))],
                                                   axis=2)  # [R, k, n]
        exceed += np.sum(_bend(null_curves, perp) >= stat[:, None] * (1 - 1e-9), axis=1)
    return stat, (1 + exceed) / (1 + n_boot)


def _decide(data: np.ndarray, design: _Design, *, n_boot: int, alpha: float, min_jump: float | None,
            rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Fit, bend test and decision for each of ``R`` gain tables ``data`` [R, n_tasks, n] without NaN.

    Vectorised over the tables so that a calibration over many replicates runs in one pass;
    ``find_sections`` passes its one table as ``data[None]``. Returns arrays [R] under the keys
    ``best`` (split index), ``jump``, ``rss``, ``rss_line``, ``rss_flat``, ``statistic``,
    ``p_value`` and ``found``.
    """
    m = np.median(data, axis=1)  # [R, n]
    best, jump = _fit(m, design.centred, design.norm2)
    jump = np.where(np.ptp(m, axis=1) == 0, 0.0, jump)  # a constant curve: 0, not a rounding residue of either sign
    mc = m - m.mean(axis=1, keepdims=True)
    rss_flat = np.einsum("rn,rn->r", mc, mc)
    rss = np.maximum(rss_flat - np.einsum("rn,rn->r", mc, design.centred[best]) ** 2 / design.norm2[best], 0.0)
    rss_line = np.maximum(rss_flat - (mc @ design.xc) ** 2 / (design.xc @ design.xc), 0.0)
    stat, p_value = _null_test(data, m, design, n_boot, rng)
    found = (p_value <= alpha) & (rss < rss_line) & (jump > 0) & (jump >= (min_jump or 0.0))
    return {"best": best, "jump": jump, "rss": rss, "rss_line": rss_line, "rss_flat": rss_flat, "statistic": stat,
            "p_value": p_value, "found": found}


def _span(layers: np.ndarray, first: int, last: int) -> list[int]:
    return [int(layers[first]), int(layers[last])]


def find_sections(gain: np.ndarray, *, layers: np.ndarray | None = None, n_boot: int = 1000, seed: int = 0,
                  min_size: int = 2, min_jump: float | None = None, alpha: float = 0.05) -> dict:
    """Shared, transition and refinement layers from the per-task gain of E over B, with bootstrap CIs.

    The criterion is stated in full in the module docstring and in the returned ``"criterion"``:
    an exact least-squares plateau-ramp-plateau fit to the per-layer median gain over tasks; a
    transition is declared only when the curve bends away from its best straight line by more than
    a null bootstrap around that line allows, and the plateau-ramp-plateau beats the line and rises.
    With fewer than ``MIN_SECTION_TASKS`` tasks the answer is "too few tasks", not a finding.

    Parameters
    ----------
    gain : ndarray of shape (n_tasks, n_layers)
        ``CKA(E, C_t) - CKA(B, C_t)`` per task and layer (the study uses debiased CKA,
        ``SECTION_MEASURE``). NaN marks an undefined value (layer 0 at a shared answer cue, say);
        every column holding a NaN is left out of the fit and listed in ``excluded_layers`` (a
        warning is issued when only some tasks are NaN there).
    layers : ndarray of shape (n_layers,), default=None
        The layer number of each column, strictly increasing integers; ``np.arange(n_layers)``
        when omitted. The ramp is linear in these numbers and all ranges are reported in them.
    n_boot : int, default=1000
        Bootstrap resamples of tasks, used both for the intervals and for the null distribution.
    seed : int, default=0
        Seed of the ``numpy.random.Generator`` drawing the resamples; equal seeds, equal output.
    min_size : int, default=2
        Fewest layers in each of the three sections.
    min_jump : float or None, default=None
        Smallest rise ``b - a`` (refinement level minus shared level, in gain units) that counts as
        a transition, required on top of the null-bootstrap test. ``None``: the test alone.
    alpha : float, default=0.05
        Level of the null-bootstrap test: the bend's p-value must be at most ``alpha``.

    Returns
    -------
    dict
        Plain Python types throughout. Always present: ``"transition_found"`` (bool),
        ``"too_few_tasks"`` (bool), ``"criterion"`` (str), ``"n_tasks"``, ``"min_tasks"``,
        ``"n_boot"``, ``"layers"`` (layers used) and ``"excluded_layers"``. With too few tasks
        only these and ``"reason"``. Otherwise also ``"jump"`` (fitted ``b - a``), ``"jump_ci"``
        ([lo, hi]), ``"jump_threshold"`` (what the jump had to exceed: 0 or ``min_jump``),
        ``"statistic"`` (the bend), ``"p_value"`` (null bootstrap, one-sided),
        ``"fitted_levels"`` ([a, b]), ``"rss"``, ``"rss_line"`` and ``"rss_flat"`` (residual sums
        of squares of the ramp fit, the best straight line and a single constant). When a
        transition is found also ``"shared"``, ``"transition"``, ``"refinement"`` (inclusive
        ``[first, last]`` layer ranges), ``"segment_means"`` (mean of the median curve over each
        section), ``"segment_means_ci"`` (bootstrap intervals for those means with the boundaries
        held fixed), ``"ci"`` with ``"transition_start"`` and ``"transition_end"`` ([lo, hi] layer
        numbers, 95% percentile intervals of the refitted boundaries) and
        ``"boundary_agreement"`` (fraction of resamples finding exactly the same boundaries, and
        within one layer). When none is found: ``"reason"`` and ``"candidate"``, the best split
        with the same keys, which is not a finding.

    Raises
    ------
    MossaError
        If ``gain`` is not 2-D, has no task, holds inf, is NaN at every layer, or leaves fewer
        than ``3 * min_size`` usable layers; if ``layers`` does not match the columns or is not
        strictly increasing integers; if ``n_boot``, ``min_size``, ``min_jump`` or ``alpha`` is out
        of range.

    See Also
    --------
    mossa.analysis.task_similarity : the per-task, per-layer CKA values the gain is computed from.

    References
    ----------
    Zhao, Ziser and Cohen, "Layer by Layer", EMNLP 2024 (sections read by eye in their Fig. 1).

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(1)
    >>> curve = np.r_[np.full(8, -0.05), np.linspace(-0.05, 0.3, 7)[1:-1], np.full(11, 0.3)]
    >>> out = find_sections(curve + rng.normal(0, 0.03, (40, 24)), n_boot=200)
    >>> out["transition_found"], out["transition"]
    (True, [8, 12])
    >>> find_sections(curve + rng.normal(0, 0.03, (3, 24)))["reason"]
    'too few tasks: 3 tasks, at least 5 are needed for the test of a transition to hold its level'
    >>> drift = 0.02 * np.arange(24) + rng.normal(0, 0.03, (40, 24))
    >>> find_sections(drift, n_boot=200)["transition_found"]
    False
    """
    arr, lay = _check_inputs(gain, layers, n_boot, min_size, min_jump, alpha)
    n_tasks = arr.shape[0]
    nan_cols = np.isnan(arr).any(axis=0)
    partial = nan_cols & ~np.isnan(arr).all(axis=0)
    if partial.any():
        warnings.warn(f"find_sections: layers {lay[partial].tolist()} are NaN for some tasks only; they are "
                      "left out of the fit for every task", stacklevel=2)
    usable = ~nan_cols
    data, x = arr[:, usable], lay[usable]  # [n_tasks, n]
    n = data.shape[1]
    if n == 0:
        raise MossaError(f"find_sections: the gain is undefined (NaN) at every layer ({lay.tolist()}), so there is "
                         "no curve to fit; the similarity table gives each value's undefined_reason")
    if n < 3 * min_size:
        raise MossaError(
            f"find_sections: expected at least 3 * min_size = {3 * min_size} layers without NaN, got {n} "
            f"(excluded as NaN: {lay[nan_cols].tolist()}); fix: pass more layers, lower min_size, or "
            "recompute the gain where it is undefined")

    extra = f" by at least min_jump = {min_jump:g}" if min_jump is not None else ""
    out = {
        "transition_found": False,
        "too_few_tasks": n_tasks < MIN_SECTION_TASKS,
        "criterion": CRITERION.format(min_size=min_size, alpha=alpha, extra=extra, min_tasks=MIN_SECTION_TASKS,
                                      n_boot=n_boot),
        "n_tasks": int(n_tasks),
        "min_tasks": MIN_SECTION_TASKS,
        "n_boot": int(n_boot),
        "layers": [int(v) for v in x],
        "excluded_layers": [int(v) for v in lay[nan_cols]],
    }
    if out["too_few_tasks"]:
        out["reason"] = (f"too few tasks: {n_tasks} task{'s' * (n_tasks != 1)}, at least {MIN_SECTION_TASKS} are "
                         "needed for the test of a transition to hold its level")
        return out

    design = _design(x, min_size)
    pairs, ramp, centred, norm2 = design.pairs, design.ramp, design.centred, design.norm2
    rng = np.random.default_rng(seed)
    res = {k: v[0].item() for k, v in _decide(data[None], design, n_boot=n_boot, alpha=alpha, min_jump=min_jump,
                                              rng=rng).items()}
    best, jump, p_value, stat = res["best"], res["jump"], res["p_value"], res["statistic"]
    m = np.median(data, axis=0)  # [n]
    i, j = pairs[best]
    level_a = float(m.mean() - jump * ramp[best].mean())
    boot_pairs = np.empty((n_boot, 2), dtype=int)
    boot_jump = np.empty(n_boot)
    sections = [(0, i - 1), (i, j), (j + 1, n - 1)]
    boot_means = np.empty((n_boot, 3))
    chunk = max(1, _BATCH_FLOATS // data.size)
    for start in range(0, n_boot, chunk):
        k = min(chunk, n_boot - start)
        curves = np.median(data[rng.integers(0, n_tasks, size=(k, n_tasks))], axis=1)
        b_best, boot_jump[start:start + k] = _fit(curves, centred, norm2)
        boot_pairs[start:start + k] = pairs[b_best]
        boot_means[start:start + k] = np.stack([curves[:, s:e + 1].mean(axis=1) for s, e in sections], axis=1)

    segment_means = [float(m[s:e + 1].mean()) for s, e in sections]
    out.update({
        "transition_found": res["found"],
        "jump": jump,
        "jump_ci": [float(v) for v in np.quantile(boot_jump, [0.025, 0.975])],
        "jump_threshold": float(min_jump) if min_jump is not None else 0.0,
        "statistic": stat,
        "p_value": p_value,
        "fitted_levels": [level_a, level_a + jump],
        "rss": res["rss"],
        "rss_line": res["rss_line"],
        "rss_flat": res["rss_flat"],
    })
    split = {"shared": _span(x, 0, i - 1), "transition": _span(x, i, j), "refinement": _span(x, j + 1, n - 1),
             "segment_means": segment_means}
    if not res["found"]:
        if jump <= 0:
            why = f"the best fit does not rise (jump b - a = {jump:.4g} <= 0): no rising transition"
        elif p_value > alpha:
            why = (f"the median curve bends away from its best straight line no more than resampled task noise "
                   f"does (bend {stat:.3g}, null-bootstrap p = {p_value:.3g} > {alpha:g}): no transition beyond "
                   "a steady drift")
        elif res["rss"] >= res["rss_line"]:
            why = (f"a straight line fits the median curve at least as well as the plateau-ramp-plateau (residual "
                   f"sums of squares {res['rss_line']:.3g} and {res['rss']:.3g}): a steady drift, not a transition")
        else:
            why = f"the fitted rise b - a = {jump:.4g} is below min_jump = {min_jump:g}"
        out["reason"] = why
        out["candidate"] = split
        return out

    starts = x[boot_pairs[:, 0]]
    ends = x[boot_pairs[:, 1]]
    same = (boot_pairs[:, 0] == i) & (boot_pairs[:, 1] == j)
    near = (np.abs(boot_pairs[:, 0] - i) <= 1) & (np.abs(boot_pairs[:, 1] - j) <= 1)  # in usable positions
    out.update(split)
    out["segment_means_ci"] = [[float(v) for v in np.quantile(boot_means[:, s], [0.025, 0.975])]
                               for s in range(3)]
    out["ci"] = {
        "transition_start": [int(np.quantile(starts, 0.025, method="lower")),
                             int(np.quantile(starts, 0.975, method="higher"))],
        "transition_end": [int(np.quantile(ends, 0.025, method="lower")),
                           int(np.quantile(ends, 0.975, method="higher"))],
    }
    out["boundary_agreement"] = {"exact": float(same.mean()), "within_one_layer": float(near.mean())}
    return out


def layer_sections(sim: pd.DataFrame, *, model: str = "experimental", measure: str = "debiased_cka", n_boot: int,
                   seed: int) -> dict:
    """Shared / transition / refinement layers from the per-task gain CKA(M, C_t) - CKA(B, C_t) of `measure`.

    Debiased CKA by default: biased linear CKA is inflated when there are fewer test examples
    than dimensions (the demo's 96 against 640), and its gain inherits that inflation
    (this module's docstring explains). With fewer than 5 tasks the result says "too few tasks".
    """
    rows = sim[sim["measure"] == measure]
    if rows.empty:
        return {"transition_found": False, "model": model, "measure": measure,
                "reason": f"the similarity table has no {measure} values (it has "
                          f"{', '.join(sorted(set(sim['measure'])))}); rerun `mossa analyze` with {measure} among "
                          "--measures"}
    data = rows.pivot_table(index=["task", "layer"], columns="model", values="value", dropna=False)
    gain = (data[model] - data["base"]).unstack("layer")  # [tasks, layers]
    try:
        found = find_sections(gain.to_numpy(dtype=float), layers=gain.columns.to_numpy(), n_boot=max(n_boot, 100),
                              seed=seed)
    except MossaError as exc:
        return {"transition_found": False, "reason": str(exc), "model": model, "measure": measure}
    return {**found, "model": model, "measure": measure}


__all__ = ["CRITERION", "MIN_SECTION_TASKS", "SECTION_MEASURE", "find_sections", "layer_sections"]
