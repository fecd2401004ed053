"""Per-token rows (lcf.models.rows, lcf.token_map.rows): the receiver's own rows round-trip to its cache, each
layer's rotary phase is undone, and a sharer context longer than a sliding window keeps every position."""
from __future__ import annotations

import pytest
import torch

from lcf.data.xc.features import XCExample
from lcf.errors import LCFError
from lcf.models.rows import flat_kv, layer_rope, unflat_kv
from lcf.token_map.rows import TokenRows
from tests.conftest import tiny_gemma3, tiny_llama

CONTEXTS = ["Ada Lindqvist moved to Tromsø a few years ago. She works as a luthier."]


def _items() -> list[XCExample]:
    return [XCExample(id=str(i), sharer_context=c, question="Where does this person live?", answers=["x"])
            for i, c in enumerate(CONTEXTS)]


@pytest.fixture(scope="module")
def same_pair(real_receiver_tokenizer):
    model = tiny_llama(vocab_size=len(real_receiver_tokenizer), layers=2).double()
    return TokenRows(model, real_receiver_tokenizer, model, real_receiver_tokenizer)


def test_own_rows_round_trip_to_the_own_cache(same_pair):
    x, y, p = same_pair.features(_items()[0])
    torch.testing.assert_close(x, y)  # one model, one tokenizer: the sharer's rows are the receiver's
    assert y.shape == (p.b - p.a, 2 * 2 * 2 * 4)
    view, start = unflat_kv(y, p, same_pair.receiver_rope)
    assert start == p.b
    for layer in range(view.num_layers):
        torch.testing.assert_close(view.keys[layer], p.view.keys[layer])
        torch.testing.assert_close(view.values[layer], p.view.values[layer])
    with pytest.raises(LCFError, match="columns"):
        unflat_kv(y[:, :-1], p, same_pair.receiver_rope)


@pytest.mark.parametrize("first", ["sliding_attention", "full_attention"])
def test_layer_rope_undoes_each_layers_own_phase(first):
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    from lcf.models.kv import prefill

    other = "full_attention" if first == "sliding_attention" else "sliding_attention"
    cfg = Gemma3TextConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                           num_attention_heads=2, num_key_value_heads=1, head_dim=8, sliding_window=64,
                           layer_types=[first, other], pad_token_id=0, bos_token_id=2, eos_token_id=1)
    torch.manual_seed(0)
    model = Gemma3ForCausalLM(cfg).eval()
    rope = layer_rope(model)
    assert not torch.allclose(rope(torch.arange(5, 6), 0)[0], rope(torch.arange(5, 6), 1)[0])
    ids = torch.tensor([[5, 7, 9, 5, 11, 13, 5]])
    with torch.no_grad():
        rows = flat_kv(prefill(model, ids), rope, torch.arange(7), torch.arange(7))
    first_keys = rows[:, :8]  # layer 0's keys depend on the token alone once the phase is undone
    torch.testing.assert_close(first_keys[3], first_keys[0])
    torch.testing.assert_close(first_keys[6], first_keys[0])
    assert not torch.allclose(first_keys[1], first_keys[0])


def test_a_sharer_context_longer_than_its_window_keeps_every_position(real_receiver_tokenizer,
                                                                      real_sharer_tokenizer, monkeypatch):
    from lcf.models import rows as rows_mod
    from tests.test_compressor import reference_all_positions

    receiver = tiny_llama(vocab_size=len(real_receiver_tokenizer), layers=2)
    sharer = tiny_gemma3(vocab_size=len(real_sharer_tokenizer), sliding_window=4)  # sliding layers keep 3
    pair = TokenRows(receiver, real_receiver_tokenizer, sharer, real_sharer_tokenizer)
    x, _, p = pair.features(_items()[0])
    assert x.shape[0] == p.b - p.a > 10
    seen = []

    def one_pass(model, ids):  # a one-pass prefill into a cache that never evicts
        seen.append(ids.shape[1])
        return reference_all_positions(model, ids, torch.ones_like(ids))

    monkeypatch.setattr(rows_mod, "prefill_every_position", one_pass)
    ref, _, _ = pair.features(_items()[0])
    assert seen and seen[0] > 3
    torch.testing.assert_close(x, ref, atol=1e-5, rtol=1e-4)
