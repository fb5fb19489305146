"""Task folders and task building: scans a flan-mini format folder in sorted order, reads
single custom task files, and validates and fingerprints every task (`build_task`).

A task is a file `<name>.jsonl` in the folder; `MANIFEST.json` beside them, when present,
maps task names to Flan clusters.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path

from mossa.errors import MossaError
from mossa.tasks._loader import SPLIT_RULE, TEST_FRACTION, read_task_file
from mossa.tasks._spec import Example, TaskSpec, Template
from mossa.tasks._templates import TEMPLATE_VERSION, template_fields, templates_for

UNCLUSTERED = "Unclustered"
CUSTOM = "Custom"


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
        raise MossaError(f"{tasks_dir}: task folder not found; pass --tasks-dir with a folder of <task>.jsonl "
                         "files or Super-NaturalInstructions task*.json files")
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
        data = json.loads(path.read_bytes().decode("utf-8"))
    except OSError as exc:
        raise MossaError(f"{path}: cannot read ({exc.strerror})") from None
    except (ValueError, RecursionError) as exc:  # bad UTF-8 or JSON, nesting or integers beyond the parser's limits
        raise MossaError(f"{path}: not valid JSON ({exc or type(exc).__name__})") from None
    try:
        return {name: str(entry["cluster"]) for name, entry in data["tasks"].items()}
    except (KeyError, TypeError, AttributeError):
        raise MossaError(f"{path}: expected {{\"tasks\": {{name: {{\"cluster\": ...}}}}}}") from None


def build_task(name: str, cluster: str, path: Path, splits: dict[str, list[Example]], digest,
               *, templates: tuple[Template, ...] | None = None, note: str = "",
               locate: Callable[[Example], str] | None = None) -> TaskSpec:
    """Check every example against every template of the task and fingerprint the task.

    Shared by every task source. `digest` is a hashlib object already fed with what identifies
    the data (file bytes, or the converted rows of a hub data set); the templates are added here.
    `templates` defaults to the written templates of `name` when the examples fit them, else the
    generic one (`templates_for`); `note` says where given templates come from. `locate` names an
    example in errors (default `path:line`, the line being the tail of the example id).
    """
    every = [ex for examples in splits.values() for ex in examples]
    if templates is None:
        templates, note = templates_for(name, every)
    locate = locate or (lambda ex: f"{path}:{ex.id.rsplit(':', 1)[-1]}")
    for template in templates:
        names = template_fields(template.text)
        needed = names - {"options"}
        for ex in every:
            missing = needed - ex.fields.keys()
            if missing:
                raise MossaError(f"{locate(ex)}: field 'input.{min(missing)}' is missing; the template "
                                 f"({template.origin}) needs {', '.join(sorted(needed))}")
            if "options" in names and not ex.options:
                raise MossaError(f"{locate(ex)}: example {ex.id} has no 'input.options' but the template "
                                 f"({template.origin}) lists options")
        digest.update(f"template-v{TEMPLATE_VERSION}:{template.key}".encode())
    return TaskSpec(name=name, cluster=cluster, path=path, templates=tuple(templates),
                    fingerprint=digest.hexdigest()[:16], examples=splits, template_note=note)


def load_task(name: str, path: Path, cluster: str) -> TaskSpec:
    """Read, validate and fingerprint one task of a flan-mini format folder."""
    splits = read_task_file(path, name)
    return build_task(name, cluster, path, splits, hashlib.sha256(path.read_bytes()))


def load_task_file(path: Path, cluster: str = CUSTOM) -> TaskSpec:
    """One custom task from a single JSONL file; the task name is the file stem.

    Rows are in the flan-mini format (`input` object or string, `target`) with optional `split`,
    `options` (top level or in `input`) and `id`. Rows without a split are put in train or test
    by `assign_splits` (about 20% test, by a SHA-256 of the row's `id`, else of its input), so
    the assignment never changes between runs. The templates are the written ones for a task of
    that name when the rows fit them, else the generic template over the rows' fields.

    Raises
    ------
    MossaError
        For a missing file or a malformed row (naming file, line and field).
    """
    path = Path(path)
    if not path.is_file():
        raise MossaError(f"{path}: task file not found; pass a .jsonl file of task rows")
    splits = read_task_file(path, path.stem, assign_missing_split=True)
    digest = hashlib.sha256(path.read_bytes())
    digest.update(f"split-rule:{SPLIT_RULE}:{TEST_FRACTION}".encode())
    return build_task(path.stem, cluster, path, splits, digest)
