"""LoRA adapters swapped on one loaded base model (peft), instead of reloading models."""

from __future__ import annotations

import contextlib
import shutil
from pathlib import Path

import torch

from mossa.config import LoraSettings
from mossa.errors import MossaError
from mossa.models._families import resolve_lora_targets
from mossa.models._loading import LoadedModel, quiet_peft


class AdapterHost:
    """Holds the base model and any number of named LoRA adapters over it.

    `use(None)` runs the plain base model B; `use(name)` runs B + that adapter.
    """

    def __init__(self, loaded: LoadedModel):
        self.loaded = loaded
        self.peft = None

    @property
    def names(self) -> list[str]:
        return [] if self.peft is None else [n for n in self.peft.peft_config]

    def _attach(self, name: str, config) -> None:
        from peft import get_peft_model

        with quiet_peft():
            if self.peft is None:
                self.peft = get_peft_model(self.loaded.model, config, adapter_name=name)
            else:
                self.peft.add_adapter(name, config)

    def add(self, name: str, lora: LoraSettings, *, seed: int) -> list[torch.nn.Parameter]:
        """Create a fresh adapter (seeded init) and return its trainable parameters."""
        from peft import LoraConfig

        if name in self.names:
            self.remove(name)
        config = LoraConfig(r=lora.rank, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                            target_modules=resolve_lora_targets(lora.targets, self.loaded.model),
                            task_type="CAUSAL_LM")
        torch.manual_seed(seed)
        try:
            self._attach(name, config)
        except ValueError as exc:
            raise MossaError(f"field 'lora.targets': {exc}") from None
        return self._select(name, trainable=True)

    def load(self, name: str, path: Path) -> None:
        """Attach a saved adapter under `name`."""
        from peft import PeftModel

        if name in self.names:
            self.remove(name)
        with quiet_peft():
            if self.peft is None:
                self.peft = PeftModel.from_pretrained(self.loaded.model, str(path), adapter_name=name)
            else:
                self.peft.load_adapter(str(path), adapter_name=name)
        self._select(name, trainable=False)

    def _select(self, name: str, *, trainable: bool) -> list[torch.nn.Parameter]:
        self.peft.set_adapter(name)
        params = []
        for pname, param in self.peft.named_parameters():
            mine = trainable and f".{name}." in pname
            param.requires_grad_(mine)
            if mine:
                params.append(param)
        return params

    def save(self, name: str, path: Path) -> None:
        """Write adapter `name` as a standalone peft adapter folder at `path`."""
        self.peft.save_pretrained(str(path), selected_adapters=[name])
        nested = Path(path) / name  # peft nests non-default adapter names in a subfolder
        if nested.is_dir():
            for item in nested.iterdir():
                shutil.move(str(item), str(Path(path) / item.name))
            nested.rmdir()

    def remove(self, name: str) -> None:
        if name in self.names:
            if len(self.names) == 1:
                self.peft.unload()
                self.peft = None
            else:
                self.peft.delete_adapter(name)

    @contextlib.contextmanager
    def use(self, name: str | None):
        """Run the base model (`None`) or base + adapter `name` inside the block."""
        if name is None:
            if self.peft is None:
                yield self.loaded.model
            else:
                with self.peft.disable_adapter():
                    yield self.loaded.model
            return
        if name not in self.names:
            raise KeyError(f"adapter {name!r} is not loaded")
        self._select(name, trainable=False)
        yield self.loaded.model
