import json

import pytest

from mossa.tasks import builtin_templates, load_tasks, template_fields, render_body
from tests.conftest import FLAN_MINI

needs_flan = pytest.mark.skipif(not FLAN_MINI.is_dir(), reason="flan-mini not beside the checkout")


@needs_flan
def test_every_flan_mini_task_has_a_template_that_renders_every_row():
    manifest = json.loads((FLAN_MINI / "MANIFEST.json").read_text())["tasks"]
    templates = builtin_templates()
    assert set(manifest) <= set(templates)
    for task in load_tasks(FLAN_MINI):
        assert task.template.origin.endswith(f"tasks.{task.name}")
        names = template_fields(task.template.text)
        assert ("options" in names) == manifest[task.name]["has_options"], task.name
        assert set(manifest[task.name]["input_fields"]) <= names, task.name
        for examples in task.examples.values():
            for ex in examples:
                body = render_body(task, ex)
                assert body and "{" + task.template.truncate + "}" not in body


def test_templates_do_not_end_with_a_cue():
    for name, t in builtin_templates().items():
        assert not t.text.rstrip().endswith(":"), name
