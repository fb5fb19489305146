"""Shared fixtures: tiny random models (Llama and other families) with a tokenizer trained on the fly,
tiny task folders.

Nothing is downloaded: the hub is switched off for the whole session.
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

FLAN_MINI = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "flan-mini"

WORDS = ("good bad great awful movie film plot actor boring fun loved hated red blue green cat dog "
         "house tree city river name area food price near family friendly the a is was and of").split()


def _sentence(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n))


def write_tiny_tasks(folder: Path, *, n_train: int = 24, n_test: int = 12, seed: int = 0) -> Path:
    """Two small tasks in the flan-mini format: a 2-way classification and a generation task."""
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    rows = {"tiny_sentiment": [], "tiny_struct": []}
    for split, n in (("train", n_train), ("test", n_test)):
        for _ in range(n):
            label = rng.choice(["positive", "negative"])
            text = _sentence(rng, rng.randint(4, 12)) + (" good" if label == "positive" else " bad")
            rows["tiny_sentiment"].append({"input": {"sentence": text, "options": ["negative", "positive"]},
                                           "target": label, "split": split})
            mr = f"name : {rng.choice(WORDS)} | area : {rng.choice(WORDS)}"
            rows["tiny_struct"].append({"input": {"meaning_representation": mr},
                                        "target": _sentence(rng, rng.randint(3, 8)), "split": split})
    for task, items in rows.items():
        (folder / f"{task}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in items))
    manifest = {"tasks": {"tiny_sentiment": {"cluster": "Sentiment"}, "tiny_struct": {"cluster": "Struct-to-text"}}}
    (folder / "MANIFEST.json").write_text(json.dumps(manifest))
    return folder


def _ffn(hidden: int, kv_heads: int = 2) -> dict:
    return {"intermediate_size": 2 * hidden, "num_key_value_heads": kv_heads}


# config.model_type -> extra config fields for a tiny model of that family (beyond the shared sizes)
TINY_FAMILIES = {
    "llama": lambda h: _ffn(h),
    "mistral": lambda h: _ffn(h, kv_heads=1),
    "qwen2": lambda h: _ffn(h, kv_heads=1),
    "gemma": lambda h: {**_ffn(h, kv_heads=1), "head_dim": h // 2},
    "gemma3_text": lambda h: {**_ffn(h, kv_heads=1), "head_dim": h // 2, "query_pre_attn_scalar": h // 2,
                              "sliding_window": 4, "layer_types": ["sliding_attention", "full_attention"]},
    "gpt2": lambda h: {"n_inner": 2 * h},
    "gpt_neox": lambda h: {"intermediate_size": 2 * h},
}


def build_tiny_model(folder: Path, *, family: str = "llama", n_layers: int = 2, hidden: int = 16,
                     chat_template: str | None = None) -> Path:
    """A random causal LM of one family (a `TINY_FAMILIES` key) and a word-level tokenizer trained on
    the fly, saved as an HF folder."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedTokenizerFast

    specials = ["<pad>", "<s>", "</s>", "<unk>"]
    tok = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    corpus = [" ".join(WORDS), "Answer: OPTIONS: - | : . , \" ? ! ( ) Review Is this positive or negative "
              "Describe meaning representation sentence in one"] * 3
    tok.train_from_iterator(corpus, trainers.WordLevelTrainer(special_tokens=specials))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                   unk_token="<unk>")
    from tokenizers.processors import TemplateProcessing

    fast._tokenizer.post_processor = TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    if chat_template:
        fast.chat_template = chat_template
    torch.manual_seed(0)
    config = AutoConfig.for_model(family, vocab_size=fast.vocab_size, hidden_size=hidden, num_hidden_layers=n_layers,
                                  num_attention_heads=2, max_position_embeddings=256, pad_token_id=0, bos_token_id=1,
                                  eos_token_id=2, **TINY_FAMILIES[family](hidden))
    AutoModelForCausalLM.from_config(config).save_pretrained(folder)
    fast.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture()
def tiny_tasks(tmp_path) -> Path:
    return write_tiny_tasks(tmp_path / "tasks")


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("MOSSA_CACHE", str(os.environ.get("MOSSA_TEST_CACHE") or tmp_path_factory.getbasetemp() /
                                          "mossa-cache"))
    monkeypatch.delenv("MOSSA_TASKS_DIR", raising=False)


@pytest.fixture()
def sentiment_prompts(tiny_model, tiny_tasks):
    """The tiny model loaded in float32 and its plain prompts of tiny_sentiment's test split."""
    from mossa.models import load_model, resolve_model
    from mossa.tasks import PromptBuilder, load_tasks

    loaded = load_model(resolve_model(str(tiny_model)), dtype="float32", device="cpu")
    task = load_tasks(tiny_tasks, ["tiny_sentiment"])[0]
    prompts = PromptBuilder(loaded.tokenizer, cue="Answer:", max_prompt_tokens=64,
                            max_target_tokens=8).build_all(task, task.split("test"))
    return loaded, prompts
