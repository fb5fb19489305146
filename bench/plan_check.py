"""The plan against the run: plan a study (`mossa.plan.plan_study`), run it, and compare stage by stage.

Counts (training tokens per unit kind, activation bytes) must be equal; times are the ratio of the plan's
estimate to the measured stage time. On a GPU the ratio turns `mossa.plan.GPU_EFFICIENCY`'s assumption
into a measurement: measured efficiency = assumed x planned / measured (the plan's GPU row for the card
closest to the one used, named with --gpu). Writes bench/results/<name>.json.

    .venv/bin/python bench/plan_check.py --preset quick --out /tmp/plan_check            # a smoke run
    .venv/bin/python bench/plan_check.py --device cuda --gpu H100-SXM --out /tmp/plan_gpu  # standing order
    .venv/bin/python bench/plan_check.py --study runs/demo                                 # a finished study
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from _common import machine, table, write_result

from mossa.config import resolve_config
from mossa.plan import GPU_EFFICIENCY, GPUS, STAGES, plan_study
from mossa.progress import Reporter
from mossa.study import run_study


def _measured(root: Path) -> dict:
    """What the finished study at `root` did: training tokens per kind, array bytes, stage seconds."""
    study = json.loads((root / "study.json").read_text())
    tokens: dict[str, int] = {}
    for unit, log in study["training"].items():
        kind = study["units"][unit]["kind"]
        tokens[kind] = tokens.get(kind, 0) + log["tokens"]
    return {"train_tokens": tokens,
            "activation_bytes": sum(f.stat().st_size for f in (root / "activations").rglob("*.npy")),
            "seconds": {"training": study["seconds"]["train"], "extraction": study["seconds"]["extract"],
                        "analysis": study["seconds"].get("analyze")}, "config": study["config"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--study", type=Path, help="A finished study: plan its config (fresh folder) and compare.")
    parser.add_argument("--preset", default="quick")
    parser.add_argument("--tasks", help="Comma-separated tasks (default: the preset's).")
    parser.add_argument("--tasks-dir", default="../shared/data/flan-mini")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--gpu", choices=sorted(GPUS), help="The plan's GPU row to compare with (on CUDA).")
    parser.add_argument("--out", type=Path, default=Path("/tmp/mossa_plan_check"))
    parser.add_argument("--name", default="plan_check")
    args = parser.parse_args()

    if args.study:
        measured = _measured(args.study)
        cfg = resolve_config({**measured["config"], "out": args.out / "planned"})
        plan = plan_study(cfg)
    else:
        cfg = resolve_config({"preset": args.preset, "tasks_dir": args.tasks_dir, "device": args.device,
                              "out": args.out / "study", **({"tasks": args.tasks.split(",")} if args.tasks else {})})
        plan = plan_study(cfg)
        t0 = time.perf_counter()
        run_study(cfg, reporter=Reporter())
        measured = _measured(args.out / "study") | {"wall": time.perf_counter() - t0}
    planned_tokens = {k.kind: k.train_tokens for k in plan.kinds if k.train_tokens}
    est = plan.machine["seconds"]
    rows = [["training tokens", sum(planned_tokens.values()), sum(measured["train_tokens"].values()),
             planned_tokens == measured["train_tokens"]],
            ["activation bytes", plan.total.activation_bytes, measured["activation_bytes"],
             plan.total.activation_bytes == measured["activation_bytes"]],
            ["training s", round(est["training"], 1), measured["seconds"]["training"],
             round(est["training"] / measured["seconds"]["training"], 2)],
            ["extraction + evaluation s", round(est["extraction"] + est["evaluation"], 1),
             measured["seconds"]["extraction"],
             round((est["extraction"] + est["evaluation"]) / measured["seconds"]["extraction"], 2)]]
    if measured["seconds"]["analysis"]:
        rows.append(["analysis s", round(est["analysis"], 1), measured["seconds"]["analysis"],
                     round(est["analysis"] / measured["seconds"]["analysis"], 2)])
    gpu = {}
    if args.gpu:
        planned = plan.gpus[args.gpu]["seconds"]
        gpu = {"training": GPU_EFFICIENCY["training"] * planned["training"] / measured["seconds"]["training"],
               "extraction": GPU_EFFICIENCY["extraction"] * (planned["extraction"] + planned["evaluation"])
               / measured["seconds"]["extraction"]}
        rows += [[f"measured {args.gpu} efficiency, {stage}", "", round(value, 3), ""] for stage, value in gpu.items()]
    print(table(rows, ["quantity", "plan", "run", "equal / plan:run"]))
    print(f"calibration: {plan.machine['calibration']}; {plan.machine['cpu']}, GEMM "
          f"{plan.machine['gemm_flops'] / 1e9:.0f} GFLOP/s ({plan.model.compute_dtype})")
    write_result(args.name, {"machine": machine(), "plan": {"train_tokens": planned_tokens,
                                                            "activation_bytes": plan.total.activation_bytes,
                                                            "seconds": est, "rates": plan.machine["rates"],
                                                            "calibration": plan.machine["calibration"],
                                                            "gemm_flops": plan.machine["gemm_flops"],
                                                            "flops": plan.total.flops, "stages": list(STAGES)},
                             "run": measured, "gpu_efficiency": gpu, "rows": rows})


if __name__ == "__main__":
    main()
