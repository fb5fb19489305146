"""What E, E' and the restricted E's share: LoRA on the capped mixture of some tasks (by budget parity,
each task as often as its control sees it), then the states (and evaluation) on some tasks.

Stage: units (reads the tasks' training prompts and the base; writes adapters/<unit>/ and
activations/<unit>/<task>/).
"""

from __future__ import annotations

from mossa.config import LoraSettings, TrainSettings
from mossa.training import mixture, parity_stream
from mossa.units._context import input_digest
from mossa.units._kind import AdapterOutput, StatesOutput, UnitKind


class MixtureUnit(UnitKind):
    """A multi-task adapter: trained on `train_on()`, its states taken on `evaluate_on()`, LoRA `lora()`;
    the unit's name is its model label."""

    def train_on(self) -> list[str]:
        return [t.name for t in self.ctx.tasks]

    def evaluate_on(self) -> list[str]:
        return [t.name for t in self.ctx.tasks]

    def lora(self) -> LoraSettings:
        return self.ctx.cfg.lora

    def fingerprint(self) -> str:
        ctx, cfg = self.ctx, self.ctx.cfg
        fps = {t: ctx.task_fp[t] for t in self.train_on()}
        budget = ({t: [cfg.task_n_train(t), cfg.task_control(t).model_dump()] for t in self.train_on()}
                  if cfg.experimental_budget == "parity" else None)
        return input_digest(ctx.base_key, fps, self.lora().key(), cfg.experimental.model_dump(), cfg.cluster_cap,
                            self.unit, cfg.experimental_budget, budget)

    def outputs(self) -> list:
        inputs = self.fingerprint()
        ctx = self.ctx
        return [AdapterOutput(self.unit, inputs)] + [
            StatesOutput(self.unit, t, input_digest(inputs, "acts", ctx.task_fp[t], *ctx.states_key(self.unit)))
            for t in self.evaluate_on()]

    def training_run(self) -> tuple[list, TrainSettings]:
        """The examples this unit trains on and how (by budget parity: one pass over a stream that repeats each
        task as its control sees it)."""
        ctx, cfg = self.ctx, self.ctx.cfg
        train = {t: ctx.train_prompts[t] for t in self.train_on()}
        if cfg.experimental_budget == "parity":
            mix = parity_stream(train, ctx.clusters, control={t: cfg.task_control(t) for t in train},
                                cap=cfg.cluster_cap, seed=cfg.seed)
            return mix, cfg.experimental.model_copy(update={"epochs": 1.0, "max_steps": None})
        return mixture(train, ctx.clusters, cap=cfg.cluster_cap, seed=cfg.seed), cfg.experimental

    def run(self) -> None:
        ctx, cfg = self.ctx, self.ctx.cfg
        adapter, *states = self.outputs()
        mix, settings = self.training_run()
        ctx.rep.log(f"{self.unit} mixture: {len(mix)} examples from {len(self.train_on())} tasks "
                    f"({cfg.experimental_budget})")
        ctx.train(self.unit, mix, settings, adapter.inputs, lora=self.lora())
        ctx.extract_tasks(self.unit, self.unit, {o.task: o.key for o in states})
        ctx.host.remove(self.unit)
