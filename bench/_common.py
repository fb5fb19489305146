"""Shared helpers for the benches: machine facts, the model and real flan-mini prompts,
interleaved timing rounds, the printed table and the JSON result file.

Not part of the mossa package; the benches import it as a sibling module.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import time
from datetime import datetime
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent / "results"
REPO = Path(__file__).resolve().parent.parent


def cpu_model() -> str:
    from mossa.models import cpu_name

    return cpu_name()


def cpu_flags() -> list[str]:
    """The CPU features that decide fp32 vs bf16 speed (avx512 bf16, AMX)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                have = set(line.split(":", 1)[1].split())
                return sorted(f for f in have if f in {"avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile"})
    except OSError:
        pass
    return []


def machine() -> dict:
    from importlib import metadata

    def version(name: str) -> str:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return "not installed"

    mem = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                mem = round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return {
        "cpu": cpu_model(), "cpu_flags": cpu_flags(), "logical_cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "memory_gib": mem, "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "python": sys.version.split()[0], "platform": platform.platform(),
        "torch": torch.__version__, "transformers": version("transformers"), "peft": version("peft"),
        "numpy": version("numpy"), "mossa": version("mossa"),
    }


def load(model: str, dtype: str, device: str):
    """The mossa-loaded model (as the study loads it) and an AdapterHost over it."""
    from mossa.models import load_model, resolve_model
    from mossa.models import AdapterHost

    t0 = time.perf_counter()
    loaded = load_model(resolve_model(model), dtype=dtype, device=device, progress=lambda m: print(f"  {m}"))
    print(f"loaded {loaded.name}: {loaded.n_layers} layers, d={loaded.hidden_size}, {loaded.dtype} on "
          f"{loaded.device} ({loaded.dtype_reason}) in {time.perf_counter() - t0:.1f} s")
    return loaded, AdapterHost(loaded)


def prompts(loaded, tasks: list[str], split: str, n_per_task: int, *, tasks_dir: str | None,
            max_prompt_tokens: int, max_target_tokens: int, seed: int = 0) -> dict[str, list]:
    """Real flan-mini prompts per task, drawn exactly as the study draws them (its default format,
    templates, cuts and replacements)."""
    from mossa.tasks import PromptBuilder, load_tasks, resolve_format

    fmt = resolve_format("auto", cue="Answer:", template=None, system_prompt=None,
                         own_template=getattr(loaded.tokenizer, "chat_template", None))
    builder = PromptBuilder(loaded.tokenizer, fmt, max_prompt_tokens=max_prompt_tokens,
                            max_target_tokens=max_target_tokens)
    specs = load_tasks(Path(tasks_dir) if tasks_dir else None, tasks)
    return {t.name: builder.draw(t, split, n_per_task, seed, templates="all").prompts for t in specs}


def _stat_busy() -> float:
    """Busy CPU seconds of the whole machine so far (all processes), from /proc/stat."""
    f = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:8]]
    return (sum(f) - f[3] - f[4]) / os.sysconf("SC_CLK_TCK")


def timed(fn) -> dict:
    """Call fn() (which returns a dict with 'tokens' and 'seconds') and add how much CPU this
    process got and how much the rest of the machine used meanwhile."""
    cpu0, busy0, wall0 = cpu_seconds(), _stat_busy(), time.perf_counter()
    res = fn()
    wall = time.perf_counter() - wall0
    cpu, busy = cpu_seconds() - cpu0, _stat_busy() - busy0
    res["tokens_per_second"] = res["tokens"] / res["seconds"]
    # CPU time this process got, per torch thread: well under 1 means its threads waited.
    res["cpu_share"] = round(cpu / (wall * torch.get_num_threads()), 2)
    # Cores the other processes kept busy meanwhile: on 2 cores anything above ~0.1 means a
    # torch thread lost its core and the OpenMP threads waited on each other (a 2-10x slowdown).
    res["other_cores_busy"] = round(max(busy - cpu, 0.0) / wall, 2)
    return res


def setup(args, split: str, n_per_task: int):
    """Threads, the loaded model with its AdapterHost, and real prompts per task, from a bench's
    parsed arguments (--threads, --model, --dtype, --device, --tasks, --tasks-dir and the
    prompt/target token limits)."""
    set_threads(args.threads)
    loaded, host = load(args.model, args.dtype, args.device)
    by_task = prompts(loaded, args.tasks.split(","), split, n_per_task, tasks_dir=args.tasks_dir,
                      max_prompt_tokens=args.max_prompt_tokens, max_target_tokens=args.max_target_tokens)
    return loaded, host, by_task


def run_rounds(variants: dict, rounds: int, *, max_other: float = 0.15, retries: int = 3,
               label=str) -> dict[str, list[dict]]:
    """Run every variant once per round, the order reversed on alternate rounds, so drift in the
    machine's speed does not favour one side. Each variant is a callable returning a dict with
    at least 'tokens' and 'seconds'. A run during which other processes kept more than
    `max_other` cores busy is thrown away and rerun (after waiting for a quiet machine), up to
    `retries` times; the last try is kept and marked `contended`."""
    names = list(variants)
    out: dict[str, list[dict]] = {n: [] for n in names}
    for r in range(rounds):
        order = names if r % 2 == 0 else names[::-1]
        for name in order:
            for attempt in range(retries + 1):
                res = timed(variants[name])
                res["contended"] = res["other_cores_busy"] > max_other
                print(f"  round {r + 1}/{rounds} {label(name):<26} {res['tokens']:>7} tok {res['seconds']:8.2f} s "
                      f"{res['tokens_per_second']:9.1f} tok/s  cpu share {res['cpu_share']:.2f}, other "
                      f"processes {res['other_cores_busy']:.2f} cores{'  (contended)' if res['contended'] else ''}",
                      flush=True)
                if not res["contended"] or attempt == retries:
                    break
                wait_for_quiet()
            res["attempts"] = attempt + 1
            out[name].append(res)
    return out


def cpu_seconds() -> float:
    """User+system CPU time of this process (all its threads) so far."""
    import resource

    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def loadavg() -> float | None:
    try:
        return float(Path("/proc/loadavg").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def busy_cores(seconds: float = 3.0) -> float | None:
    """How many cores were busy (all processes) over the next `seconds`, from /proc/stat."""
    def sample():
        f = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
        idle = f[3] + f[4]
        return sum(f) - idle, sum(f)
    try:
        b0, t0 = sample()
        time.sleep(seconds)
        b1, t1 = sample()
    except (OSError, ValueError, IndexError):
        return None
    return (b1 - b0) / max(t1 - t0, 1) * (os.cpu_count() or 1)


def wait_for_quiet(max_busy: float = 0.3, max_wait_s: float = 600) -> float | None:
    """Wait (up to max_wait_s) until other processes use fewer than `max_busy` cores; returns
    the last reading. Call it while this process is idle.

    On a 2-core machine any other busy process takes a torch thread's core and makes the
    OpenMP threads wait on each other, which distorts timings far more than its share."""
    t0 = time.monotonic()
    busy = busy_cores()
    while busy is not None and busy >= max_busy and time.monotonic() - t0 < max_wait_s:
        print(f"  waiting for a quiet machine ({busy:.2f} cores busy)", flush=True)
        busy = busy_cores(10)
    return busy


def median_of(runs: list[dict], key: str) -> float:
    return float(statistics.median(r[key] for r in runs))


def paired_ratios(runs: dict[str, list[dict]], num: str, den: str, key: str = "tokens_per_second") -> dict:
    """num/den: the ratio of the medians, and the median of the per-round ratios (same round = side by side)."""
    per_round = [a[key] / b[key] for a, b in zip(runs[num], runs[den])]
    return {"ratio_of_medians": round(median_of(runs[num], key) / median_of(runs[den], key), 3),
            "median_of_round_ratios": round(statistics.median(per_round), 3),
            "round_ratios": [round(x, 3) for x in per_round]}


def table(rows: list[list], header: list[str]) -> str:
    cells = [[str(c) for c in row] for row in [header] + rows]
    width = [max(len(r[i]) for r in cells) for i in range(len(header))]
    line = lambda r: "  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, width)))
    return "\n".join([line(cells[0]), "  ".join("-" * w for w in width)] + [line(r) for r in cells[1:]])


def write_result(name: str, data: dict) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    tmp = path.with_suffix(".json.tmp")
    payload = {"bench": name, "when": datetime.now().isoformat(timespec="seconds"),
               "command": " ".join([Path(sys.executable).name] + sys.argv), "machine": machine(), **data}
    tmp.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    os.replace(tmp, path)
    return path


def set_threads(n: int | None) -> None:
    if n:
        torch.set_num_threads(n)
