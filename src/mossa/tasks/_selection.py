"""A study's tasks: which ones it studies (its config against the task source), whether each has the test
prompts the similarity measures need, and the tasks its config names for E' (held out), C_t' (second seed)
and the causal check.

Stage: tasks (reads the task source; writes nothing).
"""

from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np

from mossa.config import PRESETS, StudyConfig, TaskBudget, preset_tasks
from mossa.errors import MossaError
from mossa.tasks._prompts import sample_split
from mossa.tasks._sources import load_tasks, task_catalog
from mossa.tasks._spec import TaskSpec

MIN_TEST_PROMPTS = 4  # debiased CKA is defined from 4 examples on; fewer make every value meaningless


def study_tasks(cfg: StudyConfig) -> list[TaskSpec]:
    """The study's tasks: `cfg.tasks` when given; else the preset's choice when the task source offers
    all of it, else every task the source offers; custom task files are always in."""
    files = [(f.path, f.cluster) for f in cfg.task_files]
    names = cfg.tasks
    if names is None:
        picked = preset_tasks(cfg.preset)
        offered, _ = task_catalog(cfg.tasks_dir, files)
        own = [Path(path).stem for path, _ in files]
        if picked and set(picked) <= set(offered):
            names = list(picked) + [name for name in own if name not in picked]
    return load_tasks(cfg.tasks_dir, names, task_files=files)


def check_test_prompts(task: TaskSpec, n: int, left_out: int = 0) -> None:
    """A task needs at least `MIN_TEST_PROMPTS` test prompts; checked on the split before the model
    loads, and on the prompts that fit once they are built."""
    if n < MIN_TEST_PROMPTS:
        why = (f" ({left_out} left out: they cannot fit max_prompt_tokens; raise it)" if left_out else
               "; add test examples")
        raise MossaError(f"{task.path}: task '{task.name}' has {n} test prompt{'s' * (n != 1)}; the similarity "
                         f"measures need at least {MIN_TEST_PROMPTS}{why}")


def check_splits(tasks: list[TaskSpec], cfg: StudyConfig) -> None:
    """Every task has a train split and enough test examples (before any model loads)."""
    for task in tasks:
        sample_split(task, "train", 1, cfg.seed)
        check_test_prompts(task, len(sample_split(task, "test", cfg.n_test, cfg.seed)))


MAX_HELDOUT_CLUSTERS = 7  # as in the paper's unseen-task experiment


def resolve_holdout(cfg: StudyConfig, tasks: list[TaskSpec]) -> tuple[str, ...]:
    """The tasks held out of E': named ones, none, or one seeded task from each of up to 7 clusters
    and at most half the tasks (E' learns from at least as many tasks as it is tested on)."""
    names = [t.name for t in tasks]
    if cfg.holdout == "none" or cfg.experimental_model is not None:  # a given E has no E'
        return ()
    if cfg.holdout == "auto":
        rng = np.random.default_rng(cfg.seed)
        clusters = sorted({t.cluster for t in tasks})
        k = min(MAX_HELDOUT_CLUSTERS, len(clusters), len(tasks) // 2)
        picked = sorted(rng.choice(len(clusters), size=k, replace=False)) if k > 0 else []
        chosen = []
        for c in picked:
            members = [t.name for t in tasks if t.cluster == clusters[c]]
            chosen.append(members[int(rng.integers(len(members)))])
        return tuple(n for n in names if n in chosen)
    unknown = [h for h in cfg.holdout if h not in names]
    if unknown:
        raise MossaError(f"field 'holdout': {', '.join(unknown)} not among the study's tasks ({', '.join(names)})")
    if len(set(cfg.holdout)) >= len(names):
        raise MossaError("field 'holdout': holds out every task, leaving E' nothing to train on; keep at least one")
    return tuple(n for n in names if n in cfg.holdout)


MAX_CEILING_CLUSTERS = 4  # each ceiling task costs one more control (training and states)


def resolve_ceiling(cfg: StudyConfig, tasks: list[TaskSpec]) -> tuple[str, ...]:
    """The tasks whose control gets a second seed (C_t', the ceiling CKA(C_t', C_t)), in study order:
    named ones, all, none, or the first task of each of up to 4 clusters spread evenly over the study's
    clusters in study order (deterministic: different kinds of task, not just the first few)."""
    names = [t.name for t in tasks]
    if cfg.ceiling_tasks == "none":
        return ()
    if cfg.ceiling_tasks == "all":
        return tuple(names)
    if cfg.ceiling_tasks == "auto":
        clusters = list(dict.fromkeys(t.cluster for t in tasks))
        k = min(MAX_CEILING_CLUSTERS, len(clusters))
        picked = [clusters[i] for i in np.linspace(0, len(clusters) - 1, k).round().astype(int)]
        return tuple(next(t.name for t in tasks if t.cluster == c) for c in picked)
    unknown = [t for t in cfg.ceiling_tasks if t not in names]
    if unknown:
        raise MossaError(f"field 'ceiling_tasks': {', '.join(unknown)} not among the study's tasks "
                         f"({', '.join(names)})")
    return tuple(n for n in names if n in cfg.ceiling_tasks)


def resolve_cross_tasks(cfg: StudyConfig, tasks: list[TaskSpec]) -> dict[str, tuple[str, ...]]:
    """For each task t, the other tasks s whose control C_s is also read on t's test prompts (the reference of
    t's specificity): every other task ('all'), none, or k of them drawn by a generator seeded with the study
    seed and t's name, one per other cluster in turn (clusters in a drawn order), t's own cluster last.
    Without another task, t has none."""
    if cfg.cross_tasks == "none":
        return {}
    out = {}
    for t in tasks:
        others = [s for s in tasks if s.name != t.name]
        if cfg.cross_tasks == "all" or not others:
            out[t.name] = tuple(s.name for s in others)
            continue
        rng = np.random.default_rng([cfg.seed, zlib.crc32(t.name.encode())])
        by_cluster: dict[str, list[str]] = {}
        for s in others:
            by_cluster.setdefault(s.cluster, []).append(s.name)
        groups = [by_cluster[c] for c in rng.permutation(sorted(set(by_cluster) - {t.cluster}))]
        groups = [[g[i] for i in rng.permutation(len(g))] for g in groups]
        order = [g[i] for i in range(max(map(len, groups), default=0)) for g in groups if i < len(g)]
        own = by_cluster.get(t.cluster, [])
        order += [own[i] for i in rng.permutation(len(own))]
        chosen = set(order[:cfg.cross_tasks])
        out[t.name] = tuple(s.name for s in others if s.name in chosen)
    return out


def check_causal_tasks(cfg: StudyConfig, tasks: list[TaskSpec]) -> None:
    """The causal check's tasks must be among the study's."""
    names = [t.name for t in tasks]
    if cfg.causal_tasks != "all":
        unknown = [t for t in cfg.causal_tasks if t not in names]
        if unknown:
            raise MossaError(f"field 'causal_tasks': {', '.join(unknown)} not among the study's tasks "
                             f"({', '.join(names)})")


def check_task_budgets(cfg: StudyConfig, tasks: list[TaskSpec]) -> None:
    """The tasks given their own training budget must be among the study's; the preset's own budgets apply to
    those of its tasks that the study has (the demo's preset studied on other tasks keeps none)."""
    names = [t.name for t in tasks]
    preset = PRESETS[cfg.preset].get("task_budgets", {})
    unknown = [t for t, budget in cfg.task_budgets.items()
               if t not in names and not (t in preset and budget == TaskBudget(**preset[t]))]
    if unknown:
        raise MossaError(f"field 'task_budgets': {', '.join(unknown)} not among the study's tasks "
                         f"({', '.join(names)})")


def check_task_choices(cfg: StudyConfig, tasks: list[TaskSpec]) -> None:
    """Every task the config names for E', C_t', the causal check and a budget of its own is among the study's
    (MossaError naming the field), and E' keeps at least one task to train on."""
    resolve_holdout(cfg, tasks)
    resolve_ceiling(cfg, tasks)
    check_causal_tasks(cfg, tasks)
    check_task_budgets(cfg, tasks)
