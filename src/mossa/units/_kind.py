"""What a unit of a study is: a registered kind of work that declares what it reads, what it writes and the
fingerprint of its inputs, and the registry of those kinds.

A kind schedules its own units (`units`: none, one, or one per task), checks its own settings before any
model loads (`check`), and runs one unit (`run`) with the study's shared machinery (`StudyContext`:
adapter training, extraction into the store, resume by fingerprint). A unit whose every declared output
exists with its fingerprint is skipped (`done`), which makes a rerun both a resume and a cache.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

from mossa.errors import unknown_name_error
from mossa.registry import register_unique
from mossa.store import read_json
from mossa.training import tokens_seen

if TYPE_CHECKING:
    from mossa.config import StudyConfig, TrainSettings
    from mossa.tasks import TaskSpec
    from mossa.units._context import StudyContext

STATES = "states"  # runs before the analysis: its outputs are states, adapters, records the analysis reads
SECTIONS = "sections"  # runs after the analysis: it reads results/sections.json
PHASES = (STATES, SECTIONS)


@dataclass(frozen=True)
class AdapterOutput:
    """adapters/<unit>/: a peft adapter and its marker, holding the fingerprint of its inputs."""

    unit: str
    inputs: str


@dataclass(frozen=True)
class StatesOutput:
    """activations/<label>/<task>/: states (and evaluation) of model `label` on `task`, keyed by `key`."""

    label: str
    task: str
    key: str


@dataclass(frozen=True)
class RecordOutput:
    """A JSON record at `path` (parts under the study dir) whose "inputs" field is `key`."""

    path: tuple[str, ...]
    key: str


def output_exists(study, output) -> bool:
    """Whether `output` is in the study dir with its fingerprint."""
    if isinstance(output, AdapterOutput):
        return study.unit_done(output.unit, output.inputs) is not None
    if isinstance(output, StatesOutput):
        return study.activations_done(output.label, output.task, output.key)
    path = study.path(*output.path)
    return path.is_file() and read_json(path).get("inputs") == output.key


class UnitKind(abc.ABC):
    """One kind of study unit. Subclasses set the class attributes and implement `units`, `fingerprint`,
    `outputs` and `run`; an instance is one unit of the kind in one study."""

    name: ClassVar[str] = ""  # the registry key
    phase: ClassVar[str] = STATES  # STATES (before the analysis) or SECTIONS (after it)
    reads: ClassVar[str] = ""  # one line each, shown in docs/architecture.md
    writes: ClassVar[str] = ""

    def __init__(self, ctx: StudyContext, unit: str):
        self.ctx, self.unit = ctx, unit

    @classmethod
    def check(cls, cfg: StudyConfig, tasks: list[TaskSpec]) -> None:
        """Refuse this kind's settings (MossaError naming the field) before any model loads."""
        return None

    @classmethod
    @abc.abstractmethod
    def units(cls, ctx: StudyContext) -> list[str]:
        """The names of this kind's units in the study `ctx` (unique across kinds; empty: none)."""

    @abc.abstractmethod
    def fingerprint(self) -> str:
        """The digest of everything this unit's outputs depend on."""

    @abc.abstractmethod
    def outputs(self) -> list:
        """What the unit writes (`AdapterOutput`, `StatesOutput`, `RecordOutput`), each keyed by its inputs."""

    @abc.abstractmethod
    def run(self) -> None:
        """Compute and store the outputs that are missing."""

    def training_run(self) -> tuple[list, TrainSettings] | None:
        """The prompts this unit's adapter trains on and how (None: it trains nothing)."""
        return None

    def train_tokens(self) -> int:
        """The tokens this unit trains on, repeats counted, exactly as its training log will count them."""
        run = self.training_run()
        return 0 if run is None else tokens_seen(*run, seed=self.ctx.cfg.seed, unit=self.unit)

    def work(self) -> float:
        """The unit's estimated cost in token passes, what is stored left out (a resumed unit costs less): a
        training token costs 3 (forward and backward), a token of a states-only extraction 1, of an evaluated one
        3 (states, then scoring, answers and the lens). The study's progress line turns the rate measured on the
        finished units into the time left."""
        ctx, cost = self.ctx, 0.0
        for output in self.outputs():
            if output_exists(ctx.study, output):
                continue
            if isinstance(output, AdapterOutput):
                cost += 3 * self.train_tokens()
            elif isinstance(output, StatesOutput):
                tokens = sum(len(p.prompt_ids) for p in ctx.test[output.task])
                cost += tokens * (3 if ctx.evaluated(output.label) else 1)
        return cost

    def done(self) -> bool:
        """Every output is stored with its fingerprint: nothing to do (a trained adapter's log is kept)."""
        logs = {}
        for output in self.outputs():
            if isinstance(output, AdapterOutput):
                marker = self.ctx.study.unit_done(output.unit, output.inputs)
                if marker is None:
                    return False
                logs[output.unit] = marker["log"]
            elif not output_exists(self.ctx.study, output):
                return False
        self.ctx.train_logs.update(logs)
        return True


UNIT_KINDS: dict[str, type[UnitKind]] = {}


def register_unit(cls: type[UnitKind]) -> type[UnitKind]:
    """Add a unit kind under its `name` (a class decorator); the study runs every registered kind, in the order
    of registration within each phase."""
    if cls.phase not in PHASES:
        raise ValueError(f"unit kind {cls.name!r}: phase must be one of {', '.join(PHASES)}, got {cls.phase!r}")
    return register_unique(UNIT_KINDS, cls.name, cls, kind="unit kind", pattern=r"[a-z][a-z0-9_]*",
                           allowed="lower_snake_case")


def unit_kind(name: str) -> type[UnitKind]:
    """The registered kind `name`; MossaError listing the kinds when unknown."""
    if name not in UNIT_KINDS:
        raise unknown_name_error("unit kind", name, list(UNIT_KINDS), "the unit registry")
    return UNIT_KINDS[name]
