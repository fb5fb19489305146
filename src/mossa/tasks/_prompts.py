"""Prompt rendering: template -> instruction -> prompt text (the study's format) -> token ids,
with truncation that keeps the task and seeded samples that replace what cannot fit.

Every prompt ends with the same answer cue (the plain-text cue, or the chat template's
generation prompt), so the last prompt token is the same token for every example of every task.

Truncation. A prompt over `max_prompt_tokens` is shortened only in its template's `truncate`
fields, which share one budget: each keeps the same share of its tokens, and a field that is
cut ends in " ...". Options, the instruction's own words and the cue are never cut. No field is
cut below the floor (by default half of its tokens, so never to nothing): a prompt that cannot
fit above it falls back to its template's shorter form, if any, and is otherwise left out of the
sample, its place taken by the next example of the seeded order (counted in `PromptSample`).

The text of every prompt is fixed by the study's reference tokenizer (B's), so every model of a
study, one with another tokenizer included, reads the same examples as byte-identical text.
"""

from __future__ import annotations

import hashlib
import math
import statistics
import zlib
from dataclasses import dataclass, field, replace

import numpy as np

from mossa.errors import MossaError
from mossa.tasks._formats import PromptFormat
from mossa.tasks._spec import Example, TaskSpec, Template

ELLIPSIS = " ..."
FLOOR = 0.5  # a truncated field keeps at least this share of its tokens (rounded up)
TEMPLATE_MODES = ("first", "all")


@dataclass(frozen=True)
class Prompt:
    """A tokenized example: prompt ids (ending with the cue) and target ids (ending with the
    format's end of answer: EOS in plain mode, the end-of-turn text in chat mode; `target_end`
    counts those last tokens, 0 when the target was cut before its end).

    `body` is the instruction after truncation, `text` the whole prompt text; `template` the
    index of the task template used, `shorter` how many times it fell back to a shorter form;
    `kept` the share of tokens kept of each field that was cut. A task with options also has
    each option encoded as an answer (`option_ids`, the end of answer included; `option_end`
    tokens of it) and `gold`, the target's index among `options`.
    """

    id: str
    prompt_ids: list[int]
    target_ids: list[int]
    n_cut_tokens: int = 0
    task: str = ""
    body: str = ""
    text: str = ""
    target: str = ""
    template: int = 0
    shorter: int = 0
    kept: dict[str, float] = field(default_factory=dict)
    target_end: int = 0
    options: tuple[str, ...] = ()
    option_ids: tuple[tuple[int, ...], ...] = ()
    option_end: tuple[int, ...] = ()
    gold: int | None = None

    def record(self) -> dict:
        """The prompt as one row of `prompts.jsonl` (no token ids)."""
        return {"task": self.task, "id": self.id, "template": self.template, "shorter": self.shorter,
                "cut_tokens": self.n_cut_tokens, "kept": self.kept, "tokens": len(self.prompt_ids), "text": self.text,
                "target": self.target, "options": list(self.options) or None, "gold": self.gold}


def prompt_digest(prompts: list[Prompt]) -> str:
    """SHA-256 of the prompt texts in order: equal digests mean byte-identical prompts."""
    return hashlib.sha256("\0".join(p.text for p in prompts).encode()).hexdigest()


def render_options(options: tuple[str, ...]) -> str:
    return "OPTIONS:\n" + "\n".join(f"- {o}" for o in options)


def render_body(task: TaskSpec, example: Example, fields: dict[str, str] | None = None, *,
                template: Template | None = None) -> str:
    """The instruction text of one example (no cue, no chat wrapping); the task's first template
    unless another is given."""
    values = dict(fields if fields is not None else example.fields)
    if example.options:
        values["options"] = render_options(example.options)
    return (template or task.template).text.format(**values).strip()


def template_index(task: TaskSpec, example: Example, mode: str, seed: int) -> int:
    """Which of the task's templates an example gets: always the first under 'first'; under 'all'
    one drawn by (seed, example id), so it is the same for every model and every run."""
    if mode not in TEMPLATE_MODES:
        raise ValueError(f"template mode must be one of {TEMPLATE_MODES}, got {mode!r}")
    k = len(task.templates)
    if mode == "first" or k == 1:
        return 0
    digest = hashlib.sha256(f"template:{seed}:{example.id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % k


def _order(task: TaskSpec, split: str, seed: int) -> np.ndarray:
    examples = task.split(split)
    if not examples:
        raise MossaError(f"{task.path}: split '{split}' of task '{task.name}' is empty; the study needs "
                         f"train and test examples for every task")
    rng = np.random.default_rng([seed, zlib.crc32(task.name.encode()), zlib.crc32(split.encode())])
    return rng.permutation(len(examples))


def sample_split(task: TaskSpec, split: str, n: int, seed: int) -> list[Example]:
    """The first `n` examples of the split's seeded order, in file order.

    The order depends only on (seed, task name, split), so every model sees the same examples;
    `PromptBuilder.draw` walks the same order and skips examples whose prompt cannot fit.
    """
    examples = task.split(split)
    return [examples[i] for i in np.sort(_order(task, split, seed)[:n])]


@dataclass
class PromptSample:
    """The prompts drawn for one split of one task, with what truncation did to them."""

    prompts: list[Prompt]
    examples: list[Example]
    examined: int
    left_out: list[str]

    def stats(self) -> dict:
        """What study.json records and the report shows, per task and split."""
        cut = [p for p in self.prompts if p.kept]
        fields = sorted({f for p in cut for f in p.kept})
        shares = {f: [p.kept[f] for p in cut if f in p.kept] for f in fields}
        templates = np.bincount([p.template for p in self.prompts]).tolist() if self.prompts else []
        return {"n": len(self.prompts), "examined": self.examined, "left_out": len(self.left_out),
                "left_out_ids": self.left_out[:20], "cut": len(cut),
                "uncut_share": round(1 - len(cut) / len(self.prompts), 4) if self.prompts else None,
                "kept_median": {f: round(statistics.median(v), 4) for f, v in shares.items()},
                "kept_min": {f: round(min(v), 4) for f, v in shares.items()},
                "templates": templates, "shorter_template": sum(p.shorter > 0 for p in self.prompts)}


class PromptBuilder:
    """Turns examples into prompt text and token ids for one tokenizer and one prompt format.

    Parameters
    ----------
    tokenizer : transformers tokenizer
    fmt : PromptFormat, optional
        The study's prompt format; default plain text with `cue`.
    cue : str
        The answer cue of the default plain format.
    max_prompt_tokens, max_target_tokens : int
    floor : float
        Share of its tokens a truncated field keeps at least (0 < floor <= 1).
    """

    def __init__(self, tokenizer, fmt: PromptFormat | None = None, *, cue: str = "Answer:", max_prompt_tokens: int,
                 max_target_tokens: int, floor: float = FLOOR):
        if not 0 < floor <= 1:
            raise ValueError(f"floor must be in (0, 1], got {floor}")
        self.tok = tokenizer
        self.fmt = fmt or PromptFormat("plain", cue=cue)
        self.max_prompt_tokens = max_prompt_tokens
        self.max_target_tokens = max_target_tokens
        self.floor = floor
        self.eos = tokenizer.eos_token or ""
        self._answer = self.fmt.target_parts(eos_token=self.eos)

    @property
    def mode(self) -> str:
        return self.fmt.mode

    def encode_prompt(self, text: str) -> list[int]:
        """Token ids of a prompt text; the tokenizer adds its own special tokens (BOS) once."""
        ids = self.tok(text, add_special_tokens=True)["input_ids"]
        bos = self.tok.bos_token_id
        if bos is not None and len(ids) > 1 and ids[0] == ids[1] == bos:  # a template that writes BOS itself
            ids = ids[1:]
        return ids

    def encode_target(self, target: str) -> list[int]:
        """Answer ids: the target, then the format's end of answer when it fits the target limit
        (EOS in plain mode, the template's end-of-turn in chat mode); a longer target is cut."""
        return self.encode_answer(target)[0]

    def encode_answer(self, target: str) -> tuple[list[int], int]:
        """`encode_target`'s ids and how many of the last ones are the end of answer (0 when cut)."""
        if self._answer is None:
            content = self.tok((" " if self.mode == "plain" else "") + target, add_special_tokens=False)["input_ids"]
        else:
            content = self.tok(self._answer[0] + target, add_special_tokens=False)["input_ids"]
        end = self.end_of_answer()
        if len(content) + len(end) <= self.max_target_tokens:
            return content + end, len(end)
        return content[: self.max_target_tokens], 0

    def end_of_answer(self) -> list[int]:
        """The token ids that close an answer: EOS in plain mode, the template's end of turn in chat."""
        eos = [self.tok.eos_token_id] if self.tok.eos_token_id is not None else []
        if self._answer is None or not self._answer[1]:
            return eos
        return self.tok(self._answer[1], add_special_tokens=False)["input_ids"]

    def _answers(self, target: str, options: tuple[str, ...]) -> dict:
        """The Prompt fields of an example's answer: its target and, with options, each option."""
        ids, end = self.encode_answer(target)
        out = {"target_ids": ids, "target_end": end, "target": target}
        if options:
            encoded = [self.encode_answer(o) for o in options]
            out.update(options=tuple(options), option_ids=tuple(tuple(i) for i, _ in encoded),
                       option_end=tuple(e for _, e in encoded), gold=options.index(target))
        return out

    def _render(self, task: TaskSpec, example: Example, fields: dict[str, str], template: Template) -> tuple[str, str]:
        body = render_body(task, example, fields, template=template)
        return body, self.fmt.text(body, eos_token=self.eos)

    def _fit(self, task: TaskSpec, example: Example, template: Template):
        """(body, text, ids, kept shares, tokens cut) of the example under `template`, or None when
        it cannot fit the budget with every cut field above the floor."""
        fields = dict(example.fields)
        body, text = self._render(task, example, fields, template)
        ids = self.encode_prompt(text)
        if len(ids) <= self.max_prompt_tokens:
            return body, text, ids, {}, 0
        toks = {f: self.tok(fields[f], add_special_tokens=False)["input_ids"]
                for f in template.truncate if fields.get(f, "").strip()}
        total = sum(len(t) for t in toks.values())
        excess = len(ids) - self.max_prompt_tokens
        for _ in range(8):
            if excess >= total:
                return None
            share = (total - excess) / total
            keep = {f: int(len(t) * share) for f, t in toks.items()}
            if any(keep[f] < math.ceil(self.floor * len(t)) for f, t in toks.items()):
                return None
            for f, t in toks.items():
                if keep[f] < len(t):
                    fields[f] = self.tok.decode(t[:keep[f]]).rstrip("\ufffd").rstrip() + ELLIPSIS
            body, text = self._render(task, example, fields, template)
            ids = self.encode_prompt(text)
            over = len(ids) - self.max_prompt_tokens
            if over <= 0:
                kept = {f: round(keep[f] / len(t), 4) for f, t in toks.items() if keep[f] < len(t)}
                return body, text, ids, kept, sum(len(t) - keep[f] for f, t in toks.items())
            excess += over
            fields = dict(example.fields)
        return None

    def build(self, task: TaskSpec, example: Example, template: int = 0) -> Prompt | None:
        """The prompt of one example under the task's template number `template`, falling back to
        that template's shorter forms; None when it cannot fit above the floor."""
        form, shorter = task.templates[template], 0
        while form is not None:
            fitted = self._fit(task, example, form)
            if fitted is not None:
                body, text, ids, kept, cut = fitted
                return Prompt(id=example.id, task=task.name, prompt_ids=ids, n_cut_tokens=cut, body=body, text=text,
                              template=template, shorter=shorter, kept=kept,
                              **self._answers(example.target, example.options or ()))
            form, shorter = form.shorter, shorter + 1
        return None

    def build_all(self, task: TaskSpec, examples: list[Example], *, templates: str = "first",
                  seed: int = 0) -> list[Prompt]:
        """The prompts of `examples` that fit, in order (see `draw` for a counted sample)."""
        built = (self.build(task, ex, template_index(task, ex, templates, seed)) for ex in examples)
        return [p for p in built if p is not None]

    def draw(self, task: TaskSpec, split: str, n: int, seed: int, *, templates: str = "first") -> PromptSample:
        """`n` prompts of a split: the split's seeded order walked until `n` prompts fit, each
        example that cannot fit left out and replaced by the next; returned in file order.

        Raises
        ------
        MossaError
            When the split is empty, or no example of it fits the prompt budget.
        """
        examples = task.split(split)
        chosen: list[tuple[int, Prompt]] = []
        left_out: list[str] = []
        examined = 0
        for i in _order(task, split, seed):
            if len(chosen) == n:
                break
            examined += 1
            ex = examples[int(i)]
            prompt = self.build(task, ex, template_index(task, ex, templates, seed))
            if prompt is None:
                left_out.append(ex.id)
            else:
                chosen.append((int(i), prompt))
        if not chosen:
            raise MossaError(f"{task.path}: no {split} prompt of task '{task.name}' fits max_prompt_tokens="
                             f"{self.max_prompt_tokens} with each cut field keeping at least {self.floor:.0%} of its "
                             f"tokens; raise max_prompt_tokens (or lower truncation_floor)")
        chosen.sort(key=lambda c: c[0])
        return PromptSample(prompts=[p for _, p in chosen], examples=[examples[i] for i, _ in chosen],
                            examined=examined, left_out=left_out)

    def reencode(self, prompt: Prompt, *, rewrap: bool = False) -> Prompt:
        """The same prompt through this builder's tokenizer (another model of the study): the same
        text, or with `rewrap` the same instruction in this builder's own format."""
        text = self.fmt.text(prompt.body, eos_token=self.eos) if rewrap else prompt.text
        return replace(prompt, text=text, prompt_ids=self.encode_prompt(text),
                       **self._answers(prompt.target, prompt.options))
