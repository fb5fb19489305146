"""Models: the registry of embedded models, source resolution (BASE+ADAPTER included), conversion,
loading, per-family defaults (LoRA targets), adapters swapped on one loaded base, batched
body-only forward passes with target-only logits (shared by training and extraction), and
continuations of a prompt batch from its key/value cache (option scoring, greedy decoding).

Stage: models (reads GGUF/HF weights, writes the conversion cache under `$MOSSA_CACHE`).
"""

from mossa.models._adapters import AdapterHost
from mossa.models._families import check_lora_targets, decoder_blocks, default_lora_targets, linear_module_names, resolve_lora_targets
from mossa.models._loading import (
    LoadedModel,
    adapter_digest,
    check_model_available,
    cpu_name,
    load_model,
    materialize,
    pick_device,
    pick_dtype,
    sha256_file,
)
from mossa.models._forward import (
    Batch,
    body_forward,
    collate,
    head_logits,
    length_batches,
    log_softmax,
    logsumexp,
    target_nll,
)
from mossa.models._decoding import AnswerStop, greedy_decode, kv_cache, score_continuations, select_rows
from mossa.models._registry import (
    EmbeddedModel,
    ModelSource,
    experimental_source,
    register_model,
    registered_models,
    resolve_model,
)

__all__ = [
    "AdapterHost", "AnswerStop", "Batch", "EmbeddedModel", "LoadedModel", "ModelSource", "adapter_digest", "body_forward", "check_lora_targets", "check_model_available",
    "collate", "greedy_decode", "head_logits", "kv_cache", "cpu_name", "decoder_blocks", "default_lora_targets", "experimental_source", "length_batches", "linear_module_names", "log_softmax", "logsumexp", "load_model", "materialize", "pick_device",
    "pick_dtype", "register_model", "registered_models", "resolve_lora_targets", "resolve_model", "score_continuations",
    "select_rows", "sha256_file", "target_nll",
]
