"""The logit lens: what each layer's last-prompt-token state says about the answer when read
through the model's own output head (nostalgebraist 2020).

Stage: lens. `LogitLens` runs during extraction on the states already in memory (no second
forward pass); `lens_table` summarises the stored per-example values (no model).

At layer l < L the state goes through the final norm and the LM head; the last layer's state
is already normed (the Hugging Face convention) and goes through the head alone, so the lens at
the last layer is the model's own next-token distribution. Per example and layer it records
the log-probability of the gold answer's first token, its rank among the whole vocabulary
(1 = the top token) and, for a task with options, whether the option whose first token has the
highest logit is the gold one (1/k when the gold ties with k-1 others; options sharing a first
token cannot be told apart by it).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from mossa.models import head_logits

LENS_COLUMNS = ["task", "cluster", "model", "layer", "logprob", "rank_median",
                "top1", "top10", "option_accuracy", "option_chance", "n_examples", "n_option_examples"]


class LogitLens:
    """Reads stacked per-layer states [L+1, b, d] through `model`'s final norm and head.

    `chunk` bounds memory: at most that many (layer, row) states have their vocabulary-sized
    logits in memory at once.
    """

    def __init__(self, model: torch.nn.Module, final_norm: torch.nn.Module | None, *, chunk: int = 64):
        if final_norm is None:
            raise ValueError("the logit lens needs the model's final norm; none was found")
        self.model, self.norm, self.chunk = model, final_norm, chunk

    @torch.inference_mode()
    def __call__(self, states: torch.Tensor, gold_first: torch.Tensor, option_first: list[list[int] | None],
                 gold_option: list[int | None]) -> tuple[dict[str, np.ndarray], torch.Tensor]:
        """Per layer and row: gold log-prob, gold rank and option hit; and the last layer's log-softmax.

        Parameters
        ----------
        states : torch.Tensor [L+1, b, d]
            The rows' last-prompt-token states, the last layer after the final norm.
        gold_first : torch.Tensor [b]
            Each row's gold answer's first token.
        option_first : list, one entry per row
            The first token of each option, or None for a row without options.
        gold_option : list, one entry per row
            The gold option's index (None for a row without options).

        Returns
        -------
        values : dict of [L+1, b] arrays
            "logprob" (float64), "rank" (int64), "option_hit" (float64, NaN on rows without options).
        last_logprobs : torch.Tensor [b, vocab]
            The last layer's log-softmax (the model's next-token distribution).
        """
        n_states, b, _ = states.shape
        device = states.device
        flat = torch.cat([self.norm(states[:-1]), states[-1:]]).reshape(n_states * b, -1)
        gold = gold_first.repeat(n_states)
        width = max([len(o) for o in option_first if o] or [1])
        options = torch.full((b, width), -1, dtype=torch.long)
        is_gold = torch.zeros((b, width), dtype=torch.bool)
        for i, o in enumerate(option_first):
            if o:
                options[i, :len(o)] = torch.tensor(o, dtype=torch.long)
                is_gold[i, gold_option[i]] = True
        options = options.to(device).repeat(n_states, 1)  # [(L+1) * b, width], -1 = no option
        is_gold = is_gold.to(device).repeat(n_states, 1)
        logprob = np.empty(n_states * b)
        rank = np.empty(n_states * b, dtype=np.int64)
        hit = np.empty(n_states * b)
        last = []
        for s in range(0, n_states * b, self.chunk):
            logits = head_logits(self.model, flat[s:s + self.chunk])  # [c, vocab]
            e = s + len(logits)
            g = logits.gather(1, gold[s:e, None])[:, 0]
            logprob[s:e] = (g - torch.logsumexp(logits, -1)).double().cpu().numpy()
            rank[s:e] = ((logits > g[:, None]).sum(-1) + 1).cpu().numpy()
            o = options[s:e]
            scores = logits.gather(1, o.clamp(min=0)).masked_fill(o < 0, -torch.inf)
            best = (scores == scores.max(1, keepdim=True).values) & (o >= 0)
            hits = (best & is_gold[s:e]).any(1).double() / best.sum(1).clamp(min=1)
            hit[s:e] = torch.where((o >= 0).any(1), hits, torch.nan).cpu().numpy()
            if e > (n_states - 1) * b:  # the chunk holds rows of the last layer
                last.append(torch.log_softmax(logits[max(0, (n_states - 1) * b - s):], -1))
        shape = (n_states, b)
        return ({"logprob": logprob.reshape(shape), "rank": rank.reshape(shape), "option_hit": hit.reshape(shape)},
                torch.cat(last))


def lens_table(records: dict[tuple[str, str], dict | None], clusters: dict[str, str]) -> pd.DataFrame:
    """results/lens.csv: per (task, model, layer), over the evaluated examples, the gold first token's
    mean log-probability, median rank, top-1 and top-10 shares, and option accuracy from the lens
    logits with its chance level (the mean of 1 / number of options over the rows with options).

    `records` maps (task, model) to the stored evaluation record (its "lens" entry holds
    [L+1][n] lists); None or a record without a lens is skipped.
    """
    rows = []
    for (task, model), record in sorted(records.items()):
        lens = (record or {}).get("lens")
        if not lens:
            continue
        logprob = np.asarray(lens["logprob"], dtype=np.float64)
        rank = np.asarray(lens["rank"], dtype=np.int64)
        hit = np.asarray(lens["option_hit"], dtype=np.float64)
        n = logprob.shape[1]
        chance = [1 / len(c) for c in record.get("option_chars", []) if c]
        for layer in range(logprob.shape[0]):
            has = np.isfinite(hit[layer])
            rows.append({"task": task, "cluster": clusters.get(task, ""), "model": model, "layer": layer,
                         "logprob": float(logprob[layer].mean()),
                         "rank_median": float(np.median(rank[layer])), "top1": float((rank[layer] == 1).mean()),
                         "top10": float((rank[layer] <= 10).mean()),
                         "option_accuracy": float(hit[layer][has].mean()) if has.any() else float("nan"),
                         "option_chance": float(np.mean(chance)) if chance else float("nan"),
                         "n_examples": n, "n_option_examples": int(has.sum())})
    return pd.DataFrame(rows, columns=LENS_COLUMNS)


__all__ = ["LENS_COLUMNS", "LogitLens", "lens_table"]
