"""Peak memory of extraction and of the CKA analysis at n = 1,000 and n = 10,000 test prompts.

Each phase runs in a fresh process (peak RSS, `ru_maxrss`, only grows), on the embedded default
model with synthetic prompts (random token ids, 8 prompt tokens + a 1-token target):

- extract: the base model's states and test losses, streamed into a study folder by the
  store's background writer (as `mossa run` does; every extraction pass is this one with
  another adapter). C_t and E for the next phase are then B's states plus noise, written
  through the same writer after the peak is read;
- cka: `mossa.analysis.analyze` on that folder with linear and debiased CKA, 200-resample
  intervals and the layer x layer matrix (as `mossa analyze --measures linear_cka,debiased_cka`).

The activations themselves live on disk; the claim is that neither phase's memory grows with n.

    .venv/bin/python bench/memory.py               # n = 1000 and 10000
    .venv/bin/python bench/memory.py --n 200 2000  # quicker
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import table, write_result  # noqa: E402

PROMPT_TOKENS = 8


def _extract(root: Path, n: int, model: str) -> dict:
    import numpy as np

    from mossa.extraction import extract
    from mossa.models import load_model, resolve_model
    from mossa.models import AdapterHost
    from mossa.store import StudyDir
    from mossa.tasks import Prompt

    loaded = load_model(resolve_model(model), dtype="auto", device="auto")
    host = AdapterHost(loaded)
    rng = np.random.default_rng(0)
    vocab = loaded.tokenizer.vocab_size
    prompts = [Prompt(id=f"synthetic:test:{i}", prompt_ids=rng.integers(10, vocab, PROMPT_TOKENS).tolist(),
                      target_ids=[int(rng.integers(10, vocab))], n_cut_tokens=0) for i in range(n)]
    study = StudyDir(root)
    ids = [p.id for p in prompts]
    t0 = time.perf_counter()
    with study.activation_writer("base", "synthetic", ids=ids, n_states=loaded.n_layers + 1,
                                 hidden=loaded.hidden_size, inputs="bench") as sink:
        extract(host, None, prompts, token_budget=2048, sink=sink)
    info = {"seconds": time.perf_counter() - t0, "layers": loaded.n_layers + 1, "d": loaded.hidden_size,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    # C_t and E for the CKA phase: B's states plus noise, streamed block by block (not measured).
    base = study.activation_file("base", "synthetic")
    for k, (name, scale) in enumerate((("control", 0.5), ("experimental", 0.2))):
        noise = np.random.default_rng(k + 1)
        with study.activation_writer(name, "synthetic", ids=ids, n_states=base.shape[0], hidden=base.shape[2],
                                     inputs="bench") as sink:
            for start in range(0, n, 1000):
                rows = np.arange(start, min(start + 1000, n))
                block = base.read(rows)
                sink.put(rows, block + scale * block.std() * noise.standard_normal(block.shape, dtype=np.float32))
            sink.finish(base.target_nll, base.target_tokens)
    return info


def _cka(root: Path) -> dict:
    from mossa.analysis import analyze
    from mossa.store import StudyDir

    t0 = time.perf_counter()
    sim, *_ = analyze(StudyDir(root), {"synthetic": "synthetic"}, measures=("linear_cka", "debiased_cka"),
                      n_boot=200)
    return {"seconds": time.perf_counter() - t0, "ci_method": sorted(set(sim["ci_method"]) - {""})}


def child(phase: str, root: Path, n: int, model: str) -> None:
    if phase == "extract":
        info = _extract(root, n, model)
    else:
        info = _cka(root)
        info["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print("RESULT " + json.dumps(info))


def run_phase(phase: str, root: Path, n: int, model: str) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", phase, "--root", str(root), "--n", str(n),
                          "--model", model], capture_output=True, text=True)
    if out.returncode:
        sys.exit(f"{phase} n={n} failed:\n{out.stderr[-3000:]}")
    line = [x for x in out.stdout.splitlines() if x.startswith("RESULT ")][-1]
    return json.loads(line[len("RESULT "):])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--model", default="gemma-3-270m")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/mossa-bench-memory"))
    parser.add_argument("--child", choices=["extract", "cka"], help=argparse.SUPPRESS)
    parser.add_argument("--root", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args.child, args.root, args.n[0], args.model)

    results = []
    for n in args.n:
        root = args.workdir / f"n{n}"
        shutil.rmtree(root, ignore_errors=True)
        ext = run_phase("extract", root, n, args.model)
        cka = run_phase("cka", root, n, args.model)
        on_disk = sum(p.stat().st_size for p in root.rglob("acts.npy")) / 2**20
        results.append({"n": n, "extract_peak_rss_mb": round(ext["peak_rss_mb"]), "extract_seconds":
                        round(ext["seconds"], 1), "cka_peak_rss_mb": round(cka["peak_rss_mb"]),
                        "cka_seconds": round(cka["seconds"], 1), "ci_method": cka["ci_method"],
                        "activations_on_disk_mb": round(on_disk), "layers": ext["layers"], "d": ext["d"]})
        print(f"n={n}: extract {ext['peak_rss_mb']:.0f} MB in {ext['seconds']:.0f} s, cka {cka['peak_rss_mb']:.0f} MB "
              f"in {cka['seconds']:.0f} s, activations on disk {on_disk:.0f} MB")
        shutil.rmtree(root, ignore_errors=True)
    first, last = results[0], results[-1]
    ratios = {phase: round(last[f"{phase}_peak_rss_mb"] / first[f"{phase}_peak_rss_mb"], 3) for phase in ("extract", "cka")}
    print()
    print(table([[r["n"], r["extract_peak_rss_mb"], r["cka_peak_rss_mb"], r["activations_on_disk_mb"]] for r in results],
                ["n", "extract peak RSS MB", "cka peak RSS MB", "activations on disk MB"]))
    print(f"peak RSS ratio n={last['n']} / n={first['n']}: extract {ratios['extract']}, cka {ratios['cka']}")
    print(f"wrote {write_result('memory', {'model': args.model, 'results': results, 'ratios': ratios})}")


if __name__ == "__main__":
    main()
