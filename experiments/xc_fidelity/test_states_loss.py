"""The own_states fidelity term: zero when the receiver reads its own cache, positive and differentiable otherwise."""
from __future__ import annotations

from types import SimpleNamespace

import torch

from experiments.xc_fidelity.states_loss import OwnStates, item_own_states
from lcf.data.xc.features import XCExample
from lcf.token_map.rows import TokenRows, answer_ids, head_only
from tests.conftest import tiny_llama


def test_own_states_is_zero_on_the_own_rows_and_has_a_gradient(real_receiver_tokenizer):
    tok = real_receiver_tokenizer
    torch.manual_seed(0)
    model = tiny_llama(vocab_size=len(tok), layers=2).eval().requires_grad_(False)
    rows = TokenRows(model, tok, model, tok)
    item = XCExample(id="1", sharer_context="Ada Lindqvist moved to Tromso.", question="Where does Ada live?",
                     answers=["Tromso"])
    _, y, p = rows.features(item)
    f = {"head": head_only(p), "answer": answer_ids(tok, "Tromso"), "y": y.half()}
    module = SimpleNamespace(receiver=model, rope=rows.receiver_rope)
    own = y.half().float()  # what training stores (float16 rows), so the term is 0 on them exactly
    assert item_own_states(module, own, f).item() < 1e-10
    moved = (own + 0.5 * torch.randn_like(own)).requires_grad_(True)
    term, _ = OwnStates()(module, {"rows": [moved]}, [f])
    assert term.item() > 1e-3
    term.backward()
    assert moved.grad is not None and moved.grad.abs().sum() > 0
