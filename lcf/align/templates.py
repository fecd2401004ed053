"""Prompt formatting that remembers where each message's content sits in the formatted string.

Two models in an lcf pair usually format the same conversation differently (their own chat
templates, or none at all). Token alignment only pairs up tokens of the *content* both models see,
so formatting returns, next to the text, the character span of every message's content.

Templates
---------
``"chat"``
    The tokenizer's own chat template (``tokenizer.apply_chat_template(..., tokenize=False)``).
``"plain"``
    A built-in template for base models without a chat template. Blocks are joined by a blank
    line (``"\\n\\n"``)::

        {system content}                    # one block per system message
        ### Instruction:\\n{user content}     # one block per user message
        ### Response:\\n{assistant content}{eos}   # eos = tokenizer.eos_token (or "" if none)

    The generation prompt is one more block, ``"### Response:\\n"``, so a prompt ends with the
    response header and the response text follows it directly.
``"raw"``
    The text as given: no chat template, no headers, no end-of-sequence token. System and user
    contents are joined by a blank line; an assistant content follows the text before it directly,
    and the generation prompt adds nothing. This is lm-evaluation-harness's format: the prompt
    ``"Question: {q}\\nAnswer:"`` and the response ``" {choice}"`` give ``"Question: {q}\\nAnswer: {choice}"``.
``"auto"``
    ``"chat"`` when ``tokenizer.chat_template`` is set, else ``"plain"``.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from lcf.errors import LCFError, suggest

TemplateName = Literal["auto", "chat", "plain", "raw"]
TEMPLATES: tuple[str, ...] = ("auto", "chat", "plain", "raw")
ROLES: tuple[str, ...] = ("system", "user", "assistant")

PLAIN_SEPARATOR = "\n\n"
PLAIN_HEADERS: dict[str, str] = {"system": "", "user": "### Instruction:\n", "assistant": "### Response:\n"}
PLAIN_GENERATION_PROMPT = PLAIN_HEADERS["assistant"]

# Private-use characters: never produced by real prompts, survive ``trim`` and string concatenation.
_SENTINEL = "\ue000{}\ue001"


class TemplateError(LCFError, ValueError):
    """Messages or a template name that cannot be formatted."""


class ChatTemplateError(TemplateError):
    """A chat template is missing, or it renders messages in a way lcf cannot use."""


@dataclass(frozen=True)
class FormattedPrompt:
    """A formatted prompt; ``spans[i]`` is the (start, end) char range of ``messages[i]['content']``.

    When a chat template rewrites content (e.g. strips surrounding whitespace), the span covers the
    rewritten content as it appears in ``text``.
    """

    text: str
    spans: list[tuple[int, int]]

    def content(self, i: int) -> str:
        """The text of message ``i``'s content as it appears in ``text``."""
        start, end = self.spans[i]
        return self.text[start:end]


def tokenizer_label(tokenizer: Any) -> str:
    """Human-readable name of a tokenizer for error messages."""
    name = getattr(tokenizer, "name_or_path", "") or "?"
    return f"{type(tokenizer).__name__}({name!r})"


def has_chat_template(tokenizer: Any) -> bool:
    """Whether ``tokenizer`` carries a (non-empty) chat template."""
    return bool(getattr(tokenizer, "chat_template", None))


def resolve_template(tokenizer: Any, template: str) -> Literal["chat", "plain", "raw"]:
    """Turn ``"auto"`` into ``"chat"`` or ``"plain"``; check that the choice is usable."""
    if template not in TEMPLATES:
        raise TemplateError(
            f"unknown prompt template {template!r}.{suggest(str(template), TEMPLATES)} "
            f"Expected one of: {', '.join(TEMPLATES)}."
        )
    if template == "auto":
        return "chat" if has_chat_template(tokenizer) else "plain"
    if template == "chat" and not has_chat_template(tokenizer):
        raise ChatTemplateError(
            f"tokenizer {tokenizer_label(tokenizer)} has no chat template, so template='chat' cannot "
            f"format messages. Use template='plain' (lcf's built-in '### Instruction / ### Response' "
            f"format) or 'auto' (chat when available, else plain), or set tokenizer.chat_template to "
            f"a Jinja template string."
        )
    return template  # type: ignore[return-value]


def validate_messages(messages: Sequence[Mapping[str, Any]]) -> list[dict[str, str]]:
    """Check that messages are ``{'role': ..., 'content': str}`` dicts with known roles."""
    if isinstance(messages, (str, bytes)) or not isinstance(messages, Sequence):
        raise TemplateError(f"messages must be a list of {{'role', 'content'}} dicts, got {type(messages).__name__}")
    out: list[dict[str, str]] = []
    for i, msg in enumerate(messages):
        if not isinstance(msg, Mapping):
            raise TemplateError(f"messages[{i}] must be a dict with 'role' and 'content', got {msg!r}")
        missing = [k for k in ("role", "content") if k not in msg]
        if missing:
            raise TemplateError(f"messages[{i}] lacks key(s) {missing}; every message needs 'role' and 'content'")
        role, content = msg["role"], msg["content"]
        if role not in ROLES:
            raise TemplateError(
                f"messages[{i}]['role'] is {role!r}.{suggest(str(role), ROLES)} Known roles: {', '.join(ROLES)}."
            )
        if not isinstance(content, str):
            raise TemplateError(f"messages[{i}]['content'] must be a string, got {type(content).__name__}")
        out.append(dict(msg))  # keep any extra keys a chat template may use
    return out


def format_messages(
    tokenizer: Any,
    messages: Sequence[Mapping[str, Any]],
    template: TemplateName = "auto",
    add_generation_prompt: bool = True,
) -> FormattedPrompt:
    """Format ``messages`` for ``tokenizer``'s model and locate every message's content.

    Raises ``ChatTemplateError`` for ``template="chat"`` on a tokenizer without a chat template,
    and ``TemplateError`` for an unknown template name or malformed messages.
    """
    kind = resolve_template(tokenizer, template)
    msgs = validate_messages(messages)
    if kind == "plain":
        return _format_plain(tokenizer, msgs, add_generation_prompt)
    if kind == "raw":
        return format_raw(msgs)
    return _format_chat(tokenizer, msgs, add_generation_prompt)


def format_raw(messages: Sequence[Mapping[str, str]]) -> FormattedPrompt:
    """The ``"raw"`` template: contents as given (see the module docstring); no generation prompt."""
    text, spans = "", []
    for i, msg in enumerate(messages):
        if i and msg["role"] != "assistant":
            text += PLAIN_SEPARATOR
        spans.append((len(text), len(text) + len(msg["content"])))
        text += msg["content"]
    return FormattedPrompt(text, spans)


def _format_plain(tokenizer: Any, messages: list[dict[str, str]], add_generation_prompt: bool) -> FormattedPrompt:
    eos = getattr(tokenizer, "eos_token", None) or ""
    parts: list[str] = []
    spans: list[tuple[int, int]] = []
    pos = 0
    for i, msg in enumerate(messages):
        if i:
            parts.append(PLAIN_SEPARATOR)
            pos += len(PLAIN_SEPARATOR)
        header = PLAIN_HEADERS[msg["role"]]
        start = pos + len(header)
        spans.append((start, start + len(msg["content"])))
        block = header + msg["content"] + (eos if msg["role"] == "assistant" else "")
        parts.append(block)
        pos += len(block)
    if add_generation_prompt:
        parts.append((PLAIN_SEPARATOR if messages else "") + PLAIN_GENERATION_PROMPT)
    return FormattedPrompt("".join(parts), spans)


def _render_chat(tokenizer: Any, messages: list[dict[str, str]], add_generation_prompt: bool) -> str:
    try:
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)
    except Exception as exc:  # jinja errors: templates that reject a role order, etc.
        raise ChatTemplateError(
            f"the chat template of {tokenizer_label(tokenizer)} failed to render {len(messages)} message(s) "
            f"(roles {[m['role'] for m in messages]}): {type(exc).__name__}: {exc}. Some templates only accept "
            f"alternating user/assistant turns or no system message; adapt the messages or use template='plain'."
        ) from exc
    if not isinstance(text, str):
        raise ChatTemplateError(
            f"apply_chat_template of {tokenizer_label(tokenizer)} returned {type(text).__name__}, not str"
        )
    return text


def _format_chat(tokenizer: Any, messages: list[dict[str, str]], add_generation_prompt: bool) -> FormattedPrompt:
    text = _render_chat(tokenizer, messages, add_generation_prompt)
    # Render once more with unique placeholders as contents: their positions give exact spans, even
    # when a content string also occurs in the template text (e.g. a user message "user").
    marked = [{**m, "content": _SENTINEL.format(i)} for i, m in enumerate(messages)]
    try:
        skeleton = _render_chat(tokenizer, marked, add_generation_prompt)
    except ChatTemplateError:
        skeleton = ""
    spans = _spans_from_skeleton(skeleton, messages, text)
    if spans is None:
        spans = _spans_by_search(tokenizer, text, messages)
    return FormattedPrompt(text, spans)


def _spans_from_skeleton(skeleton: str, messages: list[dict[str, str]], text: str) -> list[tuple[int, int]] | None:
    """Splice the real contents into the placeholder rendering; None if that does not give ``text``."""
    parts: list[str] = []
    spans: list[tuple[int, int]] = []
    cursor = out_len = 0
    for i, msg in enumerate(messages):
        mark = _SENTINEL.format(i)
        at = skeleton.find(mark, cursor)
        if at < 0 or skeleton.find(mark, at + 1) >= 0:
            return None  # content dropped or repeated by the template
        parts.append(skeleton[cursor:at])
        out_len += at - cursor
        spans.append((out_len, out_len + len(msg["content"])))
        parts.append(msg["content"])
        out_len += len(msg["content"])
        cursor = at + len(mark)
    parts.append(skeleton[cursor:])
    return spans if "".join(parts) == text else None


def _spans_by_search(tokenizer: Any, text: str, messages: list[dict[str, str]]) -> list[tuple[int, int]]:
    """Find each content in order after the previous one; fall back to its stripped form."""
    spans: list[tuple[int, int]] = []
    pos = 0
    for i, msg in enumerate(messages):
        for needle in (msg["content"], msg["content"].strip()):
            at = text.find(needle, pos)
            if at >= 0:
                spans.append((at, at + len(needle)))
                pos = at + len(needle)
                break
        else:
            raise ChatTemplateError(
                f"the chat template of {tokenizer_label(tokenizer)} rewrites the content of messages[{i}] "
                f"(role {msg['role']!r}) so that it cannot be found in the formatted prompt; lcf can only align "
                f"content that appears verbatim. Use template='plain' for this model."
            )
    return spans


def format_example(
    tokenizer: Any,
    prompt_messages: Sequence[Mapping[str, Any]],
    response: str,
    template: TemplateName = "auto",
) -> tuple[str, str]:
    """Format a training example; return ``(prompt_text, full_text)``.

    ``prompt_text`` is the prompt with the generation prompt; ``full_text`` is the conversation with
    ``response`` as a final assistant message. ``prompt_text`` is guaranteed to be a prefix of
    ``full_text`` (a strict one unless the response is empty and the template adds no end-of-turn
    text), so the response and its end-of-turn text are ``full_text[len(prompt_text):]``.
    Raises ``ChatTemplateError`` if the model's template does not render the prompt as a prefix.
    """
    if not isinstance(response, str):
        raise TemplateError(f"response must be a string, got {type(response).__name__}")
    prompt = format_messages(tokenizer, prompt_messages, template, add_generation_prompt=True).text
    full_messages = [*validate_messages(prompt_messages), {"role": "assistant", "content": response}]
    full = format_messages(tokenizer, full_messages, template, add_generation_prompt=False).text
    if not full.startswith(prompt):
        cut = len(prompt)
        raise ChatTemplateError(
            f"the chat template of {tokenizer_label(tokenizer)} does not render the prompt (with generation "
            f"prompt) as a strict prefix of the conversation including the response, so the response "
            f"tokens cannot be separated. Prompt ends with {prompt[-40:]!r}; full text has "
            f"{full[max(0, cut - 40):cut + 40]!r} there. Use template='plain', or a chat template that "
            f"renders assistant turns after the generation prompt."
        )
    return prompt, full
