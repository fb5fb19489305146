"""The causal check: E (and E') run with its adapter on in each layer range only, and everywhere but there,
on the first `causal_examples` evaluated prompts of each causal task; one record per (model, task).
Runs after the analysis, whose sections give the ranges (`mossa.causal.section_ranges`).

Stage: units (reads results/sections.json, E's and E''s adapters and the test prompts; writes
causal/<model>/<task>.json, which `mossa.causal.section_checks` turns into tables).
"""

from __future__ import annotations

import time

from mossa.analysis import HELDOUT
from mossa.causal import masks, run_masks, section_ranges
from mossa.extraction import extract
from mossa.models import adapter_digest, experimental_source
from mossa.store import MARKER, read_json, write_json
from mossa.tasks import resolve_holdout
from mossa.units._context import input_digest
from mossa.units._kind import SECTIONS, RecordOutput, UnitKind, register_unit
from mossa.units.experimental import EXPERIMENTAL

CAUSAL = "causal"


def study_ranges(ctx) -> tuple[dict[str, tuple[int, int]], str]:
    """The ranges the causal check and the restricted E's use, with where they come from; the sections are
    read from results/sections.json, which the analysis has written by now."""
    return section_ranges(read_json(ctx.study.path("results", "sections.json")), ctx.n_layers,
                          ctx.cfg.causal_layers)


@register_unit
class CausalMasks(UnitKind):
    """One unit: every mask of every causal task, for E and, on its held-out tasks, E'."""

    name = CAUSAL
    phase = SECTIONS
    reads = "results/sections.json, E's and E''s adapters, the causal tasks' evaluated prompts"
    writes = "causal/<model>/<task>.json"

    @classmethod
    def units(cls, ctx) -> list[str]:
        return [] if ctx.cfg.causal_layers == "none" else [CAUSAL]

    def tasks(self) -> dict[str, list[str]]:
        """Model -> the tasks its causal check runs on: E (trained, or a given adapter) on the causal tasks,
        E' on those of them it was not trained on."""
        cfg, ctx = self.ctx.cfg, self.ctx
        chosen = [t.name for t in ctx.tasks if cfg.causal_tasks == "all" or t.name in cfg.causal_tasks]
        given = experimental_source(cfg.experimental_model)
        out = {EXPERIMENTAL: chosen} if given is None or given[0] == "adapter" else {}
        held = [t for t in chosen if t in resolve_holdout(cfg, ctx.tasks)]
        if held:
            out[HELDOUT] = held
        return out

    def rows(self, task: str) -> int:
        """How many of `task`'s first test prompts the causal check runs on: its evaluated prompts (a task
        without options is evaluated on its answered ones), at most `causal_examples`."""
        cfg, prompts = self.ctx.cfg, self.ctx.test[task]
        n = min(k for k in (cfg.causal_examples, cfg.eval_examples, len(prompts)) if k)
        if not any(p.options for p in prompts[:n]) and cfg.generate_examples:
            n = min(n, cfg.generate_examples)
        return n

    def adapter(self, model: str) -> str:
        """The fingerprint of the adapter `model`'s causal check masks: its training inputs, or a given
        adapter's digest."""
        given = experimental_source(self.ctx.cfg.experimental_model)
        if model == EXPERIMENTAL and given is not None:
            return adapter_digest(given[1])
        return read_json(self.ctx.study.adapter_dir(model) / MARKER)["inputs"]

    def fingerprint(self) -> str:
        ranges, _ = study_ranges(self.ctx)
        return input_digest(ranges, self.ctx.prompt_key, {m: self.adapter(m) for m in self.tasks()})

    def record_key(self, model: str, task: str, ranges: dict) -> str:
        ctx = self.ctx
        return input_digest(self.adapter(model), ctx.prompt_key, ctx.task_fp[task], ranges, self.rows(task),
                            *ctx.eval_key(model), "causal v1")

    def outputs(self) -> list:
        ranges, _ = study_ranges(self.ctx)
        return [RecordOutput((CAUSAL, model, f"{task}.json"), self.record_key(model, task, ranges))
                for model, tasks in self.tasks().items() for task in tasks]

    def run(self) -> None:
        ctx = self.ctx
        ranges, source = study_ranges(ctx)
        order = masks(ranges, ctx.n_layers)
        for model, tasks in self.tasks().items():
            loaded_here = False
            for task in tasks:
                prompts = ctx.test[task][:self.rows(task)]
                key = self.record_key(model, task, ranges)
                path = ctx.study.path(CAUSAL, model, f"{task}.json")
                if path.is_file() and read_json(path).get("inputs") == key:
                    continue
                if not loaded_here:
                    self.load(model)
                    loaded_here = True
                t0 = time.perf_counter()
                with ctx.rep.bar(f"causal {model} {task}", total=len(order)) as advance:
                    record = run_masks(ctx.host, model, prompts, order, token_budget=ctx.cfg.extract_token_budget,
                                       extract=lambda layers, ps=prompts, step=advance: self.masked(model, ps, layers,
                                                                                                    step))
                write_json(path, {"inputs": key, "model": model, "task": task, "source": source,
                                  "ranges": {k: list(v) for k, v in ranges.items()}, **record})
                ctx.seconds["extract"] += time.perf_counter() - t0
            if loaded_here:
                ctx.host.remove(model)

    def load(self, model: str) -> None:
        given = experimental_source(self.ctx.cfg.experimental_model)
        where = given[1] if model == EXPERIMENTAL and given is not None else self.ctx.study.adapter_dir(model)
        self.ctx.host.load(model, where)

    def masked(self, adapter: str, prompts: list, layers, advance) -> dict:
        """The evaluation record of B + `adapter` on in the blocks `layers` only: the study's evaluation
        (scores and greedy answers, no lens) of `prompts`."""
        cfg, builder = self.ctx.cfg, self.ctx.builder
        record = extract(self.ctx.host, adapter, prompts, token_budget=cfg.extract_token_budget,
                         last_layer=cfg.last_layer, generate_rows=cfg.generate_examples, lens=False,
                         answer_end=builder.end_of_answer(), one_line=builder.mode == "plain",
                         max_new_tokens=cfg.max_target_tokens, layers=layers).evaluation
        advance(1)
        return record
