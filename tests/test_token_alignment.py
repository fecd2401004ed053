"""Token alignment by maximal string coverage: hand-checked tiny cases and the real SmolLM2/Gemma-3 pair."""
import pytest
import torch

from lcf.align.templates import format_messages
from lcf.align.tokens import MaximalCoverageAligner, TokenAlignment, align_messages, align_texts, message_segments
from lcf.errors import AlignmentError, RecipeError
from lcf.registry import token_aligners
from tests.tiny_tokenizers import hand_bpe_tokenizer, tiny_receiver_tokenizer, tiny_sharer_tokenizer

# "hello world" -> he | llo | ▁w | or | ld
HAND_A = ["h e", "l l", "ll o", "▁ w", "o r", "l d"]
# "hello world" -> <s> | hel | lo | ▁ | world
HAND_B = ["h e", "he l", "l o", "w o", "wo r", "wor l", "worl d"]


@pytest.fixture(scope="module")
def hand_a():
    return hand_bpe_tokenizer(HAND_A, name="hand-a")


@pytest.fixture(scope="module")
def hand_b():
    return hand_bpe_tokenizer(HAND_B, bos=True, name="hand-b")


def tokens_of(tok, text):
    return tok.convert_ids_to_tokens(tok(text).input_ids)


def test_hand_tokenizers_split_as_designed(hand_a, hand_b):
    assert tokens_of(hand_a, "hello world") == ["he", "llo", "▁w", "or", "ld"]
    assert tokens_of(hand_b, "hello world") == ["<s>", "hel", "lo", "▁", "world"]


def test_hand_alignment_longest(hand_a, hand_b):
    al = align_texts(hand_a, hand_b, "hello world")
    assert isinstance(al, TokenAlignment) and len(al) == 5 and len(al.sharer_ids) == 5
    assert al.sharer_index.tolist() == [1, 2, 3, 4, 4]  # llo: 'lo' covers 2 chars; ▁w: tie -> earliest
    assert al.coverage.tolist() == pytest.approx([1.0, 2 / 3, 0.5, 1.0, 1.0])
    assert al.mask.all() and al.num_aligned == 5
    assert al.sharer_index.dtype == torch.long and al.mask.dtype == torch.bool and al.coverage.is_floating_point()


def test_hand_alignment_first_and_min_coverage(hand_a, hand_b):
    first = MaximalCoverageAligner(pick="first").align_texts(hand_a, hand_b, "hello world")
    assert first.sharer_index.tolist() == [1, 1, 3, 4, 4]  # llo -> 'hel', the first token touching it
    assert first.coverage.tolist() == pytest.approx([1.0, 1 / 3, 0.5, 1.0, 1.0])
    strict = MaximalCoverageAligner(min_coverage=0.6).align_texts(hand_a, hand_b, "hello world")
    assert strict.mask.tolist() == [True, True, False, True, True]
    assert strict.sharer_index[2] == 0 and strict.coverage[2] == pytest.approx(0.5)


def test_hand_alignment_reverse_masks_bos(hand_a, hand_b):
    al = align_texts(hand_b, hand_a, "hello world")
    assert al.mask.tolist() == [False, True, True, True, True]  # <s> has no counterpart
    assert al.sharer_index.tolist() == [0, 0, 1, 2, 3]  # world: 'or' and 'ld' tie -> earliest
    assert al.coverage.tolist() == pytest.approx([0.0, 2 / 3, 1.0, 1.0, 0.4])
    rows = al.rows(hand_b, hand_a)
    assert rows[0] == (0, "<s>", None, "", 0.0)
    assert rows[1][:4] == (1, "'hel'", 0, "'he'")
    assert "(masked)" in al.to_table(hand_b, hand_a) and "<id" in al.to_table()


def test_same_tokenizer_is_identity():
    tok = tiny_sharer_tokenizer()
    text = "The cat sat on the mat. 12 + 345!"
    al = align_texts(tok, tok, text)
    assert not al.mask[0]  # BOS
    assert al.mask[1:].all()
    assert al.sharer_index[1:].tolist() == list(range(1, len(al)))
    assert torch.equal(al.coverage[1:], torch.ones(len(al) - 1))
    assert torch.equal(al.receiver_ids, al.sharer_ids)


def test_tiny_pair_messages_mask_template_tokens():
    r, s = tiny_receiver_tokenizer(), tiny_sharer_tokenizer()
    msgs = [{"role": "user", "content": "What is the answer?"}]
    al = align_messages(r, s, msgs)
    r_prompt = format_messages(r, msgs)
    start, end = r_prompt.spans[0]
    inside = (al.receiver_offsets[:, 0] >= start) & (al.receiver_offsets[:, 1] <= end) & (
        al.receiver_offsets[:, 1] > al.receiver_offsets[:, 0])
    assert inside.any() and torch.equal(al.mask, inside)
    assert al.sharer_ids[0] == s.bos_token_id and (al.sharer_ids == s.bos_token_id).sum() == 1


def test_mismatched_texts_need_segments(hand_a, hand_b):
    with pytest.raises(AlignmentError, match="differ but no segments"):
        align_texts(hand_a, hand_b, "hello world", "hello there")
    al = align_texts(hand_a, hand_b, "xx hello", "hello yy", segments=[(3, 0, 5)])
    assert al.mask.sum() > 0


@pytest.mark.parametrize(
    "segments, match",
    [
        ([(0, 0, 5)], "pairs different content"),
        ([(3, 0, 50)], "runs past the end"),
        ([(3, 0, 2), (4, 1, 2)], "overlap"),
        ([(3, 0)], "non-negative ints"),
        ([(-1, 0, 2)], "non-negative ints"),
    ],
)
def test_bad_segments(hand_a, hand_b, segments, match):
    with pytest.raises(AlignmentError, match=match):
        align_texts(hand_a, hand_b, "xx hello", "hello yy", segments=segments)


def test_slow_tokenizer_rejected(hand_b):
    class Slow:
        is_fast = False
        name_or_path = "slow-one"

    with pytest.raises(AlignmentError, match="slow-one.*use_fast=True"):
        align_texts(Slow(), hand_b, "hello")


def test_empty_text(hand_a, hand_b):
    al = align_texts(hand_a, hand_b, "")
    assert len(al) == 0 and al.sharer_ids.tolist() == [hand_b.bos_token_id] and al.num_aligned == 0
    al = align_texts(hand_b, hand_a, "")
    assert len(al) == 1 and not al.mask.any()


def test_read_ahead_hand_case(hand_a, hand_b):
    plain = align_texts(hand_b, hand_a, "hello world")  # mask [F, T, T, T, T], index [0, 0, 1, 2, 3]
    ahead = MaximalCoverageAligner(read_ahead=1).align_texts(hand_b, hand_a, "hello world")
    assert ahead.sharer_index.tolist() == [0, 1, 2, 3, 3]  # the last aligned position keeps its own token
    assert torch.equal(ahead.mask, plain.mask) and torch.equal(ahead.coverage, plain.coverage)
    two = MaximalCoverageAligner(read_ahead=2).align_texts(hand_b, hand_a, "hello world")
    assert two.sharer_index.tolist() == [0, 2, 3, 2, 3]
    far = MaximalCoverageAligner(read_ahead=9).align_texts(hand_b, hand_a, "hello world")
    assert torch.equal(far.sharer_index, plain.sharer_index)  # fewer aligned positions than the shift


def test_read_ahead_skips_template_tokens():
    r, s = tiny_receiver_tokenizer(), tiny_sharer_tokenizer()
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is the answer?"}]
    plain = align_messages(r, s, msgs)
    ahead = token_aligners.build({"type": "maximal_coverage", "read_ahead": 1}).align_messages(r, s, msgs)
    aligned = torch.nonzero(plain.mask).flatten()  # two messages: a gap of template tokens between them
    assert (aligned[1:] - aligned[:-1]).max() > 1
    assert ahead.sharer_index[aligned[:-1]].tolist() == plain.sharer_index[aligned[1:]].tolist()
    assert ahead.sharer_index[aligned[-1]] == plain.sharer_index[aligned[-1]]
    assert torch.equal(ahead.sharer_index[~plain.mask], plain.sharer_index[~plain.mask])  # still 0, masked


@pytest.mark.parametrize("bad", [-1, 1.5, True, "1"])
def test_read_ahead_validation(bad):
    with pytest.raises(AlignmentError, match="read_ahead must be an integer >= 0"):
        MaximalCoverageAligner(read_ahead=bad)


def test_registered_component_and_validation():
    aligner = token_aligners.build({"type": "maximal_coverage", "pick": "first", "min_coverage": 0.25})
    assert isinstance(aligner, MaximalCoverageAligner) and aligner.pick == "first" and aligner.min_coverage == 0.25
    with pytest.raises(RecipeError, match="pick"):
        token_aligners.build({"type": "maximal_coverage", "pick": "most"})
    with pytest.raises(AlignmentError, match="min_coverage"):
        MaximalCoverageAligner(min_coverage=1.5)


# -- the real SmolLM2 / Gemma-3 pair ------------------------------------------------------------
REAL_TEXTS = {
    "english": "The quick brown fox jumps over the lazy dog.",
    "unicode": "Héllo wörld, naïve café — 日本語のテキスト, 中文 and emoji 😀🚀👍🏽!",
    "digits": "12345 + 678 = 13023, and 3.14159",
    "whitespace": "a    b\n\n\tc  \n   d ",
    "code": "def square(x):\n    if x < 0:\n        return -x * -x\n    return x ** 2  # 平方\n",
    "empty": "",
}


@pytest.fixture(params=["smollm2_receives", "gemma_receives"])
def real_pair(request, real_receiver_tokenizer, real_sharer_tokenizer):
    if request.param == "smollm2_receives":
        return real_receiver_tokenizer, real_sharer_tokenizer
    return real_sharer_tokenizer, real_receiver_tokenizer


def to_sharer_coords(pos: int, segments) -> int | None:
    for rs, ss, n in segments:
        if rs <= pos < rs + n:
            return ss + pos - rs
    return None


def check_alignment_properties(al: TokenAlignment, receiver_tok, sharer_tok, segments):
    """Invariants every alignment must satisfy; returns the unmasked receiver positions."""
    n_r, n_s = len(al), len(al.sharer_ids)
    for t in (al.sharer_index, al.mask, al.coverage):
        assert t.shape == (n_r,)
    assert al.receiver_offsets.shape == (n_r, 2) and al.sharer_offsets.shape == (n_s, 2)
    assert (al.sharer_index[~al.mask] == 0).all()
    r_special = set(receiver_tok.all_special_ids) - {receiver_tok.unk_token_id}
    s_special = set(sharer_tok.all_special_ids) - {sharer_tok.unk_token_id}
    idx = al.mask.nonzero().flatten().tolist()
    for i in range(n_r):
        a, b = al.receiver_offsets[i].tolist()
        if int(al.receiver_ids[i]) in r_special or b <= a:
            assert not al.mask[i], f"special / empty receiver token {i} must be masked"
    for i in idx:
        cov = float(al.coverage[i])
        assert 0.0 < cov <= 1.0
        j = int(al.sharer_index[i])
        assert 0 <= j < n_s and int(al.sharer_ids[j]) not in s_special
        a, b = al.receiver_offsets[i].tolist()
        sa, sb = al.sharer_offsets[j].tolist()
        mapped = [to_sharer_coords(p, segments) for p in range(a, b)]
        assert any(m is not None and sa <= m < sb for m in mapped), f"receiver {i} and sharer {j} do not overlap"
    chosen = al.sharer_index[al.mask]
    assert (chosen[1:] >= chosen[:-1]).all(), "sharer_index must be non-decreasing over fused positions"
    return idx


@pytest.mark.real
@pytest.mark.parametrize("name", sorted(REAL_TEXTS))
def test_real_pair_texts(real_pair, name):
    receiver_tok, sharer_tok = real_pair
    text = REAL_TEXTS[name]
    al = align_texts(receiver_tok, sharer_tok, text)
    idx = check_alignment_properties(al, receiver_tok, sharer_tok, [(0, 0, len(text))])
    if not text:
        assert al.num_aligned == 0
        return
    # every non-special, non-empty receiver token of shared text finds a counterpart
    spans = al.receiver_offsets
    content = (spans[:, 1] > spans[:, 0]).nonzero().flatten().tolist()
    assert idx == content
    if name == "digits":
        for i in idx:
            a, b = spans[i].tolist()
            piece = text[a:b]
            if piece.isdigit():
                sa, sb = al.sharer_offsets[int(al.sharer_index[i])].tolist()
                assert sa <= a < sb and piece[0] in text[sa:sb]
    if name == "english":
        assert float(al.coverage[al.mask].mean()) > 0.9


@pytest.mark.real
def test_real_digits_one_to_one(real_receiver_tokenizer, real_sharer_tokenizer):
    text = "12345 + 678"
    al = align_texts(real_receiver_tokenizer, real_sharer_tokenizer, text)
    for row in al.rows(real_receiver_tokenizer, real_sharer_tokenizer):
        _, r_piece, j, s_piece, cov = row
        if r_piece.strip("'").isdigit():
            assert s_piece == r_piece and cov == 1.0  # both tokenizers split digits one per token


@pytest.mark.real
def test_real_pair_messages(real_pair):
    receiver_tok, sharer_tok = real_pair
    msgs = [
        {"role": "system", "content": "Answer with one number."},
        {"role": "user", "content": "What is 12 + 30? Think: 😀 naïve"},
    ]
    al = align_messages(receiver_tok, sharer_tok, msgs)
    r_prompt, s_prompt = format_messages(receiver_tok, msgs), format_messages(sharer_tok, msgs)
    assert al.receiver_text == r_prompt.text and al.sharer_text == s_prompt.text
    segments = message_segments(r_prompt, s_prompt)
    check_alignment_properties(al, receiver_tok, sharer_tok, segments)
    off = al.receiver_offsets
    nonempty = off[:, 1] > off[:, 0]
    inside = torch.zeros(len(al), dtype=torch.bool)
    touches = torch.zeros(len(al), dtype=torch.bool)
    for start, end in r_prompt.spans:
        inside |= (off[:, 0] >= start) & (off[:, 1] <= end) & nonempty
        touches |= (off[:, 0] < end) & (off[:, 1] > start)
    assert al.mask[inside].all(), "content tokens must be fused"
    assert not al.mask[~touches].any(), "template tokens must be masked"
    assert (~al.mask).sum() > 0 and al.mask.sum() >= 10
    for tok, ids in ((receiver_tok, al.receiver_ids), (sharer_tok, al.sharer_ids)):
        if tok.bos_token_id is not None and tok(" x").input_ids[0] == tok.bos_token_id:
            assert (ids == tok.bos_token_id).sum() == 1  # BOS added once, not doubled


@pytest.mark.real
def test_real_long_prompt_shapes(real_receiver_tokenizer, real_sharer_tokenizer):
    text = "The quick brown fox jumps over the lazy dog. 12345 def f(x): return x\n" * 90
    al = MaximalCoverageAligner().align_texts(real_receiver_tokenizer, real_sharer_tokenizer, text)
    assert len(al) > 2000 and al.num_aligned == len(al)
    assert al.coverage.min() > 0


@pytest.mark.real
def test_real_cloze_read_ahead_reaches_the_last_sharer_token(real_receiver_tokenizer, real_sharer_tokenizer):
    msgs = [{"role": "user", "content": "Question: Which gas do plants absorb?\nAnswer:"}]
    aligner = MaximalCoverageAligner(read_ahead=1)
    al = aligner.align_messages(real_receiver_tokenizer, real_sharer_tokenizer, msgs,
                                receiver_template="raw", sharer_template="raw")
    last_sharer = len(al.sharer_ids) - 1  # ':' of "Answer:", where the sharer predicts the answer
    assert int(al.sharer_index[-2]) == last_sharer  # the last fused position (all prompt tokens but the last)
    plain = align_messages(real_receiver_tokenizer, real_sharer_tokenizer, msgs, receiver_template="raw",
                           sharer_template="raw")
    assert int(plain.sharer_index[:-1].max()) < last_sharer  # plain coverage never fuses it
