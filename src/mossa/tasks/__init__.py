"""Tasks: the registry of task files, our instruction templates, and prompt rendering.

Stage: tasks (reads task folders and the shipped templates; writes nothing).
"""

from mossa.tasks._loader import read_task_file
from mossa.tasks._prompts import Prompt, PromptBuilder, render_body, render_options, sample_split
from mossa.tasks._registry import (
    default_tasks_dir,
    load_task,
    load_tasks,
    read_manifest,
    resolve_tasks_dir,
    scan_tasks_dir,
)
from mossa.tasks._spec import Example, TaskSpec, Template
from mossa.tasks._templates import builtin_templates, generic_template, placeholders

__all__ = [
    "Example", "Prompt", "PromptBuilder", "TaskSpec", "Template", "builtin_templates", "default_tasks_dir",
    "generic_template", "load_task", "load_tasks", "placeholders", "read_manifest", "read_task_file",
    "render_body", "render_options", "resolve_tasks_dir", "sample_split", "scan_tasks_dir",
]
