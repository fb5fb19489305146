"""Reading task files (flan-mini JSONL format) with errors that name file, line and field."""

from __future__ import annotations

import json
from pathlib import Path

from mossa.errors import MossaError
from mossa.tasks._spec import Example

SPLITS = ("train", "validation", "test")


def _fail(path: Path, line: int, msg: str) -> MossaError:
    return MossaError(f"{path}:{line}: {msg}")


def field_text(value: object) -> str | None:
    """An input field as text: strings and numbers as they are; a list of strings joined with
    "; "; a list of string lists (such as subject-predicate-object triples) as "a | b | c; ...".
    None for anything else."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (str, int, float)):
        return str(value)
    if isinstance(value, list) and value:
        if all(isinstance(v, str) for v in value):
            return "; ".join(value)
        if all(isinstance(v, list) and all(isinstance(x, str) for x in v) for v in value):
            return "; ".join(" | ".join(v) for v in value)
    return None


def _parse_row(path: Path, lineno: int, row: object, task: str) -> Example:
    if not isinstance(row, dict):
        raise _fail(path, lineno, f"expected a JSON object, got {type(row).__name__}")
    if "input" not in row:
        raise _fail(path, lineno, "field 'input' is missing; each row needs 'input' (object or string) and 'target'")
    raw = row["input"]
    if isinstance(raw, str):
        raw = {"input": raw}
    if not isinstance(raw, dict) or not raw:
        raise _fail(path, lineno, f"field 'input' must be a non-empty object or a string, got {type(raw).__name__}")
    target = row.get("target")
    if not isinstance(target, str) or not target.strip():
        raise _fail(path, lineno, f"field 'target' must be a non-empty string, got {target!r}")
    split = row.get("split")
    if split not in SPLITS:
        raise _fail(path, lineno, f"field 'split' must be one of {', '.join(SPLITS)}, got {split!r}")
    options = raw.get("options")
    if options is not None:
        if not (isinstance(options, list) and len(options) >= 2 and all(isinstance(o, str) and o for o in options)):
            raise _fail(path, lineno, "field 'input.options' must be a list of at least 2 non-empty strings")
        if target not in options:
            raise _fail(path, lineno, f"field 'target' {target!r} is not one of input.options {options!r}")
    fields: dict[str, str] = {}
    for key, value in raw.items():
        if key == "options":
            continue
        text = field_text(value)
        if text is None:
            raise _fail(path, lineno, f"field 'input.{key}' must be a string, a number, or a list of strings "
                        f"(or of string lists, e.g. triples), got {type(value).__name__}")
        fields[key] = text
    own_id = row.get("id")
    if own_id is not None and not isinstance(own_id, (str, int)):
        raise _fail(path, lineno, f"field 'id' must be a string or integer, got {type(own_id).__name__}")
    ex_id = f"{task}:{own_id}" if own_id is not None else f"{task}:{split}:{lineno}"
    return Example(id=ex_id, fields=fields, target=target, split=split,
                   options=tuple(options) if options is not None else None)


def read_task_file(path: Path, task: str) -> dict[str, list[Example]]:
    """Read and validate one `<task>.jsonl`, grouped by split.

    Raises
    ------
    MossaError
        On unreadable files, non-UTF-8 bytes, malformed JSON, missing or mistyped fields, a
        target outside its options, or duplicate example ids; the message names file and line.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise MossaError(f"{path}: cannot read task file ({exc.strerror})") from None
    splits: dict[str, list[Example]] = {}
    seen: dict[str, int] = {}
    for lineno, raw_line in enumerate(data.split(b"\n"), start=1):
        if not raw_line.strip():
            continue
        try:
            text = raw_line.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise _fail(path, lineno, f"not valid UTF-8 (byte {exc.start}); re-encode the file as UTF-8") from None
        try:
            row = json.loads(text)
        except json.JSONDecodeError as exc:
            raise _fail(path, lineno, f"not valid JSON ({exc.msg} at column {exc.colno})") from None
        ex = _parse_row(path, lineno, row, task)
        if ex.id in seen:
            raise _fail(path, lineno, f"duplicate example id {ex.id!r} (first at line {seen[ex.id]})")
        seen[ex.id] = lineno
        splits.setdefault(ex.split, []).append(ex)
    if not splits:
        raise MossaError(f"{path}: task file holds no examples")
    return splits
