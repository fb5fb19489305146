"""Continuing a batch of prompts from their key/value cache: scoring given continuations (the
options of a task, its target) and greedy decoding.

The prompt runs once (the extraction's forward pass, with `use_cache=True`); each
continuation then costs only its own tokens. The batch is left-padded, so every prompt ends in
the same column and a continuation of row i is appended after it with positions continuing
row i's. Continuations of different lengths are right-padded: a pad after the real tokens
changes nothing before it under causal attention, and its outputs are not read.
"""

from __future__ import annotations

import copy
import inspect
from typing import Callable

import torch

from mossa.models._forward import Batch, head_logits, logsumexp


def kv_cache(out):
    """The key/value cache of a forward output (`cache` from transformers 5.2x on, `past_key_values` before)."""
    return out["cache"] if "cache" in out.keys() else out["past_key_values"]


def _continue(model: torch.nn.Module, cache, **inputs):
    """The decoder body on `inputs` after `cache` (whichever keyword this transformers names it by)."""
    body = model.base_model
    key = "cache" if "cache" in inspect.signature(body.forward).parameters else "past_key_values"
    return body(**inputs, **{key: cache}, use_cache=True).last_hidden_state


def select_rows(cache, rows: torch.Tensor):
    """A new cache holding rows `rows` of `cache` (repeats allowed); `cache` is left as it was."""
    out = copy.copy(cache)
    out.layers = [copy.copy(layer) for layer in cache.layers]
    for layer in out.layers:
        layer.batch_select_indices(rows)
    return out


def _next_positions(batch: Batch, rows: torch.Tensor, width: int) -> torch.Tensor:
    """Position ids of `width` tokens appended after each of `rows`' prompts."""
    start = batch.position_ids[rows, -1] + 1
    return start[:, None] + torch.arange(width, device=start.device)[None, :]


def score_continuations(model: torch.nn.Module, cache, batch: Batch, first_logprobs: torch.Tensor,
                        rows: list[int], continuations: list[list[int]], *, chunk: int = 256) -> list[torch.Tensor]:
    """Log-probability of each token of each continuation given its prompt, float32.

    Parameters
    ----------
    model : the causal LM the cache came from
    cache : transformers Cache
        The prompts' key/value cache (`body_forward(..., use_cache=True)` on `batch`); not modified.
    batch : Batch
        The left-padded prompt batch.
    first_logprobs : torch.Tensor [b, vocab]
        Log-softmax of the next-token logits at each row's last prompt token (they score each
        continuation's first token).
    rows, continuations
        One entry per continuation: the batch row it continues and its token ids (non-empty).

    Returns
    -------
    list of torch.Tensor
        Per continuation, [len] log-probabilities of its tokens.
    """
    if not rows:
        return []
    device = batch.input_ids.device
    idx = torch.tensor(rows, dtype=torch.long, device=device)
    lengths = [len(c) for c in continuations]
    width = max(lengths)
    ids = torch.zeros((len(rows), width), dtype=torch.long, device=device)
    real = torch.zeros((len(rows), width), dtype=torch.long, device=device)
    for i, c in enumerate(continuations):
        ids[i, :len(c)] = torch.tensor(c, dtype=torch.long)
        real[i, :len(c)] = 1
    first = first_logprobs[idx, ids[:, 0]]
    out = [first[i:i + 1] for i in range(len(rows))]
    if width == 1:
        return out
    hidden = _continue(model, select_rows(cache, idx), input_ids=ids[:, :-1],
                       attention_mask=torch.cat([batch.attention_mask[idx], real[:, :-1]], 1),
                       position_ids=_next_positions(batch, idx, width - 1))  # [n, width - 1, d]
    r, j = torch.nonzero(real[:, 1:], as_tuple=True)  # token j + 1 of continuation r, predicted at position j
    picked = torch.empty(len(r), dtype=torch.float32, device=device)
    for s in range(0, len(r), chunk):
        logits = head_logits(model, hidden[r[s:s + chunk], j[s:s + chunk]])
        token = logits.gather(1, ids[r[s:s + chunk], j[s:s + chunk] + 1, None])[:, 0]
        picked[s:s + chunk] = token - logsumexp(logits)
    rest = torch.split(picked, [n - 1 for n in lengths])
    return [torch.cat([out[i], rest[i]]) for i in range(len(rows))]


def greedy_decode(model: torch.nn.Module, cache, batch: Batch, first_logits: torch.Tensor, *, max_new_tokens: int,
                  is_stop: Callable[[list[int]], bool]) -> list[list[int]]:
    """Greedy continuation of every row of `batch`, as `model.generate(do_sample=False)` decodes it.

    A row ends at the first token for which `is_stop(tokens so far)` is true (the token is kept)
    or after `max_new_tokens`; decoding stops once every row has ended. `cache` (the prompts' key/value
    cache) is consumed: it holds the generated tokens afterwards.

    Returns
    -------
    list of list of int
        Per row, the generated token ids.
    """
    device = batch.input_ids.device
    n = batch.input_ids.shape[0]
    rows = torch.arange(n, device=device)
    tokens = first_logits.argmax(-1)
    out: list[list[int]] = [[] for _ in range(n)]
    done = [False] * n
    mask = batch.attention_mask
    for step in range(max_new_tokens):
        for i, t in enumerate(tokens.tolist()):
            if not done[i]:
                out[i].append(t)
                done[i] = is_stop(out[i])
        if all(done) or step == max_new_tokens - 1:
            break
        mask = torch.cat([mask, torch.ones((n, 1), dtype=mask.dtype, device=device)], 1)
        hidden = _continue(model, cache, input_ids=tokens[:, None], attention_mask=mask,
                           position_ids=_next_positions(batch, rows, 1) + step)
        tokens = head_logits(model, hidden[:, -1]).argmax(-1)
    return out


class AnswerStop:
    """Where a generated answer ends: at one of the format's end-of-answer tokens (EOS in plain
    mode, the chat template's end of turn in chat mode, EOS in either) or, with `one_line`, at the
    first line break after some text (a plain-text answer is one line: what follows is the model
    writing on, a new question or example; line breaks before any text are skipped). Called on a
    row's tokens so far, it says whether the last one ends the answer.
    """

    def __init__(self, tokenizer, end_ids: list[int], *, one_line: bool):
        self.tok = tokenizer
        self.end = set(end_ids[:1]) | ({tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set())
        self.one_line = one_line

    def __call__(self, ids: list[int]) -> bool:
        if ids[-1] in self.end:
            return True
        return self.one_line and "\n" in self.tok.decode(ids).strip()

    def text(self, ids: list[int]) -> str:
        """The answer text of generated `ids`: up to its end token or (one line) its first line, stripped."""
        if ids and ids[-1] in self.end:
            ids = ids[:-1]
        text = self.tok.decode(ids, skip_special_tokens=True).strip()
        return text.split("\n", 1)[0].strip() if self.one_line else text
