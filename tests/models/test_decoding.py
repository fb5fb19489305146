"""Continuations from the prompt cache against independent references, in every tiny family:
option scores equal full forwards of prompt+option, greedy answers equal `model.generate`."""

import numpy as np
import pytest
import torch

from mossa.extraction import extract
from mossa.models import AdapterHost, body_forward, collate, greedy_decode, head_logits, kv_cache, load_model, resolve_model
from mossa.tasks import PromptBuilder, load_tasks
from tests.conftest import TINY_FAMILIES, build_tiny_model, write_tiny_tasks


@pytest.fixture(scope="module", params=sorted(TINY_FAMILIES))
def family(request, tmp_path_factory):
    folder = build_tiny_model(tmp_path_factory.mktemp(request.param), family=request.param, n_layers=2, hidden=16)
    loaded = load_model(resolve_model(str(folder)), dtype="float32", device="cpu")
    tasks = {t.name: t for t in load_tasks(write_tiny_tasks(tmp_path_factory.mktemp("tasks"), n_train=4, n_test=8))}
    builder = PromptBuilder(loaded.tokenizer, cue="Answer:", max_prompt_tokens=48, max_target_tokens=8)
    prompts = {name: builder.build_all(t, t.split("test")) for name, t in tasks.items()}
    return loaded, prompts


def _logprobs(model, ids: list[int], start: int) -> np.ndarray:
    """Log-probabilities of ids[start:] from one unpadded forward pass of all of `ids`."""
    with torch.inference_mode():
        logits = model(input_ids=torch.tensor([ids])).logits[0].float()
    lp = torch.log_softmax(logits, -1)
    return np.array([lp[j - 1, ids[j]].item() for j in range(start, len(ids))])


def test_option_scores_from_the_cache_equal_full_forwards(family):
    loaded, prompts = family
    ps = prompts["tiny_sentiment"]
    record = extract(AdapterHost(loaded), None, ps, token_budget=64).evaluation  # several rows per batch
    for i, p in enumerate(ps):
        for k, ids in enumerate(p.option_ids):
            ref = _logprobs(loaded.model, p.prompt_ids + list(ids), len(p.prompt_ids))
            content = ref[:len(ref) - p.option_end[k]]
            assert abs(record["option_loglik"][i][k] - content.sum()) < 1e-5
            if k == p.gold:
                assert abs(record["nll"][i] + ref.sum()) < 1e-5
                assert abs(record["nll_no_end"][i] + content.sum()) < 1e-5
        assert record["gold"][i] == p.options.index(p.target) and record["generated"][i] is None


def test_target_scores_of_open_tasks_equal_full_forwards(family):
    loaded, prompts = family
    ps = prompts["tiny_struct"]
    acts = extract(AdapterHost(loaded), None, ps, token_budget=64)
    for i, p in enumerate(ps):
        ref = _logprobs(loaded.model, p.prompt_ids + p.target_ids, len(p.prompt_ids))
        assert abs(acts.target_nll[i] + ref.sum()) < 1e-5
        assert abs(acts.evaluation["nll_no_end"][i] + ref[:len(ref) - p.target_end].sum()) < 1e-5


@pytest.mark.parametrize("stop_early", [False, True])
def test_greedy_decoding_equals_generate_token_for_token(family, stop_early):
    loaded, prompts = family
    ps, model, tok = prompts["tiny_struct"], loaded.model, loaded.tokenizer
    with torch.inference_mode():
        refs = [model.generate(input_ids=torch.tensor([p.prompt_ids]), attention_mask=torch.ones(1, len(p.prompt_ids),
                               dtype=torch.long), do_sample=False, max_new_tokens=6, eos_token_id=tok.eos_token_id,
                               pad_token_id=tok.pad_token_id)[0, len(p.prompt_ids):].tolist() for p in ps]
        stops = {tok.eos_token_id}
        if stop_early:  # the tokens the model writes third: every row ends early, at different steps
            stops |= {r[2] for r in refs}
            refs = [model.generate(input_ids=torch.tensor([p.prompt_ids]),
                                   attention_mask=torch.ones(1, len(p.prompt_ids), dtype=torch.long), do_sample=False,
                                   max_new_tokens=6, eos_token_id=sorted(stops),
                                   pad_token_id=tok.pad_token_id)[0, len(p.prompt_ids):].tolist() for p in ps]
        batch = collate(ps, tok.pad_token_id, loaded.device, with_targets=False)  # left-padded, mixed lengths
        out = body_forward(model, batch, output_hidden_states=False, use_cache=True)
        first = head_logits(model, out.last_hidden_state[:, -1])
        mine = greedy_decode(model, kv_cache(out), batch, first, max_new_tokens=6, is_stop=lambda ids: ids[-1] in stops)
    for ref, got in zip(refs, mine):
        end = next((j + 1 for j, t in enumerate(ref) if t in stops), len(ref))
        assert got == ref[:end]
    assert not stop_early or all(len(g) <= 3 for g in mine)


def test_generated_answers_are_recorded_as_text(family):
    loaded, prompts = family
    ps = prompts["tiny_struct"]
    record = extract(AdapterHost(loaded), None, ps, token_budget=64, max_new_tokens=5).evaluation
    assert all(isinstance(g, str) for g in record["generated"]) and all(o is None for o in record["option_loglik"])
    assert all(len(loaded.tokenizer(g, add_special_tokens=False)["input_ids"]) <= 5 for g in record["generated"])


def test_a_plain_answer_ends_at_its_first_line_break_after_some_text():
    from mossa.models import AnswerStop

    pieces = {0: "\n", 1: " Paris", 2: ".", 3: "\nQuestion", 4: "</s>"}
    tok = type("T", (), {"eos_token_id": 4, "decode": lambda self, ids, skip_special_tokens=False: "".join(
        pieces[i] for i in ids if not (skip_special_tokens and i == 4))})()
    stop = AnswerStop(tok, [4], one_line=True)
    assert not stop([0]) and not stop([0, 1]) and stop([0, 1, 2, 3])  # a leading line break is skipped
    assert stop([1, 4]) and stop.text([0, 1, 2, 3]) == "Paris." and stop.text([1, 2, 4]) == "Paris."
    chat = AnswerStop(tok, [4], one_line=False)
    assert not chat([0, 1, 2, 3]) and chat.text([1, 3, 4]) == "Paris\nQuestion"
