"""E': E's recipe without the held-out tasks, then its states on the held-out tasks (the paper's unseen
tasks, Fig 7).

Stage: units (reads the seen tasks' training prompts and the base; writes adapters/heldout/ and
activations/heldout/<task>/ for the held-out tasks).
"""

from __future__ import annotations

from mossa.analysis import HELDOUT, SECOND_SEED
from mossa.tasks import resolve_holdout
from mossa.units._kind import register_unit
from mossa.units._mixture import MixtureUnit


@register_unit
class Heldout(MixtureUnit):
    """E' (when the study holds tasks out), and again under a second seed with 2 seeds of E' (heldout_seeds,
    else experimental_seeds)."""

    name = HELDOUT
    reads = "the seen tasks' training prompts, the held-out tasks' test prompts, the base model"
    writes = ("adapters/heldout/, activations/heldout/<task>/ for the held-out tasks (and the same for "
              "heldout_seed2)")

    @classmethod
    def units(cls, ctx) -> list[str]:
        if not resolve_holdout(ctx.cfg, ctx.tasks):
            return []
        return [HELDOUT] + [SECOND_SEED[HELDOUT]] * (ctx.cfg.n_heldout_seeds > 1)

    def train_on(self) -> list[str]:
        held = resolve_holdout(self.ctx.cfg, self.ctx.tasks)
        return [t.name for t in self.ctx.tasks if t.name not in held]

    def evaluate_on(self) -> list[str]:
        return list(resolve_holdout(self.ctx.cfg, self.ctx.tasks))
