"""False positives and power of the layer-section verdict (`mossa.analysis.find_sections`) under noise common to
all tasks, with one E and with two E seeds, at 5, 12 and 30 tasks over 18 layers.

Each replicate is a gain table [tasks, layers]: a curve, plus per-task noise as in the calibration of
tests/analysis/test_sections.py (sd 0.1, AR(1) across layers with rho 0.7 and Student-t innovations of 4 df,
plus a per-task offset of sd 0.05), plus, in the "common" columns, noise common to all tasks: one Gaussian
AR(1) curve per E run (rho 0.7, sd 0.05), added to every task's gain alike, which resampling tasks cannot see.
A second E seed shares the tasks and their noise and draws its own common curve. Columns:
- before: the transition test alone (bend p <= 0.05, beats the line, rises), the criterion before plateaus;
- one E: that test and both plateaus flat (the criterion now), on the first seed;
- two E: both seeds state three sections and their transition boundaries differ by at most 2 layers
  (`layer_sections` with `second_seed`, the rule used);
- seed mean: the criterion on the mean of the two seeds' gains (common noise of half the variance), the
  alternative not used.
Curves (amplitude 0.3): null (0), drift (0.01 per layer: a straight line), saturating 0.3 (1 - exp(-x / tau))
with tau 3 and 6 layers, cubic 0.3 u^3 (u = x / 17), hinge_rise (flat to layer 6, then a straight rise to the
end), hinge_level (a straight rise to layer 11, then flat), and the planted plateau-ramp-plateau with a jump of
0.3 over a 3-layer ramp (layers 7-9) and a 6-layer ramp (6-11). Rates are over the replicates with a Wilson 95%
interval.

    python bench/section_noise.py                 # 500 replicates per cell, n_boot 200 as the tests
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from _common import table, write_result

from mossa.analysis import _sections

LAYERS = 18
TASKS = (5, 12, 30)
COMMON_SD, RHO = 0.05, 0.7
_x = np.arange(LAYERS, dtype=float)


def plateau_ramp(start: int, end: int) -> np.ndarray:
    """0 up to layer start - 1, a linear rise over start..end, 0.3 from end + 1 on."""
    return 0.3 * np.clip((_x - (start - 1)) / ((end + 1) - (start - 1)), 0, 1)


CURVES = {  # name: (curve, whether three sections are true)
    "null": (np.zeros(LAYERS), False),
    "drift": (0.01 * _x, False),
    "saturating_tau3": (0.3 * (1 - np.exp(-_x / 3)), False),
    "saturating_tau6": (0.3 * (1 - np.exp(-_x / 6)), False),
    "cubic": (0.3 * (_x / (LAYERS - 1)) ** 3, False),
    "hinge_rise": (0.3 * np.clip((_x - 6) / (LAYERS - 7), 0, 1), False),
    "hinge_level": (0.3 * np.clip(_x / 11, 0, 1), False),
    "ramp3": (plateau_ramp(7, 9), True),
    "ramp6": (plateau_ramp(6, 11), True),
}


def ar1(rng: np.random.Generator, shape: tuple, innovations) -> np.ndarray:
    """AR(1) across the last axis with unit marginal variance, from standardised innovations."""
    e = innovations(rng, shape)
    out = np.empty_like(e)
    out[..., 0] = e[..., 0]
    for layer in range(1, shape[-1]):
        out[..., layer] = RHO * out[..., layer - 1] + np.sqrt(1 - RHO ** 2) * e[..., layer]
    return out


def task_noise(rng: np.random.Generator, reps: int, n_tasks: int) -> np.ndarray:
    """[reps, n_tasks, LAYERS]: the calibration's per-task noise (t(4) AR(1), sd 0.1, offset sd 0.05)."""
    t4 = lambda r, shape: r.standard_t(4, size=shape) / np.sqrt(2.0)
    return 0.1 * ar1(rng, (reps, n_tasks, LAYERS), t4) + 0.05 * rng.normal(size=(reps, n_tasks, 1))


def common_noise(rng: np.random.Generator, reps: int) -> np.ndarray:
    """[reps, 1, LAYERS]: one Gaussian AR(1) curve per replicate, the same for every task."""
    return COMMON_SD * ar1(rng, (reps, 1, LAYERS), lambda r, shape: r.normal(size=shape))


def wilson(k: int, n: int) -> tuple[float, float]:
    """Wilson 95% interval of a binomial proportion k / n."""
    z, p = 1.959964, k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def rate(hits: np.ndarray) -> dict:
    k, n = int(hits.sum()), int(hits.size)
    lo, hi = wilson(k, n)
    return {"rate": k / n, "ci": [lo, hi], "hits": k}


def cell(r: dict) -> str:
    return f"{100 * r['rate']:.1f}% ({100 * r['ci'][0]:.1f}-{100 * r['ci'][1]:.1f})"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--replicates", type=int, default=500)
    ap.add_argument("--n-boot", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--plateau-ratio", type=float, default=_sections.PLATEAU_RATIO,
                    help="largest slope of a plateau as a fraction of the transition's (the criterion's default)")
    ap.add_argument("--name", default="section_noise", help="result file bench/results/<name>.json")
    args = ap.parse_args()
    design = _sections._design(np.arange(LAYERS), 2)
    decide = lambda tables, rng: _sections._decide(tables, design, n_boot=args.n_boot, alpha=0.05, min_jump=None,
                                                   rng=rng, plateau_ratio=args.plateau_ratio)
    span = lambda res: design.pairs[res["best"]]  # usable positions = layer numbers here
    rows, results = [], []
    t0 = time.perf_counter()
    for c, (name, (curve, true)) in enumerate(CURVES.items()):
        for n_tasks in TASKS:
            rng = np.random.default_rng([args.seed, c, n_tasks])
            tasks = curve + task_noise(rng, args.replicates, n_tasks)
            quiet = decide(tasks, rng)
            common = common_noise(rng, args.replicates), common_noise(rng, args.replicates)
            first, second = decide(tasks + common[0], rng), decide(tasks + common[1], rng)
            mean = decide(tasks + (common[0] + common[1]) / 2, rng)
            both = first["found"] & second["found"] & _sections._seeds_agree(span(first), span(second))
            row = {"curve": name, "three_sections_true": true, "tasks": n_tasks,
                   "task_noise": {"before": rate(quiet["bends"]), "now": rate(quiet["found"])},
                   "common_noise": {"before": rate(first["bends"]), "one_e": rate(first["found"]),
                                    "two_e": rate(both), "seed_mean": rate(mean["found"])}}
            results.append(row)
            rows.append([name, "power" if true else "false pos.", n_tasks, cell(row["task_noise"]["before"]),
                         cell(row["task_noise"]["now"]), cell(row["common_noise"]["before"]),
                         cell(row["common_noise"]["one_e"]), cell(row["common_noise"]["two_e"]),
                         cell(row["common_noise"]["seed_mean"])])
            print(f"  {name} at {n_tasks} tasks: {time.perf_counter() - t0:.0f} s", flush=True)
    print(table(rows, ["curve", "rate", "tasks", "task noise: before", "now", "+ common: before", "one E",
                       "two E", "seed mean"]))
    print(f"{args.replicates} replicates per cell, n_boot {args.n_boot}; {time.perf_counter() - t0:.0f} s")
    path = write_result(args.name, {"replicates": args.replicates, "n_boot": args.n_boot, "layers": LAYERS,
                                    "common_sd": COMMON_SD, "rho": RHO, "plateau_ratio": args.plateau_ratio,
                                    "seed_tolerance": _sections.SEED_TOLERANCE, "rows": results})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
