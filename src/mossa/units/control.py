"""C_t: LoRA on task t alone, then its states (and evaluation) on t's test prompts, and its states on the
test prompts of the tasks whose specificity it is a reference of (`cross_tasks`).

Stage: units (reads t's training prompts and the base; writes adapters/control-<t>/,
activations/control/<t>/ and activations/cross-<t>/<s>/).
"""

from __future__ import annotations

from mossa.analysis import cross_label
from mossa.units._context import input_digest
from mossa.units._kind import AdapterOutput, StatesOutput, UnitKind, register_unit


@register_unit
class Control(UnitKind):
    """One control per task: the task's specialist, trained with the control's recipe."""

    name = "control"
    reads = "the task's training and test prompts, the base model"
    writes = "adapters/control-<task>/, activations/control/<task>/, activations/cross-<task>/<other task>/"

    @classmethod
    def units(cls, ctx) -> list[str]:
        return [f"{cls.name}-{t.name}" for t in ctx.tasks]

    @property
    def task(self) -> str:
        return self.unit[len(self.name) + 1:]

    def fingerprint(self) -> str:
        ctx = self.ctx
        cfg = ctx.cfg
        return input_digest(ctx.base_key, ctx.task_fp[self.task], cfg.lora.key(),
                            cfg.task_control(self.task).model_dump(), self.name,
                            *([cfg.task_n_train(self.task)] if self.task in cfg.task_budgets else []))

    def training_run(self):
        return self.ctx.train_prompts[self.task], self.ctx.cfg.task_control(self.task)

    def cross_targets(self) -> list[str]:
        """The tasks on whose test prompts this control is read as another task's specialist."""
        return [t for t, sources in self.ctx.cross.items() if self.task in sources]

    def outputs(self) -> list:
        inputs = self.fingerprint()
        ctx = self.ctx
        label = cross_label(self.task)
        acts_key = input_digest(inputs, "acts", *ctx.states_key(self.name))
        return [AdapterOutput(self.unit, inputs), StatesOutput(self.name, self.task, acts_key)] + [
            StatesOutput(label, t, input_digest(inputs, "acts", ctx.task_fp[t], *ctx.states_key(label)))
            for t in self.cross_targets()]

    def run(self) -> None:
        adapter, states, *cross = self.outputs()
        ctx = self.ctx
        ctx.train(self.unit, *self.training_run(), adapter.inputs)
        ctx.extract(self.name, self.unit, self.task, states.key)
        if cross:
            ctx.extract_tasks(cross[0].label, self.unit, {o.task: o.key for o in cross})
        ctx.host.remove(self.unit)
