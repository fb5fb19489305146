"""What E, E' and the restricted E's share: LoRA on the capped mixture of some tasks (by budget parity,
each task as often as its control sees it), then the states (and evaluation) on some tasks.

Stage: units (reads the tasks' training prompts and the base; writes adapters/<unit>/ and
activations/<unit>/<task>/).
"""

from __future__ import annotations

from mossa.config import LoraSettings
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
        budget = cfg.control.model_dump() if cfg.experimental_budget == "parity" else None
        return input_digest(ctx.base_key, fps, self.lora().key(), cfg.experimental.model_dump(), cfg.cluster_cap,
                            self.unit, cfg.experimental_budget, budget)

    def outputs(self) -> list:
        inputs = self.fingerprint()
        ctx = self.ctx
        return [AdapterOutput(self.unit, inputs)] + [
            StatesOutput(self.unit, t, input_digest(inputs, "acts", ctx.task_fp[t], *ctx.eval_key(self.unit)))
            for t in self.evaluate_on()]

    def run(self) -> None:
        ctx, cfg = self.ctx, self.ctx.cfg
        adapter, *states = self.outputs()
        train_on = self.train_on()
        train = {t: ctx.train_prompts[t] for t in train_on}
        settings = cfg.experimental
        if cfg.experimental_budget == "parity":  # one pass over a stream that repeats each task as C_t does
            mix = parity_stream(train, ctx.clusters, control=cfg.control, cap=cfg.cluster_cap, seed=cfg.seed)
            settings = settings.model_copy(update={"epochs": 1.0, "max_steps": None})
        else:
            mix = mixture(train, ctx.clusters, cap=cfg.cluster_cap, seed=cfg.seed)
        ctx.rep.log(f"{self.unit} mixture: {len(mix)} examples from {len(train_on)} tasks ({cfg.experimental_budget})")
        ctx.train(self.unit, mix, settings, adapter.inputs, lora=self.lora())
        ctx.extract_tasks(self.unit, self.unit, {o.task: o.key for o in states})
        ctx.host.remove(self.unit)
