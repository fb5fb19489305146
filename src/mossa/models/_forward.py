"""Running a decoder on tokenized prompts: left-padded batches, body-only forward passes,
and logits computed only where a target token is predicted.

Shared by training (target-only loss) and extraction (last-prompt-token states plus each
example's test loss, from the same forward pass).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mossa.tasks import Prompt


@dataclass
class Batch:
    """A left-padded batch of prompt+target sequences.

    Shapes: input_ids, attention_mask, position_ids [b, T]; last_prompt [b] (the index of each
    row's last prompt token); target_rows/target_pos/target_ids [k] (one entry per target
    token: row, position of the token that predicts it, the token).
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    position_ids: torch.Tensor
    last_prompt: torch.Tensor
    target_rows: torch.Tensor
    target_pos: torch.Tensor
    target_ids: torch.Tensor
    ids: list[str]

    @property
    def n_tokens(self) -> int:
        return int(self.attention_mask.sum())


def collate(prompts: list[Prompt], pad_id: int, device: torch.device, *, with_targets: bool = True) -> Batch:
    """Left-pad prompt(+target) sequences so every row ends at the same column."""
    seqs = [p.prompt_ids + (p.target_ids if with_targets else []) for p in prompts]
    width = max(len(s) for s in seqs)
    input_ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    last_prompt, rows, pos, tgt = [], [], [], []
    for i, (p, seq) in enumerate(zip(prompts, seqs)):
        start = width - len(seq)
        input_ids[i, start:] = torch.tensor(seq)
        mask[i, start:] = 1
        end_prompt = start + len(p.prompt_ids) - 1
        last_prompt.append(end_prompt)
        if with_targets:
            for j, token in enumerate(p.target_ids):
                rows.append(i)
                pos.append(end_prompt + j)
                tgt.append(token)
    position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
    as_long = lambda x: torch.tensor(x, dtype=torch.long, device=device)  # noqa: E731
    return Batch(input_ids=input_ids.to(device), attention_mask=mask.to(device),
                 position_ids=position_ids.to(device), last_prompt=as_long(last_prompt),
                 target_rows=as_long(rows), target_pos=as_long(pos), target_ids=as_long(tgt),
                 ids=[p.id for p in prompts])


def length_batches(prompts: list[Prompt], token_budget: int, *, with_targets: bool = True,
                   max_batch: int = 64) -> list[list[int]]:
    """Indices grouped into batches of similar length, each within `token_budget` padded tokens."""
    length = [len(p.prompt_ids) + (len(p.target_ids) if with_targets else 0) for p in prompts]
    order = sorted(range(len(prompts)), key=lambda i: (length[i], i))
    batches: list[list[int]] = []
    current: list[int] = []
    for i in order:
        width = max([length[j] for j in current] + [length[i]])
        if current and (width * (len(current) + 1) > token_budget or len(current) >= max_batch):
            batches.append(current)
            current = []
        current.append(i)
    if current:
        batches.append(current)
    return batches


def body_forward(model: torch.nn.Module, batch: Batch, *, output_hidden_states: bool, use_cache: bool = False):
    """The decoder body (no LM head) on a batch; returns the HF BaseModelOutputWithPast (with the
    key/value cache of the batch in `past_key_values` when `use_cache`)."""
    return model.base_model(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                            position_ids=batch.position_ids, output_hidden_states=output_hidden_states,
                            use_cache=use_cache)


def target_nll(model: torch.nn.Module, last_hidden: torch.Tensor, batch: Batch, *, chunk: int = 256) -> torch.Tensor:
    """Per-target-token negative log-likelihood [k] in float32, logits only at target positions.

    The LM head of a 262k-token vocabulary costs more than the model body, so it is applied to
    the k predicting positions only, `chunk` positions at a time (a [k, vocab] float32 logit
    matrix for a whole extraction batch would take gigabytes).
    """
    h = last_hidden[batch.target_rows, batch.target_pos]  # [k, d]
    out = []
    for start in range(0, len(h), chunk):
        logits = head_logits(model, h[start:start + chunk])  # [<=chunk, vocab]
        out.append(torch.nn.functional.cross_entropy(logits, batch.target_ids[start:start + chunk], reduction="none"))
    return torch.cat(out) if out else h.new_zeros(0, dtype=torch.float32)


# A term more than 80 below the largest one enters a log-sum-exp as e^-80 of it: at most
# 262k x e^-80 = 5e-30 of the sum, far below float32's resolution, and exp never leaves the normal
# range (exp's subnormal results run 20x slower on x86, and most of a 262k-token vocabulary's
# logits lie hundreds below the top one).
_EXP_FLOOR = -80.0


def logsumexp(z: torch.Tensor) -> torch.Tensor:
    """log(sum(exp(z))) over the last dimension, float32-exact and without exp's subnormal slow path."""
    top = z.amax(-1, keepdim=True)
    return top[..., 0] + torch.log(torch.exp((z - top).clamp_(min=_EXP_FLOOR)).sum(-1))


def log_softmax(z: torch.Tensor) -> torch.Tensor:
    """`torch.log_softmax(z, -1)` through `logsumexp`."""
    return z - logsumexp(z)[..., None]


def head_logits(model: torch.nn.Module, h: torch.Tensor) -> torch.Tensor:
    """float32 next-token logits of final-normed states `h` [..., d]: the LM head, then the final
    logit soft-capping of the families that have one (Gemma 2), as the model's own forward does."""
    logits = model.get_output_embeddings()(h).float()
    cap = getattr(model.config.get_text_config(), "final_logit_softcapping", None)
    return torch.tanh(logits / cap) * cap if cap else logits
