"""Prompt templates: chat / plain / auto, content spans, prompt-prefix guarantee, errors."""
import pytest

from lcf.align.templates import (
    PLAIN_GENERATION_PROMPT,
    ChatTemplateError,
    TemplateError,
    format_example,
    format_messages,
)
from lcf.errors import LCFError
from tests.tiny_tokenizers import hand_bpe_tokenizer, tiny_receiver_tokenizer, tiny_sharer_tokenizer

MESSAGES = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "What is 2 + 2?"},
]


@pytest.fixture(scope="module")
def chat_tok():
    return tiny_receiver_tokenizer()


@pytest.fixture(scope="module")
def plain_tok():
    return tiny_sharer_tokenizer()


def assert_spans_point_at_content(prompt, messages):
    assert len(prompt.spans) == len(messages)
    last_end = 0
    for i, (msg, (start, end)) in enumerate(zip(messages, prompt.spans)):
        assert prompt.text[start:end] == msg["content"] == prompt.content(i)
        assert start >= last_end
        last_end = end


def test_chat_template_text_and_spans(chat_tok):
    p = format_messages(chat_tok, MESSAGES, "chat")
    assert p.text == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\nWhat is 2 + 2?<|im_end|>\n<|im_start|>assistant\n"
    )
    assert_spans_point_at_content(p, MESSAGES)
    no_gen = format_messages(chat_tok, MESSAGES, "chat", add_generation_prompt=False)
    assert not no_gen.text.endswith("assistant\n") and p.text.startswith(no_gen.text)


def test_chat_spans_not_fooled_by_content_that_looks_like_template_text(chat_tok):
    msgs = [{"role": "user", "content": "user"}, {"role": "assistant", "content": "im_end"}]
    p = format_messages(chat_tok, msgs, "chat", add_generation_prompt=False)
    assert_spans_point_at_content(p, msgs)
    assert p.spans[0] == (len("<|im_start|>user\n"), len("<|im_start|>user\nuser"))


def test_chat_template_that_strips_content():
    trim = "{% for m in messages %}[{{ m['role'] }}] {{ m['content'] | trim }}\n{% endfor %}"
    tok = hand_bpe_tokenizer([], chat_template=trim)
    msgs = [{"role": "user", "content": "  padded  "}, {"role": "user", "content": "plain"}]
    p = format_messages(tok, msgs, "chat")
    assert p.text == "[user] padded\n[user] plain\n"
    assert [p.content(i) for i in range(2)] == ["padded", "plain"]


def test_plain_template(plain_tok):
    p = format_messages(plain_tok, MESSAGES, "plain")
    assert p.text == (
        "You are a helpful assistant.\n\n### Instruction:\nWhat is 2 + 2?\n\n### Response:\n"
    )
    assert p.text.endswith(PLAIN_GENERATION_PROMPT)
    assert_spans_point_at_content(p, MESSAGES)
    convo = [*MESSAGES, {"role": "assistant", "content": "4"}]
    full = format_messages(plain_tok, convo, "plain", add_generation_prompt=False)
    assert full.text.endswith("### Response:\n4</s>")  # the tokenizer's EOS closes assistant turns
    assert_spans_point_at_content(full, convo)
    assert format_messages(plain_tok, [], "plain").text == PLAIN_GENERATION_PROMPT


def test_auto_picks_chat_when_available(chat_tok, plain_tok):
    assert format_messages(chat_tok, MESSAGES).text == format_messages(chat_tok, MESSAGES, "chat").text
    assert format_messages(plain_tok, MESSAGES).text == format_messages(plain_tok, MESSAGES, "plain").text
    # a chat-capable tokenizer can still be asked for the plain format
    assert format_messages(chat_tok, MESSAGES, "plain").text.startswith("You are a helpful assistant.\n\n###")


@pytest.mark.parametrize("template", ["chat", "plain", "auto"])
def test_format_example_prompt_is_prefix(chat_tok, plain_tok, template):
    for tok in (chat_tok, plain_tok):
        if template == "chat" and tok is plain_tok:
            continue
        prompt, full = format_example(tok, MESSAGES, "Four.", template=template)
        assert full.startswith(prompt) and len(full) > len(prompt)
        assert full[len(prompt):].startswith("Four.")


def test_format_example_rejects_template_without_prefix_property():
    odd = (
        "{% for m in messages %}{% if m['role'] == 'assistant' %}<final>{{ m['content'] }}"
        "{% else %}{{ m['content'] }}\n{% endif %}{% endfor %}{% if add_generation_prompt %}<reply>{% endif %}"
    )
    tok = hand_bpe_tokenizer([], chat_template=odd)
    with pytest.raises(ChatTemplateError, match="strict prefix"):
        format_example(tok, [{"role": "user", "content": "hi"}], "ok", template="chat")


def _check_no_chat_template_error(tok):
    with pytest.raises(ChatTemplateError) as info:
        format_messages(tok, MESSAGES, "chat")
    msg = str(info.value)
    assert "no chat template" in msg and "'plain'" in msg and "chat_template" in msg
    assert isinstance(info.value, LCFError) and isinstance(info.value, ValueError)
    return msg


def test_chat_on_tokenizer_without_chat_template(plain_tok):
    msg = _check_no_chat_template_error(plain_tok)
    assert "tiny-sharer" in msg


@pytest.mark.real
def test_chat_on_real_gemma_without_chat_template(real_sharer_tokenizer):
    msg = _check_no_chat_template_error(real_sharer_tokenizer)
    assert real_sharer_tokenizer.name_or_path in msg
    # auto falls back to plain for it
    assert format_messages(real_sharer_tokenizer, MESSAGES).text.endswith(PLAIN_GENERATION_PROMPT)


@pytest.mark.real
def test_real_smollm2_chat_spans(real_receiver_tokenizer):
    p = format_messages(real_receiver_tokenizer, MESSAGES[1:])  # default system prompt is template text
    assert p.text.startswith("<|im_start|>system\n") and p.text.endswith("<|im_start|>assistant\n")
    assert_spans_point_at_content(p, MESSAGES[1:])
    prompt, full = format_example(real_receiver_tokenizer, MESSAGES, "4")
    assert full == prompt + "4<|im_end|>\n"


def test_unknown_template_name_suggests(chat_tok):
    with pytest.raises(TemplateError, match="unknown prompt template 'chatml'.*Did you mean 'chat'"):
        format_messages(chat_tok, MESSAGES, "chatml")


@pytest.mark.parametrize(
    "messages, match",
    [
        ([{"role": "user"}], r"lacks key\(s\) \['content'\]"),
        ([{"role": "usr", "content": "x"}], "Did you mean 'user'"),
        ([{"role": "user", "content": 3}], "must be a string"),
        (["hello"], "must be a dict"),
        ("hello", "must be a list"),
    ],
)
def test_bad_messages(chat_tok, messages, match):
    with pytest.raises(TemplateError, match=match):
        format_messages(chat_tok, messages)


def test_bad_response_type(chat_tok):
    with pytest.raises(TemplateError, match="response must be a string"):
        format_example(chat_tok, MESSAGES, None)  # type: ignore[arg-type]


def test_raw_template_is_the_text_as_given(chat_tok, plain_tok):
    from lcf.align.tokens import MaximalCoverageAligner
    from lcf.data.features import featurize

    msgs = [{"role": "user", "content": "Question: What is 2 + 2?\nAnswer:"}]
    for tok in (chat_tok, plain_tok):  # with or without a chat template: no headers, no eos
        prompt = format_messages(tok, msgs, "raw")
        assert prompt.text == msgs[0]["content"] and prompt.spans == [(0, len(prompt.text))]
        assert format_example(tok, msgs, " 4", "raw") == (prompt.text, prompt.text + " 4")
    two = format_messages(plain_tok, [MESSAGES[0], MESSAGES[1], {"role": "assistant", "content": " 4"}], "raw",
                          add_generation_prompt=False)
    assert two.text == "You are a helpful assistant.\n\nWhat is 2 + 2? 4"
    assert_spans_point_at_content(two, [*MESSAGES, {"role": "assistant", "content": " 4"}])
    feats = featurize(msgs, " 4", chat_tok, plain_tok, MaximalCoverageAligner(), receiver_template="raw",
                      sharer_template="raw")
    assert chat_tok.decode(feats["response_ids"]) == " 4"  # the continuation alone: no end-of-turn or eos
    assert all(feats["align_mask"])  # every receiver position is content, so every one is aligned
    with pytest.raises(TemplateError, match="raw"):
        format_messages(plain_tok, msgs, "raww")
