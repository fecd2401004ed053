"""The inference path of per-token messages (lcf.models.placement): decoding every layer at once, in chunks,
into a preallocated cache gives the cache the layer-by-layer path (unflat_kv) gives, for one and for two
rotary kinds; a cache built from a view holds its tensors without copying them and leaves them untouched."""
from __future__ import annotations

import pytest
import torch

from lcf.models.kv import prefill
from lcf.models.placement import decode_into_cache, layer_kinds
from lcf.models.rows import Prepared, greedy, layer_rope, unflat_kv
from tests.conftest import tiny_llama


def _gemma_two_kinds():
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    cfg = Gemma3TextConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=3,
                           num_attention_heads=2, num_key_value_heads=1, head_dim=8, sliding_window=64,
                           layer_types=["sliding_attention", "full_attention", "sliding_attention"],
                           pad_token_id=0, bos_token_id=2, eos_token_id=1)
    torch.manual_seed(0)
    return Gemma3ForCausalLM(cfg).eval()


@pytest.mark.parametrize("build", [lambda: tiny_llama(layers=3), _gemma_two_kinds], ids=["one-kind", "two-kinds"])
@pytest.mark.parametrize("chunk", [1, 4, 64])
def test_chunked_decode_equals_the_layer_by_layer_path(build, chunk):
    model = build()
    cfg = model.config
    dr = sum(2 * cfg.num_key_value_heads * (cfg.head_dim or cfg.hidden_size // cfg.num_attention_heads)
             for _ in range(cfg.num_hidden_layers))
    torch.manual_seed(1)
    codes, up = torch.randn(9, 5), torch.randn(5, dr)
    ids = torch.tensor([[3, 5, 7, 9, 11, 13]])
    with torch.no_grad():
        p = Prepared(prefill(model, ids[:, :3]), 3, 3, ids[0, 3:])
    rope, kinds = layer_rope(model), layer_kinds(model)
    assert len(set(kinds)) == (2 if "Gemma" in type(model).__name__ else 1)

    def decode(c):
        return c @ up

    want, start = unflat_kv(decode(codes), p, rope)
    got, got_start = decode_into_cache(decode, codes, p, rope, kinds, chunk=chunk)
    assert got_start == start == 12 and got.seq_len == want.seq_len
    for layer in range(want.num_layers):
        torch.testing.assert_close(got.keys[layer], want.keys[layer])
        torch.testing.assert_close(got.values[layer], want.values[layer])
    stop = {cfg.eos_token_id}
    assert greedy(model, [got], [p.tail], [start], 4, stop) == greedy(model, [want], [p.tail], [start], 4, stop)


def test_a_cache_built_from_a_view_holds_its_tensors_and_leaves_them_untouched():
    from lcf.models.kv import cache_kwargs

    model = tiny_llama()
    ids = torch.tensor([[3, 5, 7, 9, 11]])
    with torch.no_grad():
        view = prefill(model, ids[:, :4])
        before = [k.clone() for k in view.keys]
        cache = view.to_cache(model)
        assert cache.layers[0].keys.data_ptr() == view.keys[0].data_ptr()  # no copy of the cache
        step = model(input_ids=ids[:, 4:], position_ids=torch.tensor([[4]]), use_cache=True,
                     **cache_kwargs(model, cache)).logits
        whole = model(input_ids=ids).logits
    torch.testing.assert_close(step[0, -1], whole[0, -1])
    assert cache.layers[0].keys.shape[2] == 5
    for k, b in zip(view.keys, before):
        torch.testing.assert_close(k, b)  # the view is unchanged by the step
