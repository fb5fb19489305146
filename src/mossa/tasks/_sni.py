"""Super-NaturalInstructions (SNI) task files from a local folder.

Each `taskNNN_name.json` holds `Definition` (list of str), `Positive Examples` and `Negative
Examples` (lists of {input, output, explanation}), `Instances` (list of {id, input, output:
[str, ...]}), `Categories` (list of str) and metadata (`Source`, `Input_language`, ...).

How a file becomes a task:
- name: the file stem; cluster: the first category.
- examples: one per instance, with the single input field `input`; the target is the first
  non-empty output. Instances are split into train and test by `assign_splits` over their ids
  (about 20% test, fixed by the id alone). SNI's own `splits/default/*_tasks.txt` split tasks,
  not instances, so it is not used: every task gets both splits.
- template (our wording): the task's definition, then up to `N_DEMONSTRATIONS` positive
  examples as worked demonstrations (the definition + two positive examples setting that the
  SNI paper found best), then the instance input. Definition and demonstrations are fixed text
  in the template, so only the instance input is a field, and it is what truncation cuts.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from mossa.errors import MossaError
from mossa.tasks._loader import SPLIT_RULE, TEST_FRACTION, assign_splits
from mossa.tasks._registry import build_task
from mossa.tasks._spec import Example, TaskSpec, Template

N_DEMONSTRATIONS = 2
SNI_TEMPLATE_VERSION = 2


def sni_task_files(folder: Path) -> dict[str, Path]:
    """Task name -> file for every `task*.json` in the folder, else in its `tasks/` subfolder
    (the layout of a checkout of the SNI repository); {} when there are none."""
    for where in (Path(folder), Path(folder) / "tasks"):
        found = {p.stem: p for p in sorted(where.glob("task*.json"))}
        if found:
            return found
    return {}


def _text_list(data: dict, key: str, path: Path) -> list[str]:
    value = data.get(key)
    if not (isinstance(value, list) and value and all(isinstance(v, str) for v in value)):
        raise MossaError(f"{path}: field '{key}' must be a non-empty list of strings")
    return value


def _first_output(value: object) -> str | None:
    outputs = [value] if isinstance(value, str) else value if isinstance(value, list) else []
    return next((o.strip() for o in outputs if isinstance(o, str) and o.strip()), None)


def _escape(text: str) -> str:
    return text.replace("{", "{{").replace("}", "}}")


def sni_template(path: Path, definition: str, positives: list) -> Template:
    """Definition, up to `N_DEMONSTRATIONS` positive examples, then `{input}` (see module doc).

    Each form falls back to the same instruction with one demonstration fewer (`shorter`), so an
    instance whose input cannot fit beside two demonstrations is shown with one or none instead
    of being cut below its floor.
    """
    demos = [(ex.get("input"), _first_output(ex.get("output"))) for ex in positives if isinstance(ex, dict)]
    demos = [(i.strip(), o) for i, o in demos if isinstance(i, str) and i.strip() and o][:N_DEMONSTRATIONS]
    template = None
    for k in range(len(demos) + 1):
        parts = [_escape(definition.strip())]
        parts += [f"Example {j}\nInput: {_escape(inp)}\nOutput: {_escape(out)}"
                  for j, (inp, out) in enumerate(demos[:k], start=1)]
        parts.append("Now do the same for this input.\nInput: {input}")
        template = Template(text="\n\n".join(parts), truncate=("input",), shorter=template,
                            origin=f"{path}: SNI definition + {k} positive examples")
    return template


def load_sni_task(name: str, path: Path) -> TaskSpec:
    """Read, split, template and fingerprint one SNI task file.

    Raises
    ------
    MossaError
        For an unreadable file, invalid JSON, or a missing or mistyped field (naming the file
        and the field, and the instance index for instances).
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
        data = json.loads(raw.decode("utf-8"))
    except OSError as exc:
        raise MossaError(f"{path}: cannot read task file ({exc.strerror})") from None
    except (ValueError, RecursionError) as exc:  # bad UTF-8 or JSON, nesting or integers beyond the parser's limits
        raise MossaError(f"{path}: not a valid UTF-8 JSON file ({exc or type(exc).__name__})") from None
    if not isinstance(data, dict):
        raise MossaError(f"{path}: expected a JSON object with 'Definition', 'Categories' and 'Instances'")
    definition = "\n".join(_text_list(data, "Definition", path))
    cluster = _text_list(data, "Categories", path)[0]
    positives = data.get("Positive Examples") or []
    if not isinstance(positives, list):
        raise MossaError(f"{path}: field 'Positive Examples' must be a list of {{input, output}} objects")
    instances = data.get("Instances")
    if not isinstance(instances, list) or not instances:
        raise MossaError(f"{path}: field 'Instances' must be a non-empty list of {{id, input, output}} objects")
    rows: list[tuple[str, str, str]] = []
    for i, inst in enumerate(instances):
        where = f"{path}: Instances[{i}]"
        if not isinstance(inst, dict):
            raise MossaError(f"{where}: expected an object with 'id', 'input' and 'output'")
        inst_id, text, target = inst.get("id"), inst.get("input"), _first_output(inst.get("output"))
        if not isinstance(inst_id, str) or not inst_id:
            raise MossaError(f"{where}.id: must be a non-empty string")
        if not isinstance(text, str):
            raise MossaError(f"{where}.input: must be a string")
        if target is None:
            raise MossaError(f"{where}.output: must be a list holding at least one non-empty string")
        rows.append((inst_id, text, target))
    ids = [r[0] for r in rows]
    if len(set(ids)) != len(ids):
        dup = next(x for x in ids if ids.count(x) > 1)
        raise MossaError(f"{path}: Instances: duplicate id {dup!r}")
    splits: dict[str, list[Example]] = {}
    for (inst_id, text, target), split in zip(rows, assign_splits([f"id:{i}" for i in ids]), strict=True):
        splits.setdefault(split, []).append(Example(id=f"{name}:{inst_id}", fields={"input": text},
                                                    target=target, split=split))
    digest = hashlib.sha256(raw)
    digest.update(f"sni-v{SNI_TEMPLATE_VERSION}:demos={N_DEMONSTRATIONS}:split-rule:{SPLIT_RULE}:"
                  f"{TEST_FRACTION}".encode())
    template = sni_template(path, definition, positives)
    return build_task(name, cluster, path, splits, digest, templates=(template,), note=template.origin,
                      locate=lambda ex: f"{path}: instance {ex.id}")
