"""What storing the states in half size (`activation_dtype` float16 or bfloat16) changes in every result.

Two parts, each against the float32 store:

1. A finished study (default runs/demo; only read): three scratch copies under --scratch, each with every
   activation folder re-encoded through the store's writer (float32, float16, bfloat16; ids, losses, meta
   and evaluation records kept), then the whole analysis (`mossa.analysis.analyze_study`, the study's own
   settings, --workers processes) on each copy. So the only difference between the copies is the store.
   Reported per table of results/ and per measure: the largest absolute change of every numeric column
   (value, interval bounds ci_low/ci_high, null mean, 95% bound, p-value, chance-adjusted score, ...),
   beside the median interval width; every non-numeric entry of sections.json and robustness.json that
   changed (a verdict), and the summary's sentences (`mossa.report.summarize`) that changed. The float32
   copy is also compared with the study's own results (the analysis reproduces them: 0 expected).
   Timings: the re-encoding, the analysis of each copy (wall and CPU) and, in interleaved rounds, a full
   read of every activation folder (the decode cost).
2. Synthetic states at large n like real ones: two related models, 3 layers of width --d, with a few
   dominant latent directions, heavy-tailed rows and two "massive activation" coordinates per layer whose
   mean (1.7e3, 5e3, 2.2e4), spread across examples (3-5%) and share of the centred variance (35%, 13%, 3%)
   are those measured on the demo's gemma-3-270m states ("demo"); and a stress case where a 1% spread of
   the massive coordinates carries 90% of the variance ("stress"). Written in each dtype and compared by
   `task_similarity`: at n <= --all-measures-max-n every registered measure's values, above it linear and
   debiased CKA (streamed); for the measures a study gives intervals and nulls (linear, debiased and RBF
   CKA) their jackknife interval and permutation null too.

    python bench/store_dtype.py                                  # runs/demo, scratch in /tmp/store_bench
    python bench/store_dtype.py --study /path/to/study --sizes 4096,10000 --skip-synthetic

Results: bench/results/store_dtype.json (every number) and the tables on stdout. About 10 minutes of CPU on
2 cores (the three analyses of the demo are most of it).
"""

from __future__ import annotations

import argparse
import os
import sys

THREADS = "1"
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):  # before numpy is imported
    os.environ.setdefault(_var, THREADS)

import json  # noqa: E402
import re  # noqa: E402
import shutil  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from _common import table, write_result  # noqa: E402

from mossa.store import ACTIVATION_DTYPES, Activations, StudyDir, activation_bytes  # noqa: E402

DTYPES = list(ACTIVATION_DTYPES)
HALF = [d for d in DTYPES if d != "float32"]
NULL_AND_CI = ["value", "ci_low", "ci_high", "null_mean", "null_q95", "p_value", "adjusted"]


# ------------------------------------------------------------------------------------------------ demo study
def folders(root: Path) -> list[tuple[str, str]]:
    return sorted((p.parent.parent.name, p.parent.name) for p in (root / "activations").glob("*/*/meta.json"))


def reencode(source: Path, out: Path, dtype: str) -> dict:
    """A copy of `source` without results/ and figures/, every activation folder written as `dtype`."""
    if out.exists():
        shutil.rmtree(out)
    shutil.copytree(source, out, ignore=shutil.ignore_patterns("activations", "figures", "report.html",
                                                               ".mossa.lock*"))
    src, dst = StudyDir(source), StudyDir(out)
    t0, size = time.perf_counter(), 0
    for model, task in folders(source):
        f = src.activation_file(model, task, verify=False)
        acts = Activations(ids=f.ids, acts=f.read(), target_nll=f.target_nll, target_tokens=f.target_tokens,
                           meta=f.meta, evaluation=f.evaluation)
        dst.write_activations(model, task, acts, inputs=f.inputs, dtype=dtype)
        size += activation_bytes(*acts.shape, dtype)
    return {"seconds": time.perf_counter() - t0, "bytes": size}


def analyse(root: Path, workers: int) -> dict:
    from mossa.analysis import analyze_study

    t0, c0 = time.perf_counter(), time.process_time()
    tables = analyze_study(root, workers=workers)
    return {"wall_s": time.perf_counter() - t0, "cpu_s": time.process_time() - c0,
            "stages": {k: round(v, 2) for k, v in tables.timings.items()}}


def read_all(root: Path) -> float:
    study, t0 = StudyDir(root), time.perf_counter()
    for model, task in folders(root):
        study.activation_file(model, task, verify=False).read()
    return time.perf_counter() - t0


def _numeric(df: pd.DataFrame) -> list[str]:
    return [c for c in df.columns if pd.api.types.is_numeric_dtype(df[c]) and not pd.api.types.is_bool_dtype(df[c])]


def compare_table(a: pd.DataFrame, b: pd.DataFrame, group: str | None) -> dict:
    """Per group (e.g. measure) and numeric column: the largest |b - a|, and how many cells are defined in one
    table only. Rows are matched by position; their non-numeric keys must agree."""
    if a.shape != b.shape or list(a.columns) != list(b.columns):
        return {"error": f"shapes differ: {a.shape} vs {b.shape}"}
    keys = [c for c in a.columns if c not in _numeric(a)]
    same_keys = all(a[c].fillna("").astype(str).equals(b[c].fillna("").astype(str)) for c in keys
                    if c not in ("ci_method", "undefined_reason"))
    out = {"rows": len(a), "keys_agree": bool(same_keys), "by": {}}
    for name, idx in (a.groupby(group).groups.items() if group and group in a else [("all", a.index)]):
        cols = {}
        for c in _numeric(a):
            x, y = a.loc[idx, c].to_numpy(float), b.loc[idx, c].to_numpy(float)
            both = np.isfinite(x) & np.isfinite(y)
            cols[c] = {"max_abs": float(np.abs(x - y)[both].max()) if both.any() else 0.0,
                       "defined_in_one": int((np.isfinite(x) != np.isfinite(y)).sum())}
        if {"ci_low", "ci_high"} <= set(a.columns):
            width = (a.loc[idx, "ci_high"] - a.loc[idx, "ci_low"]).to_numpy(float)
            width = width[np.isfinite(width)]
            cols["ci_width"] = {"median": float(np.median(width)) if len(width) else float("nan"),
                                "min": float(width.min()) if len(width) else float("nan")}
        for c in ("ci_method",):
            if c in a.columns:
                cols[c] = {"changed": int((a.loc[idx, c].fillna("") != b.loc[idx, c].fillna("")).sum())}
        out["by"][str(name)] = cols
    return out


def _leaves(obj, path=""):
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _leaves(v, f"{path}/{k}")
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _leaves(v, f"{path}[{i}]")
    else:
        yield path, obj


_NUMBER = re.compile(r"[-+]?(\d*\.\d+(e[-+]?\d+)?|\d+e[-+]?\d+)")


def wording(x) -> str:
    """A text with its measured numbers (those with a decimal point or exponent) blanked: two texts that differ
    only in them state the same verdict. Whole numbers (layers, counts) are kept: a change there counts as a
    verdict."""
    return _NUMBER.sub("#", x) if isinstance(x, str) else repr(x)


def compare_json(a, b) -> dict:
    """The largest change of the numbers; every other entry that changed, split into `verdicts` (a flag, a
    word, a section bound: anything but a number printed in a text) and `numbers_in_text`."""
    la, lb = dict(_leaves(a)), dict(_leaves(b))
    numbers, changed = {}, []
    for path in sorted(set(la) | set(lb)):
        x, y = la.get(path), lb.get(path)
        if isinstance(x, (int, float)) and isinstance(y, (int, float)) and not isinstance(x, bool) \
                and not isinstance(y, bool):
            top = path.split("/")[1] if "/" in path else path
            if np.isfinite(x) and np.isfinite(y):
                numbers[top] = max(numbers.get(top, 0.0), abs(float(y) - float(x)))
            elif np.isfinite(x) != np.isfinite(y):
                changed.append({"path": path, "float32": x, "other": y})
        elif x != y:
            changed.append({"path": path, "float32": x, "other": y})
    verdicts = [c for c in changed if wording(c["float32"]) != wording(c["other"])]
    return {"max_abs_by_key": numbers, "changed": changed, "verdicts": verdicts,
            "numbers_in_text": len(changed) - len(verdicts)}


def summary_sentences(root: Path) -> list[str]:
    from mossa.report import summarize
    from mossa.report import summary_sentences as sentences
    from mossa.report.html import load_results

    return sentences(summarize(*load_results(root)))


def compare_studies(a: Path, b: Path) -> dict:
    out = {"tables": {}, "json": {}}
    for path in sorted((a / "results").glob("*.csv")):
        other = b / "results" / path.name
        if not other.is_file():
            out["tables"][path.stem] = {"error": "missing"}
            continue
        da, db = pd.read_csv(path), pd.read_csv(other)
        out["tables"][path.stem] = compare_table(da, db, "measure" if "measure" in da.columns else None)
    for path in sorted((a / "results").glob("*.json")):
        if (b / "results" / path.name).is_file():
            out["json"][path.stem] = compare_json(json.loads(path.read_text()),
                                                  json.loads((b / "results" / path.name).read_text()))
    try:
        sa, sb = summary_sentences(a), summary_sentences(b)
        changed = [{"float32": x, "other": y} for x, y in zip(sa, sb) if x != y]
        out["summary"] = {"sentences": len(sa), "count_changed": len(sa) != len(sb), "changed": changed,
                          "verdicts": [c for c in changed if wording(c["float32"]) != wording(c["other"])]}
    except Exception as exc:  # the summary is a reading of the tables; the tables above are the measurement
        out["summary"] = {"error": f"{type(exc).__name__}: {exc}"}
    return out


def demo_part(args) -> dict:
    source = Path(args.study)
    if not (source / "study.json").is_file():
        raise SystemExit(f"{source}: not a finished study (no study.json)")
    scratch = Path(args.scratch)
    scratch.mkdir(parents=True, exist_ok=True)
    copies = {d: scratch / d for d in DTYPES}
    out: dict = {"study": str(source), "encode": {}, "analysis": {}, "read_rounds": []}
    for dtype, root in copies.items():
        out["encode"][dtype] = reencode(source, root, dtype)
        print(f"{dtype}: re-encoded in {out['encode'][dtype]['seconds']:.1f} s, "
              f"{out['encode'][dtype]['bytes'] / 2**20:.1f} MiB of arrays")
    for dtype, root in copies.items():
        out["analysis"][dtype] = analyse(root, args.workers)
        print(f"{dtype}: analysis {out['analysis'][dtype]['wall_s']:.1f} s wall, "
              f"{out['analysis'][dtype]['cpu_s']:.1f} s CPU")
    for r in range(args.read_rounds):  # interleaved, order reversed on alternate rounds
        order = DTYPES if r % 2 == 0 else DTYPES[::-1]
        out["read_rounds"].append({d: read_all(copies[d]) for d in order})
    out["reproduced"] = compare_studies(source, copies["float32"])
    out["compare"] = {d: compare_studies(copies["float32"], copies[d]) for d in HALF}
    return out


# ------------------------------------------------------------------------------------------------ synthetic
# Per layer: the massive coordinates' mean, their relative spread across examples and their share of the
# centred variance. "demo": as measured on the demo's gemma-3-270m states (layers 4, 8, 16 of B and the
# controls: means 1.7e3-2.2e4, spread 3-9%, share 36%, 13%, 2-3%); "stress": the same means with a 1% spread
# carrying 90% of the variance (encoded whole, bfloat16's 8 bits could not follow that spread; the store's
# centre removes the mean first).
SYNTHETIC = {"demo": [(1.7e3, 0.03, 0.35), (5e3, 0.045, 0.13), (2.2e4, 0.05, 0.03)],
             "stress": [(1.7e3, 0.01, 0.9), (5e3, 0.01, 0.9), (2.2e4, 0.01, 0.9)]}


def synthetic_states(n: int, d: int, seed: int, kind: str = "demo") -> dict[str, np.ndarray]:
    """Two related models' states [3, n, d]: shared latent directions with decaying scale, heavy-tailed rows
    and noise of each model's own, and two massive coordinates per layer whose mean, spread across examples
    (following a shared latent) and share of the centred variance are `SYNTHETIC[kind]`'s."""
    rng = np.random.default_rng(seed)
    r = 12
    z = rng.standard_t(4, size=(n, r)) * (2.0 ** -np.arange(r) * 8)  # a few dominant directions
    rows = np.exp(rng.normal(0, 0.5, size=(n, 1)))  # row norms vary, heavy tails from t(3)
    u = np.tanh(z[:, :2] / 8)
    u = (u - u.mean(0)) / u.std(0)  # the massive coordinates' spread follows two latents
    out = {}
    for m, (shared, model_seed) in {"control": ((1.0, 1.0, 1.0), 1), "experimental": ((0.95, 0.85, 0.75), 2)}.items():
        mrng = np.random.default_rng([seed, model_seed])
        own = mrng.standard_t(4, size=(n, r)) * (2.0 ** -np.arange(r) * 8)
        layers = []
        for layer, (mean, spread, share) in enumerate(SYNTHETIC[kind]):
            a = shared[layer]  # how much of the shared latents the model reads at this layer
            w = np.random.default_rng([seed, 10 + layer, model_seed]).normal(size=(r, d)) / np.sqrt(r)
            x = ((a * z + np.sqrt(1 - a**2) * own) @ w + mrng.standard_t(3, size=(n, d)) * 2.0) * rows
            dims = (7, 300)
            massive = np.stack([mean * (1 + spread * (0.95 * u[:, k] + 0.3 * mrng.normal(size=n))) * (-1) ** k
                                for k in range(2)], axis=1)
            rest = np.delete(x, dims, axis=1)
            want = massive.var(0).sum() * (1 - share) / share
            x *= np.sqrt(want / rest.var(0).sum())
            x[:, dims] = massive
            layers.append(x)
        out[m] = np.stack(layers).astype(np.float32)
    return out


def synthetic_part(args) -> dict:
    from mossa.analysis._similarity import DEFAULT_MEASURES, VALUES_ONLY, task_similarity
    from mossa.similarity import available_measures

    scratch = Path(args.scratch) / "synthetic"
    kernel = [m for m in DEFAULT_MEASURES if m not in VALUES_ONLY]  # the study's measures with intervals, nulls
    out: dict = {}
    cases = [("demo", n) for n in args.sizes] + [("stress", n) for n in args.stress_sizes]
    for kind, n in cases:
        states = synthetic_states(n, args.d, seed=n, kind=kind)
        if kind == "stress":
            measures = ["linear_cka", "debiased_cka"]
        elif n <= args.all_measures_max_n:
            measures = available_measures()
        else:  # the streamed measures (the others hold n x n kernels or were measured at the smaller n)
            measures = ["linear_cka", "debiased_cka"]
        with_ci = [m for m in kernel if m in measures]
        tables, seconds = {}, {}
        for dtype in DTYPES:
            root = scratch / f"{kind}-n{n}-{dtype}"
            shutil.rmtree(root, ignore_errors=True)
            study = StudyDir(root)
            for model, acts in states.items():
                study.write_activations(model, "synthetic", Activations(
                    ids=[f"s:{i}" for i in range(n)], acts=acts, target_nll=np.zeros(n),
                    target_tokens=np.ones(n, dtype=np.int64), meta={}), inputs="bench", dtype=dtype)
            runs = {m: study.activation_file(m, "synthetic") for m in ("control", "experimental")}
            t0 = time.perf_counter()
            rows = task_similarity("synthetic", "x", runs, tuple(with_ci), intervals=True,
                                   n_permutations=args.permutations, seed=0)
            rows += task_similarity("synthetic", "x", runs, tuple(m for m in measures if m not in with_ci))
            seconds[dtype] = time.perf_counter() - t0
            tables[dtype] = pd.DataFrame(rows)
            shutil.rmtree(root, ignore_errors=True)
        out[f"{kind} n={n}"] = {"measures": measures, "with_intervals_and_nulls": with_ci, "seconds": seconds,
                  "compare": {d: compare_table(tables["float32"], tables[d], "measure") for d in HALF},
                  "float32_values": tables["float32"][["measure", "layer", "value", "ci_low", "ci_high"]]
                  .to_dict(orient="records")}
        print(f"synthetic {kind} n={n}: {len(measures)} measures, " +
              ", ".join(f"{d} {s:.1f} s" for d, s in seconds.items()))
    return out


# ------------------------------------------------------------------------------------------------ report
def _fmt(x: float) -> str:
    return "0" if x == 0 else f"{x:.1e}"


def print_tables(result: dict) -> None:
    demo = result.get("demo")
    if demo:
        rows = []
        for d in HALF:
            sim = demo["compare"][d]["tables"]["similarity"]
            for measure, cols in sim["by"].items():
                rows.append([d, measure] + [_fmt(cols[c]["max_abs"]) for c in NULL_AND_CI]
                            + [f"{cols['ci_width']['median']:.3f}",
                               sum(cols[c]["defined_in_one"] for c in NULL_AND_CI)])
        print("\ndemo, results/similarity: largest |change| against float32")
        print(table(rows, ["store", "measure", *NULL_AND_CI, "median CI width", "defined in one"]))
        rows = []
        for d in HALF:
            comp = demo["compare"][d]
            for name, t in comp["tables"].items():
                if name == "similarity" or "by" not in t:
                    continue
                worst = max(((c, v["max_abs"]) for cols in t["by"].values() for c, v in cols.items()
                             if "max_abs" in v), key=lambda cv: cv[1], default=("-", 0.0))
                rows.append([d, name, worst[0], _fmt(worst[1]), t["keys_agree"]])
            for name, j in comp["json"].items():
                worst = max(j["max_abs_by_key"].items(), key=lambda kv: kv[1], default=("-", 0.0))
                rows.append([d, f"{name}.json", worst[0], _fmt(worst[1]),
                             f"{len(j['verdicts'])} verdicts, {j['numbers_in_text']} texts' numbers changed"])
            summ = comp["summary"]
            rows.append([d, "summary sentences", "-", "-", f"{len(summ.get('verdicts', []))} verdicts, "
                         f"{len(summ.get('changed', [])) - len(summ.get('verdicts', []))} numbers of "
                         f"{summ.get('sentences', '?')} sentences changed"])
        print("\ndemo, other results: the column that changed most")
        print(table(rows, ["store", "table", "column", "max |change|", "keys / verdicts"]))
        print("\ntimings: " + ", ".join(f"{d} analysis {a['wall_s']:.1f} s wall / {a['cpu_s']:.1f} s CPU"
                                         for d, a in demo["analysis"].items()))
        reads = {d: float(np.median([r[d] for r in demo["read_rounds"]])) for d in DTYPES} if demo["read_rounds"] \
            else {}
        print("full read of every folder (median): " + ", ".join(f"{d} {s:.2f} s" for d, s in reads.items()))
    for case, syn in result.get("synthetic", {}).items():
        rows = []
        for d in HALF:
            for measure, cols in syn["compare"][d]["by"].items():
                ci = measure in syn["with_intervals_and_nulls"]
                rows.append([d, measure] + [_fmt(cols[c]["max_abs"]) if c == "value" or ci else "-"
                                            for c in NULL_AND_CI]
                            + [f"{cols['ci_width']['median']:.3f}" if ci else "-"])
        print(f"\nsynthetic {case}, d={result['d']}: largest |change| against float32")
        print(table(rows, ["store", "measure", *NULL_AND_CI, "median CI width"]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--study", default="runs/demo", help="a finished study, only read (default runs/demo)")
    parser.add_argument("--scratch", default="/tmp/store_bench", help="where the copies are written")
    parser.add_argument("--workers", type=int, default=1, help="analysis processes per copy (default 1)")
    parser.add_argument("--read-rounds", type=int, default=4, help="interleaved rounds of the read timing")
    parser.add_argument("--sizes", default="4096,10000", help="synthetic n, comma-separated")
    parser.add_argument("--stress-sizes", default="4096", help="n of the stress case (1%% spread of the massive "
                        "coordinates carrying 90%% of the variance; linear and debiased CKA only), comma-separated")
    parser.add_argument("--d", type=int, default=640, help="synthetic width (gemma-3-270m's)")
    parser.add_argument("--all-measures-max-n", type=int, default=4096,
                        help="largest n at which every registered measure is computed (above: linear and "
                             "debiased CKA, which stream; the kernel measures hold n x n)")
    parser.add_argument("--permutations", type=int, default=100, help="permutations of the synthetic nulls")
    parser.add_argument("--skip-demo", action="store_true")
    parser.add_argument("--skip-synthetic", action="store_true")
    parser.add_argument("--name", default="store_dtype", help="result file name")
    args = parser.parse_args()
    args.sizes = [int(s) for s in args.sizes.split(",") if s]
    args.stress_sizes = [int(s) for s in args.stress_sizes.split(",") if s]
    result: dict = {"threads": THREADS, "d": args.d, "sizes": args.sizes}
    t0 = time.perf_counter()
    if not args.skip_demo:
        result["demo"] = demo_part(args)
    if not args.skip_synthetic:
        result["synthetic"] = synthetic_part(args)
    result["seconds"] = time.perf_counter() - t0
    print_tables(result)
    print(f"\nwrote {write_result(args.name, result)} ({result['seconds']:.0f} s)")


if __name__ == "__main__":
    sys.exit(main())
