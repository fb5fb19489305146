"""The study dir: atomic writes, unit markers, activation files.

Stage: store (every stage reads and writes the study dir only through here).

Layout::

    study.json                          resolved config, versions, fingerprints, stage timings
    adapters/<unit>/                    peft adapter; done.json written last
    activations/<model>/<task>.safetensors
                                        acts [layers+1, n, d] float32, target_nll [n],
                                        target_tokens [n]; example ids in the metadata
    results/                            similarity.parquet|csv, controls.csv
    figures/                            cka_by_layer.png

Every file is written under a temporary name and renamed into place, so a killed run never
leaves a half-written artifact under its final name.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from mossa.errors import MossaError

MARKER = "done.json"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _publish(tmp: Path, final: Path, mode: int) -> None:
    """Give a temp file/folder normal permissions (mkstemp makes them private), rename into place."""
    os.chmod(tmp, mode & ~_umask())
    os.replace(tmp, final)


@contextlib.contextmanager
def atomic_path(path: Path):
    """Yield a temporary path beside `path`; rename it into place when the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        _publish(Path(tmp), path, 0o666)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_json(path: Path, data: object) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, default=str) + "\n", encoding="utf-8")


def read_json(path: Path) -> dict:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise MossaError(f"{path}: cannot read ({exc})") from None


@dataclass
class Activations:
    """Last-prompt-token states of one (model, task): acts [layers+1, n, d] with ids [n]."""

    ids: list[str]
    acts: np.ndarray
    target_nll: np.ndarray
    target_tokens: np.ndarray
    meta: dict


class StudyDir:
    """Paths and atomic reads/writes inside one study folder."""

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

    # adapters ---------------------------------------------------------------------------
    def adapter_dir(self, unit: str) -> Path:
        return self.path("adapters", unit)

    def unit_done(self, unit: str, inputs: str) -> dict | None:
        """The marker of a finished adapter unit whose input fingerprint matches, else None."""
        marker = self.adapter_dir(unit) / MARKER
        if not marker.is_file():
            return None
        data = read_json(marker)
        if data.get("inputs") != inputs:
            return None
        weights = self.adapter_dir(unit) / "adapter_model.safetensors"
        if data.get("sha256") and (not weights.is_file()
                                   or hashlib.sha256(weights.read_bytes()).hexdigest() != data["sha256"]):
            return None  # corrupted adapter: the unit is redone
        return data

    @contextlib.contextmanager
    def adapter_writer(self, unit: str):
        """Yield a temp folder to save an adapter into; it replaces the unit's folder on success."""
        final = self.adapter_dir(unit)
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{unit}.", dir=final.parent))
        try:
            yield tmp
            shutil.rmtree(final, ignore_errors=True)
            _publish(tmp, final, 0o777)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    # activations ------------------------------------------------------------------------
    def activation_path(self, model: str, task: str) -> Path:
        return self.path("activations", model, f"{task}.safetensors")

    def activations_done(self, model: str, task: str, inputs: str) -> bool:
        """True when the file exists, has these input fingerprints and its content hash checks.

        A truncated, corrupted or stale file is not done, so the unit is recomputed.
        """
        path = self.activation_path(model, task)
        if not path.is_file():
            return False
        try:
            tensors, meta = _load_checked(path)
        except MossaError:
            return False
        return meta.get("inputs") == inputs

    def write_activations(self, model: str, task: str, acts: Activations, inputs: str) -> None:
        from safetensors.torch import save_file

        tensors = {"acts": torch.from_numpy(np.ascontiguousarray(acts.acts)),
                   "target_nll": torch.from_numpy(np.ascontiguousarray(acts.target_nll)),
                   "target_tokens": torch.from_numpy(np.ascontiguousarray(acts.target_tokens))}
        meta = {"ids": json.dumps(acts.ids), "inputs": inputs, "sha256": _content_hash(tensors, acts.ids),
                **{k: json.dumps(v) for k, v in acts.meta.items()}}
        with atomic_path(self.activation_path(model, task)) as tmp:
            save_file(tensors, str(tmp), metadata=meta)

    def read_activations(self, model: str, task: str) -> Activations:
        """Read one activation file, verifying its content hash.

        Raises
        ------
        MossaError
            When the file is missing, unreadable, or its content does not match its hash.
        """
        path = self.activation_path(model, task)
        if not path.is_file():
            raise MossaError(f"{path}: activations missing; rerun `mossa run` on this study")
        tensors, meta = _load_checked(path)
        ids = json.loads(meta.pop("ids"))
        for key in ("inputs", "sha256"):
            meta.pop(key, None)
        return Activations(ids=ids, acts=tensors["acts"].numpy(), target_nll=tensors["target_nll"].numpy(),
                           target_tokens=tensors["target_tokens"].numpy(),
                           meta={k: json.loads(v) for k, v in meta.items()})

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
            holder.write_text(f"pid {os.getpid()} since {time.strftime('%Y-%m-%d %H:%M:%S')}", encoding="utf-8")
            yield
        finally:
            holder.unlink(missing_ok=True)
            lock.release()


def _content_hash(tensors: dict, ids: list[str]) -> str:
    digest = hashlib.sha256()
    for name in sorted(tensors):
        digest.update(name.encode())
        digest.update(tensors[name].numpy().tobytes())
    digest.update(json.dumps(ids).encode())
    return digest.hexdigest()


def _load_checked(path: Path) -> tuple[dict, dict]:
    """Tensors and metadata of an activation file whose content hash matches, else MossaError."""
    from safetensors import SafetensorError, safe_open
    from safetensors.torch import load_file

    try:
        tensors = load_file(str(path))
        with safe_open(str(path), framework="pt") as fh:
            meta = dict(fh.metadata() or {})
        ids = json.loads(meta["ids"])
    except (SafetensorError, OSError, KeyError, ValueError, RuntimeError) as exc:
        raise MossaError(f"{path}: unreadable activation file ({exc}); delete it and rerun") from None
    if meta.get("sha256") != _content_hash(tensors, ids):
        raise MossaError(f"{path}: content does not match its hash (corrupted or truncated); rerun `mossa run` "
                         f"on this study to recompute it")
    return tensors, meta
