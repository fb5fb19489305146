"""C_t': C_t's recipe and training examples under another seed (a unit's seed comes from its name, so LoRA
init and data order differ), then its states on t's test prompts (evaluated only with evaluate_ceiling):
what two equally trained specialists of one task share (seed agreement).

Stage: units (reads t's training prompts and the base; writes adapters/ceiling-<t>/ and
activations/ceiling/<t>/).
"""

from __future__ import annotations

from mossa.tasks import resolve_ceiling
from mossa.units._context import CEILING
from mossa.units._kind import register_unit
from mossa.units.control import Control


@register_unit
class Ceiling(Control):
    """A second-seed control on each of the ceiling tasks."""

    name = CEILING
    writes = "adapters/ceiling-<task>/, activations/ceiling/<task>/"

    @classmethod
    def units(cls, ctx) -> list[str]:
        return [f"{cls.name}-{t}" for t in resolve_ceiling(ctx.cfg, ctx.tasks)]

    def cross_targets(self) -> list[str]:
        return []  # the first seed's control is the one read on other tasks' prompts
