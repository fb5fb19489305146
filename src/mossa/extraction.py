"""Last-prompt-token hidden states at every layer, plus each example's test loss.

Stage: extraction (reads prompts and the loaded base + adapters; the caller stores the result).

One forward pass over prompt+target serves both outputs: with causal attention the state at
the last prompt token does not see the target, and the target positions give the test loss.
No generation and no LM head beyond the target positions (none at all with `with_loss=False`).
Each batch's rows go to a sink as soon as they exist: the store's writer puts them on disk
from a background thread while the next batch runs. Batches are length-sorted under a
token budget, left-padded, with position ids taken from the attention mask.

Layer 0 is the embedding output; layer L (the last) is after the final norm in the Hugging
Face convention (`last_layer="post_norm"`) or the last block's output (`"pre_norm"`).
"""

from __future__ import annotations

import numpy as np
import torch

from mossa.models import AdapterHost, body_forward, collate, length_batches, target_nll
from mossa.store import Activations
from mossa.tasks import Prompt


class ArraySink:
    """Collects extracted rows in memory (for tests and small runs); `activations()` returns them."""

    def __init__(self, ids: list[str], n_states: int, hidden: int):
        self.ids = ids
        self.acts = np.empty((n_states, len(ids), hidden), dtype=np.float32)
        self.target_nll = self.target_tokens = None

    def put(self, rows, states: np.ndarray) -> None:
        self.acts[:, rows] = states

    def finish(self, target_nll, target_tokens) -> None:
        self.target_nll, self.target_tokens = target_nll, target_tokens


def extract(host: AdapterHost, adapter: str | None, prompts: list[Prompt], *, token_budget: int,
            last_layer: str = "post_norm", sink=None, with_loss: bool = True, loss_rows: int | None = None,
            on_batch=None) -> Activations | None:
    """Hidden states of the last prompt token at every layer, [layers+1, n, d] float32.

    Parameters
    ----------
    host : AdapterHost
        The loaded base model with its adapters.
    adapter : str or None
        Adapter to run (None = the base model B).
    prompts : list of Prompt
    token_budget : int
        Max padded tokens per forward pass.
    last_layer : {"post_norm", "pre_norm"}
    sink : object with put(rows, states) and finish(target_nll, target_tokens), optional
        Where each batch's rows go as soon as they are computed: a store
        `ActivationWriter` streams them to disk from a background thread, so memory does not
        grow with the number of prompts. None collects them in memory and returns them.
    with_loss : bool
        Also run prompt+target and score the target tokens (each example's test loss). False
        runs the prompts alone with no LM head at all (losses are then NaN).
    loss_rows : int, optional
        With `with_loss`, score only the first `loss_rows` prompts; the others run without their
        targets (NaN loss, 0 target tokens). None scores all.
    on_batch : callable, optional
        Called with the number of examples done after each batch.

    Returns
    -------
    Activations or None
        The states when `sink` is None.
    """
    loaded = host.loaded
    n = len(prompts)
    own = sink is None
    if own:
        sink = ArraySink([p.id for p in prompts], loaded.n_layers + 1, loaded.hidden_size)
    scored = np.zeros(n, dtype=bool)
    if with_loss:
        scored[:n if loss_rows is None else loss_rows] = True
    nll = np.where(scored, 0.0, np.nan)
    n_tok = np.zeros(n, dtype=np.int64)
    captured: dict[str, torch.Tensor] = {}
    hook = None
    if last_layer == "pre_norm":
        norm = loaded.final_norm
        if norm is None:
            raise RuntimeError(f"{loaded.name}: no final norm module found for last_layer='pre_norm'")
        hook = norm.register_forward_pre_hook(lambda _m, args: captured.__setitem__("pre", args[0]))
    try:
        with host.use(adapter) as model, torch.inference_mode(), loaded.autocast():
            for members, targets in ((np.flatnonzero(scored), True), (np.flatnonzero(~scored), False)):
                group = [prompts[i] for i in members]
                for idx in length_batches(group, token_budget, with_targets=targets):
                    rows_np = members[idx]  # the batch's rows among all prompts
                    batch = collate([group[i] for i in idx], loaded.tokenizer.pad_token_id, loaded.device,
                                    with_targets=targets)
                    out = body_forward(model, batch, output_hidden_states=True)
                    states = list(out.hidden_states)
                    if hook is not None:
                        states[-1] = captured.pop("pre")
                    rows = torch.arange(len(idx), device=loaded.device)
                    sink.put(rows_np, torch.stack([h[rows, batch.last_prompt] for h in states]).float().cpu().numpy())
                    if targets:
                        per_token = target_nll(model, out.last_hidden_state, batch).double().cpu().numpy()
                        token_rows = rows_np[batch.target_rows.cpu().numpy()]
                        np.add.at(nll, token_rows, per_token)
                        np.add.at(n_tok, token_rows, 1)
                    if on_batch:
                        on_batch(len(idx))
    finally:
        if hook is not None:
            hook.remove()
    sink.finish(nll, n_tok)
    if own:
        return Activations(ids=sink.ids, acts=sink.acts, target_nll=nll, target_tokens=n_tok,
                           meta={"last_layer": last_layer, "n_layers": loaded.n_layers})
    return None
