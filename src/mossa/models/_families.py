"""Per-family facts, keyed by `config.model_type`: the default LoRA target modules.

The paper adapts the attention query and value projections. Families name them differently
(GPT-2 fuses q, k, v into `c_attn`, GPT-NeoX into `query_key_value`), so the default is looked
up here, then in peft's own per-model table for families this one does not list.
"""

from __future__ import annotations

import torch

from mossa.errors import MossaError

_QV = ("q_proj", "v_proj")
LORA_TARGETS: dict[str, tuple[str, ...]] = {
    "llama": _QV, "mistral": _QV, "qwen2": _QV, "gemma": _QV, "gemma2": _QV, "gemma3": _QV, "gemma3_text": _QV,
    "gpt2": ("c_attn",), "gpt_neox": ("query_key_value",),
}


def linear_module_names(model: torch.nn.Module) -> list[str]:
    """The distinct leaf names of a model's linear layers (what LoRA targets can name)."""
    from transformers.pytorch_utils import Conv1D

    return sorted({name.rsplit(".", 1)[-1] for name, module in model.named_modules()
                   if isinstance(module, (torch.nn.Linear, Conv1D))})


def default_lora_targets(model: torch.nn.Module) -> list[str]:
    """The LoRA target modules for a Hugging Face model: query and value projections by family.

    Raises
    ------
    MossaError
        For a model type neither table knows; the message lists its linear modules.
    """
    config = model.config
    types = [config.model_type, config.get_text_config().model_type]
    for model_type in types:
        if model_type in LORA_TARGETS:
            return list(LORA_TARGETS[model_type])
    try:
        from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as peft_table
    except ImportError:
        peft_table = {}
    for model_type in types:
        if model_type in peft_table:
            return list(peft_table[model_type])
    raise MossaError(f"field 'lora.targets': no default LoRA targets for model type {config.model_type!r}; list "
                     f"some of its linear modules: {', '.join(linear_module_names(model))}")


def resolve_lora_targets(targets: list[str] | str, model: torch.nn.Module) -> list[str]:
    """`targets` as module names: "auto" is the family's default (`default_lora_targets`)."""
    return default_lora_targets(model) if targets == "auto" else list(targets)


def check_lora_targets(model: torch.nn.Module, targets: list[str]) -> None:
    """Every LoRA target must name modules of the model (peft would fail mid-study otherwise)."""
    leaves = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    missing = [t for t in targets if t not in leaves]
    if missing:
        raise MossaError(f"field 'lora.targets': {', '.join(missing)} not found in the model; its linear "
                         f"modules are {', '.join(linear_module_names(model))}")


def decoder_blocks(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The model's decoder blocks in order: the module list holding `num_hidden_layers` blocks (block l,
    1-based, writes the hidden state of layer l). Found by shape, not by name, so every family works.

    Raises
    ------
    MossaError
        When no such list exists (or more than one).
    """
    n = int(model.config.get_text_config().num_hidden_layers)
    lists = [m for m in model.modules() if isinstance(m, torch.nn.ModuleList) and len(m) == n
             and len({type(b) for b in m}) == 1 and any(True for _ in m[0].parameters())]
    if len(lists) != 1:
        raise MossaError(f"{type(model).__name__}: expected one list of its {n} decoder blocks, found {len(lists)}")
    return list(lists[0])
