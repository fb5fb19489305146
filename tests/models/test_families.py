"""Every supported family loads, exposes its layers, extracts the HF model's own states and trains a LoRA."""

import numpy as np
import pytest
import torch

from mossa.config import LoraSettings, TrainSettings
from mossa.extraction import extract
from mossa.models import default_lora_targets, load_model, resolve_model
from mossa.models import AdapterHost
from mossa.tasks import PromptBuilder, load_tasks
from mossa.training import train_adapter
from tests.conftest import TINY_FAMILIES, build_tiny_model, write_tiny_tasks

NORM = {"gpt2": "ln_f", "gpt_neox": "final_layer_norm"}
QV = ["q_proj", "v_proj"]
TARGETS = {"gpt2": ["c_attn"], "gpt_neox": ["query_key_value"]}


@pytest.fixture(scope="module", params=sorted(TINY_FAMILIES))
def family(request, tmp_path_factory):
    folder = build_tiny_model(tmp_path_factory.mktemp(request.param), family=request.param, n_layers=2, hidden=16)
    return request.param, load_model(resolve_model(str(folder)), dtype="float32", device="cpu")


@pytest.fixture(scope="module")
def prompts(family, tmp_path_factory):
    task = load_tasks(write_tiny_tasks(tmp_path_factory.mktemp("tasks"), n_train=8, n_test=6), ["tiny_sentiment"])[0]
    builder = PromptBuilder(family[1].tokenizer, cue="Answer:", max_prompt_tokens=48, max_target_tokens=4)
    return builder.build_all(task, task.split("test"))


def test_layers_norm_targets_and_prompt_mode(family):
    name, loaded = family
    assert loaded.model.config.model_type == name
    assert (loaded.n_layers, loaded.hidden_size) == (2, 16)
    assert loaded.final_norm is getattr(loaded.body, NORM.get(name, "norm"))
    assert default_lora_targets(loaded.model) == TARGETS.get(name, QV)
    builder = PromptBuilder(loaded.tokenizer, cue="Answer:", max_prompt_tokens=48, max_target_tokens=4)
    assert builder.mode == "plain"  # no chat template: plain prompts with the cue


def test_extraction_equals_hf_states_of_unpadded_prompts(family, prompts):
    _, loaded = family
    host = AdapterHost(loaded)
    post = extract(host, None, prompts, token_budget=96)  # left-padded prompt+target batches
    pre = extract(host, None, prompts, token_budget=96, last_layer="pre_norm")
    assert post.acts.shape == (loaded.n_layers + 1, len(prompts), loaded.hidden_size)
    with torch.inference_mode():
        for i, p in enumerate(prompts):
            out = loaded.model(input_ids=torch.tensor([p.prompt_ids]), output_hidden_states=True)
            ref = torch.stack([h[0, -1] for h in out.hidden_states]).numpy()
            np.testing.assert_allclose(post.acts[:, i], ref, atol=1e-5)
        np.testing.assert_allclose(loaded.final_norm(torch.from_numpy(pre.acts[-1])).numpy(), post.acts[-1],
                                   atol=1e-5)
    np.testing.assert_allclose(pre.acts[:-1], post.acts[:-1], atol=1e-6)
    assert not np.allclose(pre.acts[-1], post.acts[-1])


def test_default_lora_trains_one_step(family, prompts):
    _, loaded = family
    host = AdapterHost(loaded)
    settings = TrainSettings(lr=1e-2, max_steps=1, batch_size=4, grad_accum=1, schedule="constant")
    log = train_adapter(host, "c", prompts, settings=settings, seed=0,
                        lora=LoraSettings(targets=default_lora_targets(loaded.model)))
    trained = [p for n, p in host.peft.named_parameters() if "lora_B" in n]
    assert log["steps"] == 1 and np.isfinite(log["train_loss"]).all()
    assert trained and all(p.abs().sum() > 0 for p in trained)
    host.remove("c")
    assert host.peft is None
