"""The causal check's masks: which blocks E's adapter is on in (one layer range only, and everywhere but
there), where the ranges come from, and the run of every mask on a task's prompts.

Stage: causal (E's adapter on the loaded base; the `causal` unit of `mossa.units` stores what this returns).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mossa.errors import MossaError
from mossa.models import AdapterHost, collate, length_batches

SECTIONS = ("shared", "transition", "refinement")


@dataclass(frozen=True)
class Mask:
    """One way of running E: its adapter on in the blocks `layers` (1-based) only."""

    name: str  # "only shared", "outside shared", ...
    section: str
    layers: tuple[int, ...]

    @property
    def active(self) -> str:
        """The active layers as ranges, e.g. "1-7,12-18" ("none" when empty)."""
        return layer_ranges(self.layers)


def layer_ranges(layers) -> str:
    """Sorted layer numbers as comma-separated ranges: (1, 2, 3, 7) -> "1-3,7"; () -> "none"."""
    out, run = [], []
    for layer in sorted(layers):
        if run and layer == run[-1] + 1:
            run.append(layer)
            continue
        if run:
            out.append(f"{run[0]}-{run[-1]}" if len(run) > 1 else str(run[0]))
        run = [layer]
    if run:
        out.append(f"{run[0]}-{run[-1]}" if len(run) > 1 else str(run[0]))
    return ",".join(out) or "none"


def section_ranges(sections: dict, n_layers: int,
                   causal_layers: list | str = "sections") -> tuple[dict[str, tuple[int, int]], str]:
    """The layer ranges to mask by, with where they come from: the ranges `causal_layers` names ([[a, b], ...]),
    else (`causal_layers` "sections") the
    sections found (`sections.json`), else, when no transition was found, the thirds of the depth (a causal
    check of depth is still informative; the source string says so)."""
    if isinstance(causal_layers, list):
        ranges = {f"layers {a}-{b}": (int(a), int(b)) for a, b in causal_layers}
        for name, (a, b) in ranges.items():
            if not 1 <= a <= b <= n_layers:
                raise MossaError(f"field 'causal_layers': {name} is not within layers 1-{n_layers}")
        return ranges, "the layer ranges named in causal_layers"
    if sections.get("transition_found"):
        return {s: tuple(sections[s]) for s in SECTIONS}, "the sections found (sections.json)"
    edges = np.linspace(0, n_layers, 4).round().astype(int)
    thirds = [(f"{which} third", int(edges[i]) + 1, int(edges[i + 1])) for i, which in
              enumerate(("first", "second", "last"))]
    ranges = {name: (a, b) for name, a, b in thirds if a <= b}  # a model of 1 or 2 layers has fewer thirds
    return ranges, "the thirds of the depth, as no sections were found"


def masks(ranges: dict[str, tuple[int, int]], n_layers: int) -> list[Mask]:
    """For each range: the adapter on there only, and everywhere but there."""
    every = set(range(1, n_layers + 1))
    out = []
    for name, (a, b) in ranges.items():
        inside = tuple(range(a, b + 1))
        out += [Mask(f"only {name}", name, inside), Mask(f"outside {name}", name, tuple(sorted(every - set(inside))))]
    return out


def run_masks(host: AdapterHost, adapter: str, prompts: list, masks_: list[Mask], *, token_budget: int,
              extract) -> dict:
    """The evaluation record of E (`adapter`) under each mask on `prompts`, and the adapter's per-block
    update at each prompt's last token ([n_layers][n], `AdapterHost.updates`).

    `extract(layers)` runs the study's evaluated extraction of these prompts with the adapter on in
    `layers` and returns its evaluation record (the study passes its own settings in)."""
    records = {m.name: {"section": m.section, "layers": list(m.layers), "evaluation": extract(m.layers)}
               for m in masks_}
    n_layers = host.loaded.n_layers
    updates = np.full((n_layers, len(prompts)), np.nan)
    for idx in length_batches(prompts, token_budget, with_targets=False):
        batch = collate([prompts[i] for i in idx], host.loaded.tokenizer.pad_token_id, host.loaded.device,
                        with_targets=False)
        updates[:, idx] = host.updates(adapter, batch).numpy()
    return {"masks": records, "updates": updates.tolist()}


__all__ = ["Mask", "SECTIONS", "layer_ranges", "masks", "run_masks", "section_ranges"]
