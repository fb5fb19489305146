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
(``rss < rss_line``); the fit rises (``b - a > 0``); ``b - a >= min_jump`` when one is given; and
both sections beside the transition are plateaus (below). An ordinary bootstrap over tasks (rows
resampled with replacement, refitted every time) gives percentile intervals for the transition's
first and last layers, for the jump and for each section's mean, and the fraction of resamples
that find exactly the same boundaries.

Plateaus. Rejecting a straight line is not enough: a curve that bends without levelling off, such
as a saturating 1 - exp(-x / tau), a cubic, or a hinge (flat, then rising to the last layer; or
rising, then flat), beats the line, and the fit puts a short "plateau" on the part that keeps
rising. Over 18 layers, the bend test alone stated three sections on them in 10-24% of tables at
5 tasks, 40-84% at 12 and 87-100% at 30 (``bench/section_noise.py``). So each of the shared and
the refinement sections must be shown to be level. The boundaries are held fixed. In every
ordinary task resample, the section's least-squares slope on the median curve is divided by the
transition's slope: the jump refitted on that split, over the run from the last shared to the
first refinement layer. The section is a plateau when the ``1 - 2 alpha`` (90%) percentile
interval of that ratio lies within ``+-plateau_ratio`` (``PLATEAU_RATIO`` = 0.5: it changes at
most half as steeply as the transition). These are two one-sided tests at level ``alpha``, each
rejecting the null "the section changes at least half as steeply". Requiring both sections is an
intersection-union test, so the two need no correction. A resample whose transition does not
rise counts as an unbounded ratio: it cannot vouch for a plateau. A one-layer section
(``min_size=1``) has no slope, so it is never a plateau. The ratio is the evidence asked for
because the gain has no unit of flatness of its own: a plateau changes little *compared with the
rise*. Like the fit, the ratio is free of the gain's scale and shift. A test of "slope not
significantly different from 0" was not used. It reads noise too large to show a slope as
flatness: in a trial of 150 tables per cell it still stated three sections on 71-75% of the hinge
tables at 30 tasks (the bend test alone: 94-97%).

Cost of the plateau test (bench, 500 replicates, per-task noise only, 18 layers): the 3-layer
ramp of 0.3 is found at 12 tasks in 91% of replicates instead of 97%, at 30 in 100%, and at 5 in
24% instead of 42%. The 6-layer ramp is found in 39% instead of 79% at 12 tasks and in 84%
instead of 100% at 30. A long ramp leaves short plateaus, judged against a shallow rise. A ratio
of 2/3 would keep more power (6-layer ramp 64% at 12 tasks), but lets through up to 2.3% of the
hinges and gives up to 3.7% false positives with two E seeds (300 replicates).

E against B in the shared section. When sections are stated, ``shared_gain`` is the shared
section's level: the mean over its layers of the per-layer median gain (``segment_means[0]``),
with its 95% percentile interval over task resamples, boundaries fixed (``shared_gain_ci``).
``shared_e_at_or_below_b`` is True when that interval's upper end is at most 0, so the data put E
at or below B there (one-sided, 2.5%). ``shared_e_vs_b`` reads "at or below B" in that case,
"above B" when the lower end is above 0, and otherwise "within noise of B": the interval holds 0
and reaches above it, so neither is shown. The paper's shared layers have E at or below B. A
shared section with E above B is still a plateau, but not the paper's picture.

Two E seeds. Resampling tasks sees only the variation between tasks. It cannot see noise common
to all tasks: one draw per E training run, such as a layer-correlated wiggle of that run that
every task's gain inherits. In the bench, this noise was AR(1) across layers (rho 0.7, sd 0.05).
With it, the bend test alone stated sections on pure noise in 20% of tables at 12 tasks and 33%
at 30, and on a drift in 35% and 62%. With the plateau test, one E still states sections in
0.2-12% of null and smooth tables at 12 and 30 tasks. ``layer_sections(second_seed=...)`` takes a
second E, trained with another seed. It then states sections only when both seeds show them by
this criterion, each on its own gain, and their first and last transition layers differ by at
most ``SEED_TOLERANCE`` = 2 layers (``SEED_RULE``). Over every null and smooth curve at 5, 12 and
30 tasks, that leaves at most 1.2% false positives (95% interval up to 2.6%). Fitting the mean of
the two seeds' gains instead (half the common variance) left 6-7% at 30 tasks, so it is not
used. The price, when the common noise is this large, is power: at 12 tasks the 3-layer ramp is
found in 47% of tables (66% with one E) and the 6-layer ramp in 14%. Without a second seed,
``seed_check`` says "one E: seed variation not measured".

Too few tasks. The bootstrap over tasks cannot hold its level with a handful of tasks: on the
calibration's null tables the bend's p-value is at most 0.05 in 42% of them at 2 tasks, 9% at 3
and 5% at 4 (6% with other noise), against at most 3% from 5 tasks on. With fewer than
``MIN_SECTION_TASKS`` = 5 tasks no section is stated: the result says "too few tasks".

Calibration (``tests/analysis/test_sections.py`` and ``bench/section_noise.py``, alpha = 0.05).
Per-task noise has sd 0.1, is AR(1) across layers (rho = 0.7) with Student-t innovations (4 df),
and carries a per-task offset. The bend test alone gave 0.5-3% false positives on pure noise and
on a drift of 0.01 per layer, with 5 to 30 tasks. It is conservative, because the bootstrap of a
median over few tasks overstates its spread. With the plateau test, the bench finds no false
positive on them in 500 tables each at 5, 12 and 30 tasks. A jump of 0.3 is found at 12 tasks in 91% of replicates over a 3-layer ramp
in 18 layers, in 39% over a 6-layer ramp, and at 5 tasks in 24% and 3%.

Why a ramp and not three constant levels: the paper's transition is a *rise*, not a third
level. A piecewise-constant fit models a ramp as a step, cuts it near its middle and hands its
two ends to the neighbouring plateaus, so the transition it reports is too short and its
boundaries move with the noise on the ramp. In the ramp model the boundaries are the two knots
where the slope changes, which is what "the layers where CKA rises steeply" means. The fitted
plateaus are level by construction; whether the data's are is the plateau test's question.

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
PLATEAU_RATIO = 0.5  # a plateau's slope may be at most this fraction of the transition's (see "Plateaus")
SEED_TOLERANCE = 2  # layers by which the two E seeds' transition boundaries may differ (see "Two E seeds")
ONE_E = "one E: seed variation not measured"
_BATCH_FLOATS = 2**22  # floats per vectorised bootstrap batch ([reps, resamples, tasks, layers])

CRITERION = (
    "Per-layer median over tasks m(l) of the gain, layers with any NaN set aside; exact least-squares fit (all "
    "splits tried) of a continuous plateau-ramp-plateau curve: level a on the shared section, a linear rise on "
    "the transition section, level b on the refinement section, each section at least {min_size} layers. A "
    "transition is found when the bend (the drop in residual sum of squares from adding the best rising ramp to "
    "the best straight line) has a null-bootstrap p-value of at most {alpha:g} (residual rows of tasks resampled "
    "around the fitted line, split chosen afresh each time), the plateau-ramp-plateau fits better than the line "
    "and rises{extra}, and both the shared and the refinement section are plateaus: the {level:g}% bootstrap "
    "percentile interval of each one's slope (least squares on m within the section) divided by the transition's "
    "slope (the jump over the transition's width) lies within +-{plateau_ratio:g} (two one-sided tests at level "
    "{alpha:g}; a resample whose transition does not rise counts against it); at least {min_tasks} tasks are "
    "required; 95% percentile intervals come from {n_boot} bootstrap resamples of tasks, refitted each time."
)
SEED_RULE = ("three sections are stated only when both E seeds ({first} and {second}) show them by the criterion, "
             "each on its own gain over B, and their first and last transition layers differ by at most "
             "{tolerance} layers")


def _check_inputs(gain, layers, n_boot, min_size, min_jump, alpha, plateau_ratio):
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
    if not (0 < alpha < 0.5):
        raise MossaError(f"find_sections: expected alpha below 0.5, got {alpha!r}: the plateau test uses the "
                         f"1 - 2 alpha interval; fix: use alpha=0.05")
    if not (np.isfinite(plateau_ratio) and 0 < plateau_ratio <= 1):
        raise MossaError(f"find_sections: expected plateau_ratio in (0, 1], got {plateau_ratio!r}; fix: use "
                         f"plateau_ratio={PLATEAU_RATIO} (a plateau changes at most half as steeply as the "
                         "transition)")
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


def _slope_weights(x: np.ndarray, pairs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Least-squares slope weights of the shared and the refinement section of every split, ``[P, n]`` each.

    ``curve @ w`` is the slope of ``curve`` regressed on the layer numbers within the section; a
    section of one layer has no slope and its row is NaN.
    """
    n, xf = len(x), x.astype(float)
    pos = np.arange(n)
    out = []
    ends = np.ones(len(pairs), dtype=int)
    for first, last in ((0 * ends, pairs[:, 0] - 1), (pairs[:, 1] + 1, (n - 1) * ends)):  # shared, refinement
        inside = (pos >= first[:, None]) & (pos <= last[:, None])  # [P, n]
        centre = (xf * inside).sum(axis=1) / inside.sum(axis=1)
        dev = np.where(inside, xf - centre[:, None], 0.0)
        ss = np.einsum("pn,pn->p", dev, dev)[:, None]
        out.append(np.divide(dev, ss, out=np.full_like(dev, np.nan), where=ss > 0))
    return out[0], out[1]


class _Design(NamedTuple):
    """Everything about the layer numbers that the fits and the tests need, computed once."""

    pairs: np.ndarray  # [P, 2] admissible splits
    ramp: np.ndarray  # [P, n] ramp regressors
    centred: np.ndarray  # [P, n] centred ramps
    norm2: np.ndarray  # [P] their squared norms
    xc: np.ndarray  # [n] centred layer numbers
    perp: np.ndarray  # [P, n] centred ramps with the line projected out
    width: np.ndarray  # [P] layers from the last shared to the first refinement layer (the ramp's run)
    w_shared: np.ndarray  # [P, n] slope weights of the shared section (NaN for a one-layer section)
    w_refine: np.ndarray  # [P, n] slope weights of the refinement section


def _design(x: np.ndarray, min_size: int) -> _Design:
    """The splits, ramps, line and section slopes for usable layer numbers ``x``."""
    pairs, ramp, centred, norm2 = _ramp_design(x, min_size)
    width = (x[pairs[:, 1] + 1] - x[pairs[:, 0] - 1]).astype(float)
    return _Design(pairs, ramp, centred, norm2, *_bend_design(x, centred, norm2), width, *_slope_weights(x, pairs))


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


def _resample_medians(data: np.ndarray, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """Per-layer medians of ``n_boot`` resamples of the tasks of each table ``data`` [R, n_tasks, n].

    Returns [R, n_boot, n]; the draws are those the intervals of ``find_sections`` always used.
    """
    n_rep, n_tasks, n = data.shape
    out = np.empty((n_rep, n_boot, n))
    chunk = max(1, _BATCH_FLOATS // data.size)
    reps = np.arange(n_rep)[:, None, None]
    for start in range(0, n_boot, chunk):
        k = min(chunk, n_boot - start)
        out[:, start:start + k] = np.median(data[reps, rng.integers(0, n_tasks, size=(n_rep, k, n_tasks))], axis=2)
    return out


def _plateaus(m: np.ndarray, boot: np.ndarray, best: np.ndarray, jump: np.ndarray, design: _Design, *,
              plateau_ratio: float, alpha: float) -> dict[str, np.ndarray]:
    """Whether the shared and the refinement section of each table's best split are plateaus.

    ``m`` [R, n] are the median curves, ``boot`` [R, k, n] the medians of task resamples, ``best``
    and ``jump`` [R] the fitted splits and rises. The boundaries are held fixed; in every resample
    the section's least-squares slope is divided by the transition's slope (the jump refitted on
    that split, over the transition's width), +inf where the transition does not rise. A section
    is flat when the ``1 - 2 alpha`` percentile interval of that ratio lies within
    ``+-plateau_ratio``. Returns ``transition_slope`` [R] and, for (shared, refinement), ``slope``,
    ``ratio`` (NaN where the fit does not rise or the section has one layer) and ``flat`` [R, 2],
    and ``ratio_ci`` [R, 2, 2].
    """
    w = np.stack([design.w_shared[best], design.w_refine[best]], axis=1)  # [R, 2, n]
    width = design.width[best]
    rise = jump / width
    slope = np.einsum("rn,rsn->rs", m, w)
    boot_rise = (np.einsum("rkn,rn->rk", boot - boot.mean(axis=2, keepdims=True), design.centred[best])
                 / (design.norm2[best] * width)[:, None])
    boot_slope = np.einsum("rkn,rsn->rks", boot, w)
    with np.errstate(divide="ignore", invalid="ignore"):
        boot_ratio = np.where(boot_rise[..., None] > 0, boot_slope / boot_rise[..., None], np.inf)
        ratio = np.where(rise[:, None] > 0, slope / rise[:, None], np.nan)
    boot_ratio[np.isnan(boot_slope)] = np.nan
    ci = np.stack([np.quantile(boot_ratio, alpha, axis=1, method="lower"),
                   np.quantile(boot_ratio, 1 - alpha, axis=1, method="higher")], axis=-1)  # [R, 2, 2]
    flat = (ci[..., 0] >= -plateau_ratio) & (ci[..., 1] <= plateau_ratio)  # NaN compares False: not flat
    return {"transition_slope": rise, "slope": slope, "ratio": ratio, "ratio_ci": ci, "flat": flat}


def _decide(data: np.ndarray, design: _Design, *, n_boot: int, alpha: float, min_jump: float | None,
            rng: np.random.Generator, plateau_ratio: float = PLATEAU_RATIO) -> dict[str, np.ndarray]:
    """Fit, bend test, plateau test and decision for each of ``R`` gain tables ``data`` [R, n_tasks, n] without NaN.

    Vectorised over the tables so that a calibration over many replicates runs in one pass;
    ``find_sections`` passes its one table as ``data[None]``. Returns arrays [R] under the keys
    ``best`` (split index), ``jump``, ``rss``, ``rss_line``, ``rss_flat``, ``statistic``,
    ``p_value``, ``bends`` (the transition test without the plateaus) and ``found``; ``boot``
    [R, n_boot, n] (the medians of the task resamples, for the intervals) and the keys of
    ``_plateaus`` under ``plateau_*``.
    """
    m = np.median(data, axis=1)  # [R, n]
    best, jump = _fit(m, design.centred, design.norm2)
    jump = np.where(np.ptp(m, axis=1) == 0, 0.0, jump)  # a constant curve: 0, not a rounding residue of either sign
    mc = m - m.mean(axis=1, keepdims=True)
    rss_flat = np.einsum("rn,rn->r", mc, mc)
    rss = np.maximum(rss_flat - np.einsum("rn,rn->r", mc, design.centred[best]) ** 2 / design.norm2[best], 0.0)
    rss_line = np.maximum(rss_flat - (mc @ design.xc) ** 2 / (design.xc @ design.xc), 0.0)
    stat, p_value = _null_test(data, m, design, n_boot, rng)
    boot = _resample_medians(data, n_boot, rng)
    plateaus = _plateaus(m, boot, best, jump, design, plateau_ratio=plateau_ratio, alpha=alpha)
    bends = (p_value <= alpha) & (rss < rss_line) & (jump > 0) & (jump >= (min_jump or 0.0))
    return {"best": best, "jump": jump, "rss": rss, "rss_line": rss_line, "rss_flat": rss_flat, "statistic": stat,
            "p_value": p_value, "bends": bends, "found": bends & plateaus["flat"].all(axis=1), "boot": boot,
            **{f"plateau_{k}": v for k, v in plateaus.items()}}


def _span(layers: np.ndarray, first: int, last: int) -> list[int]:
    return [int(layers[first]), int(layers[last])]


def find_sections(gain: np.ndarray, *, layers: np.ndarray | None = None, n_boot: int = 1000, seed: int = 0,
                  min_size: int = 2, min_jump: float | None = None, alpha: float = 0.05,
                  plateau_ratio: float = PLATEAU_RATIO) -> dict:
    """Shared, transition and refinement layers from the per-task gain of E over B, with bootstrap CIs.

    The criterion is stated in full in the module docstring and in the returned ``"criterion"``:
    an exact least-squares plateau-ramp-plateau fit to the per-layer median gain over tasks; a
    transition is declared only when the curve bends away from its best straight line by more than
    a null bootstrap around that line allows, the plateau-ramp-plateau beats the line and rises,
    and the sections on either side of the rise are plateaus (each changes at most ``plateau_ratio``
    times as steeply as the transition, by a bootstrap interval over tasks). With fewer than
    ``MIN_SECTION_TASKS`` tasks the answer is "too few tasks", not a finding.

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
        Level of the null-bootstrap test (the bend's p-value must be at most ``alpha``) and of each
        one-sided plateau test (a ``1 - 2 alpha`` interval); below 0.5.
    plateau_ratio : float, default=PLATEAU_RATIO
        Largest slope of a plateau, as a fraction of the transition's slope, in (0, 1].

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
        of squares of the ramp fit, the best straight line and a single constant),
        ``"shared_flat"`` and ``"refinement_flat"`` (bool: the plateau test of each section of the
        best split) and ``"plateaus"``: ``"max_ratio"`` (``plateau_ratio``), ``"level"`` (of the
        interval, ``1 - 2 alpha``), ``"transition_slope"`` (jump per layer) and, for ``"shared"``
        and ``"refinement"``, ``"flat"``, ``"slope"`` (per layer, of the median curve),
        ``"slope_ratio"`` (slope over the transition's) and ``"slope_ratio_ci"`` ([lo, hi]; None
        where not finite: a one-layer section, or resamples that do not rise). When a
        transition is found also ``"shared"``, ``"transition"``, ``"refinement"`` (inclusive
        ``[first, last]`` layer ranges), ``"segment_means"`` (mean of the median curve over each
        section), ``"segment_means_ci"`` (bootstrap intervals for those means with the boundaries
        held fixed), ``"ci"`` with ``"transition_start"`` and ``"transition_end"`` ([lo, hi] layer
        numbers, 95% percentile intervals of the refitted boundaries) and
        ``"boundary_agreement"`` (fraction of resamples finding exactly the same boundaries, and
        within one layer), ``"shared_gain"`` (``segment_means[0]``) and ``"shared_gain_ci"``,
        ``"shared_e_at_or_below_b"`` (bool: the interval's upper end is at most 0) and
        ``"shared_e_vs_b"`` ("at or below B", "above B" or "within noise of B"). When none is
        found: ``"reason"`` and ``"candidate"``, the best split with the keys ``"shared"``,
        ``"transition"``, ``"refinement"`` and ``"segment_means"``, which is not a finding.

    Raises
    ------
    MossaError
        If ``gain`` is not 2-D, has no task, holds inf, is NaN at every layer, or leaves fewer
        than ``3 * min_size`` usable layers; if ``layers`` does not match the columns or is not
        strictly increasing integers; if ``n_boot``, ``min_size``, ``min_jump``, ``alpha`` or
        ``plateau_ratio`` is out of range.

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
    arr, lay = _check_inputs(gain, layers, n_boot, min_size, min_jump, alpha, plateau_ratio)
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
                                      n_boot=n_boot, level=100 * (1 - 2 * alpha), plateau_ratio=plateau_ratio),
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
    res = {k: v[0] for k, v in _decide(data[None], design, n_boot=n_boot, alpha=alpha, min_jump=min_jump,
                                       rng=np.random.default_rng(seed), plateau_ratio=plateau_ratio).items()}
    best, jump, p_value, stat = int(res["best"]), float(res["jump"]), float(res["p_value"]), float(res["statistic"])
    m = np.median(data, axis=0)  # [n]
    i, j = design.pairs[best]
    level_a = float(m.mean() - jump * design.ramp[best].mean())
    boot = res["boot"]  # [n_boot, n] medians of task resamples
    b_best, boot_jump = _fit(boot, design.centred, design.norm2)
    boot_pairs = design.pairs[b_best]
    sections = [(0, i - 1), (i, j), (j + 1, n - 1)]
    boot_means = np.stack([boot[:, s:e + 1].mean(axis=1) for s, e in sections], axis=1)
    plateaus = {"max_ratio": float(plateau_ratio), "level": 1 - 2 * alpha,
                "transition_slope": _num(res["plateau_transition_slope"])}
    for k, name in enumerate(("shared", "refinement")):
        plateaus[name] = {"flat": bool(res["plateau_flat"][k]), "slope": _num(res["plateau_slope"][k]),
                          "slope_ratio": _num(res["plateau_ratio"][k]),
                          "slope_ratio_ci": [_num(v) for v in res["plateau_ratio_ci"][k]]}

    segment_means = [float(m[s:e + 1].mean()) for s, e in sections]
    out.update({
        "transition_found": bool(res["found"]),
        "jump": jump,
        "jump_ci": [float(v) for v in np.quantile(boot_jump, [0.025, 0.975])],
        "jump_threshold": float(min_jump) if min_jump is not None else 0.0,
        "statistic": stat,
        "p_value": p_value,
        "fitted_levels": [level_a, level_a + jump],
        "rss": float(res["rss"]),
        "rss_line": float(res["rss_line"]),
        "rss_flat": float(res["rss_flat"]),
        "shared_flat": plateaus["shared"]["flat"],
        "refinement_flat": plateaus["refinement"]["flat"],
        "plateaus": plateaus,
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
        elif not res["bends"]:
            why = f"the fitted rise b - a = {jump:.4g} is below min_jump = {min_jump:g}"
        else:
            why = _plateau_reason(plateaus)
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
    lo, hi = out["segment_means_ci"][0]
    out.update({"shared_gain": segment_means[0], "shared_gain_ci": [lo, hi], "shared_e_at_or_below_b": bool(hi <= 0),
                "shared_e_vs_b": "at or below B" if hi <= 0 else "above B" if lo > 0 else "within noise of B"})
    return out


def _num(value) -> float | None:
    """A float for JSON: None where it is not finite (a one-layer section's slope, an unbounded ratio)."""
    return float(value) if np.isfinite(value) else None


def _plateau_reason(plateaus: dict) -> str:
    """Why a transition that passes the bend test is not stated: which section is not a plateau, by how much."""
    bound = lambda v: "unbounded" if v is None else f"{v:.2g}"
    parts = []
    for name in ("shared", "refinement"):
        sec = plateaus[name]
        if sec["flat"]:
            continue
        if sec["slope"] is None:
            parts.append(f"the {name} section has one layer, so no slope shows it level")
        else:
            lo, hi = sec["slope_ratio_ci"]
            parts.append(f"the {name} section changes by {sec['slope']:+.3g} per layer, {bound(sec['slope_ratio'])} "
                         f"times the transition's slope ({100 * plateaus['level']:g}% interval {bound(lo)} to "
                         f"{bound(hi)}, not within +-{plateaus['max_ratio']:g})")
    return ("the curve bends but does not level off on both sides: " + "; ".join(parts)
            + ", so the sections beside the rise are not shown to be plateaus (a saturating, cubic or hinge-shaped "
              "gain, not three sections)")


_SEED_KEYS = ("transition_found", "too_few_tasks", "reason", "shared", "transition", "refinement", "jump", "jump_ci",
              "p_value", "shared_flat", "refinement_flat", "shared_gain", "shared_gain_ci", "shared_e_vs_b")
_FOUND_KEYS = ("shared", "transition", "refinement", "segment_means", "segment_means_ci", "ci", "boundary_agreement",
               "shared_gain", "shared_gain_ci", "shared_e_at_or_below_b", "shared_e_vs_b")


def _seeds_agree(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """Whether transitions ``[..., 2]`` (first and last layer) of two E seeds agree: both within ``SEED_TOLERANCE``."""
    return np.all(np.abs(np.asarray(first) - np.asarray(second)) <= SEED_TOLERANCE, axis=-1)


def _both_seeds(first: dict, second: dict, labels: tuple[str, str]) -> dict:
    """The verdict of the first seed's result ``first`` kept only when ``second`` (the other E seed) agrees.

    Returns ``first`` with ``seeds`` (each seed's own summary), ``seed_rule``, ``seed_check`` and,
    when the seeds do not both show the same sections, ``transition_found`` False, the reason and
    the first seed's split as ``candidate``.
    """
    shows = [bool(r.get("transition_found")) for r in (first, second)]
    own = {label: {k: r[k] for k in _SEED_KEYS if k in r} for label, r in zip(labels, (first, second))}
    out = {**first, "seeds": own,
           "seed_rule": SEED_RULE.format(first=labels[0], second=labels[1], tolerance=SEED_TOLERANCE)}
    if all(shows) and _seeds_agree(first["transition"], second["transition"]):
        return {**out, "seed_check": "both E seeds show it"}
    if not any(shows):
        return {**out, "seed_check": "neither E seed shows it"}
    if all(shows):
        check = "the E seeds disagree on the boundaries"
        why = (f"the two E seeds place the transition at layers {first['transition'][0]}-{first['transition'][1]} "
               f"({labels[0]}) and {second['transition'][0]}-{second['transition'][1]} ({labels[1]}), more than "
               f"{SEED_TOLERANCE} layers apart")
    elif shows[0]:
        check = f"only {labels[0]} shows it"
        why = f"the other E seed ({labels[1]}) shows no three sections: {second.get('reason', 'no reason recorded')}"
    else:
        return {**out, "seed_check": f"only {labels[1]} shows it"}
    out = {k: v for k, v in out.items() if k not in _FOUND_KEYS}
    return {**out, "transition_found": False, "seed_check": check, "reason": why,
            "candidate": {k: first[k] for k in ("shared", "transition", "refinement", "segment_means")}}


def layer_sections(sim: pd.DataFrame, *, model: str = "experimental", measure: str = "debiased_cka", n_boot: int,
                   seed: int, second_seed: str | None = None) -> dict:
    """Shared / transition / refinement layers from the per-task gain CKA(M, C_t) - CKA(B, C_t) of `measure`.

    Debiased CKA by default: biased linear CKA is inflated when there are fewer test examples
    than dimensions (the demo's 96 against 640), and its gain inherits that inflation
    (this module's docstring explains). With fewer than 5 tasks the result says "too few tasks".

    `second_seed` names the model of a second E trained with another seed (``"experimental_seed2"``).
    When the table has it, the sections are stated only when both seeds show them with boundaries
    within ``SEED_TOLERANCE`` layers (``SEED_RULE``): noise common to all tasks, one draw per E run,
    is invisible to resampling tasks but differs between the seeds. The result then holds each
    seed's own summary under ``seeds``; otherwise ``seed_check`` says seed variation was not measured.
    """
    rows = sim[sim["measure"] == measure]
    if rows.empty:
        return {"transition_found": False, "model": model, "measure": measure, "seed_check": ONE_E,
                "reason": f"the similarity table has no {measure} values (it has "
                          f"{', '.join(sorted(set(sim['measure'])))}); rerun `mossa analyze` with {measure} among "
                          "--measures"}
    data = rows.pivot_table(index=["task", "layer"], columns="model", values="value", dropna=False)

    def sections_of(label: str) -> dict:
        gain = (data[label] - data["base"]).unstack("layer")  # [tasks, layers]
        if label != model:  # a second seed may cover fewer tasks: its missing tasks are not NaN layers
            gain = gain.dropna(how="all")
        try:
            return find_sections(gain.to_numpy(dtype=float), layers=gain.columns.to_numpy(), n_boot=max(n_boot, 100),
                                 seed=seed)
        except MossaError as exc:
            return {"transition_found": False, "reason": str(exc)}

    first = sections_of(model)
    if second_seed is None or second_seed not in data or data[second_seed].isna().all():
        return {**first, "model": model, "measure": measure, "seed_check": ONE_E,
                "seed_rule": "one E: the test resamples tasks only, so noise common to all tasks (one draw per E "
                             "run) is not in it"}
    return {**_both_seeds(first, sections_of(second_seed), (model, second_seed)), "model": model, "measure": measure}


__all__ = ["CRITERION", "MIN_SECTION_TASKS", "ONE_E", "PLATEAU_RATIO", "SECTION_MEASURE", "SEED_RULE", "SEED_TOLERANCE",
           "find_sections", "layer_sections"]
