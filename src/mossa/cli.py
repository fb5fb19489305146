"""The `mossa` command line: parse flags, call the Python API, print. Nothing else lives here.

Examples::

    mossa run --preset demo --tasks-dir ../shared/data/flan-mini
    mossa run --model smollm2-135m-instruct --tasks sst2,rte,e2e_nlg --out runs/smol
    mossa tasks list --tasks-dir ../shared/data/flan-mini
    mossa models list

A user error (bad flag value, unknown task or model, malformed task file) prints one line on
stderr and exits with code 2; MOSSA_DEBUG=1 shows the traceback.
"""

from __future__ import annotations

import inspect
import os
import sys
from pathlib import Path
from typing import Optional

import importlib.util

import click
import typer
from rich.console import Console
from rich.table import Table

from mossa.errors import MossaError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Where in an LLM's layers does multi-task learning happen? (Zhao et al. 2024, rebuilt)")
tasks_app = typer.Typer(no_args_is_help=True, help="Inspect the task registry.")
models_app = typer.Typer(no_args_is_help=True, help="Inspect the model registry.")
app.add_typer(tasks_app, name="tasks")
app.add_typer(models_app, name="models")
out = Console()

# typer >= 0.25 raises the exceptions of its vendored click copy; catch both.
_CLICK_ERRORS: tuple[type[Exception], ...] = (click.exceptions.ClickException,)
if importlib.util.find_spec("typer._click") is not None:
    from typer._click import exceptions as _typer_click

    _CLICK_ERRORS += (_typer_click.ClickException,)


def _split_list(value: Optional[str], flag: str = "--tasks") -> Optional[list[str]]:
    if value is None:
        return None
    items = [v.strip() for v in value.split(",") if v.strip()]
    if not items:
        raise MossaError(f"{flag}: give a comma-separated list of names, e.g. {flag} a,b")
    return items


def _int_list(value: Optional[str], flag: str) -> Optional[list[int]]:
    items = _split_list(value, flag)
    if items is None:
        return None
    try:
        return [int(v) for v in items]
    except ValueError:
        raise MossaError(f"{flag}: expected comma-separated layer numbers such as 1,5,10, got {value!r}") from None


def _workers(value: Optional[str]) -> int | str | None:
    if value is None or value == "auto":
        return value
    if not value.isdigit() or int(value) < 1:
        raise MossaError(f"--workers: expected 'auto' or an integer >= 1, got {value!r}")
    return int(value)


def _count(value: str, flag: str) -> int:
    if not value.isdigit() or int(value) < 2:
        raise MossaError(f"{flag}: expected 'all' or an integer >= 2, got {value!r}")
    return int(value)


@app.command()
def run(
    config: Optional[Path] = typer.Option(None, "--config", help="YAML file with study settings."),
    model: Optional[str] = typer.Option(None, help="Base model: registered name, local HF dir, .gguf or hub id."),
    tasks_dir: Optional[Path] = typer.Option(None, help="Task source: a folder of <task>.jsonl files or of "
                                             "Super-NaturalInstructions task*.json files, or hub:flan2021 (online) "
                                             "(default: $MOSSA_TASKS_DIR or ../shared/data/flan-mini)."),
    task_file: Optional[list[Path]] = typer.Option(None, "--task-file", help="A custom task: one JSONL file "
                                                   "(input, target; optional split, options, id). Repeatable."),
    cluster: Optional[list[str]] = typer.Option(None, "--cluster", help="Cluster of each --task-file, in order "
                                                "(one --cluster for all of them; default Custom). Repeatable."),
    tasks: Optional[str] = typer.Option(None, help="Comma-separated task names (default: the preset's)."),
    preset: Optional[str] = typer.Option(None, help="quick | demo | paper."),
    out_dir: Optional[Path] = typer.Option(None, "--out", help="Study folder (default runs/<timestamp>)."),
    seed: Optional[int] = typer.Option(None, help="Seed for sampling, initialisation and data order."),
    n_test: Optional[int] = typer.Option(None, help="Test prompts per task."),
    n_train: Optional[int] = typer.Option(None, help="Training examples per task."),
    dtype: Optional[str] = typer.Option(None, help="auto | float32 | bfloat16 | float16."),
    activation_dtype: Optional[str] = typer.Option(None, help="How the states are stored: float16 (default, half "
                                                   "the disk) | float32 | bfloat16."),
    device: Optional[str] = typer.Option(None, help="auto | cpu | cuda | cuda:N."),
    last_layer: Optional[str] = typer.Option(None, help="post_norm (HF convention) | pre_norm."),
    prompt_format: Optional[str] = typer.Option(None, help="One prompt format for every model: auto | plain | "
                                                "chat (default auto: chat when B has a chat template)."),
    chat_template: Optional[str] = typer.Option(None, help="Chat format in chat mode: llama-2 (the paper's) | "
                                                "chatml | model (B's own) | a Jinja file."),
    system_prompt: Optional[str] = typer.Option(None, help="System prompt before every instruction ('' = none; "
                                                "default: the chat template's own)."),
    templates: Optional[str] = typer.Option(None, help="Instruction templates: all (one drawn per example) | "
                                            "first."),
    measures: Optional[str] = typer.Option(None, help="Comma-separated similarity measures (default: "
                                           "linear_cka, debiased_cka, rbf_cka and the robust variants of "
                                           "debiased CKA, mossa.similarity.ROBUST_MEASURES)."),
    holdout: Optional[str] = typer.Option(None, help="Tasks held out of E' (comma-separated), auto or none."),
    ceiling_tasks: Optional[str] = typer.Option(None, help="Tasks whose control is trained again under another "
                                                "seed, for the ceiling CKA(C_t', C_t) (comma-separated), auto or "
                                                "none."),
    n_boot: Optional[int] = typer.Option(None, help="Bootstrap resamples over tasks for the medians' intervals "
                                         "(0 = no intervals at all)."),
    n_permutations: Optional[int] = typer.Option(None, help="Re-pairings of the examples for every value's "
                                                 "permutation null (0 = none)."),
    tsne_layers: Optional[str] = typer.Option(None, help="Comma-separated layers for the t-SNE figure."),
    wait: bool = typer.Option(False, "--wait", help="Wait for another run on the same --out instead of failing."),
    executor: Optional[str] = typer.Option(None, help="Where the units run: local (this process, in order) | ray "
                                           "(one Ray task per unit, same results)."),
    ray_address: Optional[str] = typer.Option(None, help="Ray cluster to use with --executor ray (default: start "
                                              "a local Ray instance)."),
    ray_cpus: Optional[int] = typer.Option(None, help="CPUs of the local Ray instance (default: all)."),
    threads: Optional[int] = typer.Option(None, help="torch threads per unit, in either executor (default: "
                                          "torch's default here)."),
    cpus_per_unit: Optional[float] = typer.Option(None, help="CPUs each unit asks Ray for (default: --threads)."),
    gpus_per_unit: Optional[float] = typer.Option(None, help="GPUs each training/extraction unit asks Ray for "
                                                  "(default: 1 on CUDA, else 0)."),
    experimental: Optional[str] = typer.Option(None, "--experimental", help="Use this instruction-tuned model "
                                               "(name, HF dir, .gguf, hub id, BASE+ADAPTER) or adapter folder as "
                                               "E instead of training one."),
    experimental_train: bool = typer.Option(False, "--experimental-train", help="Train E on the task mixture "
                                            "(the default; overrides experimental_model of a --config file)."),
    causal_full: bool = typer.Option(False, "--causal-full", help="Run the causal check (E's adapter on in one "
                                     "section only, and outside it) on every task and every evaluated prompt, "
                                     "not the preset's subset."),
    restrict_sections: bool = typer.Option(False, "--restrict-sections", help="Also train one E per section "
                                           "with LoRA on that section's layers only, and report their task "
                                           "metrics beside E's."),
    ignore_disk_space: bool = typer.Option(False, "--ignore-disk-space", help="Start even when the study's "
                                           "activations would not fit the free space of its folder's disk."),
) -> None:
    """Run the whole study: train E and the controls, extract, compare, plot."""
    flags = dict(locals())
    from mossa.progress import Reporter
    from mossa.study import run_study

    wait, ignore_disk_space = flags.pop("wait"), flags.pop("ignore_disk_space")
    result = run_study(_study_config(**flags), reporter=Reporter(), wait=wait, ignore_disk_space=ignore_disk_space)
    _summary(result)


def _study_config(*, config, model, tasks_dir, task_file, cluster, tasks, preset, out_dir, seed, n_test, n_train,
                  dtype, activation_dtype, device, last_layer, prompt_format, chat_template, system_prompt, templates, measures,
                  holdout, ceiling_tasks, n_boot, n_permutations, tsne_layers, executor, ray_address, ray_cpus,
                  threads, cpus_per_unit, gpus_per_unit, experimental, experimental_train, causal_full,
                  restrict_sections):
    """The study config of `mossa run`'s (and `mossa plan`'s) flags."""
    from mossa.config import resolve_config

    cfg = resolve_config({"model": model, "tasks_dir": tasks_dir, "tasks": _split_list(tasks), "preset": preset,
                          "out": out_dir, "seed": seed, "n_test": n_test, "n_train": n_train, "dtype": dtype,
                          "activation_dtype": activation_dtype,
                          "device": device, "last_layer": last_layer, "prompt_format": prompt_format,
                          "chat_template": chat_template, "system_prompt": system_prompt, "templates": templates,
                          "measures": _split_list(measures, "--measures"),
                          "holdout": _split_list(holdout, "--holdout"),
                          "ceiling_tasks": _split_list(ceiling_tasks, "--ceiling-tasks"), "n_boot": n_boot,
                          "n_permutations": n_permutations, "tsne_layers": _int_list(tsne_layers, "--tsne-layers"),
                          "executor": executor,
                          "ray_address": ray_address, "ray_cpus": ray_cpus, "threads": threads,
                          "cpus_per_unit": cpus_per_unit, "gpus_per_unit": gpus_per_unit,
                          "experimental_model": _experimental(experimental, experimental_train),
                          "task_files": _task_files(task_file, cluster),
                          "restrict_sections": restrict_sections or None},
                         config_file=config, unset=("experimental_model",) if experimental_train else ())
    if causal_full:
        cfg = cfg.model_copy(update={"causal_examples": None, "causal_tasks": "all"})
    return cfg


def plan(**flags) -> None:
    """Plan the study `mossa run` would run with the same flags, without training or extracting anything:
    tokens, FLOPs, activation bytes, memory and time, here and on named GPUs."""
    from mossa.plan import plan_study

    calibrate = flags.pop("calibrate")
    _print_plan(plan_study(_study_config(**flags), calibrate=calibrate))


def _same_flags_as_run(command, drop: tuple[str, ...], *extra: inspect.Parameter):
    """Give `command` run's flags less `drop`, plus `extra` (typer reads a command's signature)."""
    params = [p for name, p in inspect.signature(run, eval_str=True).parameters.items() if name not in drop]
    command.__signature__ = inspect.Signature([*params, *extra], return_annotation=None)
    command.__annotations__ = {p.name: p.annotation for p in command.__signature__.parameters.values()}
    return command


app.command("plan")(_same_flags_as_run(plan, ("wait", "ignore_disk_space"), inspect.Parameter(
    "calibrate", inspect.Parameter.KEYWORD_ONLY, annotation=bool, default=typer.Option(
        True, "--calibrate/--no-calibrate", help="Measure this machine's rates (on the model itself when its "
        "weights are here) for the time estimate; --no-calibrate leaves this machine's time out."))))


def _task_files(paths: Optional[list[Path]], clusters: Optional[list[str]]) -> Optional[list[dict]]:
    """--task-file/--cluster pairs: clusters in the files' order, or one cluster for every file."""
    paths, clusters = paths or [], clusters or []
    if clusters and not paths:
        raise MossaError("--cluster: names the cluster of a --task-file; give the task file too")
    if len(clusters) > 1 and len(clusters) != len(paths):
        raise MossaError(f"--cluster: given {len(clusters)} times for {len(paths)} --task-file; give one per file "
                         f"(in order) or one for all")
    if not paths:
        return None
    clusters = clusters * len(paths) if len(clusters) == 1 else clusters or [None] * len(paths)
    return [{"path": p, "cluster": c} for p, c in zip(paths, clusters)]


def _experimental(given: Optional[str], train: bool) -> Optional[str]:
    if given is not None and train:
        raise MossaError("--experimental and --experimental-train exclude each other: E is either given or trained")
    return given


@app.command()
def init(path: Path = typer.Argument(Path("study.yaml"), help="Where to write the example config."),
         force: bool = typer.Option(False, "--force", help="Overwrite an existing file.")) -> None:
    """Write a commented example study config: every setting, its default and what it does."""
    from mossa.config import example_config

    if path.exists() and not force:
        raise MossaError(f"{path}: exists; pass --force to overwrite it or choose another path")
    from mossa.store import atomic_path

    with atomic_path(path) as tmp:
        tmp.write_text(example_config(), encoding="utf-8")
    out.print(f"wrote {path}; run it with `mossa run --config {path}`")


@app.command()
def analyze(
    study_dir: Path = typer.Argument(..., help="A study folder written by `mossa run`."),
    measures: Optional[str] = typer.Option(None, help="Comma-separated similarity measures (default: "
                                           "linear_cka, debiased_cka, rbf_cka and the robust variants of "
                                           "debiased CKA, mossa.similarity.ROBUST_MEASURES)."),
    n_boot: Optional[int] = typer.Option(None, help="Bootstrap resamples (default: the study's)."),
    n_permutations: Optional[int] = typer.Option(None, help="Permutations of every value's null (default: the "
                                                 "study's)."),
    tsne_layers: Optional[str] = typer.Option(None, help="Comma-separated layers for the t-SNE figure."),
    workers: Optional[str] = typer.Option(None, help="Analysis processes: a number or 'auto' (default: the "
                                          "study's analysis_workers); the tables do not depend on it."),
    probe_examples: Optional[str] = typer.Option(None, help="Test prompts per task the linear probes are fitted "
                                                 "on: a number or 'all' (default: the study's probe_examples)."),
) -> None:
    """Recompute every table and figure of a study from its stored activations (loads no model)."""
    from mossa.analysis import DEFAULT_MEASURES
    from mossa.progress import Reporter
    from mossa.report.html import write_report
    from mossa.study import analyze_and_report

    chosen = tuple(_split_list(measures, "--measures") or DEFAULT_MEASURES)
    probes = "config" if probe_examples is None else None if probe_examples == "all" else _count(
        probe_examples, "--probe-examples")
    result = analyze_and_report(study_dir, measures=chosen, n_boot=n_boot, n_permutations=n_permutations,
                                tsne_layers=_int_list(tsne_layers, "--tsne-layers"), workers=_workers(workers),
                                probe_examples=probes, reporter=Reporter())
    write_report(study_dir)
    _summary(result)


@app.command()
def report(study_dir: Path = typer.Argument(..., help="A study folder written by `mossa run`.")) -> None:
    """Write STUDY_DIR/report.html: one self-contained file with the summary, figures, tables, provenance."""
    from mossa.report.html import write_report

    out.print(f"report: {write_report(study_dir)}")


@app.command()
def compare(
    study_a: Path = typer.Argument(..., help="First study folder."),
    study_b: Path = typer.Argument(..., help="Second study folder."),
    out_dir: Path = typer.Option(Path("runs/compare"), "--out", help="Folder for compare.html and its figure."),
) -> None:
    """Place two studies side by side (layer axes on relative depth when the models differ in depth)."""
    from mossa.report.compare import write_compare

    out.print(f"comparison: {write_compare(study_a, study_b, out_dir)}")


def _summary(result) -> None:
    """The end-of-run terminal summary: medians at a few layers, sections, clusters, where the report is."""
    from mossa.report.html import load_results
    from mossa.report import section_check_sentences, summarize, summary_sentences

    sim = result.similarity
    sim = sim[sim["measure"] == "linear_cka"]
    layers = sorted(sim["layer"].unique())
    shown = sorted({layers[round(i * (len(layers) - 1) / 5)] for i in range(6)})
    table = Table(title="median linear CKA with the controls C_t, over tasks")
    table.add_column("model")
    for layer in shown:
        table.add_column(f"layer {layer}", justify="right")
    for model, label in (("base", "B vs C_t"), ("experimental", "E vs C_t"), ("heldout", "E' vs C_t (held out)")):
        if model not in set(sim["model"]):
            continue
        row = []
        for layer in shown:
            v = sim[(sim["model"] == model) & (sim["layer"] == layer)]["value"].dropna()
            row.append(f"{v.median():.3f}" if len(v) else "undefined")
        table.add_row(label, *row)
    out.print(table)
    study, full, controls, sections, references = load_results(result.root)
    summary = summarize(study, full, controls, sections, references)
    n = summary.n_layers
    picks = sorted({max(1, round(n / 3)), max(1, round(2 * n / 3)), n})
    clusters = Table(title="per cluster: median linear CKA with C_t, B / E")
    clusters.add_column("cluster")
    for layer in picks:
        clusters.add_column(f"layer {layer}", justify="right")
    clusters.add_column("largest gain of E (layer)", justify="right")
    medians = full[full["measure"] == "linear_cka"].groupby(["cluster", "model", "layer"])["value"].median()
    for c in summary.clusters:
        cells = []
        for layer in picks:
            b, e = (medians.get((c, m, layer), float("nan")) for m in ("base", "experimental"))
            cells.append(f"{b:.2f} / {e:.2f}")
        gain, at = summary.gain_by_cluster[c]
        clusters.add_row(c, *cells, f"{gain:+.2f} ({at})")
    out.print(clusters)
    for line in summary_sentences(summary) + section_check_sentences(result.root):
        out.print(f"- {line}")
    report = Path(result.root) / "report.html"
    out.print(f"study folder: {result.root}  (results/, figures/, study.json)"
              + (f"\nreport: {report}" if report.is_file() else ""))


def _si(n: float) -> str:
    """A count in 4 significant characters: 950, 12.3k, 4.56M, 1.2G."""
    for unit in ("", "k", "M", "G", "T"):
        if abs(n) < 1000 or unit == "T":
            return f"{n:.0f}" if unit == "" else f"{n:.3g}{unit}"
        n /= 1000
    return str(n)


def _clock(seconds: float) -> str:
    """h:mm:ss, or days beyond 99 hours."""
    if seconds >= 99 * 3600:
        return f"{seconds / 86400:,.0f} days"
    hours, rest = divmod(int(round(seconds)), 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}"


def _print_plan(plan) -> None:
    """`mossa plan`'s tables: the model, the cost per unit kind, the analysis, memory, time and disk."""
    from mossa.plan import STAGES, human_bytes

    m = plan.model
    out.print(f"model {m.name}: {_si(m.params)} parameters ({_si(m.block_params)} in its {m.n_layers} "
              f"blocks), d={m.hidden}, vocabulary {m.vocab:,}, LoRA {m.lora_params:,} parameters per adapter; "
              f"compute {m.compute_dtype}; tokens counted with {m.tokenizer} tokenizer")
    out.print(f"{plan.tasks} tasks in {plan.clusters} clusters, {plan.test_prompts:,} test prompts; states stored "
              f"as {plan.activation_dtype}")
    table = Table(title="cost per unit kind (what is already stored left out); FLOPs: train / extract / evaluate")
    for col in ("kind", "units", "train tokens", "steps", "state tokens", "scored + answer≤", "activations",
                "FLOPs"):
        table.add_column(col, justify="left" if col == "kind" else "right", no_wrap=col == "kind")
    for k in [*plan.kinds, plan.total]:
        if k.units or k.kind == "total":
            table.add_row(k.kind, f"{k.units:,}", _si(k.train_tokens), f"{k.steps:,}", _si(k.state_tokens),
                          f"{_si(k.eval_tokens)} + {_si(k.answer_tokens)}", human_bytes(k.activation_bytes),
                          " / ".join(f"{k.flops[s]:.1e}" for s in STAGES[:3]))
    out.print(table)
    a, mem = plan.analysis, plan.memory
    out.print(f"analysis: {a['path']}; {a['flops']:.2e} FLOPs; per worker about {human_bytes(a['memory'])} "
              f"(an n x n kernel at n={a['n_max']:,} is {human_bytes(a['kernel_bytes'])}, a d x d sum "
              f"{human_bytes(a['feature_bytes'])})")
    out.print(f"peak memory of a unit: about {human_bytes(mem['unit_peak'])} on its device = weights "
              f"{human_bytes(mem['weights'])} (fp32) + LoRA and AdamW {human_bytes(mem['lora_and_optimizer'])} + "
              f"the larger of a training step's activations {human_bytes(mem['training_activations'])} and an "
              f"extraction batch's {human_bytes(mem['extraction_activations'])}; on CUDA the host holds the "
              f"fp32 weights while they load ({human_bytes(mem['weights'])})")
    times = Table(title="estimated wall time, h:mm:ss (GPUs: peak x assumed efficiency; the analysis on this "
                        "machine's CPU; docs/plan.md)")
    for col in ("where", "train", "extract", "evaluate", "analyse", "total", "fits"):
        times.add_column(col, justify="left" if col == "where" else "right", no_wrap=col == "where")
    machine = plan.machine
    if machine.get("seconds"):
        out.print(f"this machine: {machine['cpu']}, {machine['threads']} threads, GEMM {machine['gemm_flops'] / 1e9:.0f}"
                  f" GFLOP/s ({m.compute_dtype}); rates from {machine['calibration']}")
        times.add_row("this machine", *(_clock(machine["seconds"][s]) for s in STAGES),
                      _clock(sum(machine["seconds"].values())),
                      f"{'yes' if machine['fits'] else 'no'} ({machine['memory'] / 2 ** 30:.0f}G)")
    host = machine.get("seconds", {}).get("analysis")  # the analysis runs on the CPU wherever the units ran
    for name, gpu in plan.gpus.items():
        gpu_total = sum(gpu["seconds"].values())
        times.add_row(name, *(_clock(gpu["seconds"][s]) for s in STAGES[:3]),
                      "-" if host is None else _clock(host), _clock(gpu_total + (host or 0)),
                      f"{'yes' if gpu['fits'] else 'no'} ({gpu['memory_gib']}G)")
    out.print(times)
    disk = plan.disk
    line = (f"disk: activations {human_bytes(disk['needed'])}, {human_bytes(disk['free'])} free on {disk['folder']}")
    half = ", activation_dtype float16" if plan.activation_dtype == "float32" else ""
    out.print(line if disk["fits"] else f"[bold red]warning:[/] {line}: too small; `mossa run` will refuse to start "
              f"(free space, another --out{half}, or --ignore-disk-space)")
    for note in plan.notes:
        out.print(f"note: {note}")


@tasks_app.command("list")
def tasks_list(tasks_dir: Optional[Path] = typer.Option(None, help="Folder of <task>.jsonl files.")) -> None:
    """List the tasks of a folder with cluster, split sizes and template."""
    from mossa.tasks import load_tasks

    if tasks_dir is None and os.environ.get("MOSSA_TASKS_DIR"):
        tasks_dir = Path(os.environ["MOSSA_TASKS_DIR"])
    table = Table()
    for col in ("task", "cluster", "train", "test", "options", "templates"):
        table.add_column(col)
    for t in load_tasks(tasks_dir):
        table.add_row(t.name, t.cluster, str(len(t.split("train"))), str(len(t.split("test"))),
                      "yes" if t.has_options else "no", t.template_note.rsplit("/", 1)[-1])
    out.print(table)


@models_app.command("list")
def models_list() -> None:
    """List the registered (embedded, offline) models and whether their package is installed."""
    from mossa.models import registered_models

    table = Table()
    for col in ("model", "description", "kind", "package", "installed"):
        table.add_column(col)
    for m in registered_models().values():
        installed = importlib.util.find_spec(m.package.replace("-", "_")) is not None
        table.add_row(m.name, m.description, "instruct" if m.is_instruct else "base", m.package,
                      "yes" if installed else "no")
    out.print(table)
    out.print("Also accepted: a local Hugging Face model folder, a .gguf file, a hub id (org/name, online), or "
              "BASE+ADAPTER (a peft adapter folder merged into any of these).")


def main(argv: list[str] | None = None) -> int:
    """Entry point: one-line errors with exit code 2 for anything the user can fix."""
    err = Console(stderr=True)
    try:
        app(args=argv, standalone_mode=False)
    except MossaError as exc:
        if os.environ.get("MOSSA_DEBUG"):
            raise
        _print_error(err, str(exc))
        return 2
    except (click.exceptions.Abort, typer.Abort):
        err.print("mossa: aborted")
        return 130
    except _CLICK_ERRORS as exc:
        _print_error(err, exc.format_message())
        return exc.exit_code
    return 0


def _print_error(err: Console, message: str) -> None:
    """`mossa: error: ...` as one line, printed verbatim (no rich markup or emoji codes in user paths)."""
    text = " ".join(part.strip() for part in message.splitlines() if part.strip())
    err.print(f"mossa: error: {text}", highlight=False, markup=False, emoji=False, soft_wrap=True)


if __name__ == "__main__":
    sys.exit(main())
