"""A given E, not trained: a peft adapter folder applied to B, or a model of its own that reads the same
test examples through its own tokenizer (and, with experimental_prompt_format 'own', its own chat template).

Stage: units (reads the given adapter or model and every task's test prompts; writes
activations/experimental/<task>/).
"""

from __future__ import annotations

import gc

from mossa.models import AdapterHost, adapter_digest, experimental_source, load_model, materialize
from mossa.tasks import resolve_format
from mossa.units._context import input_digest
from mossa.units._kind import StatesOutput, UnitKind, register_unit
from mossa.units.experimental import EXPERIMENTAL


@register_unit
class GivenExperimental(UnitKind):
    """E given by experimental_model: its states on every task under the model label 'experimental'."""

    name = "given"
    reads = "the given adapter folder or model, every task's test prompts"
    writes = "activations/experimental/<task>/ for every task"

    @classmethod
    def units(cls, ctx) -> list[str]:
        return [EXPERIMENTAL] if ctx.cfg.experimental_model is not None else []

    def source(self) -> tuple[str, object]:
        return experimental_source(self.ctx.cfg.experimental_model)

    def fingerprint(self) -> str:
        """Of a given adapter: its digest on B; of a given model: its weights (converted once, then kept
        here) and its prompts."""
        if getattr(self, "_fingerprint", None) is None:
            ctx, (kind, where) = self.ctx, self.source()
            if kind == "adapter":
                self._fingerprint = input_digest(ctx.base_key, "given adapter", adapter_digest(where))
            else:
                _, weights = materialize(where, progress=ctx.rep.log)
                self._fingerprint = input_digest(weights, ctx.cfg.dtype, ctx.cfg.last_layer, ctx.prompt_key,
                                                 "given model", ctx.cfg.experimental_prompt_format)
        return self._fingerprint

    def outputs(self) -> list:
        key, ctx = self.fingerprint(), self.ctx
        return [StatesOutput(EXPERIMENTAL, t, input_digest(key, fp, *ctx.states_key(EXPERIMENTAL)))
                for t, fp in ctx.task_fp.items()]

    def run(self) -> None:
        ctx, (kind, where) = self.ctx, self.source()
        keys = {o.task: o.key for o in self.outputs()}
        if kind == "adapter":
            ctx.host.load(EXPERIMENTAL, where)
            ctx.extract_tasks(EXPERIMENTAL, EXPERIMENTAL, keys)
            ctx.host.remove(EXPERIMENTAL)
            return
        cfg = ctx.cfg
        loaded = load_model(where, dtype=cfg.dtype, device=cfg.device, progress=ctx.rep.log)
        ctx.rep.log(f"experimental E given: {loaded.name}, {loaded.n_layers} layers, d={loaded.hidden_size}")
        own = cfg.experimental_prompt_format == "own"
        fmt = resolve_format("auto", cue=cfg.cue, template=None, system_prompt=cfg.system_prompt,
                             own_template=loaded.chat_template) if own else ctx.fmt
        builder = ctx.prompt_builder(loaded, fmt)
        test = {t: [builder.reencode(p, rewrap=own) for p in prompts] for t, prompts in ctx.test.items()}
        ctx.extract_tasks(EXPERIMENTAL, None, keys, host=AdapterHost(loaded), test=test, builder=builder)
        del loaded
        gc.collect()
