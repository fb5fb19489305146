"""E: LoRA on the capped mixture of all tasks (instruction tuning), then its states on every task.

Stage: units (reads every task's training prompts and the base; writes adapters/experimental/ and
activations/experimental/<task>/).
"""

from __future__ import annotations

from mossa.analysis import SECOND_SEED
from mossa.units._kind import register_unit
from mossa.units._mixture import MixtureUnit

EXPERIMENTAL = "experimental"


@register_unit
class Experimental(MixtureUnit):
    """E trained here (when no experimental_model is given), and again under a second seed with
    experimental_seeds 2 (the unit's name seeds LoRA init and data order)."""

    name = EXPERIMENTAL
    reads = "every task's training and test prompts, the base model"
    writes = ("adapters/experimental/, activations/experimental/<task>/ for every task (and the same for "
              "experimental_seed2)")

    @classmethod
    def units(cls, ctx) -> list[str]:
        if ctx.cfg.experimental_model is not None:
            return []
        return [EXPERIMENTAL] + [SECOND_SEED[EXPERIMENTAL]] * (ctx.cfg.experimental_seeds > 1)
