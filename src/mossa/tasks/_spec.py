"""Task and example records: what every later stage knows about a task."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class Example:
    """One row of a task file.

    `id` is stable across runs and models (task name + split + row number in the source file,
    or the row's own `id`), so every table and activation file can be joined on it.
    """

    id: str
    fields: dict[str, str]
    target: str
    split: str
    options: tuple[str, ...] | None = None


@dataclass(frozen=True)
class Template:
    """An instruction template: `str.format` over the input fields plus `{options}`.

    `truncate` names the fields that may be shortened (sharing one token budget) when a prompt
    is over budget; everything else, options and the instruction's own words included, is never
    cut. `shorter` is a shorter form of the same instruction (e.g. fewer demonstrations) that a
    prompt falls back to when it cannot fit otherwise.
    """

    text: str
    truncate: tuple[str, ...]
    origin: str
    shorter: Template | None = None

    @property
    def key(self) -> str:
        """What identifies the template in fingerprints (its text, cut fields and fallbacks)."""
        tail = f"|shorter:{self.shorter.key}" if self.shorter is not None else ""
        return f"{self.text}|truncate:{','.join(self.truncate)}{tail}"


@dataclass(frozen=True)
class TaskSpec:
    """A registered task: where its data lives, its cluster, its templates and fingerprint.

    `templates` holds one or more instruction templates (one is drawn per example, see
    `mossa.tasks.template_index`); `template_note` says where they come from and why.
    """

    name: str
    cluster: str
    path: Path
    templates: tuple[Template, ...]
    fingerprint: str
    examples: dict[str, list[Example]] = field(repr=False, compare=False, default_factory=dict)
    template_note: str = ""

    @property
    def template(self) -> Template:
        """The task's first template (the only one under `templates: first`)."""
        return self.templates[0]

    @property
    def has_options(self) -> bool:
        return any(ex.options for exs in self.examples.values() for ex in exs)

    def split(self, name: str) -> list[Example]:
        return self.examples.get(name, [])
