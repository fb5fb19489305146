"""Prompt rendering: template -> text -> token ids, chat-template aware, with safe truncation.

Every prompt ends with the same answer cue (the plain-text cue, or the chat template's
generation prompt), so the last prompt token is the same token for every example of every
task. Over-long prompts are shortened by cutting the template's `truncate` field, never the
instruction tail or the cue.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np

from mossa.errors import MossaError
from mossa.tasks._spec import Example, TaskSpec

ELLIPSIS = " ..."


@dataclass(frozen=True)
class Prompt:
    """A tokenized example: prompt ids (ending with the cue) and target ids (ending with EOS)."""

    id: str
    prompt_ids: list[int]
    target_ids: list[int]
    n_cut_tokens: int


def render_options(options: tuple[str, ...]) -> str:
    return "OPTIONS:\n" + "\n".join(f"- {o}" for o in options)


def render_body(task: TaskSpec, example: Example, fields: dict[str, str] | None = None) -> str:
    """The instruction text of one example (no cue, no chat wrapping)."""
    values = dict(fields if fields is not None else example.fields)
    if example.options:
        values["options"] = render_options(example.options)
    return task.template.text.format(**values).strip()


def sample_split(task: TaskSpec, split: str, n: int, seed: int) -> list[Example]:
    """`n` examples of a split, drawn without replacement by a seeded generator, in file order.

    The draw depends only on (seed, task name, split), so every model sees the same prompts.
    """
    examples = task.split(split)
    if not examples:
        raise MossaError(f"{task.path}: split '{split}' of task '{task.name}' is empty; the study needs "
                         f"train and test examples for every task")
    if n >= len(examples):
        return list(examples)
    rng = np.random.default_rng([seed, zlib.crc32(task.name.encode()), zlib.crc32(split.encode())])
    keep = np.sort(rng.choice(len(examples), size=n, replace=False))
    return [examples[i] for i in keep]


class PromptBuilder:
    """Turns examples into token ids for one tokenizer.

    Parameters
    ----------
    tokenizer : transformers tokenizer
    cue : str
        Appended after the instruction in plain-text mode (ignored with a chat template,
        whose generation prompt is the cue).
    max_prompt_tokens, max_target_tokens : int
    use_chat_template : bool
        Wrap the instruction as a user turn when the tokenizer has a chat template.
    """

    def __init__(self, tokenizer, *, cue: str, max_prompt_tokens: int, max_target_tokens: int,
                 use_chat_template: bool = True):
        self.tok = tokenizer
        self.cue = cue
        self.max_prompt_tokens = max_prompt_tokens
        self.max_target_tokens = max_target_tokens
        self.chat = bool(use_chat_template and getattr(tokenizer, "chat_template", None))

    @property
    def mode(self) -> str:
        return "chat_template" if self.chat else "plain"

    def _encode_prompt(self, body: str) -> list[int]:
        if self.chat:
            text = self.tok.apply_chat_template([{"role": "user", "content": body}], tokenize=False,
                                                add_generation_prompt=True)
            return self.tok(text, add_special_tokens=False)["input_ids"]
        return self.tok(f"{body}\n{self.cue}", add_special_tokens=True)["input_ids"]

    def _encode_target(self, target: str) -> list[int]:
        text = target if self.chat else " " + target
        ids = self.tok(text, add_special_tokens=False)["input_ids"][: self.max_target_tokens]
        if self.tok.eos_token_id is not None and len(ids) < self.max_target_tokens:
            ids = ids + [self.tok.eos_token_id]
        return ids

    def build(self, task: TaskSpec, example: Example) -> Prompt:
        fields = dict(example.fields)
        ids = self._encode_prompt(render_body(task, example, fields))
        key = task.template.truncate
        cut = 0
        for _ in range(6):
            excess = len(ids) - self.max_prompt_tokens
            if excess <= 0 or not fields.get(key):
                break
            field_ids = self.tok(fields[key], add_special_tokens=False)["input_ids"]
            keep = max(0, len(field_ids) - excess - 2)
            cut += len(field_ids) - keep
            fields[key] = (self.tok.decode(field_ids[:keep]).rstrip() + ELLIPSIS) if keep else ""
            ids = self._encode_prompt(render_body(task, example, fields))
        return Prompt(id=example.id, prompt_ids=ids, target_ids=self._encode_target(example.target),
                      n_cut_tokens=cut)

    def build_all(self, task: TaskSpec, examples: list[Example]) -> list[Prompt]:
        return [self.build(task, ex) for ex in examples]
