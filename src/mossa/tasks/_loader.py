"""Reading task files (flan-mini JSONL format) with errors that name file, line and field.

Also the one rule that gives a split to examples that come without one (custom task files,
Super-NaturalInstructions instances): `assign_splits`.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

from mossa.errors import MossaError
from mossa.tasks._spec import Example

SPLITS = ("train", "validation", "test")
TEST_FRACTION = 0.2
SPLIT_RULE = "sha256-v1"  # names the rule below; part of the fingerprint of every task that uses it
_SALT = b"mossa-split-v1:"
FIELD_NAME = re.compile(r"[^\W\d][\w\- ]*")  # usable as a str.format field name in the generic template


def _fail(where: Path | str, line: int, msg: str) -> MossaError:
    return MossaError(f"{where}:{line}: {msg}")


def split_score(key: str) -> float:
    """A number in [0, 1) fixed by `key` alone (SHA-256), the same on every run and machine."""
    return int.from_bytes(hashlib.sha256(_SALT + key.encode("utf-8")).digest()[:8], "big") / 2.0 ** 64


def assign_splits(keys: list[str], test_fraction: float = TEST_FRACTION) -> list[str]:
    """'train' or 'test' for each key: 'test' where `split_score(key) < test_fraction`.

    The choice depends on the key only, so adding, removing or reordering examples never moves
    another example; equal keys share a split (no train/test leak of repeated inputs). With two
    or more distinct keys both splits are non-empty: if no key scores below the fraction, the
    lowest-scoring one goes to test (and the highest to train in the opposite case).
    """
    scores = [split_score(k) for k in keys]
    splits = ["test" if s < test_fraction else "train" for s in scores]
    if len(set(keys)) >= 2:
        if "test" not in splits:
            low = min(scores)
            splits = ["test" if s == low else sp for s, sp in zip(scores, splits, strict=True)]
        elif "train" not in splits:
            high = max(scores)
            splits = ["train" if s == high else sp for s, sp in zip(scores, splits, strict=True)]
    return splits


def split_key(row: dict) -> str:
    """What a row without a split is hashed on: its own `id` when it has one, else its input."""
    if row.get("id") is not None:
        return f"id:{row['id']}"
    return "input:" + json.dumps(row.get("input"), sort_keys=True, ensure_ascii=False)


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


def parse_row(where: Path | str, lineno: int, row: object, task: str, *, split: str | None = None) -> Example:
    """Validate one row of the flan-mini format and turn it into an `Example`.

    `options` may sit in `input` (flan-mini) or at the top level (custom files), not both.
    `split` is used when the row has none; without either the row is an error. Errors name
    `where:lineno` and the field.
    """
    if not isinstance(row, dict):
        raise _fail(where, lineno, f"expected a JSON object, got {type(row).__name__}")
    if "input" not in row:
        raise _fail(where, lineno, "field 'input' is missing; each row needs 'input' (object or string) and 'target'")
    raw = row["input"]
    if isinstance(raw, str):
        raw = {"input": raw}
    if not isinstance(raw, dict) or not raw:
        raise _fail(where, lineno, f"field 'input' must be a non-empty object or a string, got {type(raw).__name__}")
    target = row.get("target")
    if not isinstance(target, str) or not target.strip():
        raise _fail(where, lineno, f"field 'target' must be a non-empty string, got {target!r}")
    row_split = row.get("split") if row.get("split") is not None else split
    if row_split not in SPLITS:
        raise _fail(where, lineno, f"field 'split' must be one of {', '.join(SPLITS)}, got {row.get('split')!r}")
    if row.get("options") is not None and raw.get("options") is not None:
        raise _fail(where, lineno, "field 'options' is given both at the top level and in 'input'; keep one")
    label = "options" if row.get("options") is not None else "input.options"
    options = row.get("options") if row.get("options") is not None else raw.get("options")
    if options is not None:
        if not (isinstance(options, list) and len(options) >= 2 and all(isinstance(o, str) and o for o in options)):
            raise _fail(where, lineno, f"field '{label}' must be a list of at least 2 non-empty strings")
        if target not in options:
            raise _fail(where, lineno, f"field 'target' {target!r} is not one of {label} {options!r}")
    fields: dict[str, str] = {}
    for key, value in raw.items():
        if key == "options":
            continue
        if not FIELD_NAME.fullmatch(key):
            raise _fail(where, lineno, f"field 'input.{key}': name input fields with letters, digits, '_', '-' or "
                        f"spaces, starting with a letter or '_' (each name is a field of the template)")
        text = field_text(value)
        if text is None:
            raise _fail(where, lineno, f"field 'input.{key}' must be a string, a number, or a list of strings "
                        f"(or of string lists, e.g. triples), got {type(value).__name__}")
        fields[key] = text
    if not fields:
        raise _fail(where, lineno, "field 'input' holds only 'options'; give at least one input field to show")
    own_id = row.get("id")
    if own_id is not None and (isinstance(own_id, bool) or not isinstance(own_id, (str, int))):
        raise _fail(where, lineno, f"field 'id' must be a string or integer, got {type(own_id).__name__}")
    ex_id = f"{task}:{own_id}" if own_id is not None else f"{task}:{row_split}:{lineno}"
    return Example(id=ex_id, fields=fields, target=target, split=row_split,
                   options=tuple(options) if options is not None else None)


def _read_rows(path: Path) -> list[tuple[int, object]]:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise MossaError(f"{path}: cannot read task file ({exc.strerror})") from None
    rows = []
    for lineno, raw_line in enumerate(data.split(b"\n"), start=1):
        if not raw_line.strip():
            continue
        try:
            text = raw_line.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise _fail(path, lineno, f"not valid UTF-8 (byte {exc.start}); re-encode the file as UTF-8") from None
        try:
            rows.append((lineno, json.loads(text)))
        except json.JSONDecodeError as exc:
            where = exc.msg if exc.msg.endswith(" at") else f"{exc.msg} at"  # "Unterminated string starting at"
            raise _fail(path, lineno, f"not valid JSON ({where} column {exc.colno})") from None
        except RecursionError:
            raise _fail(path, lineno, "not valid JSON here (nested too deeply)") from None
        except ValueError as exc:  # e.g. an integer beyond Python's digit limit
            raise _fail(path, lineno, f"not valid JSON here ({exc})") from None
    return rows


def read_task_file(path: Path, task: str, *, assign_missing_split: bool = False) -> dict[str, list[Example]]:
    """Read and validate one `<task>.jsonl`, grouped by split.

    With `assign_missing_split`, rows without a `split` get one from `assign_splits` over
    their `split_key`s (about 20% test); otherwise a missing split is an error.

    Raises
    ------
    MossaError
        On unreadable files, non-UTF-8 bytes, malformed JSON, missing or mistyped fields, a
        target outside its options, or duplicate example ids; the message names file and line.
    """
    path = Path(path)
    rows = _read_rows(path)
    given: dict[int, str] = {}
    if assign_missing_split:
        unsplit = [(n, r) for n, r in rows if isinstance(r, dict) and r.get("split") is None]
        given = dict(zip([n for n, _ in unsplit], assign_splits([split_key(r) for _, r in unsplit]), strict=True))
    splits: dict[str, list[Example]] = {}
    seen: dict[str, int] = {}
    for lineno, row in rows:
        ex = parse_row(path, lineno, row, task, split=given.get(lineno))
        if ex.id in seen:
            raise _fail(path, lineno, f"duplicate example id {ex.id!r} (first at line {seen[ex.id]})")
        seen[ex.id] = lineno
        splits.setdefault(ex.split, []).append(ex)
    if not splits:
        raise MossaError(f"{path}: task file holds no examples")
    return splits
