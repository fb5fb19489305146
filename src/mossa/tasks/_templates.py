"""Instruction templates: our own wording, in `templates/*.yaml`, several per task.

A template is `str.format` text over an example's input fields plus `{options}`; the answer
cue is not part of it (the prompt format appends one cue for every task, so every prompt ends
with the same token). Each file is written for one task source (`source:`) and names, per
task, the fields that may be truncated and one or more templates over the same fields.

A written template applies to a task by fit, not by name alone: only when the task's examples
carry exactly the template's input fields (and options exactly when the template lists them).
Any other task, a never-seen folder's task that merely shares a name included, gets the generic
template built from its own field names, and the task records which one it got and why.
"""

from __future__ import annotations

import string
from dataclasses import dataclass
from functools import lru_cache
from importlib.resources import files
from pathlib import Path

import yaml

from mossa.errors import MossaError
from mossa.tasks._spec import Example, Template

TEMPLATE_VERSION = 2
GENERIC = "generic template"


def template_fields(text: str) -> set[str]:
    """Names of the `{field}` fields of a template."""
    return {name for _, name, _, _ in string.Formatter().parse(text) if name}


@dataclass(frozen=True)
class TemplateSet:
    """The written templates of one task: all over the same fields, written for `source`."""

    task: str
    templates: tuple[Template, ...]
    source: str
    origin: str

    @property
    def fields(self) -> set[str]:
        """The input fields the templates read (without 'options')."""
        return template_fields(self.templates[0].text) - {"options"}

    @property
    def options(self) -> bool:
        return "options" in template_fields(self.templates[0].text)

    def misfit(self, examples: list[Example]) -> str | None:
        """Why these examples do not fit the templates, or None when every one does."""
        for ex in examples:
            if set(ex.fields) != self.fields or bool(ex.options) != self.options:
                want = ", ".join(sorted(self.fields)) + (" + options" if self.options else "")
                got = ", ".join(sorted(ex.fields)) + (" + options" if ex.options else " (no options)")
                return f"its templates read {want}, example {ex.id} has {got}"
        return None


def _parse_entry(where: str, entry: object, source: str, name: str) -> TemplateSet:
    if not isinstance(entry, dict) or set(entry) != {"truncate", "templates"}:
        raise MossaError(f"{where}: needs exactly the keys 'truncate' (list of fields) and 'templates' (list of "
                         f"template texts)")
    texts, cut = entry["templates"], entry["truncate"]
    if not (isinstance(texts, list) and texts and all(isinstance(t, str) and t.strip() for t in texts)):
        raise MossaError(f"{where}.templates: must be a non-empty list of template texts")
    if not (isinstance(cut, list) and cut and all(isinstance(c, str) for c in cut)):
        raise MossaError(f"{where}.truncate: must be a non-empty list of field names")
    first = template_fields(texts[0])
    for i, text in enumerate(texts):
        if template_fields(text) != first:
            raise MossaError(f"{where}.templates[{i}]: reads {sorted(template_fields(text))}, template 0 reads "
                             f"{sorted(first)}; every template of a task reads the same fields")
    bad = [c for c in cut if c not in first or c == "options"]
    if bad:
        raise MossaError(f"{where}.truncate: {bad[0]!r} is not an input field of its templates")
    return TemplateSet(task=name, source=source, origin=where,
                       templates=tuple(Template(text=t, truncate=tuple(cut), origin=f"{where}[{i}]")
                                       for i, t in enumerate(texts)))


def parse_template_file(path: Path, text: str) -> dict[str, TemplateSet]:
    """The template sets of one file (schema version 2), by task name; errors name the file and key."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise MossaError(f"{path}: not valid YAML ({exc})") from None
    if not isinstance(data, dict) or data.get("version") != TEMPLATE_VERSION or not isinstance(data.get("tasks"), dict) \
            or not isinstance(data.get("source"), str):
        raise MossaError(f"{path}: expected 'version: {TEMPLATE_VERSION}', a 'source' and a 'tasks' mapping of task "
                         f"name -> {{truncate, templates}}")
    return {name: _parse_entry(f"{Path(path).name}:tasks.{name}", entry, data["source"], name)
            for name, entry in data["tasks"].items()}


@lru_cache(maxsize=1)
def builtin_templates() -> dict[str, TemplateSet]:
    """The templates shipped with mossa, by task name (a name is written in one file only)."""
    out: dict[str, TemplateSet] = {}
    folder = files("mossa.tasks").joinpath("templates")
    for entry in sorted(folder.iterdir(), key=lambda p: p.name):
        if entry.name.endswith(".yaml"):
            for name, found in parse_template_file(Path(str(entry)), entry.read_text(encoding="utf-8")).items():
                if name in out:
                    raise ValueError(f"task {name!r} has templates in {out[name].origin} and {found.origin}")
                out[name] = found
    return out


def generic_template(examples: list[Example]) -> Template:
    """A neutral template listing every input field of the first example, for tasks with no written
    template that fits. The fields that may be cut are those whose mean length is at least half
    the longest field's (so two long passages share the budget, a short question is kept)."""
    names = list(examples[0].fields)
    lines = [f"{name.replace('_', ' ').capitalize()}: {{{name}}}" for name in names]
    if examples[0].options:
        lines.append("{options}")
    mean = {n: sum(len(ex.fields.get(n, "")) for ex in examples) / len(examples) for n in names}
    longest = max(mean.values())
    cut = tuple(n for n in names if mean[n] >= 0.5 * longest)
    return Template(text="\n".join(lines), truncate=cut, origin=f"{GENERIC} over {', '.join(names)}")


def templates_for(task: str, examples: list[Example]) -> tuple[tuple[Template, ...], str]:
    """The written templates of `task` when its examples fit them, else the generic one; with a
    note saying which and why (recorded in every study)."""
    written = builtin_templates().get(task)
    if written is None:
        return (generic_template(examples),), f"{GENERIC}: no template is written for a task of this name"
    why = written.misfit(examples)
    if why is None:
        return written.templates, f"{written.origin} ({len(written.templates)} templates, {written.source})"
    return (generic_template(examples),), f"{GENERIC}: the written templates ({written.origin}) do not fit: {why}"
