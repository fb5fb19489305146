"""The logit lens against the model's own outputs, and its table."""

import numpy as np
import pytest
import torch

from mossa.extraction import extract
from mossa.lens import LENS_COLUMNS, LogitLens, lens_table
from mossa.models import AdapterHost


@pytest.fixture()
def setup(sentiment_prompts):
    loaded, prompts = sentiment_prompts
    return loaded, prompts


def _reference(loaded, prompt):
    """HF's own hidden states and next-token logits of one unpadded prompt."""
    with torch.inference_mode():
        out = loaded.model(input_ids=torch.tensor([prompt.prompt_ids]), output_hidden_states=True)
    return torch.stack([h[0, -1] for h in out.hidden_states]), out.logits[0, -1].float()


def test_last_layer_is_the_models_next_token_distribution(setup):
    loaded, prompts = setup
    lens = LogitLens(loaded.model, loaded.final_norm, slice=7)  # slices that do not divide the vocabulary
    for p in prompts[:4]:
        states, logits = _reference(loaded, p)
        values, last = lens(states[:, None], torch.tensor([p.target_ids[0]]), [[o[0] for o in p.option_ids]], [p.gold])
        ref = torch.log_softmax(logits, -1)
        torch.testing.assert_close(last[0], ref, atol=1e-5, rtol=0)
        assert abs(values["logprob"][-1, 0] - ref[p.target_ids[0]].item()) < 1e-5
        assert values["rank"][-1, 0] == 1 + int((logits > logits[p.target_ids[0]]).sum())
        first = [o[0] for o in p.option_ids]
        assert values["option_hit"][-1, 0] == float(int(np.argmax(logits[first].numpy())) == p.gold)


def test_inner_layers_go_through_the_final_norm_and_head(setup):
    loaded, prompts = setup
    p = prompts[0]
    states, _ = _reference(loaded, p)
    values, _ = LogitLens(loaded.model, loaded.final_norm)(states[:, None], torch.tensor([p.target_ids[0]]),
                                                           [None], [None])
    with torch.inference_mode():
        for layer in range(len(states) - 1):
            lp = torch.log_softmax(loaded.model.lm_head(loaded.final_norm(states[layer])).float(), -1)
            assert abs(values["logprob"][layer, 0] - lp[p.target_ids[0]].item()) < 1e-5
    assert np.isnan(values["option_hit"]).all()  # no options: no option accuracy


def test_ties_share_the_hit():
    """Two options with the same first token tie: the gold one scores 1/2."""
    lm = torch.nn.Linear(2, 3, bias=False)
    lm.weight.data = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]])
    model = type("M", (torch.nn.Module,), {"get_output_embeddings": lambda self: lm,
                                           "config": type("C", (), {"get_text_config": lambda self: self})()})()
    states = torch.tensor([[[2.0, 1.0]], [[2.0, 1.0]]])
    values, _ = LogitLens(model, torch.nn.Identity())(states, torch.tensor([0]), [[0, 0, 1]], [1])
    assert values["option_hit"][0, 0] == 0.5 and values["rank"][0, 0] == 1


def test_extraction_records_the_lens_and_the_table_summarises_it(setup):
    loaded, prompts = setup
    acts = extract(AdapterHost(loaded), None, prompts, token_budget=64, eval_rows=5)
    lens = acts.evaluation["lens"]
    assert np.asarray(lens["logprob"]).shape == (loaded.n_layers + 1, 5)
    states, logits = _reference(loaded, prompts[3])
    ref = torch.log_softmax(logits, -1)[prompts[3].target_ids[0]].item()
    assert abs(lens["logprob"][-1][3] - ref) < 1e-5
    table = lens_table({("tiny_sentiment", "base"): acts.evaluation, ("tiny_sentiment", "experimental"): None},
                       {"tiny_sentiment": "Sentiment"})
    assert list(table.columns) == LENS_COLUMNS and len(table) == loaded.n_layers + 1
    assert (table["n_examples"] == 5).all() and table["option_accuracy"].between(0, 1).all()
    assert abs(table["logprob"].iloc[-1] - np.mean(lens["logprob"][-1])) < 1e-12
    no_lens = extract(AdapterHost(loaded), None, prompts, token_budget=64, lens=False).evaluation
    assert "lens" not in no_lens and no_lens["option_loglik"] == extract(
        AdapterHost(loaded), None, prompts, token_budget=64).evaluation["option_loglik"]
