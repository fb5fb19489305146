"""What the number of test prompts per task (n) costs in interval width, read off a finished study.

For each n of `--sizes`, every task keeps only its first n test prompts (the first n ids of its activation
files; the evaluation records' rows below n) and the study's own intervals are recomputed on them:

1. per task and layer, the jackknife 95% interval of debiased CKA(E, C_t) and CKA(B, C_t)
   (`mossa.analysis.example_intervals`, as the similarity table computes it);
2. per task, the paired bootstrap interval of the control's task-metric gain over B (`control_check`).

The table gives, per n, the median over (task, layer) of width(n) / width(largest n) for (1) and the median
over tasks of the same ratio for (2), beside sqrt(n_max / n), the ratio of a root-n interval. Tasks without
options are scored on their first `generate_examples` answered prompts only (the demo: 32), so an n at or
above that leaves their gain interval unchanged; they get their own column.

    python bench/n_width.py                                   # the demo study in runs/demo
    python bench/n_width.py --study runs/demo --sizes 96,64,32

Results: bench/results/n_width.json (every width per task, layer and n) and the table on stdout.
"""

from __future__ import annotations

import argparse
import json
import time
import zlib
from pathlib import Path

import numpy as np

from _common import table, write_result

from mossa.analysis import evaluation_records, example_intervals
from mossa.evaluation import control_check
from mossa.similarity import layerwise_linear_cka
from mossa.store import StudyDir

MEASURE = "debiased_cka"


def cka_widths(study: StudyDir, task: str, sizes: list[int], seed: int) -> dict[str, dict[int, list[float]]]:
    """model -> n -> the width of each layer's interval against the control on the first n prompts."""
    files = {m: study.activation_file(m, task) for m in ("experimental", "base", "control")}
    ids = files["control"].ids
    if any(f.ids != ids for f in files.values()):
        raise SystemExit(f"{task}: the models' example ids differ in order; this bench reads rows by position")
    full = {m: f.read() for m, f in files.items()}
    out: dict[str, dict[int, list[float]]] = {"experimental": {}, "base": {}}
    for n in sizes:
        C = full["control"][:, :n]
        for m in out:
            A = full[m][:, :n]
            values = [r.value for r in layerwise_linear_cka(A, C, debiased=True, names=(m, "control"))]
            # the similarity table's stream for this task (one-row groups at n <= 96, so it does not matter)
            rng = np.random.default_rng([seed, zlib.crc32(task.encode()), 1])
            out[m][n] = [hi - lo for lo, hi, _ in example_intervals(MEASURE, A, C, rng=rng, values=values)]
    return out


def first_rows(record: dict | None, n: int) -> dict | None:
    """The record restricted to its rows below n (the first n prompts of the task)."""
    if record is None:
        return None
    keep = [i for i, r in enumerate(record["rows"]) if r < n]
    return {k: [v[i] for i in keep] if isinstance(v, list) and len(v) == len(record["rows"]) else v
            for k, v in record.items()}


def gain_widths(study: StudyDir, clusters: dict[str, str], sizes: list[int], n_boot: int, seed: int) -> dict:
    """task -> n -> (interval width, examples scored, metric) of the control's gain over B."""
    records = {k: v for k, v in evaluation_records(study, list(clusters)).items() if k[1] in ("base", "control")}
    out: dict[str, dict] = {t: {} for t in clusters}
    for n in sizes:
        check = control_check({k: first_rows(v, n) for k, v in records.items()}, clusters, n_boot=n_boot, seed=seed)
        for row in check.to_dict("records"):
            out[row["task"]][n] = (row["ci_high"] - row["ci_low"], int(row["n_examples"]), row["metric"])
    return out


def median_ratio(widths: list[tuple[float, float]]) -> float:
    r = [w / w0 for w, w0 in widths if np.isfinite(w) and np.isfinite(w0) and w0 > 0]
    return float(np.median(r)) if r else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--study", type=Path, default=Path("runs/demo"), help="a finished study folder")
    parser.add_argument("--sizes", default="96,80,64,48", help="comma-separated prompts per task; the first is the "
                        "reference")
    parser.add_argument("--n-boot", type=int, default=2000, help="bootstrap resamples of the gain interval "
                        "(the study uses its n_boot, 200 in the demo; more here so the widths carry less noise)")
    parser.add_argument("--name", default="n_width", help="result file name")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    study = StudyDir(args.study)
    info = json.loads(study.path("study.json").read_text())
    clusters = {t: v["cluster"] for t, v in info["tasks"].items()}
    seed = int(info["config"].get("seed", 0))
    n_test = min(study.activation_file("control", t).n for t in clusters)
    if max(sizes) > n_test:
        raise SystemExit(f"--sizes: at most {n_test} prompts per task in {args.study}")
    t0 = time.perf_counter()
    cka = {t: cka_widths(study, t, sizes, seed) for t in clusters}
    gain = gain_widths(study, clusters, sizes, args.n_boot, seed)
    ref = sizes[0]
    options = [t for t in clusters if gain[t][ref][2] == "accuracy"]
    generation = [t for t in clusters if t not in options]
    rows, summary = [], []
    for n in sizes:
        r = {"n": n,
             "E": median_ratio([(w, w0) for t in clusters for w, w0 in zip(cka[t]["experimental"][n],
                                                                          cka[t]["experimental"][ref])]),
             "B": median_ratio([(w, w0) for t in clusters for w, w0 in zip(cka[t]["base"][n], cka[t]["base"][ref])]),
             "gain_options": median_ratio([(gain[t][n][0], gain[t][ref][0]) for t in options]),
             "gain_generation": median_ratio([(gain[t][n][0], gain[t][ref][0]) for t in generation]),
             "sqrt": float(np.sqrt(ref / n))}
        summary.append(r)
        rows.append([n, f"{r['E']:.2f}", f"{r['B']:.2f}", f"{r['gain_options']:.2f}", f"{r['gain_generation']:.2f}",
                     f"{r['sqrt']:.2f}"])
    print(f"{args.study}: {len(clusters)} tasks, {len(next(iter(cka.values()))['base'][ref])} states; width ratios "
          f"vs n = {ref} (medians)")
    print(table(rows, ["n", "(1) E", "(1) B", f"(2) options ({len(options)})", f"(2) generation ({len(generation)})",
                       f"sqrt({ref}/n)"]))
    scored = {t: sorted({gain[t][n][1] for n in sizes}) for t in generation}
    print("(2) generation tasks, examples scored at each n: "
          + ", ".join(f"{t} {'/'.join(map(str, s))}" for t, s in scored.items()))
    print(f"{time.perf_counter() - t0:.0f} s")
    write_result(args.name, {"study": str(args.study), "sizes": sizes, "seed": seed, "n_boot": args.n_boot,
                             "measure": MEASURE, "option_tasks": options, "generation_tasks": generation,
                             "summary": summary,
                             "cka_widths": cka,
                             "gain_widths": {t: {n: {"width": w, "n_examples": k, "metric": m}
                                                 for n, (w, k, m) in g.items()} for t, g in gain.items()}})


if __name__ == "__main__":
    main()
