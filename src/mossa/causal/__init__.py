"""Do the sections do anything? E's adapter switched on in one section of layers only, and everywhere but
there, on the same test prompts: how much of E's gain over B each section keeps, by the task metrics and the
target NLL; how much the adapter changes each block's output; and which range, if any, carries the gain.

Stage: causal. `run_masks` runs the masks on the loaded base (the study's `causal` unit, `mossa.units`,
schedules it and stores each task's record under causal/); `section_checks` turns the stored records
into results/causal.csv, adapter_updates.csv, causal.json and restricted.csv, without a model.

A LoRA adapter is on or off per block at no training cost (`AdapterHost.use(name, layers=...)`): with it
on everywhere the model is E, with it off everywhere B, exactly. If the refinement layers hold E's
task-specific gain, E with its adapter on only there keeps most of that gain, and E with it on only in
the shared layers does not. The share kept is (metric(masked) - metric(B)) / (metric(E) - metric(B)) on
the same prompts, with a paired Fieller interval over examples (`gain_share_test`); it is stated only where
E's own gain over B is above 0 by the same paired test (no gain, nothing to share out). A range carries the
gain on a task only when paired tests, Holm-corrected over every claim, establish it (`RULE`,
`section_verdict`); otherwise the gain is spread, undetermined or not tested there.

Layers are numbered as the study's states: block l (1-based) writes layer l's state, so a section
[a, b] of layers is blocks a..b, and masking a block changes the states from its layer on.
"""

from mossa.causal._masks import SECTIONS, Mask, layer_ranges, masks, run_masks, section_ranges
from mossa.causal._tables import (
    ALPHA,
    BAR,
    CAUSAL_COLUMNS,
    RULE,
    SHARE_INTERVAL,
    UPDATE_COLUMNS,
    SectionChecks,
    ShareTest,
    causal_records,
    causal_table,
    gain_share_test,
    holm,
    primary_rows,
    section_checks,
    section_verdict,
    update_table,
)

__all__ = ["ALPHA", "BAR", "CAUSAL_COLUMNS", "Mask", "RULE", "SECTIONS", "SHARE_INTERVAL", "SectionChecks", "ShareTest",
           "UPDATE_COLUMNS", "causal_records", "causal_table", "gain_share_test", "holm", "layer_ranges", "masks",
           "primary_rows", "run_masks", "section_checks", "section_ranges", "section_verdict", "update_table"]
