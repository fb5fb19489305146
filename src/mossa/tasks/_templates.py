"""Instruction templates: our own wording, in `templates/*.yaml`, one entry per task.

A template is `str.format` text over an example's input fields plus `{options}`; the answer
cue is not part of it (the prompt renderer appends one cue for every task, so every prompt
ends with the same token). A task without a written template gets a generic one built from
its field names, so bring-your-own tasks work unchanged.
"""

from __future__ import annotations

import string
from functools import lru_cache
from importlib.resources import files
from pathlib import Path

import yaml

from mossa.errors import MossaError
from mossa.tasks._spec import Example, Template

TEMPLATE_VERSION = 1


def template_fields(text: str) -> set[str]:
    """Names of the `{field}` fields of a template."""
    return {name for _, name, _, _ in string.Formatter().parse(text) if name}


def _parse_file(path: Path, text: str) -> dict[str, Template]:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise MossaError(f"{path}: not valid YAML ({exc})") from None
    if not isinstance(data, dict) or not isinstance(data.get("tasks"), dict):
        raise MossaError(f"{path}: expected a mapping with a 'tasks' mapping of task name -> template")
    out: dict[str, Template] = {}
    for name, entry in data["tasks"].items():
        if not isinstance(entry, dict) or not isinstance(entry.get("template"), str) \
                or not isinstance(entry.get("truncate"), str):
            raise MossaError(f"{path}: tasks.{name}: needs string keys 'template' and 'truncate'")
        if entry["truncate"] not in template_fields(entry["template"]):
            raise MossaError(f"{path}: tasks.{name}.truncate: {entry['truncate']!r} is not a template field "
                             f"of its template")
        out[name] = Template(text=entry["template"], truncate=entry["truncate"], origin=f"{path}:tasks.{name}")
    return out


@lru_cache(maxsize=1)
def builtin_templates() -> dict[str, Template]:
    """The templates shipped with mossa, by task name."""
    out: dict[str, Template] = {}
    folder = files("mossa.tasks").joinpath("templates")
    for entry in sorted(folder.iterdir(), key=lambda p: p.name):
        if entry.name.endswith(".yaml"):
            out.update(_parse_file(Path(str(entry)), entry.read_text(encoding="utf-8")))
    return out


def generic_template(example: Example) -> Template:
    """A neutral template listing every input field, for tasks with no written template."""
    names = list(example.fields)
    lines = [f"{name.replace('_', ' ').capitalize()}: {{{name}}}" for name in names]
    if example.options:
        lines.append("{options}")
    longest = max(names, key=lambda n: len(example.fields[n]))
    return Template(text="\n".join(lines), truncate=longest, origin="generic template (no template written)")


def template_for(task: str, first: Example) -> Template:
    """The written template of `task`, else the generic one for its fields."""
    return builtin_templates().get(task) or generic_template(first)
