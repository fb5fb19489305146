"""Tasks: the task sources (flan-mini folders, SNI folders, custom task files, the Flan 2021
collection on the hub), our instruction templates, prompt formats and prompt rendering.

Stage: tasks (reads task folders, task files, the shipped templates and hub table, and hub data
sets through `datasets`; writes nothing but the `datasets` download cache).
"""

from mossa.tasks._hub import HubTask, convert_row, hub_table, load_hub_task, stated_rows
from mossa.tasks._loader import assign_splits, parse_row, read_task_file
from mossa.tasks._formats import (
    CHAT_TEMPLATES,
    MODEL_TEMPLATE,
    ChatTemplate,
    PromptFormat,
    chat_template,
    register_chat_template,
    resolve_format,
)
from mossa.tasks._prompts import (
    FLOOR,
    TEMPLATE_MODES,
    Prompt,
    PromptBuilder,
    PromptSample,
    prompt_digest,
    render_body,
    render_options,
    sample_split,
    template_index,
)
from mossa.tasks._registry import (
    build_task,
    default_tasks_dir,
    load_task,
    load_task_file,
    read_manifest,
    resolve_tasks_dir,
    scan_tasks_dir,
)
from mossa.tasks._selection import (
    MIN_TEST_PROMPTS,
    check_causal_tasks,
    check_splits,
    check_task_choices,
    check_test_prompts,
    resolve_ceiling,
    resolve_cross_tasks,
    resolve_holdout,
    study_tasks,
)
from mossa.tasks._sni import load_sni_task, sni_task_files
from mossa.tasks._sources import (
    TASK_SOURCES,
    TaskEntry,
    TaskSource,
    load_tasks,
    register_task_source,
    resolve_source,
    task_catalog,
)
from mossa.tasks._spec import Example, TaskSpec, Template
from mossa.tasks._templates import TemplateSet, builtin_templates, generic_template, template_fields, templates_for

__all__ = [
    "CHAT_TEMPLATES", "FLOOR", "MIN_TEST_PROMPTS", "MODEL_TEMPLATE", "TASK_SOURCES", "TEMPLATE_MODES", "ChatTemplate", "Example",
    "HubTask", "Prompt", "PromptBuilder", "PromptFormat", "PromptSample", "TaskEntry", "TaskSource", "TaskSpec",
    "Template", "TemplateSet", "assign_splits", "build_task", "builtin_templates", "chat_template", "check_causal_tasks", "check_splits",
    "check_task_choices", "check_test_prompts",
    "convert_row", "default_tasks_dir", "generic_template", "hub_table", "load_hub_task", "load_sni_task",
    "load_task", "load_task_file", "load_tasks", "parse_row", "prompt_digest", "read_manifest",
    "read_task_file", "register_chat_template", "register_task_source", "render_body", "render_options",
    "resolve_ceiling", "resolve_cross_tasks", "resolve_format", "resolve_holdout", "resolve_source", "resolve_tasks_dir", "sample_split", "scan_tasks_dir", "sni_task_files",
    "stated_rows", "study_tasks", "task_catalog", "template_fields", "template_index", "templates_for",
]
