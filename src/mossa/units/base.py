"""B: the plain base model's states (and evaluation) on every task.

Stage: units (reads the base; writes activations/base/<task>/).
"""

from __future__ import annotations

from mossa.units._context import input_digest
from mossa.units._kind import StatesOutput, UnitKind, register_unit


@register_unit
class Base(UnitKind):
    """One unit: B on every task's test prompts."""

    name = "base"
    reads = "the base model, every task's test prompts"
    writes = "activations/base/<task>/ for every task"

    @classmethod
    def units(cls, ctx) -> list[str]:
        return [cls.name]

    def fingerprint(self) -> str:
        return self.ctx.base_key

    def outputs(self) -> list:
        ctx = self.ctx
        return [StatesOutput(self.name, t, input_digest(self.fingerprint(), "base", fp, *ctx.states_key(self.name)))
                for t, fp in ctx.task_fp.items()]

    def run(self) -> None:
        self.ctx.extract_tasks(self.name, None, {o.task: o.key for o in self.outputs()})
