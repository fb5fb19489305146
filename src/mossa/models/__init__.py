"""Models: the registry of embedded models, source resolution, conversion and loading.

Stage: models (reads GGUF/HF weights, writes the conversion cache under `$MOSSA_CACHE`).
"""

from mossa.models._loading import (
    LoadedModel,
    check_model_available,
    cpu_name,
    load_model,
    materialize,
    pick_device,
    pick_dtype,
    sha256_file,
)
from mossa.models._registry import (
    EmbeddedModel,
    ModelSource,
    cache_root,
    register_model,
    registered_models,
    resolve_model,
)

__all__ = [
    "EmbeddedModel", "LoadedModel", "ModelSource", "cache_root", "check_model_available", "cpu_name", "load_model",
    "materialize", "pick_device", "pick_dtype", "register_model", "registered_models", "resolve_model",
    "sha256_file",
]
