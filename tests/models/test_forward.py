"""Left padding, position ids and target-only logits must not change what a model computes."""

import numpy as np
import torch

from mossa.models import load_model, resolve_model
from mossa.models import body_forward, collate, length_batches, target_nll
from mossa.tasks import Prompt


def _prompts():
    return [Prompt("a", [1, 5, 6, 7, 8, 9, 10], [11, 2], 0), Prompt("b", [1, 5, 6], [12, 13, 2], 0)]


def test_padded_batch_equals_single_rows(tiny_model):
    loaded = load_model(resolve_model(str(tiny_model)), dtype="float32", device="cpu")
    model = loaded.model
    prompts = _prompts()
    with torch.inference_mode():
        batch = collate(prompts, 0, loaded.device)
        out = body_forward(model, batch, output_hidden_states=True)
        nll = target_nll(model, out.last_hidden_state, batch)
        for i, p in enumerate(prompts):
            single = collate([p], 0, loaded.device)
            one = body_forward(model, single, output_hidden_states=True)
            for h_b, h_1 in zip(out.hidden_states, one.hidden_states):
                np.testing.assert_allclose(h_b[i, batch.last_prompt[i]].numpy(),
                                           h_1[0, single.last_prompt[0]].numpy(), atol=1e-5)
            one_nll = target_nll(model, one.last_hidden_state, single)
            np.testing.assert_allclose(nll[batch.target_rows == i].numpy(), one_nll.numpy(), atol=1e-5)


def test_target_nll_matches_full_logits(tiny_model):
    loaded = load_model(resolve_model(str(tiny_model)), dtype="float32", device="cpu")
    p = _prompts()[0]
    batch = collate([p], 0, loaded.device)
    with torch.inference_mode():
        logits = loaded.model(input_ids=batch.input_ids).logits[0]
        nll = target_nll(loaded.model, body_forward(loaded.model, batch, output_hidden_states=False)
                         .last_hidden_state, batch)
    start = len(p.prompt_ids) - 1
    ref = torch.nn.functional.cross_entropy(logits[start:start + len(p.target_ids)], torch.tensor(p.target_ids),
                                            reduction="none")
    np.testing.assert_allclose(nll.numpy(), ref.numpy(), atol=1e-5)


def test_length_batches_respect_budget_and_cover_all():
    prompts = [Prompt(str(i), [1] * (3 + i % 7), [2], 0) for i in range(40)]
    batches = length_batches(prompts, token_budget=32)
    assert sorted(i for b in batches for i in b) == list(range(40))
    for b in batches:
        assert max(len(prompts[i].prompt_ids) + 1 for i in b) * len(b) <= 32 or len(b) == 1


def test_chunked_target_nll_equals_one_pass(tiny_model):
    loaded = load_model(resolve_model(str(tiny_model)), dtype="float32", device="cpu")
    batch = collate(_prompts(), 0, loaded.device)
    with torch.inference_mode():
        h = body_forward(loaded.model, batch, output_hidden_states=False).last_hidden_state
        np.testing.assert_allclose(target_nll(loaded.model, h, batch, chunk=2).numpy(),
                                   target_nll(loaded.model, h, batch, chunk=1000).numpy(), atol=1e-6)


def test_logsumexp_matches_float64_on_logits_hundreds_apart():
    """The floored log-sum-exp is float32-exact where most terms would be subnormal."""
    from mossa.models import log_softmax, logsumexp
    z = torch.randn(64, 50_000, generator=torch.Generator().manual_seed(0)) * 120
    exact = torch.logsumexp(z.double(), -1)
    ulp = 1e-6 * float(z.abs().max())  # about 8 float32 ulps at the largest logit
    assert (logsumexp(z).double() - exact).abs().max() < ulp
    assert (log_softmax(z).double() - (z.double() - exact[:, None])).abs().max() < 2 * ulp
    assert torch.allclose(logsumexp(torch.zeros(3, 1000)), torch.full((3,), float(np.log(1000))))
