"""The task registry: scans a task folder in sorted order and loads tasks by name.

A task is a file `<name>.jsonl` in the folder; `MANIFEST.json` beside them, when present,
maps task names to Flan clusters. Unknown names fail with the closest available names.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from mossa.errors import MossaError, unknown_name_error
from mossa.tasks._loader import read_task_file
from mossa.tasks._spec import TaskSpec
from mossa.tasks._templates import TEMPLATE_VERSION, placeholders, template_for

UNCLUSTERED = "Unclustered"


def default_tasks_dir() -> Path | None:
    """flan-mini beside the checkout (`../shared/data/flan-mini` or `shared/data/flan-mini`)."""
    for candidate in (Path("../shared/data/flan-mini"), Path("shared/data/flan-mini")):
        if candidate.is_dir():
            return candidate.resolve()
    return None


def resolve_tasks_dir(tasks_dir: Path | None) -> Path:
    """The folder to read tasks from, checked to exist and hold task files."""
    if tasks_dir is None:
        tasks_dir = default_tasks_dir()
        if tasks_dir is None:
            raise MossaError("no task folder given and none found at ../shared/data/flan-mini; "
                             "pass --tasks-dir DIR or set MOSSA_TASKS_DIR")
    tasks_dir = Path(tasks_dir)
    if not tasks_dir.is_dir():
        raise MossaError(f"{tasks_dir}: task folder not found; pass --tasks-dir with a folder of <task>.jsonl files")
    return tasks_dir


def scan_tasks_dir(tasks_dir: Path) -> dict[str, Path]:
    """Task name -> file, for every `*.jsonl` in the folder, in sorted order."""
    found = {p.stem: p for p in sorted(Path(tasks_dir).glob("*.jsonl"))}
    if not found:
        raise MossaError(f"{tasks_dir}: no <task>.jsonl files in this folder")
    return found


def read_manifest(tasks_dir: Path) -> dict[str, str]:
    """Task name -> cluster from `MANIFEST.json`, or {} when there is none."""
    path = Path(tasks_dir) / "MANIFEST.json"
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return {name: str(entry["cluster"]) for name, entry in data["tasks"].items()}
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise MossaError(f"{path}: not valid JSON ({exc})") from None
    except (KeyError, TypeError, AttributeError):
        raise MossaError(f"{path}: expected {{\"tasks\": {{name: {{\"cluster\": ...}}}}}}") from None


def load_task(name: str, path: Path, cluster: str) -> TaskSpec:
    """Read, validate and fingerprint one task."""
    splits = read_task_file(path, name)
    first = next(iter(splits.values()))[0]
    template = template_for(name, first)
    needed = placeholders(template.text) - {"options"}
    for examples in splits.values():
        for ex in examples:
            missing = needed - ex.fields.keys()
            if missing:
                line = ex.id.rsplit(":", 1)[-1]
                raise MossaError(f"{path}:{line}: field 'input.{sorted(missing)[0]}' is missing; the template "
                                 f"({template.origin}) needs {', '.join(sorted(needed))}")
            if "options" in placeholders(template.text) and not ex.options:
                raise MossaError(f"{path}: example {ex.id} has no 'input.options' but the template lists options")
    digest = hashlib.sha256(path.read_bytes())
    digest.update(f"template-v{TEMPLATE_VERSION}:{template.text}:{template.truncate}".encode())
    return TaskSpec(name=name, cluster=cluster, path=path, template=template,
                    fingerprint=digest.hexdigest()[:16], examples=splits)


def load_tasks(tasks_dir: Path | None, names: list[str] | None = None) -> list[TaskSpec]:
    """Load the named tasks (all tasks when `names` is None) from a task folder.

    Raises
    ------
    MossaError
        For a missing folder, an unknown task name or a malformed task file.
    """
    folder = resolve_tasks_dir(tasks_dir)
    available = scan_tasks_dir(folder)
    clusters = read_manifest(folder)
    chosen = list(available) if names is None else names
    for name in chosen:
        if name not in available:
            raise unknown_name_error("task", name, list(available), str(folder))
    return [load_task(name, available[name], clusters.get(name, UNCLUSTERED)) for name in chosen]
