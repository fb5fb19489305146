"""Last-prompt-token hidden states at every layer and, on the evaluated prompts, everything that
says how well the model does the task: the test loss, the options' log-likelihoods, a greedy
answer, and the logit lens of every layer.

Stage: extraction (reads prompts and the loaded base + adapters; the caller stores the result).

Each prompt runs once. On an evaluated prompt (the first `eval_rows` of the sample) that pass
keeps its key/value cache, and everything else continues from it: each option (and the
target, when it is not an option) is scored token by token from the cache, and a task without
options is answered by greedy decoding from the same cache. The lens reads the states already in
memory through the final norm and the output head; its last layer is the model's next-token
distribution, which scores every continuation's first token. The other prompts run without a
cache and without any LM head. Each batch's rows go to a sink as soon as they exist: the
store's writer puts them on disk from a background thread while the next batch runs. Batches
are length-sorted under a token budget, left-padded, with position ids taken from the
attention mask.

Layer 0 is the embedding output; layer L (the last) is after the final norm in the Hugging
Face convention (`last_layer="post_norm"`) or the last block's output (`"pre_norm"`).
"""

from __future__ import annotations

import numpy as np
import torch

from mossa.lens import LogitLens
from mossa.models import (
    AdapterHost,
    AnswerStop,
    Batch,
    body_forward,
    collate,
    greedy_decode,
    head_logits,
    kv_cache,
    length_batches,
    log_softmax,
    score_continuations,
    select_rows,
)
from mossa.store import Activations
from mossa.tasks import Prompt


class ArraySink:
    """Collects extracted rows in memory (for tests and small runs); `activations()` returns them."""

    def __init__(self, ids: list[str], n_states: int, hidden: int):
        self.ids = ids
        self.acts = np.empty((n_states, len(ids), hidden), dtype=np.float32)
        self.target_nll = self.target_tokens = self.evaluation = None

    def put(self, rows, states: np.ndarray) -> None:
        self.acts[:, rows] = states

    def finish(self, target_nll, target_tokens, evaluation: dict | None = None) -> None:
        self.target_nll, self.target_tokens, self.evaluation = target_nll, target_tokens, evaluation


class _Evaluation:
    """The evaluated prompts' per-example record, filled batch by batch (see `evaluation` in the store)."""

    def __init__(self, prompts: list[Prompt], n_states: int, n_lens: int, score: bool):
        n = len(prompts)
        self.prompts, self.scored = prompts, score
        self.nll = np.zeros(n)
        self.nll_tokens = np.zeros(n, dtype=np.int64)
        self.nll_no_end = np.zeros(n)
        self.nll_no_end_tokens = np.zeros(n, dtype=np.int64)
        self.option_loglik: list = [None] * n
        self.generated: list = [None] * n
        self.lens = {"logprob": np.zeros((n_states, n_lens)), "rank": np.zeros((n_states, n_lens), dtype=np.int64),
                     "option_hit": np.zeros((n_states, n_lens))} if n_lens else None

    def record(self) -> dict:
        ps = self.prompts
        out = {"rows": list(range(len(ps))), "target": [p.target for p in ps]}
        if self.scored:
            out.update(self._scores())
        if self.lens is not None:
            hit = self.lens["option_hit"]
            out["lens"] = {"logprob": self.lens["logprob"].tolist(), "rank": self.lens["rank"].tolist(),
                           "option_hit": [[None if np.isnan(x) else float(x) for x in layer] for layer in hit]}
        return out

    def _scores(self) -> dict:
        ps = self.prompts
        return {
            "nll": self.nll.tolist(), "nll_tokens": self.nll_tokens.tolist(),
            "nll_no_end": self.nll_no_end.tolist(), "nll_no_end_tokens": self.nll_no_end_tokens.tolist(),
            "gold": [p.gold for p in ps], "option_loglik": self.option_loglik,
            "option_tokens": [[len(i) - e for i, e in zip(p.option_ids, p.option_end)] if p.options else None
                              for p in ps],
            "option_chars": [[len(o) for o in p.options] if p.options else None for p in ps],
            "generated": self.generated,
        }


def _nll(token_logprobs: torch.Tensor, end: int) -> tuple[float, float]:
    """Summed NLL of a continuation's tokens, with and without its last `end` tokens (the end of answer)."""
    lp = token_logprobs.double().cpu().numpy()
    return float(-lp.sum()), float(-lp[:len(lp) - end].sum())


def _rows(batch: Batch, idx: torch.Tensor) -> Batch:
    """The prompt rows `idx` of a prompt-only batch."""
    return Batch(input_ids=batch.input_ids[idx], attention_mask=batch.attention_mask[idx],
                 position_ids=batch.position_ids[idx], last_prompt=batch.last_prompt[idx],
                 target_rows=batch.target_rows[:0], target_pos=batch.target_pos[:0], target_ids=batch.target_ids[:0],
                 ids=[batch.ids[i] for i in idx.tolist()])


def _evaluate_batch(model, out, batch: Batch, group: list[Prompt], rows: np.ndarray, states: torch.Tensor,
                    lens: LogitLens | None, stop: AnswerStop, max_new_tokens: int, ev: _Evaluation,
                    score: bool, n_gen: int, n_lens: int) -> None:
    """Lens (rows before `n_lens`), continuation scores and greedy answers (with `score`; answers on rows
    before `n_gen`) of one evaluated batch, into `ev` at `rows`."""
    last = None
    sel = [i for i in range(len(group)) if rows[i] < n_lens]
    if lens is not None and sel:
        gold_first = torch.tensor([group[i].target_ids[0] for i in sel], device=states.device)
        values, lensed_last = lens(states[:, sel], gold_first,
                                   [[o[0] for o in group[i].option_ids] or None for i in sel], [group[i].gold for i in sel])
        for key, value in values.items():
            ev.lens[key][:, rows[sel]] = value
        if len(sel) == len(group):
            last = lensed_last
    if last is None:
        last = log_softmax(head_logits(model, states[-1]))
    if not score:
        return
    owners, conts, where = [], [], []
    for i, p in enumerate(group):
        for k, ids in enumerate(p.option_ids):
            owners.append(i), conts.append(list(ids)), where.append((i, k))
        if not p.options or tuple(p.target_ids) != p.option_ids[p.gold]:
            owners.append(i), conts.append(list(p.target_ids)), where.append((i, None))
    scores = score_continuations(model, kv_cache(out), batch, last, owners, conts)
    loglik: dict[int, list[float]] = {}
    for (i, k), lp in zip(where, scores):
        p, r = group[i], int(rows[i])
        if k is not None:
            loglik.setdefault(i, [0.0] * len(p.options))[k] = -_nll(lp, p.option_end[k])[1]
        if k is None or (k == p.gold and tuple(p.target_ids) == p.option_ids[k]):
            ev.nll[r], ev.nll_no_end[r] = _nll(lp, p.target_end)
            ev.nll_tokens[r], ev.nll_no_end_tokens[r] = len(p.target_ids), len(p.target_ids) - p.target_end
    for i, values in loglik.items():
        ev.option_loglik[int(rows[i])] = values
    open_rows = [i for i, p in enumerate(group) if not p.options and rows[i] < n_gen]
    if open_rows:
        idx = torch.tensor(open_rows, device=states.device)
        whole = len(open_rows) == len(group)
        answers = greedy_decode(model, kv_cache(out) if whole else select_rows(kv_cache(out), idx),
                                batch if whole else _rows(batch, idx), last[idx], max_new_tokens=max_new_tokens,
                                is_stop=stop)
        for i, ids in zip(open_rows, answers):
            ev.generated[int(rows[i])] = stop.text(ids)


def extract(host: AdapterHost, adapter: str | None, prompts: list[Prompt], *, token_budget: int,
            last_layer: str = "post_norm", sink=None, evaluate: bool = True, eval_rows: int | None = None,
            generate_rows: int | None = None, lens_rows: int | None = None, lens: bool = True, score: bool = True,
            answer_end: list[int] | None = None, one_line: bool = True,
            max_new_tokens: int = 32, layers=None, on_batch=None) -> Activations | None:
    """Hidden states of the last prompt token at every layer, [layers+1, n, d] float32, and the
    evaluation record of the first `eval_rows` prompts.

    Parameters
    ----------
    host : AdapterHost
        The loaded base model with its adapters.
    adapter : str or None
        Adapter to run (None = the base model B).
    prompts : list of Prompt
    token_budget : int
        Max padded tokens per prompt batch, evaluated or not: on 2 CPU cores evaluated batches of
        twice the budget left the demo's lensed extraction at 0.73 of the raw pass, against 0.92
        at the budget (`bench/extraction.py`).
    last_layer : {"post_norm", "pre_norm"}
    sink : object with put(rows, states) and finish(target_nll, target_tokens, evaluation), optional
        Where each batch's rows go as soon as they are computed: a store `ActivationWriter`
        streams them to disk from a background thread, so memory does not grow with the number
        of prompts. None collects them in memory and returns them.
    evaluate : bool
        Evaluate the first `eval_rows` prompts (None = all): test loss with and without the end
        of answer, option log-likelihoods, greedy answers of prompts without options, and with
        `lens` the logit lens at every layer. False takes the states alone with no LM head at all
        (losses NaN, no record).
    generate_rows : int, optional
        Of the evaluated prompts without options, those among the first `generate_rows` get a greedy
        answer (None = all); in a task whose prompts all lack options these are the evaluated prompts
        (an answer is what such a task is scored by), in a mixed one the others are scored alone
        (their `generated` is None).
    lens_rows : int, optional
        With `lens`, the lens reads the evaluated prompts among the first `lens_rows` (None = all):
        19 states through a 262k-token head cost about 0.7 of a short prompt's forward pass.
    score : bool
        Score continuations and generate answers on the evaluated prompts; False leaves only the
        lens there (what `bench/extraction.py` times on its own).
    answer_end : list of int, optional
        The tokens that close an answer (`PromptBuilder.end_of_answer()`); default EOS.
    one_line : bool
        A generated answer also ends at a line break (plain-text prompts).
    max_new_tokens : int
        The longest greedy answer (the study's target limit); no answer runs longer than the
        longest target among the evaluated prompts without options (the task's target limit:
        the same for every model, whatever the batching).
    layers : collection of int, optional
        With `adapter`, its update is added in these blocks only (1-based; `AdapterHost.use`); None = all.
    on_batch : callable, optional
        Called with the number of examples done after each batch.

    Returns
    -------
    Activations or None
        The states (and the record) when `sink` is None.
    """
    loaded = host.loaded
    n = len(prompts)
    own = sink is None
    if own:
        sink = ArraySink([p.id for p in prompts], loaded.n_layers + 1, loaded.hidden_size)
    n_eval = (n if eval_rows is None else min(eval_rows, n)) if evaluate and (score or lens) else 0
    stop = AnswerStop(loaded.tokenizer, answer_end or [], one_line=one_line)
    n_gen = n_eval if generate_rows is None else min(generate_rows, n_eval)
    if not any(p.options for p in prompts[:n_eval]):  # a task without options: the answered prompts alone
        n_eval = n_gen
    n_lens = (n_eval if lens_rows is None else min(lens_rows, n_eval)) if lens else 0
    ev = _Evaluation(prompts[:n_eval], loaded.n_layers + 1, n_lens, score) if n_eval else None
    open_targets = [len(p.target_ids) for p in prompts[:n_gen] if not p.options]
    if open_targets:
        max_new_tokens = min(max_new_tokens, max(open_targets))
    captured: dict[str, torch.Tensor] = {}
    hook = None
    if last_layer == "pre_norm":
        norm = loaded.final_norm
        if norm is None:
            raise RuntimeError(f"{loaded.name}: no final norm module found for last_layer='pre_norm'")
        hook = norm.register_forward_pre_hook(lambda _m, args: captured.__setitem__("pre", args[0]))
    try:
        with host.use(adapter, layers=layers) as model, torch.inference_mode(), loaded.autocast():
            reader = LogitLens(model, loaded.final_norm) if n_lens else None
            for members, evaluated in ((np.arange(n_eval), True), (np.arange(n_eval, n), False)):
                group = [prompts[i] for i in members]
                for idx in length_batches(group, token_budget, with_targets=False):
                    rows_np = members[idx]  # the batch's rows among all prompts
                    batch_prompts = [group[i] for i in idx]
                    batch = collate(batch_prompts, loaded.tokenizer.pad_token_id, loaded.device, with_targets=False)
                    out = body_forward(model, batch, output_hidden_states=True, use_cache=evaluated)
                    rows = torch.arange(len(idx), device=loaded.device)
                    states = torch.stack([h[rows, batch.last_prompt] for h in out.hidden_states])
                    kept = states
                    if hook is not None:
                        kept = torch.cat([states[:-1], captured.pop("pre")[rows, batch.last_prompt][None]])
                    sink.put(rows_np, kept.float().cpu().numpy())
                    if evaluated:
                        _evaluate_batch(model, out, batch, batch_prompts, rows_np, states, reader, stop,
                                        max_new_tokens, ev, score, n_gen, n_lens)
                    del out
                    if on_batch:
                        on_batch(len(idx))
    finally:
        if hook is not None:
            hook.remove()
    nll = np.full(n, np.nan)
    n_tok = np.zeros(n, dtype=np.int64)
    record = None
    if ev is not None and score:
        nll[:n_eval], n_tok[:n_eval] = ev.nll, ev.nll_tokens
    if ev is not None:
        record = ev.record()
    sink.finish(nll, n_tok, record)
    if own:
        return Activations(ids=sink.ids, acts=sink.acts, target_nll=nll, target_tokens=n_tok,
                           meta={"last_layer": last_layer, "n_layers": loaded.n_layers}, evaluation=record)
    return None
