"""Units: the kinds of work a study is made of, each a small registered module, and the machinery they share.

Stage: units (reads the base model, the tasks' prompts and, after the analysis, results/sections.json;
writes adapters/, activations/ and causal/ through the store).

Every kind declares what it reads, what it writes (its outputs, each keyed by the fingerprint of its
inputs) and which units it has in a study; `run_unit` runs any of them, skipping a unit whose outputs
are stored with the same fingerprint. The built-in kinds, in the order a study runs them:

- states phase (before the analysis): `control` (C_t), `ceiling` (C_t', a second seed), `experimental`
  (E trained), `given` (E given), `heldout` (E'), `base` (B);
- sections phase (after it): `causal` (the adapter masks), `restricted` (E on one layer range).

A new kind is one module with a `UnitKind` subclass decorated with `register_unit`; the study schedules
every registered kind.
"""

from mossa.units._context import CEILING, StudyContext, input_digest
from mossa.units._kind import (
    PHASES,
    SECTIONS,
    STATES,
    UNIT_KINDS,
    AdapterOutput,
    RecordOutput,
    StatesOutput,
    UnitKind,
    output_exists,
    register_unit,
    unit_kind,
)
from mossa.units._mixture import MixtureUnit
from mossa.units._run import open_study, plan_units, run_unit, study_reporter, unit_config, unit_threads
from mossa.units.control import Control  # the built-in kinds register in this order
from mossa.units.ceiling import Ceiling
from mossa.units.experimental import EXPERIMENTAL, Experimental
from mossa.units.given import GivenExperimental
from mossa.units.heldout import Heldout
from mossa.units.base import Base
from mossa.units.causal_masks import CausalMasks
from mossa.units.restricted import Restricted, restricted_label

__all__ = ["Base", "CEILING", "CausalMasks", "Ceiling", "Control", "EXPERIMENTAL", "Experimental",
           "GivenExperimental", "Heldout", "MixtureUnit", "PHASES", "Restricted", "SECTIONS", "STATES",
           "AdapterOutput", "RecordOutput", "StatesOutput", "StudyContext", "UNIT_KINDS", "UnitKind", "input_digest",
           "open_study", "output_exists", "plan_units", "register_unit", "restricted_label", "run_unit", "study_reporter",
           "unit_config", "unit_kind", "unit_threads"]
