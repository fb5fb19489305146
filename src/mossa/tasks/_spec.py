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
    """An instruction template: `str.format` over the input fields plus `{options}`."""

    text: str
    truncate: str
    origin: str


@dataclass(frozen=True)
class TaskSpec:
    """A registered task: where its data lives, its cluster, its template and fingerprint."""

    name: str
    cluster: str
    path: Path
    template: Template
    fingerprint: str
    examples: dict[str, list[Example]] = field(repr=False, compare=False, default_factory=dict)

    @property
    def has_options(self) -> bool:
        return any(ex.options for exs in self.examples.values() for ex in exs)

    def split(self, name: str) -> list[Example]:
        return self.examples.get(name, [])
