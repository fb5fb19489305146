import pytest
from transformers import AutoTokenizer

from mossa.errors import MossaError
from mossa.tasks import PromptBuilder, load_tasks, sample_split


@pytest.fixture()
def tok(tiny_model):
    t = AutoTokenizer.from_pretrained(tiny_model)
    t.padding_side = "left"
    return t


@pytest.fixture()
def sentiment(tiny_tasks):
    return load_tasks(tiny_tasks, ["tiny_sentiment"])[0]


def test_every_prompt_ends_with_the_same_cue(tok, sentiment):
    b = PromptBuilder(tok, cue="Answer:", max_prompt_tokens=200, max_target_tokens=8)
    prompts = b.build_all(sentiment, sentiment.split("test"))
    cue_ids = tok("Answer:", add_special_tokens=False)["input_ids"]
    assert all(p.prompt_ids[-len(cue_ids):] == cue_ids for p in prompts)
    assert all(p.target_ids[-1] == tok.eos_token_id for p in prompts)
    assert b.mode == "plain"


def test_truncation_cuts_the_input_field_not_the_cue(tok, sentiment):
    ex = max(sentiment.split("train"), key=lambda e: len(e.fields["sentence"]))
    full = PromptBuilder(tok, cue="Answer:", max_prompt_tokens=500, max_target_tokens=8).build(sentiment, ex)
    limit = len(full.prompt_ids) - 4
    short = PromptBuilder(tok, cue="Answer:", max_prompt_tokens=limit, max_target_tokens=8).build(sentiment, ex)
    assert len(short.prompt_ids) <= limit
    assert short.n_cut_tokens > 0
    assert short.prompt_ids[-6:] == full.prompt_ids[-6:]  # options and cue intact
    assert short.prompt_ids[:3] == full.prompt_ids[:3]


def test_chat_template_is_used_when_present(tiny_model, sentiment):
    tok = AutoTokenizer.from_pretrained(tiny_model)
    tok.chat_template = ("{% for m in messages %}<s> {{ m['content'] }} </s>{% endfor %}"
                         "{% if add_generation_prompt %} Answer:{% endif %}")
    b = PromptBuilder(tok, cue="IGNORED", max_prompt_tokens=200, max_target_tokens=8)
    p = b.build(sentiment, sentiment.split("test")[0])
    assert b.mode == "chat_template"
    assert tok.decode(p.prompt_ids).replace(" ", "").endswith("</s>Answer:")
    assert p.prompt_ids[0] == tok.bos_token_id and p.prompt_ids[1] != tok.bos_token_id  # no double BOS
    off = PromptBuilder(tok, cue="Answer:", max_prompt_tokens=200, max_target_tokens=8, use_chat_template=False)
    assert off.mode == "plain"


def test_sampling_is_deterministic_and_seeded(sentiment):
    a = [e.id for e in sample_split(sentiment, "train", 10, seed=1)]
    assert a == [e.id for e in sample_split(sentiment, "train", 10, seed=1)]
    assert a != [e.id for e in sample_split(sentiment, "train", 10, seed=2)]
    assert len(set(a)) == 10
    assert len(sample_split(sentiment, "train", 10_000, seed=1)) == len(sentiment.split("train"))


def test_empty_split_is_an_error(sentiment):
    with pytest.raises(MossaError, match="split 'validation' of task 'tiny_sentiment' is empty"):
        sample_split(sentiment, "validation", 5, seed=0)
