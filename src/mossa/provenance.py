"""What study.json records of how a study came to be: the resolved config, package versions, the model and
its fingerprint, the prompt format, every task with its prompts' statistics and properties, the held-out
and second-seed tasks, the cross-task references, the training budget, and how E came to be (with E's seeds).

Stage: provenance (reads the open study's context and, for a given E, its stored states; writes nothing:
the study writes study.json).
"""

from __future__ import annotations

import json
import platform
import sys
from datetime import datetime
from importlib import metadata

from mossa.analysis import SECOND_SEED, depth_map, readability
from mossa.config import StudyConfig
from mossa.store import StudyDir
from mossa.tasks import TaskSpec, resolve_ceiling, resolve_holdout
from mossa.training import BUDGET_RULES, examples_seen, unit_seed
from mossa.units import EXPERIMENTAL, StudyContext

VERSIONED = ("mossa", "torch", "transformers", "peft", "numpy", "pandas", "safetensors")


def versions() -> dict[str, str]:
    """Python, the platform and the versions of the packages a study's numbers depend on."""
    out = {"python": sys.version.split()[0], "platform": platform.platform()}
    for name in VERSIONED:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def study_provenance(ctx: StudyContext, source, cfg: StudyConfig) -> dict:
    """study.json's record of the study `ctx` on base model `source`, before any unit runs; `cfg` is the
    config as the user gave it (the units run it pinned: absolute paths, the dtype chosen)."""
    loaded = ctx.loaded
    return {
        "config": json.loads(cfg.model_dump_json()), "versions": versions(),
        "model": {"name": loaded.name, "kind": source.kind, "location": source.location,
                  "fingerprint": loaded.fingerprint, "n_layers": loaded.n_layers,
                  "hidden_size": loaded.hidden_size, "dtype": str(loaded.dtype),
                  "dtype_reason": loaded.dtype_reason, "device": str(loaded.device),
                  "prompt_mode": ctx.builder.mode},
        "prompt_format": ctx.fmt.describe(),
        "tasks": {t.name: {"cluster": t.cluster, "fingerprint": t.fingerprint, "path": str(t.path),
                           "template": t.template_note, "n_templates": len(t.templates),
                           "n_train": len(ctx.train_prompts[t.name]), "n_test": len(ctx.test[t.name]),
                           "prompts": {split: ctx.samples[split][t.name].stats() for split in ctx.samples},
                           "properties": task_properties(ctx, t)}
                  for t in ctx.tasks},
        "heldout_tasks": list(resolve_holdout(cfg, ctx.tasks)),
        "ceiling_tasks": list(resolve_ceiling(cfg, ctx.tasks)),
        "cross_tasks": {"rule": cfg.cross_tasks, "chosen": {t: list(s) for t, s in ctx.cross.items()}},
        "experimental_seeds": experimental_seeds(cfg),
        "heldout_seeds": cfg.n_heldout_seeds if cfg.experimental_model is None else 0,
        "training_budget": {"rule": cfg.experimental_budget, "statement": BUDGET_RULES[cfg.experimental_budget],
                            "control_examples_seen": {t: examples_seen(len(p), cfg.task_control(t))
                                                      for t, p in ctx.train_prompts.items()}},
        "experimental": {"mode": "trained"} if cfg.experimental_model is None
        else {"mode": "given", "spec": cfg.experimental_model},
        "command": " ".join(sys.argv), "started": datetime.now().isoformat(timespec="seconds"),
    }


def experimental_seeds(cfg: StudyConfig) -> list[dict]:
    """Each trained E's model label and the seed of its LoRA init and data order (none for a given E)."""
    if cfg.experimental_model is not None:
        return []
    labels = ["experimental", SECOND_SEED["experimental"]][:cfg.experimental_seeds]
    return [{"label": label, "seed": unit_seed(cfg.seed, label)} for label in labels]


def task_properties(ctx: StudyContext, task: TaskSpec) -> dict:
    """What Fig 6 correlates with: readability of the test inputs, and the number of training
    examples the task's control saw (distinct examples, the size it was trained on)."""
    inputs = [" ".join(ex.fields.values()) for ex in ctx.samples["test"][task.name].examples]
    n = len(ctx.train_prompts[task.name])
    return {**readability(inputs), "train_size": min(n, examples_seen(n, ctx.cfg.task_control(task.name)))}


def experimental_info(study: StudyDir, provenance: dict) -> dict:
    """How E came to be (trained, or given), with a given E's depth and width as stored and, when its
    depth differs from B's, the relative-depth map of B's states onto E's that the analysis uses."""
    info = dict(provenance.get("experimental") or {"mode": "trained"})
    if info["mode"] != "given":
        return info
    n_grid = int(provenance["model"]["n_layers"]) + 1
    file = study.activation_file(EXPERIMENTAL, next(iter(provenance["tasks"])), verify=False)
    shape = file.shape
    info.update(n_layers=shape[0] - 1, hidden_size=shape[2], prompt_format=file.meta.get("prompt_format"))
    if shape[0] != n_grid:
        info["layer_map"] = depth_map(shape[0], n_grid)
    return info


__all__ = ["VERSIONED", "experimental_info", "study_provenance", "task_properties", "versions"]
