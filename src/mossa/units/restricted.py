"""A restricted E: E's mixture and budget with LoRA on one layer range only (`lora.layers`), evaluated on
every task as model 'restricted-<range>' (with `restrict_sections`; after the analysis, which gives the
ranges).

Stage: units (reads results/sections.json, every task's training prompts and the base; writes
adapters/restricted-<range>/ and activations/restricted-<range>/<task>/).
"""

from __future__ import annotations

from mossa.config import LoraSettings
from mossa.units._kind import SECTIONS, register_unit
from mossa.units._mixture import MixtureUnit
from mossa.units.causal_masks import study_ranges


def restricted_label(name: str) -> str:
    """The unit and model label of the E trained on layer range `name` only ("restricted-shared")."""
    return "restricted-" + name.replace(" ", "-")


@register_unit
class Restricted(MixtureUnit):
    """One E per layer range of causal_layers."""

    name = "restricted"
    phase = SECTIONS
    reads = "results/sections.json, every task's training and test prompts, the base model"
    writes = "adapters/restricted-<range>/, activations/restricted-<range>/<task>/ for every task"

    @classmethod
    def units(cls, ctx) -> list[str]:
        if ctx.cfg.causal_layers == "none" or not ctx.cfg.restrict_sections:
            return []
        ranges, _ = study_ranges(ctx)
        return [restricted_label(r) for r in ranges]

    def lora(self) -> LoraSettings:
        ranges, _ = study_ranges(self.ctx)
        [(first, last)] = [v for r, v in ranges.items() if restricted_label(r) == self.unit]
        return self.ctx.cfg.lora.model_copy(update={"layers": [first, last]})
