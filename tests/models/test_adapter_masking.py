"""An adapter switched on in some blocks only, a LoRA trained on a layer range only, and the adapter's
per-block update, against exact references in several tiny families."""

import numpy as np
import pytest
import torch

from mossa.config import LoraSettings
from mossa.errors import MossaError
from mossa.extraction import extract
from mossa.models import AdapterHost, collate, decoder_blocks, load_model, resolve_model
from mossa.tasks import PromptBuilder, load_tasks
from tests.conftest import build_tiny_model, write_tiny_tasks

N_LAYERS = 4


@pytest.fixture(scope="module", params=["llama", "gpt2", "gpt_neox", "gemma"])
def hosted(request, tmp_path_factory):
    """A 4-layer tiny model with adapter "e" on every block, its LoRA B matrices random (non-zero)."""
    folder = build_tiny_model(tmp_path_factory.mktemp(request.param), family=request.param, n_layers=N_LAYERS,
                              hidden=16)
    loaded = load_model(resolve_model(str(folder)), dtype="float32", device="cpu")
    task = load_tasks(write_tiny_tasks(tmp_path_factory.mktemp("tasks"), n_train=4, n_test=8), ["tiny_sentiment"])[0]
    prompts = PromptBuilder(loaded.tokenizer, cue="Answer:", max_prompt_tokens=48,
                            max_target_tokens=8).build_all(task, task.split("test"))
    host = AdapterHost(loaded)
    host.add("e", LoraSettings(rank=4, alpha=8), seed=0)
    torch.manual_seed(1)
    with torch.no_grad():
        for pname, param in host.peft.named_parameters():
            if "lora_B" in pname:
                param.normal_(0, 0.5)
    return host, prompts


def _run(host, adapter, prompts, **kwargs):
    return extract(host, adapter, prompts, token_budget=64, lens=False, **kwargs)


def test_adapter_in_every_block_is_e_and_in_none_is_b_exactly(hosted, monkeypatch):
    host, prompts = hosted
    e, b = _run(host, "e", prompts), _run(host, None, prompts)
    assert not np.array_equal(e.acts[-1], b.acts[-1])  # the adapter does change the model
    use = host.use

    def masked(layers):
        monkeypatch.setattr(host, "use", lambda name, **kw: use(name, layers=layers))
        return _run(host, "e", prompts)

    for layers, ref in ((range(1, N_LAYERS + 1), e), ((), b)):
        out = masked(layers)
        assert np.array_equal(out.acts, ref.acts)
        assert np.array_equal(out.target_nll, ref.target_nll)
        assert out.evaluation["option_loglik"] == ref.evaluation["option_loglik"]
    monkeypatch.undo()
    assert np.array_equal(_run(host, "e", prompts).acts, e.acts)  # the scaling is restored after the block


@pytest.mark.parametrize("first,last", [(2, 3), (3, 4), (1, 1)])
def test_adapter_in_a_range_changes_only_layers_from_its_first(hosted, monkeypatch, first, last):
    host, prompts = hosted
    b = _run(host, None, prompts)
    use = host.use
    monkeypatch.setattr(host, "use", lambda name, **kw: use(name, layers=range(first, last + 1)))
    out = _run(host, "e", prompts)
    assert np.array_equal(out.acts[:first], b.acts[:first])  # embeddings and blocks below the range
    for layer in range(first, N_LAYERS + 1):
        assert not np.allclose(out.acts[layer], b.acts[layer]), layer


def test_updates_equal_the_block_run_without_its_own_adapter(hosted):
    host, prompts = hosted
    batch = collate(prompts, host.loaded.tokenizer.pad_token_id, host.loaded.device, with_targets=False)
    got = host.updates("e", batch).numpy()
    assert got.shape == (N_LAYERS, len(prompts)) and np.all(got > 0)
    e = _run(host, "e", prompts, evaluate=False).acts
    use = host.use
    for layer in range(1, N_LAYERS):  # the last state is after the final norm, not the block's output
        try:
            host.use = lambda name, layer=layer, **kw: use(name, layers=range(1, layer))
            below = _run(host, "e", prompts, evaluate=False).acts  # the same input to block `layer`, no adapter in it
        finally:
            del host.use
        ref = np.linalg.norm(e[layer] - below[layer], axis=1) / np.linalg.norm(e[layer], axis=1)
        np.testing.assert_allclose(got[layer - 1], ref, rtol=1e-4, atol=1e-6)


def test_a_restricted_adapter_has_lora_weights_in_its_range_only(tmp_path):
    folder = build_tiny_model(tmp_path / "m", n_layers=N_LAYERS, hidden=16)
    host = AdapterHost(load_model(resolve_model(str(folder)), dtype="float32", device="cpu"))
    params = host.add("restricted", LoraSettings(layers=[2, 3]), seed=0)
    assert set(host.lora_blocks("restricted")) == {2, 3}
    blocks = decoder_blocks(host.peft)
    owned = {id(p) for i in (1, 2) for p in blocks[i].parameters()}
    assert params and all(id(p) in owned for p in params)
    lora = [name for name, _ in host.peft.named_parameters() if "lora_" in name]
    assert lora and all(any(f".layers.{i}." in name for i in (1, 2)) for name in lora)
    with pytest.raises(MossaError, match="lora.layers"):
        host.add("s", LoraSettings(layers=[3, N_LAYERS + 1]), seed=0)


def test_lora_layers_must_be_a_range():
    for bad in ([0, 2], [3, 2], [1]):
        with pytest.raises(ValueError, match="first"):
            LoraSettings(layers=bad)
    assert "layers" not in LoraSettings().key() and LoraSettings(layers=[1, 2]).key()["layers"] == [1, 2]
