"""Coverage of the intervals over examples: how often a nominal 95% interval holds its target.

The target of an interval is the mean of the estimator over fresh samples of the same size.
For each shape (n examples, d features) and structure, `--replicates` fresh pairs (X, Y) are
drawn from one fixed population; each gets its estimate and its interval (`mossa.analysis`'s
jackknife, exactly as the study table computes them); the target is estimated by the mean of
the estimates, and coverage is the share of intervals that contain it (binomial standard error
about 0.015 at 200 replicates). Gaussian structures, at every shape:

- independent: X and Y drawn independently (population CKA 0, every measure at its chance level);
- low-rank: X = Z A + E, Y = Z B + F with a shared k=8 factor Z and fixed loadings A, B.

Heavy-tailed structures, like hidden states (whose top direction carries 30-75% of the variance in
the demo), at HEAVY_SHAPES: each side is the independent structure's plus one dominant direction
carrying p = 30%, 45% or 75% of its variance, with Student t scores (3 degrees of freedom):

- shared p%: the same scores on both sides;
- weak p%: scores correlated at WEAK_RHO = 0.3 (debiased CKA about 0.08).

Above `EXACT_MAX_N` rows (1,000) the study's intervals come from a subsample of that many rows,
rescaled to n at the rate measured on a nested half; the 3000 x 64 shape runs that path, so
its coverage is measured too (marked "approximation").

    python bench/coverage.py                      # the measures with intervals, every structure, 200 replicates
    python bench/coverage.py --structures heavy --shapes 96x640 --replicates 50
    python bench/coverage.py --measures all --replicates 100
"""

from __future__ import annotations

import argparse
import time
import warnings

import numpy as np

from _common import table, write_result

from mossa.analysis import DEFAULT_MEASURES, example_intervals
from mossa.analysis._similarity import VALUES_ONLY
from mossa.analysis._jackknife import EXACT_MAX_N
from mossa.errors import MossaError
from mossa.similarity import available_measures, get_measure

SHAPES = [(96, 640), (300, 640), (500, 64), (3000, 64)]
HEAVY_SHAPES = [(96, 640), (500, 64)]  # the demo's shape, and one with n > d
RANK, NOISE = 8, 2.0
WEAK_RHO = 0.3  # correlation of the two sides' dominant scores in the "weak" structures
GAUSSIAN = ["independent", "low-rank"]
HEAVY = [f"{kind} {share}%" for kind in ("shared", "weak") for share in (30, 45, 75)]


class Population:
    """One fixed population per (shape, structure): loadings drawn once; rows drawn per replicate.

    Structures "shared p%" and "weak p%" add a dominant direction carrying p of each side's variance,
    its scores Student t with 3 degrees of freedom (unit variance): the same scores on both sides
    ("shared") or correlated at WEAK_RHO ("weak"); the rest of the two sides is unrelated.
    """

    def __init__(self, d: int, structure: str, seed: int):
        rng = np.random.default_rng([seed, d, len(structure)])
        scale = 1.0 / np.sqrt(1.0 + np.arange(d)) ** 0.5  # an anisotropic spectrum, like hidden states
        self.scale_x, self.scale_y = scale * rng.uniform(0.5, 1.5, d), scale * rng.uniform(0.5, 1.5, d)
        self.A = rng.standard_normal((RANK, d)) * 3.0 * self.scale_x
        self.B = rng.standard_normal((RANK, d)) * 3.0 * self.scale_y
        self.structure, _, share = structure.partition(" ")
        self.share = float(share.rstrip("%")) / 100 if share else 0.0
        self.u, self.v = (w / np.linalg.norm(w) for w in rng.standard_normal((2, d)))

    @staticmethod
    def _rest_variance(scale: np.ndarray) -> float:
        """Total variance of one side without its dominant direction."""
        return float(np.sum((scale * NOISE) ** 2))

    def draw(self, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        d = len(self.scale_x)
        X = rng.standard_normal((n, d)) * self.scale_x * NOISE
        Y = rng.standard_normal((n, d)) * self.scale_y * NOISE
        if self.structure == "low-rank":
            Z = rng.standard_normal((n, RANK))
            X, Y = X + Z @ self.A, Y + Z @ self.B
        if self.share:
            t = rng.standard_t(3, (2, n)) / np.sqrt(3.0)  # unit variance
            zx = t[0]
            zy = zx if self.structure == "shared" else WEAK_RHO * zx + np.sqrt(1 - WEAK_RHO**2) * t[1]
            odds = self.share / (1 - self.share)
            X = X + np.sqrt(odds * self._rest_variance(self.scale_x)) * np.outer(zx, self.u)
            Y = Y + np.sqrt(odds * self._rest_variance(self.scale_y)) * np.outer(zy, self.v)
        return X.astype(np.float32), Y.astype(np.float32)


def replicate(measures: list[str], n: int, d: int, structure: str, reps: int, seed: int) -> dict[str, dict]:
    population = Population(d, structure, seed)
    rng = np.random.default_rng([seed, n, d, len(structure), 1])
    found = {m: [] for m in measures}
    for r in range(reps):
        X, Y = population.draw(n, rng)
        for m in measures:
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    value = get_measure(m)(X, Y).value
            except MossaError:
                value = np.nan
            (lo, hi, method), = example_intervals(m, X[None], Y[None], rng=np.random.default_rng([seed, r]),
                                                  values=[value])
            found[m].append((value, lo, hi, method))
    out = {}
    for m, rows in found.items():
        v = np.array([r[:3] for r in rows], dtype=float)
        ok = np.all(np.isfinite(v), axis=1)
        if ok.sum() < 0.9 * reps:
            out[m] = {"defined": int(ok.sum()), "coverage": float("nan")}
            continue
        v = v[ok]
        target = float(v[:, 0].mean())
        methods = [r[3] for r, keep in zip(rows, ok) if keep]
        dfs = [float(x.split("t with ")[1].split(" df")[0]) for x in methods if "t with " in x]
        out[m] = {"defined": int(ok.sum()), "target": target, "sd": float(v[:, 0].std(ddof=1)),
                  "median_half_width": float(np.median(v[:, 2] - v[:, 1]) / 2),
                  "coverage": float(np.mean((v[:, 1] <= target) & (target <= v[:, 2]))),
                  "median_df": float(np.median(dfs)) if dfs else float("nan"),
                  "first_order_heavy_tails": int(sum("heavy-tailed" in x for x in methods)),
                  "first_order_fallbacks": int(sum("exceeded the first" in x for x in methods))}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--measures", default="default",
                    help="'default' (the study table's measures with intervals), 'all', or a comma list")
    ap.add_argument("--replicates", type=int, default=200)
    ap.add_argument("--structures", default="all", choices=["all", "gaussian", "heavy"])
    ap.add_argument("--shapes", default=None,
                    help="e.g. 96x640,500x64 (default: Gaussian structures at SHAPES, heavy ones at HEAVY_SHAPES)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    measures = ([m for m in DEFAULT_MEASURES if m not in VALUES_ONLY] if args.measures == "default"
                else available_measures() if args.measures == "all" else args.measures.split(","))
    given = [tuple(int(x) for x in s.split("x")) for s in args.shapes.split(",")] if args.shapes else None
    cells = []
    if args.structures in ("all", "gaussian"):
        cells += [(shape, s) for shape in given or SHAPES for s in GAUSSIAN]
    if args.structures in ("all", "heavy"):
        cells += [(shape, s) for shape in given or HEAVY_SHAPES for s in HEAVY]
    rows, results = [], []
    start = time.perf_counter()
    for (n, d), structure in sorted(cells, key=lambda c: (c[0][0], c[0][1])):
        approx = n > EXACT_MAX_N
        t0 = time.perf_counter()
        res = replicate(measures, n, d, structure, args.replicates, args.seed)
        seconds = time.perf_counter() - t0
        label = f"{n}x{d}" + (" (approximation)" if approx else "")
        for m, r in res.items():
            results.append({"shape": label, "structure": structure, "measure": m, **r, "seconds": round(seconds, 1)})
            rows.append([label, structure, m, r["defined"], f"{r.get('target', np.nan):.4f}",
                         f"{r.get('sd', np.nan):.4f}", f"{r.get('median_half_width', np.nan):.4f}",
                         f"{r['coverage']:.3f}", f"{r.get('median_df', np.nan):.0f}",
                         r.get("first_order_heavy_tails", ""), r.get("first_order_fallbacks", "")])
        print(f"{label} {structure}: {seconds:.1f} s", flush=True)
    print(table(rows, ["shape", "structure", "measure", "defined", "target", "sd", "half-width", "coverage",
                       "median df", "v1 (heavy tails)", "v1 (v2 <= 0)"]))
    print(f"{args.replicates} replicates per row; {time.perf_counter() - start:.0f} s")
    path = write_result("coverage", {"replicates": args.replicates, "rows": results})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
