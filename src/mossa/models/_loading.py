"""Loading a base model: GGUF -> safetensors conversion cache, HF dirs, hub ids, merged adapters;
dtype choice.

Embedded GGUF models are dequantized once (tens of seconds) into `<cache>/models/<name>-<hash>`
and reloaded from safetensors afterwards (under a second). The conversion is written to a
temporary folder and renamed into place, so a killed conversion never leaves a usable-looking
half entry. A `BASE+ADAPTER` source loads its base and merges the peft adapter into the
weights, so the result is a plain model like any other.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import shutil
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from mossa.errors import MossaError
from mossa.cache import cache_root
from mossa.models._registry import ADAPTER_WEIGHTS, ModelSource

_MARKER = "mossa-converted.json"
_NORM_NAMES = ("norm", "final_norm", "ln_f", "final_layer_norm", "norm_f")


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


@contextlib.contextmanager
def quiet_peft():
    """Silence peft warnings that are not the user's to act on: a transformers property deprecated
    in 5.x, and GPT-2's Conv1D layers switching `fan_in_fan_out` on (peft does the right thing)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        warnings.filterwarnings("ignore", message=".*fan_in_fan_out is set to False.*", category=UserWarning)
        yield


def adapter_digest(folder: Path) -> str:
    """sha256 of a peft adapter's weights and config.

    The config is hashed without `base_model_name_or_path` (a machine-specific path), so one
    adapter has one fingerprint wherever it is loaded.
    """
    path = folder / "adapter_config.json"
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise MossaError(f"{path}: not valid JSON ({exc}); save the adapter again with peft's "
                         f"save_pretrained") from None
    config.pop("base_model_name_or_path", None)
    digest = hashlib.sha256(json.dumps(config, sort_keys=True).encode())
    for name in ADAPTER_WEIGHTS:
        if (folder / name).is_file():
            digest.update(name.encode())
            digest.update(sha256_file(folder / name).encode())
    return digest.hexdigest()


def _adapter_chain(source: ModelSource) -> tuple[ModelSource, list[Path]]:
    """The innermost base of a source and the adapter folders to merge into it, in order."""
    folders: list[Path] = []
    while source.kind == "adapter":
        folders.append(Path(source.adapter))
        source = source.base
    return source, folders[::-1]


def _merge_adapter(model: torch.nn.Module, folder: Path, spec: str) -> torch.nn.Module:
    """`model` with the peft adapter at `folder` merged into its weights: a plain model again, so
    mossa's own LoRA adapters attach on top of it as on any base."""
    from peft import PeftModel

    try:
        with quiet_peft():
            return PeftModel.from_pretrained(model, str(folder)).merge_and_unload()
    except (ValueError, RuntimeError, KeyError, TypeError) as exc:
        why = " ".join(str(exc).split())
        why = why[why.find("size mismatch"):] if "size mismatch" in why else why  # the first mismatch says it
        why = why.split(". ")[0].rstrip(".")[:300] or type(exc).__name__
        raise MossaError(f"model {spec!r}: adapter {folder} does not fit its base model ({why}); pass the base "
                         f"model the adapter was trained on") from None


@dataclass
class LoadedModel:
    """A base model ready for training and extraction.

    `body` is the decoder stack without the LM head; `final_norm` the module applied after
    the last block (for the pre-norm option). `dtype` is the compute dtype (autocast when it
    differs from the fp32 weights).
    """

    name: str
    source: ModelSource
    model: torch.nn.Module
    tokenizer: object
    fingerprint: str
    device: torch.device
    dtype: torch.dtype
    dtype_reason: str

    @property
    def body(self) -> torch.nn.Module:
        return self.model.base_model

    @property
    def n_layers(self) -> int:
        return int(self.model.config.get_text_config().num_hidden_layers)

    @property
    def hidden_size(self) -> int:
        return int(self.model.config.get_text_config().hidden_size)

    @property
    def chat_template(self) -> str | None:
        """The chat template the model's tokenizer carries, if any."""
        return getattr(self.tokenizer, "chat_template", None) or None

    @property
    def final_norm(self) -> torch.nn.Module | None:
        for name in _NORM_NAMES:
            module = getattr(self.body, name, None)
            if isinstance(module, torch.nn.Module):
                return module
        return None

    def autocast(self):
        enabled = self.dtype != torch.float32
        return torch.autocast(self.device.type, dtype=self.dtype, enabled=enabled)


@contextlib.contextmanager
def _one_gguf_parse():
    """Parse each GGUF file's header once inside the block.

    transformers builds a `gguf.GGUFReader` for the tokenizer, again for the config and again for
    the weights; each parses every field of the header, the 262k vocabulary strings one memmap
    view at a time (about 17 s for gemma-3-270m). The reader is read-only after construction, so
    the three loads share one.
    """
    import gguf

    original = gguf.GGUFReader
    readers: dict[tuple, object] = {}

    def shared(path, *args, **kwargs):
        key = (os.fspath(path), args, tuple(sorted(kwargs.items())))
        if key not in readers:
            readers[key] = original(path, *args, **kwargs)
        return readers[key]

    gguf.GGUFReader = shared
    try:
        yield
    finally:
        gguf.GGUFReader = original


def _convert_gguf(gguf: Path, dest: Path, fingerprint: str) -> None:
    """Dequantize a GGUF file into a safetensors HF folder at `dest` (atomic).

    A model loaded from GGUF refuses `save_pretrained`, so its weights move into a model built on
    the meta device from the same config (no second random initialisation) and that one is saved.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tmp = dest.with_name(dest.name + f".tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        with _one_gguf_parse():
            tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
            quant = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        config = quant.config
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        with torch.device("meta"):
            fresh = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        fresh.load_state_dict(quant.state_dict(), strict=True, assign=True)
        fresh.tie_weights()
        fresh.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        (tmp / _MARKER).write_text(json.dumps({"source": str(gguf), "fingerprint": fingerprint}))
        shutil.rmtree(dest, ignore_errors=True)
        os.replace(tmp, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def materialize(source: ModelSource, *, progress=print) -> tuple[str, str]:
    """Return (loadable path or hub id, fingerprint) for a model source, converting if needed.

    For an 'adapter' source the path is its base's (`load_model` merges the adapter in) and the
    fingerprint is the base's, '+', the adapter's `adapter_digest`.
    """
    if source.kind == "adapter":
        location, fingerprint = materialize(source.base, progress=progress)
        return location, f"{fingerprint}+{adapter_digest(Path(source.adapter))}"
    if source.kind in ("embedded", "gguf"):
        root = cache_root()
        if source.kind == "embedded":
            gguf = source.embedded.locate(root)
            fingerprint = source.embedded.sha256 or sha256_file(gguf)
        else:
            gguf = Path(source.location)
            fingerprint = sha256_file(gguf)
        dest = root / "models" / f"{source.name}-{fingerprint[:12]}"
        if not (dest / _MARKER).is_file():
            from filelock import FileLock

            dest.parent.mkdir(parents=True, exist_ok=True)
            with FileLock(str(dest) + ".lock"):
                if not (dest / _MARKER).is_file():
                    t0 = time.perf_counter()
                    progress(f"converting {source.name} from GGUF once (cached in {dest})")
                    _convert_gguf(gguf, dest, fingerprint)
                    progress(f"converted in {time.perf_counter() - t0:.0f} s")
        return str(dest), fingerprint
    if source.kind == "hf_dir":
        path = Path(source.location)
        digest = hashlib.sha256()
        for f in sorted(path.glob("*")):
            if f.suffix in (".safetensors", ".bin", ".json") and f.is_file():
                digest.update(f.name.encode())
                digest.update(sha256_file(f).encode())
        return str(path), digest.hexdigest()
    return source.location, f"hub:{source.location}"


def cpu_name() -> str:
    """The CPU model name (for provenance and the dtype cache key)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _measure_bf16_speedup() -> float:
    """bf16/fp32 GEMM throughput ratio: best of 5 interleaved timings each."""
    best = {torch.float32: float("inf"), torch.bfloat16: float("inf")}
    mats = {dt: (torch.randn(512, 1024, dtype=dt), torch.randn(1024, 1024, dtype=dt)) for dt in best}
    for _ in range(5):
        for dt, (a, b) in mats.items():
            a @ b
            t0 = time.perf_counter()
            a @ b
            best[dt] = min(best[dt], time.perf_counter() - t0)
    return best[torch.float32] / best[torch.bfloat16]


def cpu_bf16_speedup() -> float:
    """This CPU's bf16/fp32 GEMM speed ratio, measured once and kept in the cache.

    Keeping it makes `dtype=auto` a stable choice on one machine, so a rerun never flips the
    dtype (and with it every fingerprint) because the machine was busy during a measurement.
    """
    key = f"{cpu_name()} | torch {torch.__version__} | {torch.get_num_threads()} threads"
    path = cache_root() / "cpu-dtype.json"
    try:
        known = json.loads(path.read_text())
        if known.get("key") == key:
            return float(known["bf16_speedup"])
    except (OSError, ValueError, KeyError):
        pass
    ratio = _measure_bf16_speedup()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps({"key": key, "bf16_speedup": ratio}))
    os.replace(tmp, path)
    return ratio


def pick_dtype(requested: str, device: torch.device) -> tuple[torch.dtype, str]:
    """The compute dtype and why it was chosen.

    On CUDA, auto is bf16 (fp16 where bf16 is unsupported). On a CPU, bf16 is only faster
    where the hardware has fast bf16 kernels, so auto uses the machine's measured GEMM speed
    ratio (`cpu_bf16_speedup`) and takes bf16 only when it is at least 1.2x faster.
    """
    named = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    if requested != "auto":
        return named[requested], "requested"
    if device.type == "cuda":
        if torch.cuda.is_bf16_supported():
            return torch.bfloat16, "auto: bf16 on CUDA"
        return torch.float16, "auto: fp16 on CUDA without bf16"
    ratio = cpu_bf16_speedup()
    choice = torch.bfloat16 if ratio >= 1.2 else torch.float32
    return choice, f"auto: this CPU's bf16/fp32 GEMM speed ratio is {ratio:.2f}"


def pick_device(requested: str) -> torch.device:
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(requested)
    except RuntimeError:
        raise MossaError(f"field 'device': {requested!r} is not a torch device (try cpu or cuda)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise MossaError("field 'device': cuda was requested but no CUDA GPU is available; use --device cpu")
    return device


def _hub_error(source: ModelSource, exc: Exception) -> MossaError:
    return MossaError(f"model {source.location!r}: cannot load it from the hub or the local HF cache "
                      f"({type(exc).__name__}); download it while online or pass a local model folder")


def load_model(source: ModelSource, *, dtype: str = "auto", device: str = "auto", progress=print) -> LoadedModel:
    """Load a base model (fp32 master weights, any adapters of the source merged in) and its
    tokenizer, padded on the left."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    location, fingerprint = materialize(source, progress=progress)
    root, adapters = _adapter_chain(source)
    dev = pick_device(device)
    compute, reason = pick_dtype(dtype, dev)
    try:
        tok = AutoTokenizer.from_pretrained(location)
        model = AutoModelForCausalLM.from_pretrained(location, dtype=torch.float32)
    except OSError as exc:
        if root.kind == "hub":
            raise _hub_error(root, exc) from None
        raise MossaError(f"{location}: cannot load model ({exc})") from None
    for folder in adapters:
        model = _merge_adapter(model, folder, source.location)
    tok.padding_side = "left"
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    model.to(dev).eval()
    return LoadedModel(name=source.name, source=source, model=model, tokenizer=tok, fingerprint=fingerprint,
                       device=dev, dtype=compute, dtype_reason=reason)


def check_model_available(source: ModelSource) -> None:
    """Fail early (before any work) when a hub model (or an adapter's hub base) cannot be reached."""
    source, _ = _adapter_chain(source)
    if source.kind != "hub":
        return
    from transformers import AutoConfig

    try:
        AutoConfig.from_pretrained(source.location)
    except (OSError, ValueError) as exc:
        raise _hub_error(source, exc) from None
