"""C_t: LoRA on task t alone, then its states (and evaluation) on t's test prompts.

Stage: units (reads t's training prompts and the base; writes adapters/control-<t>/ and
activations/control/<t>/).
"""

from __future__ import annotations

from mossa.units._context import input_digest
from mossa.units._kind import AdapterOutput, StatesOutput, UnitKind, register_unit


@register_unit
class Control(UnitKind):
    """One control per task: the task's specialist, trained with the control's recipe."""

    name = "control"
    reads = "the task's training and test prompts, the base model"
    writes = "adapters/control-<task>/, activations/control/<task>/"

    @classmethod
    def units(cls, ctx) -> list[str]:
        return [f"{cls.name}-{t.name}" for t in ctx.tasks]

    @property
    def task(self) -> str:
        return self.unit[len(self.name) + 1:]

    def fingerprint(self) -> str:
        ctx = self.ctx
        return input_digest(ctx.base_key, ctx.task_fp[self.task], ctx.cfg.lora.key(), ctx.cfg.control.model_dump(),
                            self.name)

    def outputs(self) -> list:
        inputs = self.fingerprint()
        acts_key = input_digest(inputs, "acts", *self.ctx.eval_key(self.name))
        return [AdapterOutput(self.unit, inputs), StatesOutput(self.name, self.task, acts_key)]

    def run(self) -> None:
        adapter, states = self.outputs()
        ctx = self.ctx
        ctx.train(self.unit, ctx.train_prompts[self.task], ctx.cfg.control, adapter.inputs)
        ctx.extract(self.name, self.unit, self.task, states.key)
        ctx.host.remove(self.unit)
