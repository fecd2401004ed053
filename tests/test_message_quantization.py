"""int4 latent messages: packing, error bound, size against fp32 / int8, and refusal of malformed data."""
from __future__ import annotations

import pytest
import torch

from lcf.runtime.messages import QUANTIZATIONS, LatentMessage, MessageError, pack_int4, unpack_int4


@pytest.mark.parametrize("dim", [256, 7, 1])
def test_int4_round_trip_within_half_a_step(dim):
    t = torch.randn(3, 4, dim) * torch.tensor([1.0, 10.0, 0.01]).view(3, 1, 1)
    packed, scale = pack_int4(t)
    assert packed.dtype == torch.uint8 and packed.shape == (3, 4, (dim + 1) // 2) and scale.shape == (3, 4)
    back = unpack_int4(packed, scale)
    assert back.shape == t.shape
    assert ((back - t).abs() <= scale.unsqueeze(-1) / 2 + 1e-6).all()  # per (head, position) scale
    assert torch.equal(unpack_int4(*pack_int4(torch.zeros(1, 2, dim))), torch.zeros(1, 2, dim))


def test_int4_message_is_about_eight_times_smaller_and_checked():
    assert "int4" in QUANTIZATIONS
    g = torch.Generator().manual_seed(0)
    msg = LatentMessage({s: torch.randn(1, 8, 256, generator=g) for s in (0, 5)},
                        {s: torch.randn(1, 8, 256, generator=g) for s in (0, 5)}, {"adapter": "x"})
    sizes = {q: len(msg.to_bytes(q)) for q in ("none", "int8", "int4")}
    assert sizes["int4"] < sizes["int8"] * 0.65 and sizes["int4"] < sizes["none"] / 5
    back = LatentMessage.from_bytes(msg.to_bytes("int4"))
    assert back.header["quantization"] == "int4" and back.layers == [0, 5]
    rel = (back.keys[5] - msg.keys[5]).norm() / msg.keys[5].norm()
    assert 0.01 < rel < 0.2  # lossy, but close
    with pytest.raises(MessageError, match="int4 tensor must be uint8"):
        unpack_int4(torch.zeros(1, 2, 4), torch.ones(1, 2))
    with pytest.raises(MessageError, match="quantize must be one of none, int8, int4"):
        msg.to_bytes("int2")
