import json

import pytest

from mossa.errors import MossaError
from mossa.tasks import (
    PromptBuilder,
    builtin_templates,
    load_task_file,
    load_tasks,
    render_body,
    template_fields,
    template_index,
)
from mossa.tasks._templates import parse_template_file
from tests.conftest import FLAN_MINI

needs_flan = pytest.mark.skipif(not FLAN_MINI.is_dir(), reason="flan-mini not beside the checkout")


@needs_flan
def test_every_flan_mini_task_has_three_templates_that_render_every_row():
    manifest = json.loads((FLAN_MINI / "MANIFEST.json").read_text())["tasks"]
    assert set(manifest) <= set(builtin_templates())
    for task in load_tasks(FLAN_MINI):
        assert len(task.templates) >= 3, task.name
        assert task.template_note.startswith(f"flan_mini.yaml:tasks.{task.name} "), task.template_note
        for template in task.templates:
            names = template_fields(template.text)
            assert ("options" in names) == manifest[task.name]["has_options"], task.name
            assert set(manifest[task.name]["input_fields"]) == names - {"options"}, task.name
            for examples in task.examples.values():
                for ex in examples:
                    body = render_body(task, ex, template=template)
                    assert body and not any("{" + f + "}" in body for f in template.truncate)
        assert len({t.text for t in task.templates}) == len(task.templates), task.name


def test_templates_do_not_end_with_a_cue():
    for name, written in builtin_templates().items():
        for t in written.templates:
            assert not t.text.rstrip().endswith(":"), name


@needs_flan
def test_one_template_per_example_drawn_by_seed_and_id_the_same_for_every_builder(tiny_model):
    from transformers import AutoTokenizer

    task = load_tasks(FLAN_MINI, ["sst2"])[0]
    examples = task.split("test")[:60]
    picks = [template_index(task, ex, "all", seed=0) for ex in examples]
    assert set(picks) == set(range(len(task.templates)))  # every template is used
    assert picks == [template_index(task, ex, "all", seed=0) for ex in reversed(examples)][::-1]  # order-free
    assert picks != [template_index(task, ex, "all", seed=1) for ex in examples]
    assert all(template_index(task, ex, "first", seed=0) == 0 for ex in examples)
    # two tokenizers (two models of a study) build the same example with the same template
    a = PromptBuilder(AutoTokenizer.from_pretrained(tiny_model), max_prompt_tokens=512, max_target_tokens=8)
    b = PromptBuilder(AutoTokenizer.from_pretrained(tiny_model), max_prompt_tokens=400, max_target_tokens=4)
    for ex, k in zip(examples, picks):
        pa, pb = a.build(task, ex, k), b.build(task, ex, k)
        assert pa.template == pb.template == k and pa.text == pb.text


def test_a_written_template_applies_by_fit_not_by_name(tmp_path):
    sst2 = builtin_templates()["sst2"]
    assert sst2.fields == {"sentence"} and sst2.options
    rows = [{"input": {"sentence": f"text {i}"}, "target": "fine", "id": i} for i in range(10)]  # no options
    path = tmp_path / "sst2.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    task = load_task_file(path)
    assert len(task.templates) == 1 and task.template.origin.startswith("generic template")
    assert "do not fit" in task.template_note and "no options" in task.template_note
    rows = [{"input": {"sentence": f"text {i}", "options": ["negative", "positive"]}, "target": "positive", "id": i}
            for i in range(10)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert load_task_file(path).templates == sst2.templates  # same fields: the written templates


@pytest.mark.parametrize("body, message", [
    ("version: 1\nsource: x\ntasks: {}", "expected 'version: 2'"),
    ("version: 2\nsource: x\ntasks:\n  t: {truncate: [a], templates: []}", r"t\.templates: must be a non-empty"),
    ("version: 2\nsource: x\ntasks:\n  t: {truncate: [b], templates: ['{a}']}", r"t\.truncate: 'b' is not"),
    ("version: 2\nsource: x\ntasks:\n  t: {truncate: [a], templates: ['{a}', '{a} {b}']}",
     r"t\.templates\[1\]: reads \['a', 'b'\]"),
    ("version: 2\nsource: x\ntasks:\n  t: {truncate: [options], templates: ['{a} {options}']}", "'options' is not"),
])
def test_template_file_errors_name_the_key(tmp_path, body, message):
    with pytest.raises(MossaError, match=message):
        parse_template_file(tmp_path / "t.yaml", body)
