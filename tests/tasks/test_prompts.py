import hashlib
import json
import math
import random
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from mossa.errors import MossaError
from mossa.tasks import (
    CHAT_TEMPLATES,
    Example,
    PromptBuilder,
    PromptFormat,
    Template,
    build_task,
    load_sni_task,
    load_tasks,
    resolve_format,
    sample_split,
)
from mossa.tasks._formats import LLAMA2_SYSTEM
from tests.conftest import WORDS


@pytest.fixture()
def tok(tiny_model):
    t = AutoTokenizer.from_pretrained(tiny_model)
    t.padding_side = "left"
    return t


@pytest.fixture()
def sentiment(tiny_tasks):
    return load_tasks(tiny_tasks, ["tiny_sentiment"])[0]


def _words(rng, n):
    return " ".join(rng.choice(WORDS) for _ in range(n))


def pair_task(lengths, *, cut_fields=("premise", "other")):
    """A task of two truncatable fields, a short kept field and options, one example per length pair."""
    rng = random.Random(0)
    examples = [Example(id=f"pair:test:{i}", split="test", target="good",
                        fields={"premise": _words(rng, a), "other": _words(rng, b), "question": "is it good"},
                        options=("bad", "good"))
                for i, (a, b) in enumerate(lengths)]
    template = Template(text="Text: {premise}\nMore: {other}\nQuestion: {question}? Pick one.\n{options}",
                        truncate=tuple(cut_fields), origin="test")
    return build_task("pair", "Test", Path("pair.jsonl"), {"test": examples}, hashlib.sha256(b"pair"),
                      templates=(template,))


def test_every_prompt_ends_with_the_same_cue(tok, sentiment):
    b = PromptBuilder(tok, cue="Answer:", max_prompt_tokens=200, max_target_tokens=8)
    prompts = b.build_all(sentiment, sentiment.split("test"))
    cue_ids = tok("Answer:", add_special_tokens=False)["input_ids"]
    assert all(p.prompt_ids[-len(cue_ids):] == cue_ids for p in prompts)
    assert all(p.target_ids[-1] == tok.eos_token_id for p in prompts)
    assert b.mode == "plain"


def test_truncation_shares_the_budget_and_never_cuts_below_the_floor(tok):
    rng = random.Random(1)
    task = pair_task([(rng.randint(1, 60), rng.randint(1, 60)) for _ in range(120)])
    for budget in (30, 45, 60, 90):
        for floor in (0.5, 0.25, 0.01):
            b = PromptBuilder(tok, max_prompt_tokens=budget, max_target_tokens=4, floor=floor)
            for ex in task.split("test"):
                p = b.build(task, ex)
                if p is None:
                    continue
                assert len(p.prompt_ids) <= budget
                assert p.body.endswith("Question: is it good? Pick one.\nOPTIONS:\n- bad\n- good")  # never cut
                for field, share in p.kept.items():
                    n = len(tok(ex.fields[field], add_special_tokens=False)["input_ids"])
                    assert math.ceil(floor * n) / n - 1e-4 <= share < 1 and share > 0, (field, share, floor)
                    kept_text = p.body.split("Text: " if field == "premise" else "More: ")[1].split("\n")[0]
                    assert kept_text.endswith(" ...") and kept_text[:-4].strip()  # never cut to nothing
                    assert ex.fields[field].startswith(kept_text[:-4])
                if len(p.kept) == 2:  # both cut: the same share of each, up to rounding
                    lens = [len(tok(ex.fields[f], add_special_tokens=False)["input_ids"]) for f in p.kept]
                    assert abs(p.kept["premise"] - p.kept["other"]) <= 1 / min(lens) + 1e-9
                for field in set(ex.fields) - set(p.kept):
                    assert ex.fields[field] in p.body


def test_an_unfittable_prompt_is_replaced_by_the_next_and_counted(tok):
    lengths = [(40, 40) if i % 3 == 0 else (3, 3) for i in range(30)]
    task = pair_task(lengths)
    b = PromptBuilder(tok, max_prompt_tokens=40, max_target_tokens=4)
    assert b.build(task, task.split("test")[0]) is None  # 80 words cannot keep half of each in 40 tokens
    sample = b.draw(task, "test", 12, seed=0)
    assert len(sample.prompts) == 12 and all(len(p.prompt_ids) <= 40 for p in sample.prompts)
    long_ids = {ex.id for ex, (a, _) in zip(task.split("test"), lengths) if a == 40}
    assert set(sample.left_out) <= long_ids and sample.left_out
    assert not long_ids & {p.id for p in sample.prompts}
    assert sample.examined == 12 + len(sample.left_out)
    stats = sample.stats()
    assert stats["left_out"] == len(sample.left_out) and stats["n"] == 12 and stats["uncut_share"] == 1.0
    order = [ex.id for ex in sample_split(task, "test", 30, seed=0)]
    assert [p.id for p in sample.prompts] == [i for i in order if i in {p.id for p in sample.prompts}]
    again = b.draw(task, "test", 12, seed=0)
    assert [p.id for p in again.prompts] == [p.id for p in sample.prompts]  # deterministic
    with pytest.raises(MossaError, match="no test prompt of task 'pair' fits max_prompt_tokens=20"):
        PromptBuilder(tok, max_prompt_tokens=20, max_target_tokens=4).draw(pair_task([(40, 40)] * 3), "test", 2, 0)


def test_a_prompt_with_nothing_to_cut_is_left_out_not_kept_over_budget(tok):
    task = pair_task([(30, 30)], cut_fields=("premise",))
    b = PromptBuilder(tok, max_prompt_tokens=30, max_target_tokens=4)
    assert b.build(task, task.split("test")[0]) is None


def test_targets_end_with_eos_only_when_they_fit_the_limit(tok):
    b = PromptBuilder(tok, max_prompt_tokens=64, max_target_tokens=4)
    assert b.encode_target("good bad") == tok(" good bad", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    assert b.encode_target("good bad good bad good") == tok(" good bad good bad", add_special_tokens=False)["input_ids"]


def test_sni_demonstrations_fall_back_to_fewer_and_prompts_stay_distinct(tok, tmp_path):
    rng = random.Random(3)
    demo = {"input": _words(rng, 15), "output": [_words(rng, 5)]}
    data = {"Definition": ["Describe the movie in one sentence."], "Categories": ["Misc"],
            "Positive Examples": [demo, dict(demo)], "Negative Examples": [],
            "Instances": [{"id": f"i{i}", "input": _words(rng, rng.randint(3, 60)), "output": ["good"]}
                          for i in range(40)]}
    path = tmp_path / "task999_demos.json"
    path.write_text(json.dumps(data))
    task = load_sni_task("task999_demos", path)
    b = PromptBuilder(tok, max_prompt_tokens=96, max_target_tokens=4)
    prompts = b.build_all(task, task.split("train") + task.split("test"))
    assert len({p.text for p in prompts}) == len(prompts) > 30
    assert all(len(p.prompt_ids) <= 96 for p in prompts)
    assert {p.shorter for p in prompts} >= {0, 1}  # short inputs keep both demonstrations
    assert all(p.kept.get("input", 1) >= 0.5 for p in prompts)


def test_chat_template_from_a_file_wraps_a_base_models_prompts(tok, sentiment, tmp_path):
    path = tmp_path / "turns.jinja"
    path.write_text("{% for m in messages %}<s> {{ m['role'] }} : {{ m['content'] }} </s>{% endfor %}"
                    "{% if add_generation_prompt %} assistant :{% endif %}")
    assert not tok.chat_template  # the tiny base model has none of its own
    fmt = resolve_format("chat", cue="Answer:", template=str(path), system_prompt=None, own_template=None)
    b = PromptBuilder(tok, fmt, max_prompt_tokens=200, max_target_tokens=8)
    p = b.build(sentiment, sentiment.split("test")[0])
    assert p.text.startswith("<s> user : ") and p.text.endswith("</s> assistant :")
    assert p.prompt_ids[0] == tok.bos_token_id and p.prompt_ids[1] != tok.bos_token_id  # no double BOS
    assert p.target_ids[-1] == tok.convert_tokens_to_ids("</s>")  # the template's end of turn
    assert fmt.describe()["chat_template"] == "file:turns.jinja"


def test_llama2_format_with_its_default_system_prompt():
    fmt = resolve_format("chat", cue="Answer:", template="llama-2", system_prompt=None, own_template=None)
    assert fmt.text("Is it good?") == f"[INST] <<SYS>>\n{LLAMA2_SYSTEM}\n<</SYS>>\n\nIs it good? [/INST]"
    assert fmt.target_parts(eos_token="</s>") == (" ", " </s>")
    quiet = resolve_format("chat", cue="Answer:", template="llama-2", system_prompt="", own_template=None)
    assert quiet.text("Hi") == "[INST] Hi [/INST]" and quiet.describe()["system_prompt"] is None
    plain = PromptFormat("plain", cue="Answer:", system_prompt="Be brief.")
    assert plain.text("Hi") == "Be brief.\n\nHi\nAnswer:"
    assert "llama-2" in CHAT_TEMPLATES and "chatml" in CHAT_TEMPLATES


def test_format_resolution_and_errors():
    own = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    assert resolve_format("auto", cue="A:", template=None, system_prompt=None, own_template=None).mode == "plain"
    assert resolve_format("auto", cue="A:", template=None, system_prompt=None, own_template=own).template.jinja == own
    with pytest.raises(MossaError, match="the base model has no chat template of its own"):
        resolve_format("chat", cue="A:", template=None, system_prompt=None, own_template=None)
    with pytest.raises(MossaError, match="unknown chat template 'lama-2'.*did you mean llama-2"):
        resolve_format("chat", cue="A:", template="lama-2", system_prompt=None, own_template=None)
    with pytest.raises(MossaError, match=r"nope\.jinja: cannot read the chat template"):
        resolve_format("chat", cue="A:", template="nope.jinja", system_prompt=None, own_template=None)


def test_reencode_keeps_the_text_for_another_tokenizer(tok, sentiment):
    b = PromptBuilder(tok, max_prompt_tokens=200, max_target_tokens=8)
    p = b.build(sentiment, sentiment.split("test")[0])
    other = PromptBuilder(tok, PromptFormat("plain", cue="Other:"), max_prompt_tokens=200, max_target_tokens=8)
    same = other.reencode(p)
    assert same.text == p.text and same.prompt_ids == p.prompt_ids
    assert other.reencode(p, rewrap=True).text.endswith("\nOther:")


def test_sampling_is_deterministic_and_seeded(sentiment):
    a = [e.id for e in sample_split(sentiment, "train", 10, seed=1)]
    assert a == [e.id for e in sample_split(sentiment, "train", 10, seed=1)]
    assert a != [e.id for e in sample_split(sentiment, "train", 10, seed=2)]
    assert len(set(a)) == 10
    assert len(sample_split(sentiment, "train", 10_000, seed=1)) == len(sentiment.split("train"))


def test_empty_split_is_an_error(sentiment):
    with pytest.raises(MossaError, match="split 'validation' of task 'tiny_sentiment' is empty"):
        sample_split(sentiment, "validation", 5, seed=0)
