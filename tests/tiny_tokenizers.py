"""Tiny, fully offline fast tokenizers for tests (built in-process with the `tokenizers` library).

* :func:`tiny_receiver_tokenizer` — byte-level BPE (GPT-2/SmolLM-like) trained on :data:`CORPUS`,
  no BOS, with a small ChatML chat template.
* :func:`tiny_sharer_tokenizer` — SentencePiece-like BPE (``▁`` for spaces, ``<unk>`` for unseen
  characters) trained on :data:`CORPUS` with a smaller vocabulary, a ``<s>`` BOS added by the
  post-processor, and no chat template.
* :func:`hand_bpe_tokenizer` — a ``▁``-style BPE from explicit merges, for tests that need to
  know every token by hand.

These are plain functions (not fixtures) so any test module can import them::

    from tests.tiny_tokenizers import tiny_receiver_tokenizer, tiny_sharer_tokenizer
"""
from __future__ import annotations

from collections.abc import Sequence

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

CORPUS: tuple[str, ...] = (
    "The cat sat on the mat.",
    "A dog ran in the park! The dog was happy.",
    "def add(a, b):\n    return a + b",
    "Numbers like 12 and 345 appear, and 2 + 2 = 4.",
    "hello world, hello there. What is the answer?",
    "You are a helpful assistant. Answer briefly.",
)

CHATML_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# Letters, digits, punctuation and whitespace of hand-built tokenizers; other characters are <unk>.
HAND_ALPHABET = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.,:;!?()+-=_'\"\n\t▁"


def tiny_receiver_tokenizer(vocab_size: int = 320) -> PreTrainedTokenizerFast:
    """Byte-level BPE without BOS, with a ChatML chat template (specials ``<|im_start|>``, ``<|im_end|>``)."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<|im_start|>", "<|im_end|>", "<pad>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<pad>", name_or_path="tiny-receiver",
    )
    fast.chat_template = CHATML_TEMPLATE
    return fast


def tiny_sharer_tokenizer(vocab_size: int = 110) -> PreTrainedTokenizerFast:
    """SentencePiece-like BPE (``▁`` spaces, ``<unk>``), ``<s>`` BOS via the post-processor, no chat template."""
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="never")
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="never")
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=["<unk>", "<s>", "</s>", "<pad>"], show_progress=False
    )
    tok.train_from_iterator(CORPUS, trainer)
    return _wrap_with_bos(tok, "tiny-sharer")


def hand_bpe_tokenizer(
    merges: Sequence[str], *, bos: bool = False, chat_template: str | None = None, name: str = "hand-bpe"
) -> PreTrainedTokenizerFast:
    """``▁``-style BPE over :data:`HAND_ALPHABET` with the given merges (``"a b"`` merges ``a`` and ``b``).

    Merges apply in order of the list. ``bos=True`` adds a ``<s>`` BOS through the post-processor.
    """
    specials = ["<unk>", "<s>", "</s>"]
    vocab: dict[str, int] = {t: i for i, t in enumerate(specials)}
    for ch in HAND_ALPHABET:
        vocab.setdefault(ch, len(vocab))
    pairs: list[tuple[str, str]] = []
    for merge in merges:
        left, right = merge.split(" ")
        pairs.append((left, right))
        vocab.setdefault(left + right, len(vocab))
    tok = Tokenizer(models.BPE(vocab=vocab, merges=pairs, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="never")
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="never")
    tok.add_special_tokens(specials)
    if bos:
        fast = _wrap_with_bos(tok, name)
    else:
        fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", eos_token="</s>", name_or_path=name)
    if chat_template:
        fast.chat_template = chat_template
    return fast


def _wrap_with_bos(tok: Tokenizer, name: str) -> PreTrainedTokenizerFast:
    bos_id = tok.token_to_id("<s>")
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", bos_id)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<pad>"
        if tok.token_to_id("<pad>") is not None else None, name_or_path=name,
    )
