"""Which tasks' controls learn within a training budget, judged on training examples only.

The demo studies only tasks whose control learned its task (the study's rule, `mossa.analysis.LEARNED_RULE`:
its primary task metric beats B's on the same evaluated prompts, paired 95% bootstrap interval of the gain
above 0). Choosing them on the demo's own test prompts would make "every control learned" partly circular,
so this screen never reads a test example: from each task's train split it carves a validation split of
`--n-valid` examples (seeded per task), trains the control on (a sample of) the rest with each budget, and
scores B and the control on the validation prompts exactly as the study scores test prompts (mossa's own
`control` and `base` units, the demo preset's prompt and evaluation settings).

    python bench/screen.py                                  # every flan-mini task, the demo's budget
    python bench/screen.py --tasks sst2,trec --budgets 16:2,128:2

A budget is EXAMPLES:EPOCHS[:LR] (training examples sampled from the remaining train split, passes over them,
and the control's peak learning rate when not the demo's).
Results: bench/results/screen.json and a table on stdout (task, cluster, budget, metric, B, C_t, gain and
its interval, learned, training seconds).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
import zlib
from pathlib import Path

import numpy as np

from _common import table, write_result

from mossa.analysis import evaluation_records
from mossa.config import resolve_config
from mossa.evaluation import control_check
from mossa.models import load_model, resolve_lora_targets
from mossa.progress import Reporter
from mossa.store import StudyDir
from mossa.study import validate
from mossa.tasks import default_tasks_dir
from mossa.units import Base, Control, StudyContext, open_study, run_unit, unit_config


def resplit(source: Path, dest: Path, n_valid: int, seed: int) -> list[str]:
    """Copy every task of `source` into `dest` with only its train examples: `n_valid` of them (seeded by
    the task's name) become its "test" split, the validation set; the task's real test split is dropped."""
    manifest = json.loads((source / "MANIFEST.json").read_text())
    kept = {}
    for name, info in manifest["tasks"].items():
        rows = [json.loads(line) for line in (source / f"{name}.jsonl").read_text().splitlines() if line.strip()]
        train = [r for r in rows if r.get("split") == "train"]
        if len(train) < n_valid + 16:
            continue
        valid = set(np.random.default_rng([seed, zlib.crc32(name.encode())]).choice(len(train), n_valid,
                                                                                       replace=False).tolist())
        out = [{**r, "split": "test" if i in valid else "train"} for i, r in enumerate(train)]
        (dest / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in out))
        kept[name] = {**info, "train": len(train) - n_valid, "test": n_valid}
    (dest / "MANIFEST.json").write_text(json.dumps({**manifest, "tasks": kept}, indent=1))
    return list(kept)


def screen(tasks_dir: Path, tasks: list[str], n_train: int, epochs: float, lr: float | None, n_valid: int, seed: int,
           out: Path, n_boot: int) -> list[dict]:
    """Train each task's control on `n_train` examples for `epochs` (at peak learning rate `lr`, None = the demo's)
    and score it against B on the validation split; one row per task."""
    cfg = resolve_config({"preset": "demo", "tasks_dir": tasks_dir, "tasks": tasks, "n_train": n_train,
                          "n_test": n_valid, "seed": seed, "out": out, "holdout": "none", "ceiling_tasks": "none",
                          "cross_tasks": "none", "experimental_seeds": 1, "causal_tasks": "all",
                          "causal_layers": "none",
                          "control": {"epochs": epochs, **({"lr": lr} if lr else {})}})
    specs, source = validate(cfg)
    study = StudyDir(out)
    study.create()
    rep = Reporter()
    loaded = load_model(source, dtype=cfg.dtype, device=cfg.device, progress=rep.log)
    cfg = cfg.model_copy(update={"lora": cfg.lora.model_copy(
        update={"targets": resolve_lora_targets(cfg.lora.targets, loaded.model)})})
    ctx = StudyContext(unit_config(cfg, specs, loaded), study, specs, loaded, rep)
    seconds = {}
    with open_study(ctx):
        for spec in specs:
            seconds[spec.name] = run_unit(ctx.cfg, study.root, Control, f"control-{spec.name}")["seconds"]["train"]
        run_unit(ctx.cfg, study.root, Base, "base")
    clusters = {t.name: t.cluster for t in specs}
    check = control_check(evaluation_records(study, list(clusters)), clusters, n_boot=n_boot, seed=seed)
    budget = f"{n_train}:{epochs:g}" + (f":{lr:g}" if lr else "")
    return [{**row, "budget": budget, "train_seconds": round(seconds[row["task"]], 1)}
            for row in check.to_dict("records")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks-dir", type=Path, default=None, help="flan-mini folder (default: the shared one)")
    parser.add_argument("--tasks", default="all", help="comma-separated task names, or all")
    parser.add_argument("--budgets", default="16:2", help="comma-separated EXAMPLES:EPOCHS[:LR] (the demo: 16:2 at "
                        "the demo's learning rate)")
    parser.add_argument("--n-valid", type=int, default=96, help="validation examples carved from each train split")
    parser.add_argument("--n-boot", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--keep", type=Path, default=None, help="keep the screen's study folders here")
    args = parser.parse_args()
    source = args.tasks_dir or default_tasks_dir()
    rows = []
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "tasks").mkdir()
        names = resplit(source, tmp / "tasks", args.n_valid, args.seed)
        tasks = names if args.tasks == "all" else [t for t in args.tasks.split(",") if t]
        for budget in args.budgets.split(","):
            n_train, epochs, *lr = budget.split(":")
            out = (args.keep or tmp) / f"screen-{budget.replace(':', 'x')}"
            rows += screen(tmp / "tasks", tasks, int(n_train), float(epochs), float(lr[0]) if lr else None,
                           args.n_valid, args.seed, out, args.n_boot)
    header = ["task", "cluster", "budget", "metric", "B", "C_t", "gain", "95% interval", "learned", "train s"]
    print(table([[r["task"], r["cluster"], r["budget"], r["metric"], f"{r['base']:.2f}", f"{r['control']:.2f}",
                  f"{r['gain']:+.2f}", f"[{r['ci_low']:+.2f}, {r['ci_high']:+.2f}]", "yes" if r["learned"] else "no",
                  r["train_seconds"]] for r in sorted(rows, key=lambda r: (r["cluster"], r["task"], r["budget"]))],
                header))
    print(f"{len(rows)} rows in {time.perf_counter() - t0:.0f} s")
    write_result("screen", {"n_valid": args.n_valid, "budgets": args.budgets, "seed": args.seed, "rows": rows})


if __name__ == "__main__":
    main()
