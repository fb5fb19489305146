"""The study dir: atomic writes, unit markers, activation files.

Stage: store (every stage reads and writes the study dir only through here).

Layout::

    study.json                          resolved config, versions, fingerprints, stage timings
    adapters/<unit>/                    peft adapter; done.json written last
    activations/<model>/<task>/acts.npy [layers+1, n, d] float32, rows in the order of
                                        meta.json's ids; meta.json also holds each example's
                                        test loss, the input fingerprint and a content hash.
                                        Half-size stores (`activation_dtype`): float16 ("<f2")
                                        or bfloat16 bits ("<u2") of each state less its layer's
                                        centre.npy [layers+1, d] float32, float16 with scales.npy
                                        [layers+1, n] int16 exponents; see `ACTIVATION_DTYPES`
    results/                            similarity.parquet|csv, controls.csv
    figures/                            cka_by_layer.png

Every file and folder is written under a temporary name (`is_temporary`) and renamed into place,
so a killed run never leaves a half-written artifact under its final name; the next run removes
what a killed one left (`StudyDir.sweep_temporaries`). A write that fails for lack of space or
permission raises `StorageError`, one line naming the path and the reason.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mossa.errors import MossaError, StorageError

MARKER = "done.json"
ACTS_FILE, META_FILE, SCALES_FILE, CENTRE_FILE = "acts.npy", "meta.json", "scales.npy", "centre.npy"

# How a (model, task)'s states are stored: the .npy descr of acts.npy for each `activation_dtype`. The descr
# alone says the encoding (and is covered by the content hash with the rest of the header):
#   float32  "<f4"  the states as computed in float32 (studies before half-size stores were this only).
#   float16  "<f2"  x - c[layer], each (layer, example) row of d values times 2**k, rounded to nearest even:
#                   k an int16 in scales.npy chosen so the row's largest finite |x - c| lands in [2**14, 2**15)
#                   (power-of-two scaling is exact: no row overflows float16's 65504, none underflows), so the
#                   error is at most 2**-11 of that largest value. All-zero (or all non-finite) rows get k = 0.
#   bfloat16 "<u2"  the upper 16 bits of the float32 x - c[layer], rounded to nearest even (float32's range, 8
#                   significant bits: error at most 2**-8 of each |x - c|).
# c (centre.npy, [n_states, d] float32) is each layer's coordinate-wise median of the finite rows among the
# first 64 of the first block written. Last-prompt-token states share a large common part (the same last
# token: on the demo, the states' mean square is 200-3,300 times their variance in layers 1-11), which the
# measures centre away; encoded whole, 16 bits would spend their precision on it (rms error up to 2.1% of the
# spread across examples in float16, 15% in bfloat16); less c, at most 0.06% and 0.44% (docs/analyses.md, "The
# half-size activation store"). inf and NaN stay inf and NaN. Reads always decode to float32
# (`ActivationFile.read`); every statistic then accumulates in float64.
ACTIVATION_DTYPES = {"float32": "<f4", "float16": "<f2", "bfloat16": "<u2"}
_CENTRE_ROWS = 64
_FP16_TOP = 15  # a scaled row's largest |x| lies in [2**(_FP16_TOP - 1), 2**_FP16_TOP)


# Every temporary file or folder in a study dir is named by `_temp_file`/`_temp_dir`:
# '.<final name>.<8 random characters of tempfile's alphabet>.tmp'.
_TEMPORARY = re.compile(r"^\..+\.[a-z0-9_]{8}\.tmp$")

# errno -> what the user can do about it; any other OSError is not a storage problem and propagates.
_STORAGE_FIXES = {
    errno.ENOSPC: "free some space and rerun the same command (finished units are kept)",
    errno.EDQUOT: "free some space or raise the quota and rerun the same command (finished units are kept)",
    errno.EROFS: "choose a writable --out",
    errno.EACCES: "make it writable or choose another --out",
    errno.EPERM: "make it writable or choose another --out",
}


def _side_files(dtype: str, shape: tuple[int, int, int]) -> list[tuple[str, str, tuple[int, ...]]]:
    """(file name, .npy descr, shape) of each file a `dtype` store keeps beside acts.npy, in hash order."""
    n_states, n, d = shape
    return ([(SCALES_FILE, "<i2", (n_states, n))] if dtype == "float16" else []) + (
        [(CENTRE_FILE, "<f4", (n_states, d))] if dtype != "float32" else [])


def check_activation_dtype(dtype: str) -> str:
    """`dtype` when it is one of `ACTIVATION_DTYPES`, else ValueError naming them."""
    if dtype not in ACTIVATION_DTYPES:
        raise ValueError(f"activation dtype {dtype!r} is not one of {', '.join(ACTIVATION_DTYPES)}")
    return dtype


def _npy_header(descr: str, shape: tuple[int, ...]) -> bytes:
    """The .npy (version 1.0) header the writer puts before an array of this descr and shape."""
    import io

    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": descr, "fortran_order": False,
                                               "shape": tuple(int(x) for x in shape)})
    return buf.getvalue()


def activation_bytes(n_states: int, n: int, hidden: int, dtype: str) -> int:
    """The exact size in bytes of the array files the writer writes for one (model, task) of `n` examples,
    `n_states` states of `hidden` values each, stored as `dtype` (`ACTIVATION_DTYPES`): acts.npy with its
    header, plus for a half-size store centre.npy and (float16) scales.npy with theirs (meta.json, a few
    bytes per example, is not counted)."""
    descr = ACTIVATION_DTYPES[check_activation_dtype(dtype)]
    shape = (int(n_states), int(n), int(hidden))
    return sum(len(_npy_header(descr, shape)) + np.dtype(descr).itemsize * int(np.prod(shape))
               for _, descr, shape in [(ACTS_FILE, descr, shape), *_side_files(dtype, shape)])


def encode_float16(states: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """float32 values [..., d] as (float16 values [..., d], int16 exponents k [...]): each row of d values
    times 2**k, k such that the row's largest finite |x| lands in [2**14, 2**15) (0 for a row with no
    nonzero finite value). Decode with `decode_float16`. (The store encodes each state less its layer's
    centre: `ACTIVATION_DTYPES`.)"""
    states = np.asarray(states, dtype=np.float32)
    finite = np.isfinite(states)
    top = np.where(finite, np.abs(states), np.float32(0)).max(axis=-1, initial=np.float32(0))
    _, exp = np.frexp(top)  # top = m * 2**exp, m in [0.5, 1): top in [2**(exp-1), 2**exp)
    k = np.where(top > 0, _FP16_TOP - exp, 0).astype(np.int16)
    with np.errstate(over="ignore", under="ignore"):
        values = np.ldexp(states, k[..., None].astype(np.int32)).astype(np.float16)
    return values, k


def decode_float16(values: np.ndarray, k: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """float32 states from `encode_float16`'s values and exponents (into `out` when given)."""
    out = np.empty(values.shape, dtype=np.float32) if out is None else out
    out[...] = values
    with np.errstate(over="ignore", under="ignore"):
        np.ldexp(out, -np.asarray(k, dtype=np.int32)[..., None], out=out)
    return out


def encode_bfloat16(states: np.ndarray) -> np.ndarray:
    """float32 states as bfloat16 bits (uint16), rounded to nearest even; NaN stays NaN (a quiet NaN)."""
    bits = np.ascontiguousarray(states, dtype=np.float32).view(np.uint32)
    rounded = ((bits + np.uint32(0x7FFF) + ((bits >> np.uint32(16)) & np.uint32(1))) >> np.uint32(16))
    rounded = rounded.astype(np.uint16)
    nan = np.isnan(states)
    if nan.any():
        rounded[nan] = ((bits[nan] >> np.uint32(16)) | np.uint32(0x0040)).astype(np.uint16)
    return rounded


def centre_of(states: np.ndarray) -> np.ndarray:
    """Each layer's centre [n_states, d] float32 from a block [n_states, b, d]: the coordinate-wise median of
    the finite rows among its first 64 (0 for a layer without one)."""
    block = np.asarray(states, dtype=np.float32)[:, :_CENTRE_ROWS]
    out = np.zeros((block.shape[0], block.shape[2]), dtype=np.float32)
    for layer, rows in enumerate(block):
        finite = rows[np.isfinite(rows).all(axis=1)]
        if len(finite):
            out[layer] = np.median(finite, axis=0)
    return out


def decode_bfloat16(bits: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """float32 states from bfloat16 bits (uint16) (into `out` when given)."""
    wide = np.asarray(bits, dtype=np.uint16).astype(np.uint32) << np.uint32(16)
    if out is None:
        return wide.view(np.float32)
    out[...] = wide.view(np.float32)
    return out


def is_temporary(name: str) -> bool:
    """True for the name of a temporary file or folder that this module creates."""
    return bool(_TEMPORARY.match(name))


def _storage_errno(exc: BaseException) -> int | None:
    """The errno of a failed write for lack of space or permission, else None.

    safetensors (peft's adapter writer) raises its own error type, whose message ends with the OS
    error as '(os error N)'.
    """
    if isinstance(exc, OSError):
        return exc.errno if exc.errno in _STORAGE_FIXES else None
    if type(exc).__module__.startswith("safetensors"):
        found = re.search(r"\(os error (\d+)\)", str(exc))
        if found and int(found.group(1)) in _STORAGE_FIXES:
            return int(found.group(1))
    return None


@contextlib.contextmanager
def _storage_errors(path: Path):
    """Turn a failed write for lack of space or permission in the block into a `StorageError` naming `path`."""
    try:
        yield
    except StorageError:
        raise
    except Exception as exc:
        code = _storage_errno(exc)
        if code is None:
            raise
        raise StorageError(f"{path}: cannot write: {os.strerror(code)} ({errno.errorcode[code]}); "
                           f"{_STORAGE_FIXES[code]}") from None


def _temp_file(final: Path) -> Path:
    fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent)
    os.close(fd)
    return Path(tmp)


def _temp_dir(final: Path) -> Path:
    return Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent))


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _publish(tmp: Path, final: Path, mode: int) -> None:
    """Give a temp file/folder normal permissions (mkstemp makes them private), rename into place."""
    os.chmod(tmp, mode & ~_umask())
    os.replace(tmp, final)


def _publish_dir(tmp: Path, final: Path) -> None:
    """Put a finished temp folder in place of `final` by renames only: the old folder is first renamed
    to a temporary name, so a kill at any moment leaves under the final name either the old folder or
    the new one, each complete, or nothing; never a folder half deleted."""
    old = None
    if final.exists():
        old = _temp_dir(final)
        os.replace(final, old)  # a folder may replace an empty folder
    _publish(tmp, final, 0o777)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def atomic_path(path: Path):
    """Yield a temporary path beside `path`; rename it into place when the block succeeds.

    Raises
    ------
    StorageError
        When creating, writing (in the block) or renaming fails for lack of space or permission.
    """
    path = Path(path)
    with _storage_errors(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = _temp_file(path)
        try:
            yield tmp
            _publish(tmp, path, 0o666)
        finally:
            tmp.unlink(missing_ok=True)


def write_json(path: Path, data: object) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, default=str) + "\n", encoding="utf-8")


def read_json(path: Path) -> dict:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise MossaError(f"{path}: cannot read ({exc})") from None


def read_prompt_templates(path: Path) -> dict[str, dict[str, int]]:
    """The template index each test prompt was rendered with, from a study's prompts.jsonl:
    ``{task: {id: template}}``; empty when the study has no prompts file (states written by hand).

    Raises
    ------
    MossaError
        For a line that is not a JSON object with ``task``, ``id`` and an integer ``template``, naming file
        and line.
    """
    path = Path(path)
    if not path.is_file():
        return {}
    out: dict[str, dict[str, int]] = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            out.setdefault(str(row["task"]), {})[str(row["id"])] = int(row["template"])
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise MossaError(f"{path}:{number}: expected a JSON object with task, id and an integer template "
                             f"({type(exc).__name__}: {exc}); fix: rewrite the file with `mossa run`") from None
    return out


@dataclass
class Activations:
    """Last-prompt-token states of one (model, task): acts [layers+1, n, d] with ids [n]."""

    ids: list[str]
    acts: np.ndarray
    target_nll: np.ndarray
    target_tokens: np.ndarray
    meta: dict
    evaluation: dict | None = None

    @property
    def shape(self) -> tuple[int, int, int]:
        return self.acts.shape

    def finite_rows(self) -> np.ndarray:
        return np.isfinite(self.acts).all(axis=(0, 2))

    def prefetch(self, rows, layers) -> None:
        """Nothing to do: the states are in memory (the same interface as `ActivationFile`)."""

    def view(self, rows, layer: int) -> np.ndarray | None:
        """One layer's rows without a copy when they are one ascending run of float32, else None."""
        rows = np.asarray(rows, dtype=np.int64)
        if not len(rows) or np.any(np.diff(rows) != 1) or self.acts.dtype != np.float32:
            return None
        return self.acts[int(layer), rows[0]:rows[-1] + 1]

    def read(self, rows=None, layers=None, *, out: np.ndarray | None = None) -> np.ndarray:
        """The same reads as `ActivationFile.read`, from memory (`out` is not needed here)."""
        out = self.acts if layers is None else self.acts[list(layers)]
        return np.ascontiguousarray(out if rows is None else out[:, np.asarray(rows, dtype=np.int64)],
                                    dtype=np.float32)


class _StudyFolder:
    """One study folder itself: its paths, its creation, its lock and the sweep of what killed runs left."""

    def __init__(self, root: Path):
        self.root = Path(root)

    def create(self) -> None:
        """Make the folder, refusing a path that exists as a file or cannot be written."""
        if self.root.exists() and not self.root.is_dir():
            raise MossaError(f"{self.root}: --out exists and is not a folder")
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise MossaError(f"{self.root}: cannot create the study folder ({exc.strerror})") from None
        if not os.access(self.root, os.W_OK):
            raise MossaError(f"{self.root}: study folder is not writable; choose another --out")

    def path(self, *parts: str) -> Path:
        return self.root.joinpath(*parts)

    @contextlib.contextmanager
    def lock(self, *, wait: bool = False):
        """Hold the study's lock for the block: a second run on the same folder fails (or waits).

        The lock is an OS file lock (fcntl/flock through `filelock`), which the kernel releases
        when its process dies, so a killed run never leaves a stale lock behind; the holder's pid
        is written beside it for the message.
        """
        from filelock import FileLock, Timeout

        lock = FileLock(str(self.path(".mossa.lock")), timeout=-1 if wait else 0)
        holder = self.path(".mossa.lock.holder")
        try:
            lock.acquire()
        except Timeout:
            who = holder.read_text(encoding="utf-8").strip() if holder.exists() else "another process"
            raise MossaError(f"{self.root}: another mossa run is using this study folder ({who}); wait for it, "
                             f"pass --wait, or choose another --out") from None
        try:
            with _storage_errors(holder):
                holder.write_text(f"pid {os.getpid()} since {time.strftime('%Y-%m-%d %H:%M:%S')}", encoding="utf-8")
            yield
        finally:
            holder.unlink(missing_ok=True)
            lock.release()

    def sweep_temporaries(self) -> list[Path]:
        """Remove every temporary file and folder (`is_temporary`) under the study dir; return them.

        Only killed processes leave any: a write that fails removes its own. Call it holding the
        lock and before any unit runs: the lock keeps other runs out of this folder, and this
        run's own writers (in this process or its Ray workers) have not started yet, so nothing
        removed is in use. (A Ray worker of a killed run that outlives its driver only ever
        publishes whole units, which the fingerprints then accept or redo.) Temporaries of the
        model-conversion cache (MOSSA_CACHE, '<name>.tmp-<pid>') live outside the study dir and
        are not touched.
        """
        found = []
        for folder, dirs, files in os.walk(self.root):
            for name in [*files, *dirs]:
                if is_temporary(name):
                    found.append(Path(folder, name))
            dirs[:] = [d for d in dirs if not is_temporary(d)]
        for path in found:
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
        return found


class StudyDir(_StudyFolder):
    """Paths and atomic reads/writes inside one study folder: adapters and activation folders."""

    # adapters ---------------------------------------------------------------------------
    def adapter_dir(self, unit: str) -> Path:
        return self.path("adapters", unit)

    def unit_done(self, unit: str, inputs: str) -> dict | None:
        """The marker of a finished adapter unit whose input fingerprint matches, else None.

        An unreadable marker or weights that do not match its hash make the unit not done, so it is redone.
        """
        marker = self.adapter_dir(unit) / MARKER
        if not marker.is_file():
            return None
        try:
            data = read_json(marker)
        except MossaError:
            return None
        if not isinstance(data, dict) or data.get("inputs") != inputs:
            return None
        weights = self.adapter_dir(unit) / "adapter_model.safetensors"
        if data.get("sha256") and (not weights.is_file()
                                   or hashlib.sha256(weights.read_bytes()).hexdigest() != data["sha256"]):
            return None  # corrupted adapter: the unit is redone
        return data

    @contextlib.contextmanager
    def adapter_writer(self, unit: str):
        """Yield a temp folder to save an adapter into; it replaces the unit's folder on success.

        The block writes the marker (`MARKER`) last; the folder appears under its final name only
        whole, so a marker is never seen without the weights it names.

        Raises
        ------
        StorageError
            When a write fails for lack of space or permission (nothing is published).
        """
        final = self.adapter_dir(unit)
        with _storage_errors(final):
            final.parent.mkdir(parents=True, exist_ok=True)
            tmp = _temp_dir(final)
            try:
                yield tmp
                _publish_dir(tmp, final)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)

    # activations ------------------------------------------------------------------------
    def activation_dir(self, model: str, task: str) -> Path:
        return self.path("activations", model, task)

    def activation_file(self, model: str, task: str, *, verify: bool = True) -> "ActivationFile":
        """Open one (model, task) activation folder for chunked reads, checking its content hash.

        Raises
        ------
        MossaError
            When it is missing, unreadable, or its content does not match its hash.
        """
        folder = self.activation_dir(model, task)
        if not (folder / META_FILE).is_file():
            raise MossaError(f"{folder}: activations missing; rerun `mossa run` on this study")
        file = ActivationFile(folder)
        if verify:
            file.verify()
        return file

    def activations_done(self, model: str, task: str, inputs: str) -> bool:
        """True when the folder exists, has these input fingerprints and its content hash checks.

        A truncated, corrupted or stale folder is not done, so the unit is recomputed.
        """
        try:
            return self.activation_file(model, task).inputs == inputs
        except MossaError:
            return False

    @contextlib.contextmanager
    def activation_writer(self, model: str, task: str, *, ids: list[str], n_states: int, hidden: int,
                          inputs: str, meta: dict | None = None, dtype: str = "float32"):
        """Yield an `ActivationWriter` that streams rows to disk, stored as `dtype` (`ACTIVATION_DTYPES`);
        the folder is published on success.

        Nothing appears under the final name unless every row was written and the block
        succeeded; a failed write leaves nothing, a killed one at most a temporary folder that
        the next run's `sweep_temporaries` removes. meta.json, which holds the content hash, is
        written after the array.

        Raises
        ------
        StorageError
            When a write fails for lack of space or permission (nothing is published).
        """
        final = self.activation_dir(model, task)
        with _storage_errors(final):
            final.parent.mkdir(parents=True, exist_ok=True)
            tmp = _temp_dir(final)
            writer = None
            try:
                writer = ActivationWriter(tmp / ACTS_FILE, ids, n_states, hidden, dtype=dtype)
                yield writer
                writer.close()
                missing = int((~writer.written).sum())
                if missing:
                    raise RuntimeError(f"{final}: {missing} of {len(ids)} rows were never written")
                nll = writer.target_nll if writer.target_nll is not None else np.full(len(ids), np.nan)
                tokens = (writer.target_tokens if writer.target_tokens is not None
                          else np.zeros(len(ids), np.int64))
                started = time.time_ns()
                digest = _content_hash(tmp / ACTS_FILE, ids, nll, tokens, writer.evaluation)
                # Nothing else writes our temp folder, so the hash just taken is the file's: date the
                # file a second before it, and the stamp holds until anything writes the file again.
                for name in [ACTS_FILE, *(side for side, _, _ in _side_files(dtype, writer.shape))]:
                    os.utime(tmp / name, ns=(started - 1_000_000_000, started - 1_000_000_000))
                # A plain write: the folder is private until it is published whole.
                (tmp / META_FILE).write_text(json.dumps({
                    "ids": list(ids), "inputs": inputs, "shape": list(writer.shape),
                    "target_nll": [float(x) for x in nll], "target_tokens": [int(x) for x in tokens],
                    "nonfinite_rows": [int(i) for i in np.flatnonzero(~writer.finite)],
                    "sha256": digest, "meta": meta or {},
                    **({"dtype": dtype} if dtype != "float32" else {}),  # float32 folders as they always were
                    **({"evaluation": writer.evaluation} if writer.evaluation is not None else {})},
                    indent=2, default=str) + "\n", encoding="utf-8")
                _stamp_verified(tmp, digest, started)
                _publish_dir(tmp, final)
            finally:
                if writer is not None:
                    writer.abort()
                shutil.rmtree(tmp, ignore_errors=True)

    def write_activations(self, model: str, task: str, acts: Activations, inputs: str, *,
                          dtype: str = "float32") -> None:
        """Write in-memory activations (one block) through the streaming writer, stored as `dtype`."""
        n_states, n, hidden = acts.acts.shape
        with self.activation_writer(model, task, ids=acts.ids, n_states=n_states, hidden=hidden, inputs=inputs,
                                    meta=acts.meta, dtype=dtype) as sink:
            sink.put(np.arange(n), acts.acts)
            sink.finish(acts.target_nll, acts.target_tokens, acts.evaluation)

    def read_activations(self, model: str, task: str) -> Activations:
        """Read one (model, task) whole into memory, verifying its content hash."""
        file = self.activation_file(model, task)
        return Activations(ids=file.ids, acts=file.read(), target_nll=file.target_nll,
                           target_tokens=file.target_tokens, meta=file.meta, evaluation=file.evaluation)


def _content_hash(acts_path: Path, ids: list[str], nll: np.ndarray, tokens: np.ndarray,
                  evaluation: dict | None = None) -> str:
    """sha256 over the .npy header (which names the stored dtype), the sha256 of each layer's bytes as
    stored, the ids, the losses, the evaluation record (when there is one: folders written before it existed
    keep their hash) and, for a half-size store, each file beside acts.npy whole (the centre; the scales of
    float16): a float32 store has none, so its hash is what it always was.

    The layers are hashed by two threads at once (hashlib releases the GIL on large buffers).
    """
    from concurrent.futures import ThreadPoolExecutor

    with open(acts_path, "rb") as fh:
        version = np.lib.format.read_magic(fh)
        header = (np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0)
        shape, _, dtype = header(fh)
        offset = fh.tell()
        fh.seek(0)
        head = fh.read(offset)
    layer_bytes = dtype.itemsize * int(np.prod(shape[1:]))
    fd = os.open(acts_path, os.O_RDONLY)

    def layer(index: int) -> bytes:
        digest = hashlib.sha256()
        for start in range(0, layer_bytes, 1 << 23):
            want = min(1 << 23, layer_bytes - start)
            block = os.pread(fd, want, offset + index * layer_bytes + start)
            if len(block) != want:
                raise MossaError(f"{acts_path}: activation file ended early; rerun `mossa run` on this study")
            digest.update(block)
        return digest.digest()

    try:
        with ThreadPoolExecutor(max_workers=2) as pool:
            parts = list(pool.map(layer, range(shape[0])))
    finally:
        os.close(fd)
    digest = hashlib.sha256(head)
    for part in parts:
        digest.update(part)
    digest.update(json.dumps(list(ids)).encode())
    digest.update(np.asarray(nll, dtype=np.float64).tobytes())
    digest.update(np.asarray(tokens, dtype=np.int64).tobytes())
    if evaluation is not None:
        digest.update(json.dumps(evaluation, sort_keys=True).encode())
    stored = {np.dtype(descr): name for name, descr in ACTIVATION_DTYPES.items()}.get(dtype, "float32")
    for name, _, _ in _side_files(stored, tuple(shape)):
        side = Path(acts_path).with_name(name)
        try:
            digest.update(name.encode() + side.read_bytes())
        except OSError as exc:
            raise MossaError(f"{side}: cannot read the {stored} store's {name} ({exc.strerror}); rerun `mossa "
                             f"run` on this study") from None
    return digest.hexdigest()


VERIFIED_FILE = ".verified.json"
_RACY_NS = 50_000_000  # file timestamps come from a coarse clock (a few ms per tick)


def _file_stamp(path: Path) -> dict:
    st = os.stat(path)
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "inode": st.st_ino}


def _stamps(folder: Path) -> dict:
    """The stamp of the array file and, under their names, of the files a half-size store keeps beside it
    (a float32 folder's stamp is what it always was)."""
    stamp = _file_stamp(folder / ACTS_FILE)
    for name in (SCALES_FILE, CENTRE_FILE):
        if (folder / name).exists():
            stamp[name] = _file_stamp(folder / name)
    return stamp


def _hash_is_current(folder: Path, digest: str) -> bool:
    """True when `folder`'s array files are unchanged since a hash check that began at least one
    clock tick after their last write (git's rule against racily clean files): any later
    write gives a file a newer mtime than the stamp holds."""
    try:
        stamp = json.loads((folder / VERIFIED_FILE).read_text(encoding="utf-8"))
        current = _stamps(folder)
    except (OSError, ValueError):
        return False
    started = stamp.get("started_ns", 0)
    files = [current] + [current[name] for name in (SCALES_FILE, CENTRE_FILE) if name in current]
    return (stamp.get("sha256") == digest and all(stamp.get(k) == v for k, v in current.items())
            and all(started - f["mtime_ns"] >= _RACY_NS for f in files))


def _stamp_verified(folder: Path, digest: str, started_ns: int) -> None:
    """Record that the array files, as they are now, matched `digest` in a check begun at
    `started_ns` (best effort: a read-only study folder is just re-hashed next time)."""
    try:
        write_json(folder / VERIFIED_FILE, {**_stamps(folder), "sha256": digest, "started_ns": started_ns})
    except (OSError, MossaError):
        pass


class ActivationWriter:
    """Streams blocks of rows of a [n_states, n, d] float32 array into an .npy file, stored as `dtype`
    (`ACTIVATION_DTYPES`: a half-size store takes each layer's centre from the first block written and
    keeps it in centre.npy; float16 also streams its exponents into scales.npy).

    `put(rows, states)` hands a [n_states, b, d] block to one background thread, which encodes it and
    writes each contiguous run of rows per layer with `pwrite` (plain writes, not a memory map, so the
    written data never count against the process's memory); at most `max_pending` blocks wait,
    which bounds memory whatever n is. Rows are stored in the order of `ids`.
    """

    def __init__(self, path: Path, ids: list[str], n_states: int, hidden: int, *, dtype: str = "float32",
                 max_pending: int = 4):
        from concurrent.futures import ThreadPoolExecutor

        self.dtype = check_activation_dtype(dtype)
        self.shape = (int(n_states), len(ids), int(hidden))
        self.fds: dict[str, int] = {}
        self.offsets: dict[str, int] = {}
        try:
            for name, descr, shape in [(ACTS_FILE, ACTIVATION_DTYPES[dtype], self.shape),
                                       *_side_files(dtype, self.shape)]:
                self.fds[name], self.offsets[name] = self._create(Path(path).with_name(name), descr, shape)
        except BaseException:
            for fd in self.fds.values():
                os.close(fd)
            raise
        self.fd, self.offset = self.fds[ACTS_FILE], self.offsets[ACTS_FILE]
        self.centre: np.ndarray | None = None  # a half-size store's, from the first block written
        self.written = np.zeros(len(ids), dtype=bool)
        self.finite = np.ones(len(ids), dtype=bool)
        self.target_nll: np.ndarray | None = None
        self.target_tokens: np.ndarray | None = None
        self.evaluation: dict | None = None
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mossa-writer")
        self._pending: list = []
        self._max_pending = max_pending

    @staticmethod
    def _create(path: Path, descr: str, shape: tuple[int, ...]) -> tuple[int, int]:
        """Write the .npy header, size the file for the whole array; its write fd and the data offset."""
        head = _npy_header(descr, shape)
        with open(path, "wb") as fh:
            fh.write(head)
            fh.truncate(len(head) + np.dtype(descr).itemsize * int(np.prod(shape)))
        return os.open(path, os.O_WRONLY), len(head)

    def put(self, rows, states: np.ndarray) -> None:
        """Queue rows `rows` (indices into ids) with their states [n_states, len(rows), d]."""
        rows = np.asarray(rows, dtype=np.int64)
        states = np.ascontiguousarray(states, dtype=np.float32)
        if states.shape != (self.shape[0], len(rows), self.shape[2]):
            raise ValueError(f"block of shape {states.shape} does not fit rows {len(rows)} of {self.shape}")
        while len(self._pending) >= self._max_pending:
            self._pending.pop(0).result()
        self._pending.append(self._pool.submit(self._write, rows, states))

    def finish(self, target_nll, target_tokens, evaluation: dict | None = None) -> None:
        """Record each example's summed target NLL and number of target tokens, and the evaluation
        record of the evaluated examples (JSON-able: see `mossa.extraction`)."""
        self.target_nll = np.asarray(target_nll, dtype=np.float64)
        self.target_tokens = np.asarray(target_tokens, dtype=np.int64)
        self.evaluation = evaluation

    @staticmethod
    def _pwrite_all(fd: int, data, offset: int) -> None:
        data = memoryview(np.ascontiguousarray(data)).cast("B")
        while data:
            done = os.pwrite(fd, data, offset)
            data, offset = data[done:], offset + done

    def _write(self, rows: np.ndarray, states: np.ndarray) -> None:
        if not len(rows):
            return
        order = np.argsort(rows, kind="stable")
        rows, states = rows[order], states[:, order]
        self.finite[rows] = np.isfinite(states).all(axis=(0, 2))
        scales = None
        if self.dtype != "float32":
            if self.centre is None:
                self.centre = centre_of(states)
                self._pwrite_all(self.fds[CENTRE_FILE], self.centre, self.offsets[CENTRE_FILE])
            with np.errstate(invalid="ignore", over="ignore"):
                states = states - self.centre[:, None, :]
        if self.dtype == "float16":
            stored, scales = encode_float16(states)
        elif self.dtype == "bfloat16":
            stored = encode_bfloat16(states)
        else:
            stored = states
        cut = np.flatnonzero(np.diff(rows) != 1) + 1
        starts, ends = np.r_[0, cut], np.r_[cut, len(rows)]
        row_bytes = stored.itemsize * self.shape[2]
        for layer in range(self.shape[0]):
            for s, e in zip(starts, ends):
                at = layer * self.shape[1] + int(rows[s])
                self._pwrite_all(self.fd, stored[layer, s:e], self.offset + at * row_bytes)
                if scales is not None:
                    self._pwrite_all(self.fds[SCALES_FILE], scales[layer, s:e],
                                     self.offsets[SCALES_FILE] + at * scales.itemsize)
        self.written[rows] = True

    def close(self) -> None:
        """Wait for every queued block; re-raises a write error."""
        while self._pending:
            self._pending.pop(0).result()
        for fd in self.fds.values():
            os.fsync(fd)

    def abort(self) -> None:
        for fut in self._pending:
            fut.cancel()
        self._pool.shutdown(wait=True)
        for name, fd in list(self.fds.items()):
            os.close(fd)
            del self.fds[name]
        self.fd = -1


def _read_npy_header(path: Path) -> tuple[tuple, bool, np.dtype, int]:
    """(shape, fortran_order, dtype, data offset) of an .npy file."""
    with open(path, "rb") as fh:
        version = np.lib.format.read_magic(fh)
        header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                  else np.lib.format.read_array_header_2_0)
        shape, fortran, dtype = header(fh)
        return shape, fortran, dtype, fh.tell()


class ActivationFile:
    """One stored (model, task): ids, losses, and [n_states, n, d] states read in pieces as float32,
    whatever dtype they are stored in (`dtype`, from `ACTIVATION_DTYPES`).

    Reads use `pread` into fresh arrays (no memory map), so reading a chunk costs only that
    chunk's memory.
    """

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        info = read_json(self.folder / META_FILE)
        try:
            self.ids: list[str] = list(info["ids"])
            self.inputs: str = info["inputs"]
            self.target_nll = np.asarray(info["target_nll"], dtype=np.float64)
            self.target_tokens = np.asarray(info["target_tokens"], dtype=np.int64)
            self.meta: dict = dict(info.get("meta", {}))
            self.evaluation: dict | None = info.get("evaluation")
            self._sha256 = info["sha256"]
            self._nonfinite = np.asarray(info["nonfinite_rows"], dtype=np.int64)
            shape, fortran, dtype, self.offset = _read_npy_header(self.folder / ACTS_FILE)
        except (OSError, KeyError, TypeError, ValueError) as exc:
            raise MossaError(f"{self.folder}: unreadable activation folder ({exc}); delete it and rerun") from None
        stored = {np.dtype(descr): name for name, descr in ACTIVATION_DTYPES.items()}
        self.dtype: str = stored.get(dtype, "")
        if (fortran or not self.dtype or len(shape) != 3 or shape[1] != len(self.ids)
                or info.get("dtype", "float32") != self.dtype):
            raise MossaError(f"{self.folder}: activation file has shape {shape} and dtype {dtype} (meta.json says "
                             f"{info.get('dtype', 'float32')}), expected [layers+1, {len(self.ids)}, d] of "
                             f"{', '.join(ACTIVATION_DTYPES)}; delete it and rerun")
        self.itemsize = dtype.itemsize
        size = (self.folder / ACTS_FILE).stat().st_size
        if size != self.offset + self.itemsize * int(np.prod(shape)):
            raise MossaError(f"{self.folder}: activation file is truncated ({size} bytes); rerun `mossa run` on "
                             f"this study to recompute it")
        self.shape: tuple[int, int, int] = tuple(int(x) for x in shape)
        self._side: dict[str, np.ndarray] = {}
        self._side_offsets = {name: self._check_side(name, descr, shape)
                              for name, descr, shape in _side_files(self.dtype, self.shape)}

    def _check_side(self, name: str, descr: str, shape: tuple[int, ...]) -> int:
        """The data offset of a file beside acts.npy, after checking its header and size."""
        path = self.folder / name
        try:
            found, fortran, dtype, offset = _read_npy_header(path)
            size = path.stat().st_size
        except (OSError, ValueError) as exc:
            raise MossaError(f"{path}: the {self.dtype} store's {name} is missing or unreadable ({exc}); rerun "
                             f"`mossa run` on this study to recompute it") from None
        if fortran or dtype != np.dtype(descr) or tuple(found) != tuple(shape):
            raise MossaError(f"{path}: shape {found} and dtype {dtype}, expected {list(shape)} {np.dtype(descr)}; "
                             f"rerun `mossa run` on this study to recompute it")
        if size != offset + np.dtype(descr).itemsize * int(np.prod(shape)):
            raise MossaError(f"{path}: file is truncated ({size} bytes); rerun `mossa run` on this study to "
                             f"recompute it")
        return offset

    def _side_array(self, name: str) -> np.ndarray:
        """A file beside acts.npy, read once and kept (a few bytes per row or per feature)."""
        if name not in self._side:
            descr, shape = next((d, s) for n, d, s in _side_files(self.dtype, self.shape) if n == name)
            with open(self.folder / name, "rb") as fh:
                fh.seek(self._side_offsets[name])
                self._side[name] = np.frombuffer(fh.read(), dtype=descr).reshape(shape)
        return self._side[name]

    def scales(self) -> np.ndarray:
        """The float16 store's exponents k [n_states, n] int16 (stored rows are (x - centre) * 2**k)."""
        return self._side_array(SCALES_FILE)

    def centre(self) -> np.ndarray:
        """A half-size store's centre [n_states, d] float32, subtracted from every state before encoding."""
        return self._side_array(CENTRE_FILE)

    @property
    def n(self) -> int:
        return self.shape[1]

    def verify(self, *, full: bool = False) -> None:
        """Raise MossaError unless the content hash matches (catches flipped bytes anywhere).

        A folder whose array file is unchanged since its hash was last checked (same size,
        mtime and inode as the stamp the writer or the last check left, see `_hash_is_current`)
        is not re-hashed unless `full`.
        """
        if not full and _hash_is_current(self.folder, self._sha256):
            return
        started = time.time_ns()
        if _content_hash(self.folder / ACTS_FILE, self.ids, self.target_nll, self.target_tokens,
                         self.evaluation) != self._sha256:
            raise MossaError(f"{self.folder}: content does not match its hash (corrupted or truncated); rerun "
                             f"`mossa run` on this study to recompute it")
        _stamp_verified(self.folder, self._sha256, started)

    def finite_rows(self) -> np.ndarray:
        """Mask [n] of examples whose states are finite at every layer (recorded by the writer)."""
        mask = np.ones(self.n, dtype=bool)
        mask[self._nonfinite] = False
        return mask

    def read(self, rows=None, layers=None, *, out: np.ndarray | None = None) -> np.ndarray:
        """States [len(layers), len(rows), d] float32 for these rows (in the given order) and layers,
        decoded from the stored dtype.

        `out`, a C-contiguous float32 array of at least that many elements, is filled and a view
        of it returned (streaming reuses one buffer instead of faulting in fresh pages per block).
        """
        layers = range(self.shape[0]) if layers is None else [int(x) for x in layers]
        rows = np.arange(self.n) if rows is None else np.asarray(rows, dtype=np.int64)
        order = np.argsort(rows, kind="stable")
        sorted_rows = rows[order]
        cut = np.flatnonzero(np.diff(sorted_rows) != 1) + 1
        starts, ends = np.r_[0, cut], np.r_[cut, len(rows)]
        d = self.shape[2]
        size = len(layers) * len(rows) * d
        if out is not None and out.size >= size and out.dtype == np.float32 and out.flags.c_contiguous:
            out = out.reshape(-1)[:size].reshape(len(layers), len(rows), d)
        else:
            out = np.empty((len(layers), len(rows), d), dtype=np.float32)
        in_order = np.array_equal(order, np.arange(len(rows)))
        if self.dtype == "float32":
            block = out if in_order else np.empty_like(out)
        else:  # the stored 2-byte values, decoded below
            block = np.empty(out.shape, dtype=ACTIVATION_DTYPES[self.dtype])
        with open(self.folder / ACTS_FILE, "rb", buffering=0) as fh:
            for i, layer in enumerate(layers):
                for s, e in zip(starts, ends):
                    if s == e:
                        continue
                    view = memoryview(block[i, s:e]).cast("B")
                    offset = self.offset + (layer * self.n + int(sorted_rows[s])) * self.itemsize * d
                    while view:
                        got = os.preadv(fh.fileno(), [view], offset)
                        if got == 0:
                            raise MossaError(f"{self.folder}: activation file ended early; rerun `mossa run`")
                        view, offset = view[got:], offset + got
        if self.dtype != "float32":
            target = out if in_order else np.empty_like(out)
            picked = np.asarray(layers, dtype=np.int64)
            if self.dtype == "float16":
                decode_float16(block, self.scales()[picked][:, sorted_rows], out=target)
            else:
                decode_bfloat16(block, out=target)
            target += self.centre()[picked][:, None, :]
            block = target
        if block is not out:
            out[:, order] = block
        return out

    def view(self, rows, layer: int) -> np.ndarray | None:
        """One layer's rows [len(rows), d] as a read-only memory map when they are one ascending run
        (the usual case), else None. Nothing is copied: the array reads the page cache in place, and
        the mapping goes with the array, so resident memory stays at the layers in use. None for a store in
        any dtype but float32 (its values must be decoded: `read`)."""
        rows = np.asarray(rows, dtype=np.int64)
        if self.dtype != "float32" or not len(rows) or np.any(np.diff(rows) != 1):
            return None
        d = self.shape[2]
        offset = self.offset + (int(layer) * self.n + int(rows[0])) * 4 * d
        return np.memmap(self.folder / ACTS_FILE, dtype="<f4", mode="r", offset=offset, shape=(len(rows), d))

    def prefetch(self, rows, layers) -> None:
        """Ask the kernel to start reading these rows' span of these layers into the page cache, so a
        later `read` finds them there while this thread computes (no reader thread: one beside the
        BLAS threads slowed their products)."""
        rows = np.asarray(rows, dtype=np.int64)
        if not len(rows) or not hasattr(os, "posix_fadvise"):
            return
        row_bytes = self.itemsize * self.shape[2]
        first, last = int(rows.min()), int(rows.max()) + 1
        fd = os.open(self.folder / ACTS_FILE, os.O_RDONLY)
        try:
            for layer in layers:
                start = self.offset + (int(layer) * self.n + first) * row_bytes
                os.posix_fadvise(fd, start, (last - first) * row_bytes, os.POSIX_FADV_WILLNEED)
        finally:
            os.close(fd)

    def chunks(self, size: int, rows=None):
        """Yield [n_states, <=size, d] blocks of `rows` (default: all rows), in order."""
        rows = np.arange(self.n) if rows is None else np.asarray(rows, dtype=np.int64)
        for start in range(0, len(rows), size):
            yield self.read(rows[start:start + size])


__all__ = ["ACTIVATION_DTYPES", "ACTS_FILE", "CENTRE_FILE", "MARKER", "META_FILE", "SCALES_FILE", "VERIFIED_FILE",
           "ActivationFile", "ActivationWriter", "Activations", "StudyDir", "activation_bytes", "atomic_path",
           "centre_of", "check_activation_dtype", "decode_bfloat16", "decode_float16", "encode_bfloat16",
           "encode_float16", "is_temporary", "read_json", "read_prompt_templates", "write_json"]
