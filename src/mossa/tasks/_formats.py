"""Prompt formats: how an instruction becomes the text that every model of a study reads.

- plain: the instruction, a newline and the answer cue (after the system prompt and a blank
  line, when one is given).
- chat: a Jinja chat template over [system?, user] with its generation prompt as the cue: a
  registered one (`llama-2`, the format the paper used for every model, base included, with
  its default system prompt; `chatml`), a Jinja file, or B's own template.

The format renders text, not tokens, so a study applies one format to every model: B, E and
each C_t (and a given E with another tokenizer) read byte-identical prompt text. Templates are
rendered with an empty `bos_token` and each model's tokenizer adds its own special tokens when
it encodes the text. A chat-mode target ends with the template's own end-of-turn text.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from mossa.errors import MossaError, unknown_name_error
from mossa.registry import register_unique

LLAMA2_SYSTEM = (
    "You are a helpful, respectful and honest assistant. Always answer as helpfully as possible, while being safe. "
    "Your answers should not include any harmful, unethical, racist, sexist, toxic, dangerous, or illegal content. "
    "Please ensure that your responses are socially unbiased and positive in nature.\n\n"
    "If a question does not make any sense, or is not factually coherent, explain why instead of answering something "
    "not correct. If you don't know the answer to a question, please don't share false information.")

# The Llama-2 chat format of Meta's release (as in its Hugging Face tokenizer config).
LLAMA2_TEMPLATE = (
    "{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}"
    "{% set system_message = messages[0]['content'] %}{% else %}{% set loop_messages = messages %}"
    "{% set system_message = false %}{% endif %}"
    "{% for message in loop_messages %}"
    "{% if loop.index0 == 0 and system_message != false %}"
    "{% set content = '<<SYS>>\\n' + system_message + '\\n<</SYS>>\\n\\n' + message['content'] %}"
    "{% else %}{% set content = message['content'] %}{% endif %}"
    "{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ ' ' + content.strip() + ' ' + eos_token }}{% endif %}"
    "{% endfor %}")

CHATML_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")

MODEL_TEMPLATE = "model"  # the chat_template value that means B's own template
_SENTINEL = "\u2063MOSSA-TARGET\u2063"


@dataclass(frozen=True)
class ChatTemplate:
    """A Jinja chat template with the system prompt it uses when the study gives none."""

    name: str
    jinja: str
    default_system: str | None = None

    @property
    def digest(self) -> str:
        return hashlib.sha256(self.jinja.encode()).hexdigest()[:12]


CHAT_TEMPLATES: dict[str, ChatTemplate] = {}


def register_chat_template(template: ChatTemplate) -> ChatTemplate:
    """Add a named chat template (lower-case letters, digits and '-')."""
    return register_unique(CHAT_TEMPLATES, template.name, template, kind="chat template",
                           pattern=r"[a-z0-9][a-z0-9\-]*", allowed="lower-case letters, digits and '-'")


register_chat_template(ChatTemplate("llama-2", LLAMA2_TEMPLATE, LLAMA2_SYSTEM))
register_chat_template(ChatTemplate("chatml", CHATML_TEMPLATE))


def _render(jinja: str, messages: list[dict], *, generation: bool, eos_token: str) -> str:
    from transformers.utils.chat_template_utils import render_jinja_template

    rendered, _ = render_jinja_template([messages], chat_template=jinja, add_generation_prompt=generation,
                                        bos_token="", eos_token=eos_token)
    return rendered[0]


@dataclass(frozen=True)
class PromptFormat:
    """One way of turning an instruction into prompt text, for every model of a study.

    Parameters
    ----------
    mode : {"plain", "chat"}
    cue : str
        The answer cue of plain mode (a chat template's generation prompt is its cue).
    template : ChatTemplate, optional
        The chat template (chat mode only).
    system_prompt : str, optional
        Put before the instruction: a system turn in chat mode, a paragraph in plain mode. None in
        chat mode = the template's default system prompt (Llama-2's, for `llama-2`).
    """

    mode: Literal["plain", "chat"]
    cue: str = "Answer:"
    template: ChatTemplate | None = None
    system_prompt: str | None = None

    @property
    def system(self) -> str | None:
        if self.system_prompt is not None:
            return self.system_prompt or None
        return self.template.default_system if self.template is not None else None

    def describe(self) -> dict:
        """What study.json records of the format."""
        out: dict = {"mode": self.mode}
        if self.mode == "plain":
            out["cue"] = self.cue
        else:
            out.update(chat_template=self.template.name, template_sha256=self.template.digest)
        out["system_prompt"] = self.system
        return out

    def _messages(self, body: str) -> list[dict]:
        system = self.system
        return ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": body}]

    def text(self, body: str, *, eos_token: str = "") -> str:
        """The whole prompt text of one instruction, ending with the cue."""
        if self.mode == "plain":
            head = f"{self.system}\n\n" if self.system else ""
            return f"{head}{body}\n{self.cue}"
        try:
            return _render(self.template.jinja, self._messages(body), generation=True, eos_token=eos_token)
        except Exception as exc:  # noqa: BLE001 - a user's template may raise anything while rendering
            raise MossaError(f"chat template {self.template.name!r} cannot render a prompt "
                             f"({type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''})") from None

    def target_parts(self, *, eos_token: str) -> tuple[str, str] | None:
        """(text before the answer, text after it) of an assistant turn in chat mode, e.g.
        ("", "<end_of_turn>") or (" ", " </s>"); None in plain mode or when the template does not
        render an answer right after its generation prompt."""
        if self.mode == "plain":
            return None
        probe = self._messages("x")
        try:
            prompt = _render(self.template.jinja, probe, generation=True, eos_token=eos_token)
            full = _render(self.template.jinja, probe + [{"role": "assistant", "content": _SENTINEL}],
                           generation=False, eos_token=eos_token)
        except Exception:  # noqa: BLE001 - a template that cannot render an answer turn: plain targets
            return None
        if not full.startswith(prompt) or _SENTINEL not in full[len(prompt):]:
            return None
        before, after = full[len(prompt):].split(_SENTINEL, 1)
        return before, after.rstrip()


def chat_template(value: str, own: str | None, *, where: str = "chat_template") -> ChatTemplate:
    """The chat template a config value names: a registered name, a Jinja file, or 'model' (B's own,
    `own`).

    Raises
    ------
    MossaError
        For an unknown name, an unreadable file, or 'model' when B has no chat template.
    """
    if value == MODEL_TEMPLATE:
        if not own:
            raise MossaError(f"field '{where}': the base model has no chat template of its own; name one "
                             f"({', '.join(CHAT_TEMPLATES)}) or a Jinja file, or use prompt_format: plain")
        return ChatTemplate(MODEL_TEMPLATE, own)
    if value in CHAT_TEMPLATES:
        return CHAT_TEMPLATES[value]
    path = Path(value).expanduser()
    if path.suffix in (".jinja", ".j2", ".txt") or path.exists():
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            why = exc.strerror if isinstance(exc, OSError) else "not valid UTF-8"
            raise MossaError(f"{path}: cannot read the chat template ({why}); field '{where}'") from None
        if not text.strip():
            raise MossaError(f"{path}: the chat template file is empty; field '{where}'")
        return ChatTemplate(f"file:{path.name}", text)
    raise unknown_name_error("chat template", value, [*CHAT_TEMPLATES, MODEL_TEMPLATE], "the chat template registry "
                             "(or give a .jinja file)")


def resolve_format(mode: str, *, cue: str, template: str | None, system_prompt: str | None,
                   own_template: str | None) -> PromptFormat:
    """The study's prompt format from its settings and B's own chat template (`own_template`).

    `mode` "auto" is chat with B's own template when B has one, else plain. In chat mode
    `template` None means B's own.
    """
    if mode == "auto":
        mode = "chat" if (template is not None or own_template) else "plain"
    if mode == "plain":
        if template is not None:
            raise MossaError("field 'chat_template': only used with prompt_format chat (or auto); drop it or set "
                             "prompt_format: chat")
        return PromptFormat("plain", cue=cue, system_prompt=system_prompt)
    return PromptFormat("chat", cue=cue, system_prompt=system_prompt,
                        template=chat_template(template or MODEL_TEMPLATE, own_template))
