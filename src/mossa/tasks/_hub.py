"""The Flan 2021 collection from public data hubs, through the `datasets` library.

`flan2021.yaml` (beside this module; its header documents the keys) says, per task, which hub
data set, configuration and splits hold it and how a row becomes a flan-mini format row; that
row then goes through the same validation as a task file row (`parse_row`), and the task
through the same template check and fingerprint (`build_task`). Downloads land in the
`datasets` cache, or under `$MOSSA_CACHE/datasets` when MOSSA_CACHE is set, and are reused
offline. At most `MAX_ROWS` rows of each split are read (the paper tests on <= 10,000 test
examples and caps training at 50k per cluster): a split no larger than the cap is read whole,
a larger one as a seeded random sample of `MAX_ROWS[split]` rows drawn without replacement and
read in hub order (`_row_indices`), never its head, because some splits are sorted by label
(imdb's test split, sentiment140's train split). The sample depends only on `SAMPLE_SEED`, the
task name, the split and the split's size, and an example's id keeps its row index in the hub
split, so an example's id does not depend on which other rows were drawn.

Each entry also states its hub splits' sizes (`rows`), so that a study's cost can be estimated
offline (`stated_rows`: the rows read under the caps); they are not part of a task's fingerprint.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import zlib
from dataclasses import dataclass, field
from functools import lru_cache
from importlib.resources import files
from pathlib import Path

import numpy as np
import yaml

from mossa.cache import cache_root
from mossa.errors import MossaError
from mossa.tasks._loader import parse_row
from mossa.tasks._registry import build_task
from mossa.tasks._spec import Example, TaskSpec

COLLECTION = "flan2021"
TABLE_FILE = "flan2021.yaml"
CLUSTERS = (
    "Natural language inference", "Reading comprehension", "Closed-book QA", "Commonsense reasoning",
    "Coreference", "Sentiment", "Paraphrase detection", "Struct-to-text", "Translation", "Summarization",
    "Reading comprehension with commonsense", "Misc",
)
MAX_ROWS = {"train": 50_000, "test": 10_000}
# Rows beyond the cap: a seeded sample (see `_row_indices`); part of every hub task's fingerprint.
SAMPLE_RULE = "sorted-random-sample"
SAMPLE_SEED = 2021
CONVERT_VERSION = 2  # 2: capped splits are sampled, not read from the head
_PUNCT = re.compile(r"[^\w\s]")
TRANSFORMS = {
    "no_punct": lambda text: _PUNCT.sub("", text),
    "no_space": lambda text: "".join(text.split()),
    "lower": str.lower,
}
_ENTRY_KEYS = {"cluster", "flan2021", "dataset", "config", "revision", "data_dir", "train", "test", "rows",
               "rows_note", "fields", "target", "options", "unavailable"}
# Stated facts about the hub data, not how a row is read: left out of a task's fingerprint.
_INFO_KEYS = ("rows", "rows_note")
_FIELD_OPS = {"const", "join", "sep", "path", "before", "after", "transform"}
_TARGET_KEYS = {"path": {"path", "default", "join", "skip_unchanged"}, "label": {"label", "offset", "map"},
                "key": {"key", "keys"}}
_MISSING = object()


@dataclass(frozen=True)
class HubTask:
    """One entry of the hub table: a task, its cluster, and the raw entry that defines it."""

    name: str
    cluster: str
    origin: str
    entry: dict = field(repr=False, compare=False)

    @property
    def flan2021(self) -> bool:
        return bool(self.entry.get("flan2021", True))

    @property
    def unavailable(self) -> str | None:
        return self.entry.get("unavailable")

    @property
    def dataset(self) -> str | None:
        return self.entry.get("dataset")

    @property
    def rows(self) -> dict[str, int] | None:
        """The rows the entry states its hub splits hold ({"train": n, "test": n}), or None.

        Counts before rows are skipped at load and before the `MAX_ROWS` caps: `stated_rows`
        gives the rows a task reads."""
        rows = self.entry.get("rows")
        return dict(rows) if rows is not None else None

    def describe(self) -> str:
        """The data set as people name it: `id` plus configuration or data folder and revision."""
        out = repr(self.dataset)
        extra = self.entry.get("config") or self.entry.get("data_dir")
        if extra:
            out += f" (config {extra!r}" + (f", revision {self.entry['revision']!r})" if self.entry.get("revision")
                                            else ")")
        return out


def table_path() -> Path:
    return Path(str(files("mossa.tasks").joinpath(TABLE_FILE)))


def _check_field(where: str, spec: object) -> set[str]:
    """Validate one field spec; return the source paths it reads."""
    if isinstance(spec, str) and spec:
        return {spec}
    if not isinstance(spec, dict) or not spec or not set(spec) <= _FIELD_OPS:
        raise MossaError(f"{where}: expected a column path or a mapping with keys from {sorted(_FIELD_OPS)}")
    if "const" in spec:
        if not isinstance(spec["const"], str) or len(spec) != 1:
            raise MossaError(f"{where}: {{const: text}} takes one string and nothing else")
        return set()
    if "join" in spec:
        if not (isinstance(spec["join"], list) and spec["join"] and all(isinstance(p, str) for p in spec["join"])):
            raise MossaError(f"{where}.join: expected a list of column paths")
        return set(spec["join"])
    if not isinstance(spec.get("path"), str):
        raise MossaError(f"{where}: needs 'path' (or 'const' or 'join')")
    if "transform" in spec and spec["transform"] not in TRANSFORMS:
        raise MossaError(f"{where}.transform: {spec['transform']!r} is not one of {', '.join(TRANSFORMS)}")
    return {spec["path"]}


def _check_entry(path: Path, name: str, entry: object) -> HubTask:
    where = f"{path}: tasks.{name}"
    if not isinstance(entry, dict):
        raise MossaError(f"{where}: expected a mapping")
    unknown = set(entry) - _ENTRY_KEYS
    if unknown:
        raise MossaError(f"{where}: unknown key {min(unknown)!r} (keys: {', '.join(sorted(_ENTRY_KEYS))})")
    if entry.get("cluster") not in CLUSTERS:
        raise MossaError(f"{where}.cluster: {entry.get('cluster')!r} is not one of the 12 clusters "
                         f"({', '.join(CLUSTERS)})")
    if entry.get("unavailable") is not None and not isinstance(entry["unavailable"], str):
        raise MossaError(f"{where}.unavailable: expected the reason as text")
    rows = entry.get("rows")
    if rows is not None and not (isinstance(rows, dict) and set(rows) == set(MAX_ROWS) and all(
            isinstance(n, int) and not isinstance(n, bool) and n > 0 for n in rows.values())):
        raise MossaError(f"{where}.rows: expected {{train: n, test: n}} with positive whole numbers, got {rows!r}")
    if entry.get("rows_note") is not None and not (isinstance(entry["rows_note"], str) and entry["rows_note"]):
        raise MossaError(f"{where}.rows_note: expected a non-empty text")
    if entry.get("unavailable") and "fields" not in entry:
        return HubTask(name, entry["cluster"], where, entry)
    for key in ("dataset", "train", "test"):
        if not isinstance(entry.get(key), str) or not entry[key]:
            raise MossaError(f"{where}.{key}: expected a non-empty string")
    for key in ("config", "revision", "data_dir"):
        if entry.get(key) is not None and not isinstance(entry[key], str):
            raise MossaError(f"{where}.{key}: expected a string")
    fields = entry.get("fields")
    if not isinstance(fields, dict) or not fields:
        raise MossaError(f"{where}.fields: expected a mapping of our field name -> column path or spec")
    for fname, spec in fields.items():
        if fname == "options":
            raise MossaError(f"{where}.fields.options: options are given by the entry's 'options' key")
        _check_field(f"{where}.fields.{fname}", spec)
    target = entry.get("target")
    kind = next((k for k in _TARGET_KEYS if isinstance(target, dict) and k in target), None)
    if kind is None or not set(target) <= _TARGET_KEYS[kind]:
        raise MossaError(f"{where}.target: expected {{path: ...}}, {{label: ...}} or {{key: ..., keys: ...}}")
    options = entry.get("options")
    if kind in ("label", "key") and options is None:
        raise MossaError(f"{where}.options: a {kind} target needs options")
    if options is not None:
        static = isinstance(options, list) and len(options) >= 2 and all(isinstance(o, str) and o for o in options)
        per_row = isinstance(options, dict) and (
            (set(options) == {"path"} and isinstance(options["path"], str))
            or (set(options) == {"paths"} and isinstance(options["paths"], list) and len(options["paths"]) >= 2))
        if not (static or per_row):
            raise MossaError(f"{where}.options: expected a list of >= 2 strings, {{path: p}} or {{paths: [p, ...]}}")
        if kind == "label" and "map" in target and (
                not isinstance(options, list) or not set(target["map"].values()) <= set(options)):
            raise MossaError(f"{where}.target.map: its values must be among the entry's listed options")
    return HubTask(name, entry["cluster"], where, entry)


@lru_cache(maxsize=1)
def hub_table() -> dict[str, HubTask]:
    """The shipped hub table, by task name, validated."""
    path = table_path()
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise MossaError(f"{path}: not valid YAML ({exc})") from None
    if not isinstance(data, dict) or not isinstance(data.get("tasks"), dict):
        raise MossaError(f"{path}: expected a mapping with a 'tasks' mapping of task name -> entry")
    return {name: _check_entry(path, name, entry) for name, entry in data["tasks"].items()}


def _get(row: dict, path: str) -> object:
    value: object = row
    for part in path.split("."):
        if isinstance(value, dict) and part in value:
            value = value[part]
        elif isinstance(value, (list, tuple)) and re.fullmatch(r"-?\d+", part) \
                and -len(value) <= int(part) < len(value):
            value = value[int(part)]
        else:
            return _MISSING
    return value


def _text(value: object) -> object:
    if value is _MISSING or value is None:
        return ""
    if isinstance(value, str):
        return value.strip()
    if isinstance(value, (list, tuple)):
        return [_text(v) for v in value]
    return value


def _field(spec: object, row: dict) -> object:
    if isinstance(spec, str):
        return _text(_get(row, spec))
    if "const" in spec:
        return spec["const"]
    if "join" in spec:
        parts = [_text(_get(row, p)) for p in spec["join"]]
        return spec.get("sep", " ").join(str(p) for p in parts if p not in ("", []))
    value = _text(_get(row, spec["path"]))
    if isinstance(value, str):
        if "before" in spec:
            value = value.split(spec["before"], 1)[0].strip() if spec["before"] in value else ""
        if "after" in spec:
            value = value.split(spec["after"], 1)[-1].strip()
        if "transform" in spec:
            value = TRANSFORMS[spec["transform"]](value)
    return value


def _index(value: object) -> int | None:
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return round(value)
    if isinstance(value, str) and re.fullmatch(r"-?\d+", value.strip()):
        return int(value)
    return None


def _options(spec: object, row: dict) -> list[str] | None:
    if spec is None:
        return None
    if isinstance(spec, list):
        return list(spec)
    values = _text(_get(row, spec["path"])) if "path" in spec else [_text(_get(row, p)) for p in spec["paths"]]
    return [str(v) for v in values] if isinstance(values, list) else []


def _target(spec: dict, row: dict, options: list[str] | None) -> str | None:
    if "path" in spec:
        value = _text(_get(row, spec["path"]))
        if isinstance(value, list):
            value = spec["join"].join(str(v) for v in value if v) if "join" in spec else next(
                (str(v) for v in value if v not in ("", [])), "")
        value = str(value) if value != "" else spec.get("default", "")
        return value or None
    if "key" in spec:
        key, keys = _get(row, spec["key"]), _get(row, spec["keys"])
        if not isinstance(keys, list) or key not in keys or options is None or keys.index(key) >= len(options):
            return None
        return options[keys.index(key)]
    value = _get(row, spec["label"])
    if "map" in spec:
        mapping = spec["map"]
        hit = mapping.get(value, mapping.get(_index(value), _MISSING)) if value is not _MISSING else _MISSING
        return None if hit is _MISSING else str(hit)
    index = _index(value)
    if index is None or options is None:
        return None
    index -= spec.get("offset", 0)
    return options[index] if 0 <= index < len(options) else None


def convert_row(task: HubTask, row: dict) -> dict | None:
    """One hub row as a flan-mini format row ({"input": {...}, "target": ...}), or None for a
    row that has no usable answer (hidden or missing label, empty target, unchanged text)."""
    entry = task.entry
    fields = {name: _field(spec, row) for name, spec in entry["fields"].items()}
    fields = {name: "" if value == [] else value for name, value in fields.items()}
    options = _options(entry.get("options"), row)
    target = _target(entry["target"], row, options)
    if target is None or (entry["target"].get("skip_unchanged") and target in fields.values()):
        return None
    if options is not None:
        fields["options"] = list(dict.fromkeys(o for o in options if o))
        if len(fields["options"]) < 2:
            return None
    return {"input": fields, "target": target}


def _offline_flag() -> str | None:
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        if os.environ.get(var, "").strip().upper() in {"1", "ON", "YES", "TRUE"}:
            return var
    return None


def _load_split(task: HubTask, split: str):
    """The hub split behind our `split` ('train' or 'test'), as a `datasets.Dataset`."""
    need = f"{COLLECTION} task {task.name!r} needs the hub dataset {task.describe()}"
    try:
        import datasets
    except ImportError:
        raise MossaError(f"{need} and the `datasets` package, which is not installed: pip install datasets, "
                         f"or use a local task folder with --tasks-dir") from None
    entry = task.entry
    kwargs = {"split": entry[split]}
    for key, arg in (("config", "name"), ("revision", "revision"), ("data_dir", "data_dir")):
        if entry.get(key):
            kwargs[arg] = entry[key]
    if os.environ.get("MOSSA_CACHE"):
        kwargs["cache_dir"] = str(cache_root() / "datasets")
    try:
        data = datasets.load_dataset(entry["dataset"], **kwargs)
    except Exception as exc:  # noqa: BLE001 - any failure to fetch hub data is the user's to fix
        flag = _offline_flag()
        why = (f"{flag} is set and it is not in the cache" if flag else
               f"it could not be fetched ({type(exc).__name__}: {(str(exc).strip().splitlines() or [''])[0][:200]})")
        raise MossaError(f"{need}: {why}; go online, or use a local task folder with --tasks-dir") from None
    if not isinstance(data, datasets.Dataset):
        data = data[entry[split]]
    return data


def _row_indices(name: str, split: str, size: int) -> list[int] | None:
    """The hub row indices to read from a split of `size` rows: None (all of them, in order)
    when it holds no more than `MAX_ROWS[split]`, else a sample of that many drawn without
    replacement by a generator seeded from `SAMPLE_SEED`, the task name and the split, sorted."""
    cap = MAX_ROWS[split]
    if size <= cap:
        return None
    rng = np.random.default_rng([SAMPLE_SEED, zlib.crc32(name.encode()), zlib.crc32(split.encode())])
    return sorted(int(i) for i in rng.choice(size, size=cap, replace=False))


def _rows(data, name: str, split: str):
    """(hub row index, row) for the rows of `data` that a task reads (see `_row_indices`)."""
    indices = _row_indices(name, split, len(data))
    if indices is None:
        return enumerate(data)
    rows = data.select(indices) if hasattr(data, "select") else (data[i] for i in indices)
    return zip(indices, rows)


def load_hub_task(task: HubTask) -> TaskSpec:
    """Download (or read from the cache), convert, validate and fingerprint one hub task.

    The fingerprint covers the table entry and the converted examples themselves, so it is the
    same on every machine that gets the same data, and changes when the hub data changes.

    Raises
    ------
    MossaError
        One line, when the task cannot be downloaded (offline, no `datasets`, manual data) or a
        converted row is invalid.
    """
    if task.unavailable:
        raise MossaError(f"{COLLECTION} task {task.name!r} cannot be downloaded: {' '.join(task.unavailable.split())}")
    entry = {key: value for key, value in task.entry.items() if key not in _INFO_KEYS}
    digest = hashlib.sha256(json.dumps({"convert": CONVERT_VERSION, "entry": entry, "sample": {
        "rule": SAMPLE_RULE, "seed": SAMPLE_SEED, "max_rows": MAX_ROWS}}, sort_keys=True).encode())
    splits: dict[str, list[Example]] = {}
    path = table_path()
    for split in ("train", "test"):
        data = _load_split(task, split)
        files_ = getattr(data, "cache_files", None) or []
        if split == "train" and files_:
            path = Path(files_[0]["filename"])
        where = f"{task.dataset}[{task.entry[split]}]"
        missing = source_columns(task) - set(getattr(data, "column_names", None) or [])
        if missing:
            raise MossaError(f"{task.origin}: column {min(missing)!r} is not in {where} of the hub dataset "
                             f"{task.describe()} (columns: {', '.join(data.column_names)})")
        examples = []
        for i, row in _rows(data, task.name, split):
            converted = convert_row(task, row)
            if converted is not None:
                ex = parse_row(where, i, {**converted, "split": split}, task.name)
                examples.append(ex)
                digest.update(json.dumps([ex.id, ex.fields, ex.target, ex.options], ensure_ascii=False).encode())
        if not examples:
            raise MossaError(f"{COLLECTION} task {task.name!r}: no usable rows in {where} of the hub dataset "
                             f"{task.describe()} (labels hidden, or the table entry does not match its columns)")
        splits[split] = examples
    return build_task(task.name, task.cluster, path, splits, digest,
                      locate=lambda ex: f"{task.dataset}: row {ex.id.rsplit(':', 1)[-1]}")


def source_columns(task: HubTask) -> set[str]:
    """The hub columns (first segment of every path) that the entry reads."""
    entry = task.entry
    paths: set[str] = set()
    for name, spec in entry.get("fields", {}).items():
        paths |= _check_field(name, spec)
    target = entry.get("target", {})
    paths |= {target[k] for k in ("path", "label", "key", "keys") if k in target}
    options = entry.get("options")
    if isinstance(options, dict):
        paths |= {options["path"]} if "path" in options else set(options["paths"])
    return {p.split(".", 1)[0] for p in paths}


def stated_rows(task: HubTask) -> dict[str, int]:
    """The rows of each split that `load_hub_task` reads, by the table's stated sizes:
    {split: min(stated rows, MAX_ROWS[split])}, counted before unusable rows are skipped.
    Works offline; a one-line MossaError when the entry states no sizes."""
    if task.rows is None:
        raise MossaError(f"{task.origin}: states no rows, so its size cannot be estimated offline")
    return {split: min(task.rows[split], MAX_ROWS[split]) for split in MAX_ROWS}


def table_template_fields(task: HubTask) -> set[str]:
    """The input fields a hub task's rows carry, plus 'options' for classification tasks."""
    names = set(task.entry.get("fields", {}))
    return names | ({"options"} if task.entry.get("options") is not None else set())


__all__ = ["CLUSTERS", "COLLECTION", "HubTask", "convert_row", "hub_table", "load_hub_task", "source_columns",
           "stated_rows"]
