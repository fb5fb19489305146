"""Functional sections of layers (shared, transition, refinement) by a stated, testable criterion.

Stage: analysis. Reads a per-task, per-layer gain table (no store access, no model); returns a
JSON-serialisable dict that the report stage may write to ``results/``.

Zhao et al. (2024) read three sections of layers off their Fig. 2 by eye: *shared* layers where
the multi-task model E is at or below the base model B, *transition* layers where CKA(E, C_t)
rises steeply, and *refinement* layers where it stays high. This module replaces the reading by
eye with a criterion that anyone can rerun and that carries bootstrap uncertainty.

Criterion
---------
Input is ``gain[t, l] = CKA(E, C_t) - CKA(B, C_t)`` for tasks ``t`` and layers ``l``. Layers with
any NaN are set aside (and reported). The curve analysed is the per-layer median over tasks,
``m(l)``. It is fitted by least squares with a **continuous plateau-ramp-plateau** model over the
layer numbers ``x``::

    f(x) = a                                      for x <= x_s  (shared: last layer x_s)
    f(x) = a + (b - a) (x - x_s) / (x_r - x_s)    for x_s < x < x_r  (transition)
    f(x) = b                                      for x >= x_r  (refinement: first layer x_r)

Every split of the usable layers into three contiguous sections of at least ``min_size`` layers
each is tried (at most ~n^2/2 candidate pairs, each a closed-form two-parameter regression), so
the fit is exact, not a local search; ties go to the earliest split. The *jump* is ``b - a``.

A transition is declared only when the fitted ramp rises by more than chance allows: ``b - a``
must exceed the 95th percentile (``1 - alpha``) of its *null-bootstrap* distribution, and also
be at least ``min_jump`` when one is given. The null bootstrap resamples tasks from the gain
table after subtracting ``m(l)`` from every row (so the population curve is flat while each
task's noise, including its correlation across layers, is kept) and refits each time, so the
threshold accounts for the boundaries having been chosen to fit the data. An ordinary
bootstrap over tasks (rows resampled with replacement, refitted every time) gives percentile
intervals for the transition's first and last layers, for the jump and for each section's mean,
and the fraction of resamples that find exactly the same boundaries.

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
"""

from __future__ import annotations

import warnings

import numpy as np

from mossa.errors import MossaError

_CHUNK = 256  # bootstrap reps per vectorised batch: [chunk, n_tasks, n_layers] floats in memory

CRITERION = (
    "Per-layer median over tasks m(l) of gain = CKA(E,C_t) - CKA(B,C_t), layers with any NaN set aside; "
    "exact least-squares fit (all splits tried) of a continuous plateau-ramp-plateau curve: level a on the "
    "shared section, a linear rise on the transition section, level b on the refinement section, each section "
    "at least {min_size} layers. A transition is found when the jump b - a exceeds the {q:g}th percentile of its "
    "null-bootstrap distribution (tasks resampled after subtracting m(l), refitted each time){extra}; "
    "95% percentile intervals come from {n_boot} bootstrap resamples of tasks, refitted each time."
)


def _check_inputs(gain, layers, n_boot, min_size, min_jump, alpha):
    """Validate at the door; return (gain as float array, layer numbers as int array)."""
    arr = np.asarray(gain, dtype=float)
    if arr.ndim != 2:
        raise MossaError(
            f"find_sections: expected gain as a 2-D array [n_tasks, n_layers], got ndim={arr.ndim} "
            f"with shape {arr.shape}; fix: pass one row per task, e.g. gain.reshape(1, -1) is not enough "
            "(at least 2 tasks are needed), stack the per-task curves with np.vstack")
    n_tasks, n_layers = arr.shape
    if n_tasks < 2:
        raise MossaError(
            f"find_sections: expected at least 2 tasks (rows) to resample, got {n_tasks}; "
            "fix: pass the gain of every task, one row each, or check that rows are tasks, not layers")
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


def _bootstrap_medians(data: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """Per-layer median over resampled tasks: data [n_tasks, n], idx [k, n_tasks] -> [k, n]."""
    return np.median(data[idx], axis=1)


def _span(layers: np.ndarray, first: int, last: int) -> list[int]:
    return [int(layers[first]), int(layers[last])]


def find_sections(gain: np.ndarray, *, layers: np.ndarray | None = None, n_boot: int = 1000, seed: int = 0,
                  min_size: int = 2, min_jump: float | None = None, alpha: float = 0.05) -> dict:
    """Shared, transition and refinement layers from the per-task gain of E over B, with bootstrap CIs.

    The criterion is stated in full in the module docstring and in the returned ``"criterion"``:
    an exact least-squares plateau-ramp-plateau fit to the per-layer median gain over tasks; a
    transition is declared only when the rise ``b - a`` beats a null bootstrap that keeps each
    task's noise but flattens the curve.

    Parameters
    ----------
    gain : ndarray of shape (n_tasks, n_layers)
        ``CKA(E, C_t) - CKA(B, C_t)`` per task and layer. NaN marks an undefined value (layer 0 at
        a shared answer cue, say); every column holding a NaN is left out of the fit and listed in
        ``excluded_layers`` (a warning is issued when only some tasks are NaN there).
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
        Level of the null-bootstrap test; the threshold is the ``1 - alpha`` quantile of the jump
        under the null.

    Returns
    -------
    dict
        Plain Python types throughout. Always present: ``"transition_found"`` (bool),
        ``"criterion"`` (str), ``"n_tasks"``, ``"n_boot"``, ``"layers"`` (layers used),
        ``"excluded_layers"``, ``"jump"`` (fitted ``b - a``), ``"jump_ci"`` ([lo, hi]),
        ``"jump_threshold"`` (what the jump had to exceed), ``"p_value"`` (null bootstrap,
        one-sided), ``"fitted_levels"`` ([a, b]), ``"rss"`` and ``"rss_flat"`` (residual sums of
        squares of the ramp fit and of a single constant). When a transition is found also
        ``"shared"``, ``"transition"``, ``"refinement"`` (inclusive ``[first, last]`` layer
        ranges), ``"segment_means"`` (mean of the median curve over each section),
        ``"segment_means_ci"`` (bootstrap intervals for those means with the boundaries held
        fixed), ``"ci"`` with ``"transition_start"`` and ``"transition_end"`` ([lo, hi] layer
        numbers, 95% percentile intervals of the refitted boundaries) and ``"boundary_agreement"``
        (fraction of resamples finding exactly the same boundaries, and within one layer). When
        none is found: ``"reason"`` and ``"candidate"``, the best split with the same keys, which
        is not a finding.

    Raises
    ------
    MossaError
        If ``gain`` is not 2-D, has fewer than 2 tasks, holds inf, is NaN at every layer, or leaves
        fewer than ``3 * min_size`` usable layers; if ``layers`` does not match the columns or is not strictly
        increasing integers; if ``n_boot``, ``min_size``, ``min_jump`` or ``alpha`` is out of range.

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

    pairs, ramp, centred, norm2 = _ramp_design(x, min_size)
    m = np.median(data, axis=0)  # [n]
    best, jump = _fit(m[None, :], centred, norm2)
    best, jump = int(best[0]), float(jump[0])
    if np.ptp(m) == 0:  # a constant curve: the jump is 0, not a rounding residue of either sign
        jump = 0.0
    i, j = pairs[best]
    level_a = float(m.mean() - jump * ramp[best].mean())
    rss_flat = float(((m - m.mean()) ** 2).sum())
    rss = float(max(rss_flat - ((m - m.mean()) @ centred[best]) ** 2 / norm2[best], 0.0))

    rng = np.random.default_rng(seed)
    null_data = data - m[None, :]  # population curve flattened, each task's noise kept
    boot_pairs = np.empty((n_boot, 2), dtype=int)
    boot_jump = np.empty(n_boot)
    null_jump = np.empty(n_boot)
    sections = [(0, i - 1), (i, j), (j + 1, n - 1)]
    boot_means = np.empty((n_boot, 3))
    for start in range(0, n_boot, _CHUNK):
        k = min(_CHUNK, n_boot - start)
        curves = _bootstrap_medians(data, rng.integers(0, n_tasks, size=(k, n_tasks)))
        b_best, boot_jump[start:start + k] = _fit(curves, centred, norm2)
        boot_pairs[start:start + k] = pairs[b_best]
        boot_means[start:start + k] = np.stack([curves[:, s:e + 1].mean(axis=1) for s, e in sections], axis=1)
        null_curves = _bootstrap_medians(null_data, rng.integers(0, n_tasks, size=(k, n_tasks)))
        null_jump[start:start + k] = _fit(null_curves, centred, norm2)[1]

    p_value = float((1 + np.sum(null_jump >= jump)) / (1 + n_boot))
    null_q = float(np.quantile(null_jump, 1 - alpha))
    threshold = max(null_q, float(min_jump)) if min_jump is not None else null_q
    jump_ci = [float(v) for v in np.quantile(boot_jump, [0.025, 0.975])]
    segment_means = [float(m[s:e + 1].mean()) for s, e in sections]
    found = jump > null_q and (min_jump is None or jump >= min_jump)

    extra = f" and is at least min_jump = {min_jump:g}" if min_jump is not None else ""
    out = {
        "transition_found": bool(found),
        "criterion": CRITERION.format(min_size=min_size, q=100 * (1 - alpha), extra=extra, n_boot=n_boot),
        "n_tasks": int(n_tasks),
        "n_boot": int(n_boot),
        "layers": [int(v) for v in x],
        "excluded_layers": [int(v) for v in lay[nan_cols]],
        "jump": jump,
        "jump_ci": jump_ci,
        "jump_threshold": float(threshold),
        "p_value": p_value,
        "fitted_levels": [level_a, level_a + jump],
        "rss": rss,
        "rss_flat": rss_flat,
    }
    split = {"shared": _span(x, 0, i - 1), "transition": _span(x, i, j), "refinement": _span(x, j + 1, n - 1),
             "segment_means": segment_means}
    if not found:
        if jump <= 0:
            why = f"the best fit does not rise (jump b - a = {jump:.4g} <= 0): no rising transition"
        elif jump <= null_q:
            why = (f"the fitted rise b - a = {jump:.4g} does not exceed the {100 * (1 - alpha):g}th percentile "
                   f"{null_q:.4g} of its null-bootstrap distribution (p = {p_value:.3g}): a flat curve fits "
                   "as well as chance allows")
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


__all__ = ["CRITERION", "find_sections"]
