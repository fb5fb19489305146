"""BASE+ADAPTER model specs: resolution (paths with '+'), merged loading, fingerprints, one-line errors."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from mossa.config import LoraSettings
from mossa.errors import MossaError
from mossa.models import adapter_digest, check_model_available, load_model, resolve_model
from mossa.models import AdapterHost
from mossa.models._loading import quiet_peft
from tests.conftest import build_tiny_model

IDS = torch.tensor([[1, 5, 6, 7, 8, 9, 10]])


def _save_adapter(base: Path, dest: Path, *, seed: int = 1) -> Path:
    """A peft LoRA adapter on q/v with random non-zero weights, saved with save_pretrained."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False,
                        task_type="CAUSAL_LM")
    with quiet_peft():
        get_peft_model(AutoModelForCausalLM.from_pretrained(base), config).save_pretrained(dest)
    return dest


@pytest.fixture(scope="module")
def adapter(tiny_model, tmp_path_factory) -> Path:
    return _save_adapter(tiny_model, tmp_path_factory.mktemp("study") / "adapters" / "control-x")


def _outputs(model):
    with torch.inference_mode():
        return model(input_ids=IDS, output_hidden_states=True)


def test_merged_adapter_computes_what_peft_computes(tiny_model, adapter):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    source = resolve_model(f"{tiny_model}+{adapter}")
    assert (source.kind, source.base.kind, source.adapter) == ("adapter", "hf_dir", str(adapter.resolve()))
    assert source.name == f"{tiny_model.name}+control-x" and resolve_model(source.location) == source
    loaded = load_model(source, dtype="float32", device="cpu")
    base = load_model(resolve_model(str(tiny_model)), dtype="float32", device="cpu")
    assert loaded.fingerprint == f"{base.fingerprint}+{adapter_digest(adapter)}"
    assert not any("lora" in name for name, _ in loaded.model.named_modules())  # a plain model again
    with quiet_peft():
        ref = _outputs(PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model), str(adapter)))
    out = _outputs(loaded.model)
    np.testing.assert_allclose(out.logits.numpy(), ref.logits.numpy(), atol=1e-5)
    for mine, theirs in zip(out.hidden_states, ref.hidden_states, strict=True):
        np.testing.assert_allclose(mine.numpy(), theirs.numpy(), atol=1e-5)
    assert not np.allclose(out.logits.numpy(), _outputs(base.model).logits.numpy(), atol=1e-3)
    host = AdapterHost(loaded)  # mossa's own LoRA goes on top; fresh (B = 0) it changes nothing
    host.add("c", LoraSettings(), seed=0)
    with host.use("c") as model:
        np.testing.assert_allclose(_outputs(model).logits.numpy(), out.logits.numpy(), atol=1e-6)


def test_fingerprint_follows_weights_not_the_recorded_base_path(tiny_model, adapter, tmp_path):
    moved = shutil.copytree(adapter, tmp_path / "moved")
    config = json.loads((moved / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = "/some/other/machine/model"
    (moved / "adapter_config.json").write_text(json.dumps(config))
    assert adapter_digest(moved) == adapter_digest(adapter)
    assert adapter_digest(_save_adapter(tiny_model, tmp_path / "other", seed=2)) != adapter_digest(adapter)


def test_paths_with_plus_and_other_bases(tiny_model, adapter, tmp_path):
    base = tmp_path / "a+b"
    base.symlink_to(tiny_model, target_is_directory=True)
    assert resolve_model(str(base)).kind == "hf_dir"  # an existing path wins
    plus = tmp_path / "x+y"
    plus.symlink_to(adapter, target_is_directory=True)
    assert resolve_model(f"{base}+{plus}").base.kind == "hf_dir"
    chained = resolve_model(f"{base}+{plus}+{adapter}")
    assert (chained.base.kind, chained.base.base.kind) == ("adapter", "hf_dir")
    assert resolve_model(f"gemma-3-270m+{adapter}").base.kind == "embedded"
    hub = resolve_model(f"some-org/not-cached-model+{adapter}")
    assert hub.base.kind == "hub"
    with pytest.raises(MossaError, match="cannot load it from the hub"):
        check_model_available(hub)


def _one_line(call, *args, **kwargs) -> str:
    with pytest.raises(MossaError) as info:
        call(*args, **kwargs)
    assert "\n" not in str(info.value)
    return str(info.value)


def test_clear_errors(tiny_model, adapter, tmp_path):
    assert "adapter folder" in _one_line(resolve_model, f"{tiny_model}+{tmp_path / 'missing'}")
    (tmp_path / "empty").mkdir()
    assert "no adapter_config.json" in _one_line(resolve_model, f"{tiny_model}+{tmp_path / 'empty'}")
    (tmp_path / "no-weights").mkdir()
    shutil.copy(adapter / "adapter_config.json", tmp_path / "no-weights")
    assert "weights missing" in _one_line(resolve_model, f"{tiny_model}+{tmp_path / 'no-weights'}")
    assert "unknown model 'gemma-3-207m'" in _one_line(resolve_model, f"gemma-3-207m+{adapter}")
    wrong = shutil.copytree(adapter, tmp_path / "wrong-targets")
    config = json.loads((wrong / "adapter_config.json").read_text())
    config["target_modules"] = ["c_attn"]
    (wrong / "adapter_config.json").write_text(json.dumps(config))
    wide = _save_adapter(build_tiny_model(tmp_path / "wide", hidden=24), tmp_path / "wide-adapter")
    for bad in (wrong, wide):
        message = _one_line(load_model, resolve_model(f"{tiny_model}+{bad}"), dtype="float32", device="cpu")
        assert "does not fit its base model" in message
