"""The unit registry: a kind added from outside mossa (here, this test module) is scheduled by the study
without touching `mossa.study`, run by the local executor in its phase, and resumed by its fingerprint."""

import json

import pytest

from mossa.config import resolve_config
from mossa.errors import MossaError
from mossa.progress import Reporter
from mossa.store import read_json, write_json
from mossa.study import run_study
from mossa.units import (
    SECTIONS,
    UNIT_KINDS,
    RecordOutput,
    StatesOutput,
    UnitKind,
    input_digest,
    output_exists,
    register_unit,
    unit_kind,
)


class PromptLengths(UnitKind):
    """A toy kind: per task, the mean token count of its test prompts as B reads them."""

    name = "toy_prompt_lengths"
    reads = "every task's test prompts"
    writes = "toy/prompt_lengths.json"
    runs = 0

    @classmethod
    def units(cls, ctx):
        return ["toy-lengths"]

    def fingerprint(self):
        return input_digest(self.ctx.prompt_key, self.ctx.task_fp, "toy v1")

    def outputs(self):
        return [RecordOutput(("toy", "prompt_lengths.json"), self.fingerprint())]

    def run(self):
        type(self).runs += 1
        lengths = {t: sum(len(p.prompt_ids) for p in ps) / len(ps) for t, ps in self.ctx.test.items()}
        write_json(self.ctx.study.path("toy", "prompt_lengths.json"), {"inputs": self.fingerprint(),
                                                                         "lengths": lengths})


class SectionsSeen(PromptLengths):
    """A toy kind of the sections phase: it runs after the analysis, so the sections are there to read."""

    name = "toy_sections_seen"
    phase = SECTIONS
    writes = "toy/sections_seen.json"
    runs = 0

    @classmethod
    def units(cls, ctx):
        return ["toy-sections"]

    def outputs(self):
        return [RecordOutput(("toy", "sections_seen.json"), self.fingerprint())]

    def run(self):
        type(self).runs += 1
        sections = read_json(self.ctx.study.path("results", "sections.json"))
        write_json(self.ctx.study.path("toy", "sections_seen.json"), {"inputs": self.fingerprint(),
                                                                        "keys": sorted(sections)})


@pytest.fixture()
def toy_kinds():
    for kind in (PromptLengths, SectionsSeen):
        kind.runs = 0
        register_unit(kind)
    yield
    for kind in (PromptLengths, SectionsSeen):
        del UNIT_KINDS[kind.name]


def test_a_kind_registered_outside_mossa_runs_in_its_phase_and_resumes(toy_kinds, tiny_model, tiny_tasks, tmp_path):
    out = tmp_path / "s"
    cfg = resolve_config({"model": str(tiny_model), "tasks_dir": tiny_tasks, "preset": "quick", "out": out,
                          "tasks": ["tiny_sentiment", "tiny_struct"], "measures": ["linear_cka"], "n_boot": 0,
                          "causal_layers": "none", "tsne_layers": [1]})
    run_study(cfg, reporter=Reporter(quiet=True))
    assert (PromptLengths.runs, SectionsSeen.runs) == (1, 1)
    lengths = json.loads((out / "toy/prompt_lengths.json").read_text())["lengths"]
    assert set(lengths) == {"tiny_sentiment", "tiny_struct"} and all(v > 0 for v in lengths.values())
    assert "transition_found" in json.loads((out / "toy/sections_seen.json").read_text())["keys"]
    info = json.loads((out / "study.json").read_text())
    assert info["executor"]["units"][-2:] == ["base", "toy-lengths"]  # registered last, run last of its phase
    units = info["units"]  # every unit's declared fingerprint, the one that keys its outputs
    assert units["toy-lengths"] == {"kind": "toy_prompt_lengths",
                                    "fingerprint": json.loads((out / "toy/prompt_lengths.json").read_text())["inputs"]}
    assert units["toy-sections"]["kind"] == "toy_sections_seen"
    marker = json.loads((out / "adapters/control-tiny_struct/done.json").read_text())
    assert units["control-tiny_struct"] == {"kind": "control", "fingerprint": marker["inputs"]}
    assert "unit fingerprint: toy-lengths" in (out / "report.html").read_text()

    stamp = (out / "toy/prompt_lengths.json").stat().st_mtime_ns
    run_study(cfg, reporter=Reporter(quiet=True))
    assert (PromptLengths.runs, SectionsSeen.runs) == (1, 1)  # both found their outputs: resumed, not rerun
    assert (out / "toy/prompt_lengths.json").stat().st_mtime_ns == stamp
    assert json.loads((out / "study.json").read_text())["units"] == units  # the same inputs, the same fingerprints

    record = out / "toy/prompt_lengths.json"
    record.write_text(json.dumps({"inputs": "stale", "lengths": {}}))
    run_study(cfg, reporter=Reporter(quiet=True))
    assert PromptLengths.runs == 2  # another fingerprint: redone


def test_a_kind_checks_its_own_settings_before_anything_is_written(tiny_model, tiny_tasks, tmp_path):
    """`UnitKind.check` runs in the study's validation: a refusal is the user's error, and no folder is made."""

    class NeedsTwoTasks(PromptLengths):
        name = "toy_needs_two_tasks"
        runs = 0

        @classmethod
        def check(cls, cfg, tasks):
            if len(tasks) < 2:
                raise MossaError(f"field 'tasks': the {cls.name} unit needs two tasks, got {len(tasks)}")

    register_unit(NeedsTwoTasks)
    try:
        out = tmp_path / "s"
        cfg = resolve_config({"model": str(tiny_model), "tasks_dir": tiny_tasks, "preset": "quick", "out": out,
                              "tasks": ["tiny_sentiment"]})
        with pytest.raises(MossaError, match=r"^field 'tasks': the toy_needs_two_tasks unit needs two tasks"):
            run_study(cfg, reporter=Reporter(quiet=True))
        assert not out.exists() and NeedsTwoTasks.runs == 0
    finally:
        del UNIT_KINDS[NeedsTwoTasks.name]


def test_built_in_kinds_declare_what_they_read_and_write():
    assert list(UNIT_KINDS)[:8] == ["control", "ceiling", "experimental", "given", "heldout", "base", "causal",
                                    "restricted"]
    for kind in UNIT_KINDS.values():
        assert kind.reads and kind.writes, kind.name
    assert unit_kind("control").phase == "states" and unit_kind("causal").phase == SECTIONS


def test_registry_refuses_bad_kinds():
    with pytest.raises(MossaError, match=r"unknown unit kind 'contrl'.*did you mean control"):
        unit_kind("contrl")
    with pytest.raises(ValueError, match="registered already"):
        register_unit(type("Again", (PromptLengths,), {"name": "control"}))
    with pytest.raises(ValueError, match="phase must be one of"):
        register_unit(type("Odd", (PromptLengths,), {"name": "odd", "phase": "later"}))


def test_outputs_exist_only_with_their_fingerprint(tmp_path):
    from mossa.store import StudyDir

    study = StudyDir(tmp_path)
    record = RecordOutput(("x", "r.json"), "k1")
    assert not output_exists(study, record)
    write_json(study.path("x", "r.json"), {"inputs": "k1"})
    assert output_exists(study, record) and not output_exists(study, RecordOutput(("x", "r.json"), "k2"))
    assert not output_exists(study, StatesOutput("base", "t", "k1"))


def test_architecture_doc_lists_every_built_in_kind_as_it_declares_itself():
    from pathlib import Path

    doc = (Path(__file__).parents[2] / "docs" / "architecture.md").read_text(encoding="utf-8")
    for kind in UNIT_KINDS.values():
        if kind.__module__.startswith("mossa."):
            assert f"| {kind.phase} | `{kind.name}`" in doc, kind.name
            assert f"| {kind.reads} | {kind.writes} |" in doc, kind.name
