"""Coverage of the paired interval over examples of task specificity, CKA(M, C_t) - mean_s CKA(M, C_s).

The interval is one delete-a-group jackknife shared by every pair of the contrast
(`mossa.analysis._jackknife.contrast_intervals`), second-order corrected for the kernel CKAs, first order
when the contrast's influence values are heavy-tailed, t at the variance's Satterthwaite degrees of
freedom (the rules of `example_intervals`, applied to the contrast's own subset values). Its target,
as for every interval over examples, is the mean of the estimator over fresh samples of the same size with
the models held fixed. For each population (fixed model maps, rows drawn per replicate) `--replicates`
fresh samples are drawn; the target is estimated by the mean of their estimates and coverage is the share
of intervals that contain it. Populations are built like hidden states: a few dominant directions
(scales x6), heavy tails (Student t, 3 df), a power-law spectrum; each control is B plus a rank-8 change
and, for "task", a written task latent shared by C_t and M.

- random: every control B plus its own random change, M = B plus another (specificity 0 in expectation
  over draws of the changes, but not for one fixed draw: the interval targets the fixed models' value);
- task: C_t and M hold the task's latent, the other controls their own (specificity well above 0).

    python bench/specificity_coverage.py                 # 96 x 640 and 300 x 64, 200 replicates
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from _common import table, write_result

from mossa.analysis._jackknife import contrast_intervals
from mossa.similarity import linear_cka

SHAPES = [(96, 640), (300, 64)]
SOURCES, RANK, LATENT = 3, 8, 4


class Population:
    """Fixed maps of B's features into M, C_t and k other controls; `draw` gives fresh rows of every model."""

    def __init__(self, d: int, structure: str, seed: int):
        rng = np.random.default_rng([seed, d, len(structure)])
        self.scales = 1.0 / np.arange(1, d + 1) ** 0.8
        self.scales[:3] *= 6
        self.d, self.structure = d, structure

        def change():
            return rng.standard_normal((d, RANK)) @ rng.standard_normal((RANK, d)) / np.sqrt(d * RANK)

        self.maps = {name: change() for name in ["M", "C", *(f"S{j}" for j in range(SOURCES))]}
        self.reads = {name: rng.standard_normal((LATENT, d)) for name in self.maps}

    def draw(self, n: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
        X = rng.standard_t(3, (n, self.d)) * self.scales
        z = rng.standard_normal((n, LATENT))
        s = X.std()
        out = {}
        for name, W in self.maps.items():
            Y = X + X @ W * (0.5 * s / max((X @ W).std(), 1e-12))
            if self.structure == "task":
                latent = z if name in ("M", "C") else rng.standard_normal((n, LATENT))
                Y = Y + s * latent @ self.reads[name]
            out[name] = Y
        return out


def replicate(n: int, d: int, structure: str, reps: int, seed: int, measure: str) -> dict:
    pop = Population(d, structure, seed)
    rng = np.random.default_rng([seed, n, d, 7])
    refs = ["C", *(f"S{j}" for j in range(SOURCES))]
    weights = [1.0] + [-1.0 / SOURCES] * SOURCES
    debiased = measure == "debiased_cka"
    estimates, intervals = [], []
    for _ in range(reps):
        draw = pop.draw(n, rng)
        value = sum(w * linear_cka(draw["M"], draw[r], debiased=debiased) for r, w in zip(refs, weights))
        lo, hi, _ = contrast_intervals(measure, draw["M"][None], [draw[r][None] for r in refs], weights,
                                       rng=np.random.default_rng(rng.integers(2**32)), values=[value])[0]
        estimates.append(value)
        intervals.append((lo, hi))
    target = float(np.mean(estimates))
    lo, hi = np.array(intervals).T
    return {"target": target, "coverage": float(np.mean((lo <= target) & (target <= hi))),
            "median_width": float(np.median(hi - lo)), "sd_estimates": float(np.std(estimates))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--replicates", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rows, data = [], {}
    t0 = time.perf_counter()
    for n, d in SHAPES:
        for structure in ("random", "task"):
            for measure in ("debiased_cka", "linear_cka"):
                r = replicate(n, d, structure, args.replicates, args.seed, measure)
                data[f"{n}x{d}/{structure}/{measure}"] = r
                rows.append([f"{n} x {d}", structure, measure, f"{r['target']:+.3f}", f"{r['coverage']:.3f}",
                             f"{r['median_width']:.3f}", f"{r['sd_estimates']:.3f}"])
                print(rows[-1], flush=True)
    print(table(rows, ["n x d", "population", "measure", "target", "coverage", "median width", "sd of estimates"]))
    print(f"{args.replicates} replicates per cell (binomial se about {np.sqrt(0.95 * 0.05 / args.replicates):.3f}); "
          f"{time.perf_counter() - t0:.0f} s")
    write_result("specificity_coverage", {"replicates": args.replicates, "cells": data})


if __name__ == "__main__":
    main()
