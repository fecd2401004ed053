"""Communicator on tiny models: loss on response tokens, fusion, frozen LLMs, several sharers, generate."""
from __future__ import annotations

import pytest
import torch

from lcf.align.layers import NearestLayerMap
from lcf.communicator import Communicator
from lcf.registry import translators
from lcf.translators.base import PairShapes
from tests.conftest import tiny_gemma3, tiny_llama


def make_batch(b=2, tp=7, ts=9, tr=5, r_vocab=97, s_vocab=131, seed=0):
    g = torch.Generator().manual_seed(seed)
    rp = torch.randint(3, r_vocab, (b, tp), generator=g)
    rpm = torch.ones(b, tp, dtype=torch.long)
    rpm[1, :2] = 0  # left padding of the second prompt
    sp = torch.randint(3, s_vocab, (b, ts), generator=g)
    spm = torch.ones(b, ts, dtype=torch.long)
    spm[1, :3] = 0
    idx = torch.arange(tp).expand(b, tp) + (ts - tp)
    amask = rpm.bool().clone()
    amask[:, 0] = False  # a template token without counterpart
    resp = torch.randint(3, r_vocab, (b, tr), generator=g)
    rmask = torch.ones(b, tr, dtype=torch.long)
    rmask[0, -2:] = 0  # right padding of the first response
    return {"receiver_prompt_ids": rp, "receiver_prompt_mask": rpm, "sharer_prompt_ids": sp, "sharer_prompt_mask": spm,
            "align_index": idx, "align_mask": amask, "response_ids": resp, "response_mask": rmask}


def make_comm(kind="lcf_lowrank", n_sharers=1, combine="sequential", perturb=True, **kw):
    receiver = tiny_llama()
    sharers = [tiny_gemma3(seed=10 + i) for i in range(n_sharers)]
    trs = []
    for s in sharers:
        shapes = PairShapes.from_configs(s.config, receiver.config, NearestLayerMap()(3, 2))
        tr = translators.build({"type": kind, **kw}, "translator", shapes=shapes)
        if perturb:
            with torch.no_grad():
                for p in tr.parameters():
                    p.add_(0.05 * torch.randn_like(p))
        trs.append(tr)
    return Communicator(receiver, sharers, trs, combine=combine)


def test_unfused_loss_equals_plain_receiver_loss():
    comm = make_comm().eval()
    batch = make_batch()
    out = comm(batch, fuse=False)
    # reference: the receiver reads prompt + response in one pass (row 0 has no prompt padding)
    ids = torch.cat([batch["receiver_prompt_ids"][:1], batch["response_ids"][:1, :3]], 1)
    logits = comm.receiver(ids).logits[0, 6:-1]
    ref = torch.nn.functional.cross_entropy(logits, batch["response_ids"][0, :3], reduction="sum")
    comm_row0 = comm({k: v[:1] for k, v in batch.items()}, fuse=False)
    assert torch.allclose(comm_row0["loss_sum"], ref, atol=1e-4)
    assert out["tokens"] == 8 and torch.isfinite(out["loss"])


def test_left_padding_does_not_change_a_row():
    comm = make_comm().eval()
    batch = make_batch()
    both = comm(batch)
    row1 = {k: v[1:] for k, v in batch.items()}
    trimmed = {k: (v[:, 2:] if k.startswith("receiver_prompt") or k.startswith("align") else v) for k, v in row1.items()}
    trimmed["sharer_prompt_ids"], trimmed["sharer_prompt_mask"] = row1["sharer_prompt_ids"][:, 3:], row1["sharer_prompt_mask"][:, 3:]
    trimmed["align_index"] = trimmed["align_index"] - 3
    alone = comm(trimmed)
    row0 = comm({k: v[:1] for k, v in batch.items()})
    assert torch.allclose(both["loss_sum"], row0["loss_sum"] + alone["loss_sum"], atol=1e-3)


@pytest.mark.parametrize("kind", ["c2c_projector", "lcf_lowrank", "gated_fusion"])
def test_gradients_reach_only_the_translator(kind):
    kw = {"hidden_dim": 32} if kind == "c2c_projector" else ({"rank": 8} if kind == "lcf_lowrank" else {})
    comm = make_comm(kind, **kw).train()
    out = comm(make_batch())
    out["loss"].backward()
    grads = [p.grad for p in comm.translators.parameters() if p.requires_grad]
    assert grads and any(g is not None and g.abs().sum() > 0 for g in grads)
    assert all(p.grad is None for p in comm.receiver.parameters())
    assert all(p.grad is None for s in comm.sharers for p in s.parameters())
    names = set(comm.state_dict())
    assert names and all(n.startswith("translators.") for n in names)  # LLMs stay out of checkpoints


def test_fusion_changes_the_loss_when_gates_open():
    comm = make_comm().eval()
    batch = make_batch()
    assert not torch.allclose(comm(batch)["loss"], comm(batch, fuse=False)["loss"])


@pytest.mark.parametrize("combine", ["sequential", "sum"])
def test_two_sharers(combine):
    comm = make_comm(n_sharers=2, combine=combine, rank=8).eval()
    batch = make_batch()
    s = {"prompt_ids": batch["sharer_prompt_ids"], "prompt_mask": batch["sharer_prompt_mask"],
         "align_index": batch["align_index"], "align_mask": batch["align_mask"]}
    two = dict(batch, sharers=[s, s])
    out = comm(two)
    assert torch.isfinite(out["loss"])
    one = Communicator(comm.receiver, comm.sharers[:1], comm.translators[:1])
    assert not torch.allclose(out["loss"], one(batch)["loss"])
    with pytest.raises(Exception, match="inputs for 1 sharers"):
        comm(batch)


def test_generate_is_deterministic_and_unfused_matches_plain_generate():
    comm = make_comm().eval()
    batch = {k: v[:1] for k, v in make_batch().items() if not k.startswith("response")}
    a = comm.generate(batch, max_new_tokens=4, pad_token_id=0)
    b = comm.generate(batch, max_new_tokens=4, pad_token_id=0)
    assert torch.equal(a, b) and a.shape == (1, 4)
    plain = comm.receiver.generate(batch["receiver_prompt_ids"], max_new_tokens=4, do_sample=False, pad_token_id=0)
    assert torch.equal(comm.generate(batch, fuse=False, max_new_tokens=4, pad_token_id=0), plain[:, 7:])


def test_translator_count_must_match_sharers():
    receiver = tiny_llama()
    with pytest.raises(Exception, match="one translator per sharer"):
        Communicator(receiver, [tiny_gemma3()], [])


def test_row_losses_and_sharer_transform():
    comm = make_comm().eval()
    batch = make_batch()
    out = comm(batch)
    assert torch.allclose(out["row_loss_sum"].sum(), out["loss_sum"]) and out["row_tokens"].tolist() == [3, 5]
    seen = []

    def zero(i, view):
        seen.append(i)
        return type(view)([k * 0 for k in view.keys], [v * 0 for v in view.values], view.seq_len, view.specs)

    zeroed = comm(batch, sharer_transform=zero)
    assert seen == [0] and not torch.allclose(zeroed["loss"], out["loss"])
