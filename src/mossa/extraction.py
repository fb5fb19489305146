"""Last-prompt-token hidden states at every layer, plus each example's test loss.

Stage: extraction (reads prompts and the loaded base + adapters; the caller stores the result).

One forward pass over prompt+target serves both outputs: with causal attention the state at
the last prompt token does not see the target, and the target positions give the test loss.
No generation and no LM head beyond the target positions. Batches are length-sorted under a
token budget, left-padded, with position ids taken from the attention mask.

Layer 0 is the embedding output; layer L (the last) is after the final norm in the Hugging
Face convention (`last_layer="post_norm"`) or the last block's output (`"pre_norm"`).
"""

from __future__ import annotations

import numpy as np
import torch

from mossa.models._adapters import AdapterHost
from mossa.models._forward import body_forward, collate, length_batches, target_nll
from mossa.store import Activations
from mossa.tasks import Prompt


def extract(host: AdapterHost, adapter: str | None, prompts: list[Prompt], *, token_budget: int,
            last_layer: str = "post_norm", on_batch=None) -> Activations:
    """Hidden states of the last prompt token, [layers+1, n, d] float32, in `prompts` order.

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
    on_batch : callable, optional
        Called with the number of examples done after each batch.
    """
    loaded = host.loaded
    n = len(prompts)
    acts = np.empty((loaded.n_layers + 1, n, loaded.hidden_size), dtype=np.float32)
    nll = np.zeros(n, dtype=np.float64)
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
            for idx in length_batches(prompts, token_budget):
                batch = collate([prompts[i] for i in idx], loaded.tokenizer.pad_token_id, loaded.device)
                out = body_forward(model, batch, output_hidden_states=True)
                states = list(out.hidden_states)
                if hook is not None:
                    states[-1] = captured.pop("pre")
                rows = torch.arange(len(idx), device=loaded.device)
                picked = torch.stack([h[rows, batch.last_prompt] for h in states])  # [L+1, b, d]
                acts[:, idx] = picked.float().cpu().numpy()
                per_token = target_nll(model, out.last_hidden_state, batch).double().cpu().numpy()
                rows_np = batch.target_rows.cpu().numpy()
                np.add.at(nll, np.asarray(idx)[rows_np], per_token)
                np.add.at(n_tok, np.asarray(idx)[rows_np], 1)
                if on_batch:
                    on_batch(len(idx))
    finally:
        if hook is not None:
            hook.remove()
    return Activations(ids=[p.id for p in prompts], acts=acts, target_nll=nll, target_tokens=n_tok,
                       meta={"last_layer": last_layer, "n_layers": loaded.n_layers})
