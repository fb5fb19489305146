"""The study's whole CKA comparison set: mossa's streamed statistics vs the authors' per-pair way.

Synthetic activations in mossa's store format: T tasks x (B, E, C_t) x L layers x n examples
x d features, float32 on disk. The comparison set is, for every task and layer, B vs C_t and
E vs C_t (2 T L linear CKAs).

- mossa: `mossa.analysis.scan` per task (content-hash check, chunked reads with prefetch,
  shared per-representation statistics, float32 chunk products summed in float64), then the
  per-layer values (biased and debiased both come out of the same pass).
- baseline, written the way the authors' scripts work: for each pair, a fresh Python process
  loads the two float32 matrices (`np.load`), casts to float64 and computes feature-space
  linear CKA with NumPy (||Xc'Yc||^2 / (||Xc'Xc|| ||Yc'Yc||)), one pair at a time.

It also measures the machine's float32 GEMM rate in the same run, and the rate of mossa's
chunk products (flops / scan time) as a fraction of it.

    .venv/bin/python bench/cka.py                    # n = 2000 and 10000, 12 tasks, 19 layers, d = 640
    .venv/bin/python bench/cka.py --n 500 --tasks 2  # quick check
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import table, write_result  # noqa: E402

from mossa.analysis import aligned_rows, scan  # noqa: E402
from mossa.store import StudyDir  # noqa: E402

MODELS = ("control", "base", "experimental")

BASELINE = r"""
import sys, numpy as np
a, b, layer = sys.argv[1], sys.argv[2], int(sys.argv[3])
X = np.array(np.load(a, mmap_mode="r")[layer], dtype=np.float64)
Y = np.array(np.load(b, mmap_mode="r")[layer], dtype=np.float64)
X -= X.mean(0); Y -= Y.mean(0)
print(repr(float(np.sum((X.T @ Y) ** 2) / (np.linalg.norm(X.T @ X) * np.linalg.norm(Y.T @ Y)))))
"""


def generate(root: Path, *, tasks: int, layers: int, n: int, d: int, seed: int = 0) -> StudyDir:
    """Write synthetic B, E, C_t per task: C_t random with layer-to-layer drift, B and E noisy
    linear maps of it (E closer), so the values span the range real studies show."""
    study = StudyDir(root)
    rng = np.random.default_rng(seed)
    ids = [f"t:test:{i}" for i in range(n)]
    for t in range(tasks):
        mix_b = rng.normal(size=(d, d)).astype(np.float32) / np.sqrt(d)
        writers = {m: study.activation_writer(m, f"task{t:02d}", ids=ids, n_states=layers, hidden=d, inputs="bench")
                   for m in MODELS}
        sinks = {m: w.__enter__() for m, w in writers.items()}
        for start in range(0, n, 1000):
            c = min(1000, n - start)
            base = rng.normal(size=(c, d)).astype(np.float32)
            drift = np.linspace(0, 1, layers, dtype=np.float32)[:, None, None]
            ctl = base[None] + drift * rng.normal(size=(layers, c, d)).astype(np.float32) + 3.0
            noise = rng.normal(size=(2, layers, c, d)).astype(np.float32)
            blocks = {"control": ctl, "base": ctl @ mix_b + (0.3 + drift) * noise[0],
                      "experimental": ctl + 0.3 * noise[1]}
            for m in MODELS:
                sinks[m].put(np.arange(start, start + c), blocks[m])
        for m, w in writers.items():
            sinks[m].finish(np.zeros(n), np.zeros(n, dtype=np.int64))
            w.__exit__(None, None, None)
    return study


def sgemm_rate(d: int = 2048, reps: int = 8) -> float:
    """The machine's float32 GEMM rate (GFLOP/s), best of `reps` square products."""
    a, b = torch.randn(d, d), torch.randn(d, d)
    a @ b
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t0)
    return 2 * d**3 / best / 1e9


def run_mossa(study: StudyDir, tasks: list[str]) -> tuple[dict, float, float]:
    values, flops = {}, 0.0
    t0 = time.perf_counter()
    for task in tasks:
        runs = {m: study.activation_file(m, task) for m in MODELS}  # verifies content hashes
        _, rows = aligned_rows(runs)
        acc, _ = scan(runs, rows, [("base", "control"), ("experimental", "control")])
        for model in ("base", "experimental"):
            for layer, res in enumerate(acc.results(model, "control", debiased=False)):
                values[(task, model, layer)] = res.value
        flops += acc.flops
    return values, time.perf_counter() - t0, flops


def run_baseline(study: StudyDir, tasks: list[str], layers: int, limit: int | None) -> tuple[dict, float, int]:
    pairs = [(t, m, layer) for t in tasks for layer in range(layers) for m in ("base", "experimental")]
    if limit:
        pairs = pairs[:: max(1, len(pairs) // limit)][:limit]
    values = {}
    t0 = time.perf_counter()
    for task, model, layer in pairs:
        out = subprocess.run([sys.executable, "-c", BASELINE, str(study.activation_dir(model, task) / "acts.npy"),
                              str(study.activation_dir("control", task) / "acts.npy"), str(layer)],
                             capture_output=True, text=True, check=True)
        values[(task, model, layer)] = float(out.stdout)
    return values, time.perf_counter() - t0, len(pairs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, nargs="+", default=[2000, 10000])
    parser.add_argument("--tasks", type=int, default=12)
    parser.add_argument("--layers", type=int, default=19)
    parser.add_argument("--d", type=int, default=640)
    parser.add_argument("--baseline-pairs", type=int, default=None,
                        help="time the baseline on this many evenly spread pairs and scale (default: all)")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/mossa-bench-cka"))
    parser.add_argument("--name", default="cka", help="result file: bench/results/<name>.json")
    args = parser.parse_args()

    rate = sgemm_rate()
    print(f"machine float32 GEMM: {rate:.0f} GFLOP/s ({torch.get_num_threads()} threads)")
    results = []
    for n in args.n:
        root = args.workdir / f"n{n}"
        shutil.rmtree(root, ignore_errors=True)
        t0 = time.perf_counter()
        study = generate(root, tasks=args.tasks, layers=args.layers, n=n, d=args.d)
        print(f"n={n}: wrote {args.tasks} tasks x 3 models in {time.perf_counter() - t0:.0f} s")
        tasks = [f"task{t:02d}" for t in range(args.tasks)]
        mine, t_mine, flops = run_mossa(study, tasks)
        theirs, t_theirs, n_pairs = run_baseline(study, tasks, args.layers, args.baseline_pairs)
        total_pairs = len(mine)
        t_theirs_all = t_theirs * total_pairs / n_pairs
        diff = max(abs(mine[k] - v) for k, v in theirs.items())
        res = {"n": n, "tasks": args.tasks, "layers": args.layers, "d": args.d, "pairs": total_pairs,
               "mossa_seconds": round(t_mine, 2), "baseline_seconds": round(t_theirs_all, 2),
               "baseline_pairs_timed": n_pairs, "speedup": round(t_theirs_all / t_mine, 2),
               "max_abs_difference": diff, "mossa_gflops": round(flops / t_mine / 1e9, 1),
               "machine_sgemm_gflops": round(rate, 1), "gemm_fraction": round(flops / t_mine / 1e9 / rate, 3)}
        results.append(res)
        print(f"n={n}: mossa {t_mine:.1f} s, baseline {t_theirs_all:.1f} s ({n_pairs} of {total_pairs} pairs "
              f"timed), x{res['speedup']}, max |diff| {diff:.2e}, {res['mossa_gflops']} GFLOP/s = "
              f"{res['gemm_fraction']:.2f} of sgemm")
        shutil.rmtree(root, ignore_errors=True)
    print()
    print(table([[r["n"], r["pairs"], r["mossa_seconds"], r["baseline_seconds"], r["speedup"],
                  f"{r['max_abs_difference']:.1e}", r["gemm_fraction"]] for r in results],
                ["n", "pairs", "mossa s", "baseline s", "speedup", "max |diff|", "GEMM fraction"]))
    print(f"wrote {write_result(args.name, {'results': results})}")


if __name__ == "__main__":
    main()
