"""LoRA adapters swapped on one loaded base model (peft), instead of reloading models; an adapter
may be trained on a range of layers only, and run with its update switched on in some layers only."""

from __future__ import annotations

import contextlib
import shutil
from pathlib import Path

import torch

from mossa.config import LoraSettings
from mossa.errors import MossaError
from mossa.models._families import decoder_blocks, resolve_lora_targets
from mossa.models._forward import Batch, body_forward
from mossa.models._loading import LoadedModel, quiet_peft


class AdapterHost:
    """Holds the base model and any number of named LoRA adapters over it.

    `use(None)` runs the plain base model B; `use(name)` runs B + that adapter, and
    `use(name, layers=...)` B + that adapter's update in the given blocks only.
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
        blocks = None if lora.layers is None else list(range(lora.layers[0] - 1, lora.layers[1]))
        if blocks is not None and lora.layers[1] > self.loaded.n_layers:
            raise MossaError(f"field 'lora.layers': {lora.layers} reaches past the model's {self.loaded.n_layers} "
                             f"layers; name layers 1 to {self.loaded.n_layers}")
        config = LoraConfig(r=lora.rank, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                            target_modules=resolve_lora_targets(lora.targets, self.loaded.model),
                            layers_to_transform=blocks, task_type="CAUSAL_LM")
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

    def lora_blocks(self, name: str) -> dict[int, list[torch.nn.Module]]:
        """Adapter `name`'s LoRA modules by the block (1-based) they sit in; a block without any is absent.

        Raises
        ------
        MossaError
            When the adapter adapts a module outside the decoder blocks (embeddings, head): such an
            adapter cannot be switched on and off by layer.
        """
        owner = {id(m): i + 1 for i, block in enumerate(decoder_blocks(self.loaded.model)) for m in block.modules()}
        out: dict[int, list[torch.nn.Module]] = {}
        for mname, module in self.peft.named_modules():
            if isinstance(getattr(module, "scaling", None), dict) and name in module.scaling:
                if id(module) not in owner:
                    raise MossaError(f"adapter {name!r} adapts {mname}, outside the decoder blocks; masking by "
                                     f"layer needs an adapter on block modules only (lora.targets)")
                out.setdefault(owner[id(module)], []).append(module)
        return out

    @contextlib.contextmanager
    def use(self, name: str | None, *, layers=None):
        """Run the base model (`None`) or base + adapter `name` inside the block; with `layers` (block
        numbers, 1-based: block l writes layer l's state) the adapter's update is added in those
        blocks only. A masked module's update is multiplied by 0, so its output is exactly B's."""
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
        if layers is None:
            yield self.loaded.model
            return
        keep = set(layers)
        masked = [m for block, modules in self.lora_blocks(name).items() if block not in keep for m in modules]
        with _scaled(masked, name, 0.0):
            yield self.loaded.model

    def updates(self, name: str, batch: Batch) -> torch.Tensor:
        """How much adapter `name` changes each block's output at each row's last prompt token: the norm of
        (block output with its adapter - without it, on the same input) over the norm of the output with
        it, [n_layers, rows] float64. The adapter is on in every block; each block runs a second time with
        its own LoRA modules scaled to 0. One forward pass without a cache."""
        model = self.loaded.model
        blocks = decoder_blocks(model)
        lora = self.lora_blocks(name)
        rows = torch.arange(len(batch.ids), device=batch.input_ids.device)
        out = torch.full((len(blocks), len(rows)), float("nan"), dtype=torch.float64)
        busy = []

        def hook(index: int):
            def run(module, args, kwargs, output):
                if busy:  # the block's own second run
                    return None
                busy.append(index)
                try:
                    with _scaled(lora.get(index + 1, []), name, 0.0):
                        plain = module(*args, **kwargs)
                finally:
                    busy.clear()
                h, p = (_block_state(o)[rows, batch.last_prompt].double() for o in (output, plain))
                out[index] = ((h - p).norm(dim=-1) / h.norm(dim=-1)).cpu()
                return None
            return run

        handles = [b.register_forward_hook(hook(i), with_kwargs=True) for i, b in enumerate(blocks)]
        try:
            with self.use(name), torch.inference_mode(), self.loaded.autocast():
                body_forward(model, batch, output_hidden_states=False, use_cache=False)
        finally:
            for handle in handles:
                handle.remove()
        return out


def _block_state(output) -> torch.Tensor:
    """A decoder block's output hidden states (blocks return them alone or first in a tuple)."""
    return output[0] if isinstance(output, tuple) else output


@contextlib.contextmanager
def _scaled(modules: list[torch.nn.Module], name: str, factor: float):
    """Multiply adapter `name`'s LoRA scaling in `modules` by `factor` inside the block (restored after)."""
    before = [m.scaling[name] for m in modules]
    try:
        for m in modules:
            m.scaling[name] = m.scaling[name] * factor
        yield
    finally:
        for m, value in zip(modules, before):
            m.scaling[name] = value
