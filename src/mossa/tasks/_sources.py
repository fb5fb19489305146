"""Task sources: where tasks come from, in one registry, and the one entry point `load_tasks`.

A source lists the tasks it offers (a catalog of name -> lazy loader) for a location. Folder
sources also say whether a folder is theirs (`detect`); they are tried in registration order:
a folder holding `*.jsonl` files is flan-mini format, one holding `task*.json` files (or a
`tasks/` subfolder of them, as in a checkout of the SNI repository) is Super-NaturalInstructions.
Named sources (such as "hub:flan2021") are picked by their name. Single custom task files come
on top of either.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from mossa.errors import MossaError, unknown_name_error
from mossa.registry import register_unique
from mossa.tasks._hub import COLLECTION, hub_table, load_hub_task
from mossa.tasks._registry import (
    CUSTOM,
    UNCLUSTERED,
    load_task,
    load_task_file,
    read_manifest,
    resolve_tasks_dir,
    scan_tasks_dir,
)
from mossa.tasks._sni import load_sni_task, sni_task_files
from mossa.tasks._spec import TaskSpec


@dataclass(frozen=True)
class TaskEntry:
    """A task a source offers: its name, where it is defined (for messages), and its loader.

    `default` says whether it is part of "all tasks" when no names are given.
    """

    name: str
    origin: str
    load: Callable[[], TaskSpec] = field(repr=False, compare=False)
    default: bool = True


@dataclass(frozen=True)
class TaskSource:
    """A kind of task source.

    Parameters
    ----------
    name : str
        Registry key; named sources (no `detect`) are selected by it, e.g. "hub:flan2021".
    description : str
    catalog : callable
        location -> {task name: TaskEntry}; the location is a folder for folder sources, the
        source name for named ones.
    detect : callable, optional
        folder -> bool, for folder sources: whether the folder holds this source's format.
    """

    name: str
    description: str
    catalog: Callable[[Path | str], dict[str, TaskEntry]] = field(repr=False)
    detect: Callable[[Path], bool] | None = field(default=None, repr=False)


TASK_SOURCES: dict[str, TaskSource] = {}


def register_task_source(source: TaskSource) -> TaskSource:
    """Add a task source; names are lower-case (letters, digits, ':' and '-') and unique."""
    return register_unique(TASK_SOURCES, source.name, source, kind="task source", pattern=r"[a-z0-9][a-z0-9:\-]*",
                           allowed="lower-case letters, digits, ':' and '-'")


def _jsonl_catalog(folder: Path) -> dict[str, TaskEntry]:
    clusters = read_manifest(folder)
    return {name: TaskEntry(name, str(path), partial(load_task, name, path, clusters.get(name, UNCLUSTERED)))
            for name, path in scan_tasks_dir(folder).items()}


def _sni_catalog(folder: Path) -> dict[str, TaskEntry]:
    return {name: TaskEntry(name, str(path), partial(load_sni_task, name, path))
            for name, path in sni_task_files(folder).items()}


def _flan2021_catalog(_: Path | str) -> dict[str, TaskEntry]:
    return {name: TaskEntry(name, f"hub:{COLLECTION} ({task.dataset or 'no hub copy'})", partial(load_hub_task, task),
                            default=task.flan2021 and not task.unavailable)
            for name, task in hub_table().items()}


register_task_source(TaskSource(
    name="jsonl-folder", description="a folder of <task>.jsonl files in the flan-mini format (+ MANIFEST.json)",
    catalog=_jsonl_catalog, detect=lambda folder: any(folder.glob("*.jsonl"))))
register_task_source(TaskSource(
    name="sni-folder", description="a folder of Super-NaturalInstructions task*.json files (or its tasks/)",
    catalog=_sni_catalog, detect=lambda folder: bool(sni_task_files(folder))))
register_task_source(TaskSource(
    name=f"hub:{COLLECTION}", description="the Flan 2021 collection from the Hugging Face hub (needs `datasets`)",
    catalog=_flan2021_catalog))


def resolve_source(source: Path | str | None) -> tuple[TaskSource, Path | str]:
    """The source kind and location for a `load_tasks` source argument.

    Raises
    ------
    MossaError
        For an unknown "hub:..." name, a missing folder, or a folder no source recognises.
    """
    if source is not None and str(source).startswith("hub:"):
        named = [name for name, s in TASK_SOURCES.items() if s.detect is None]
        if str(source) not in named:
            raise unknown_name_error("task source", str(source), named, "the task source registry")
        return TASK_SOURCES[str(source)], str(source)
    folder = resolve_tasks_dir(Path(source) if source is not None else None)
    for kind in TASK_SOURCES.values():
        if kind.detect is not None and kind.detect(folder):
            return kind, folder
    raise MossaError(f"{folder}: no task files here; expected <task>.jsonl files (flan-mini format) or "
                     f"Super-NaturalInstructions task*.json files (in the folder or its tasks/ subfolder)")


def task_catalog(source: Path | str | None = None, task_files: Iterable[tuple[Path | str, str | None]] = ()
                 ) -> tuple[dict[str, TaskEntry], str]:
    """Every task `source` and `task_files` offer, by name, without loading any (see `load_tasks`),
    and a description of where they come from (for messages).

    Raises
    ------
    MossaError
        For a task name defined by two origins (naming both) or an unusable source.
    """
    catalogs: list[tuple[str, dict[str, TaskEntry]]] = []
    task_files = list(task_files)
    if source is not None or not task_files:
        kind, location = resolve_source(source)
        catalogs.append((str(location), kind.catalog(location)))
    for path, cluster in task_files:
        path = Path(path)
        catalogs.append((str(path), {path.stem: TaskEntry(path.stem, str(path),
                                                          partial(load_task_file, path, cluster or CUSTOM))}))
    merged: dict[str, TaskEntry] = {}
    for _, catalog in catalogs:
        for name, entry in catalog.items():
            if name in merged:
                raise MossaError(f"task {name!r} is defined twice: by {merged[name].origin} and by {entry.origin}; "
                                 f"rename one of them or leave one source out")
            merged[name] = entry
    return merged, " + ".join(where for where, _ in catalogs)


def load_tasks(source: Path | str | None = None, names: Iterable[str] | None = None, *,
               task_files: Iterable[tuple[Path | str, str | None]] = ()) -> list[TaskSpec]:
    """Load tasks from one source plus any single task files, as one list.

    Parameters
    ----------
    source : path, "hub:flan2021" or None
        A task folder (flan-mini JSONL or SNI, detected), a named source (a str or Path that
        starts with "hub:"), or None for the default folder (`../shared/data/flan-mini`); None
        with `task_files` means no source.
    names : task names, optional
        The tasks to load, in this order; None loads every task the sources offer by default
        (for the hub: the Flan 2021 tasks that can be downloaded).
    task_files : (path, cluster) pairs
        Custom JSONL task files (see `load_task_file`); cluster None means "Custom".

    Raises
    ------
    MossaError
        For a task name defined by two origins (naming both), an unknown task name (with the
        closest names), and any error of the source or task itself.
    """
    merged, where = task_catalog(source, task_files)
    if names is None:
        chosen = [name for name, entry in merged.items() if entry.default]
    else:
        chosen = list(names)
        for name in chosen:
            if name not in merged:
                raise unknown_name_error("task", name, list(merged), where)
    return [merged[name].load() for name in chosen]
