"""Per-token latent messages: the sharer's cache of a context, sent as one short code per context token.

The sharer reads a context; for each token of the *receiver's* tokenization of that context, the sharer
token covering it gives one row of the sharer's keys (rotary phase undone) and values of every layer.
A rank-r map (translator ``token_map``, :mod:`lcf.token_map`: ``lcf train recipes/xc_token.yaml``, then
``lcf export``) splits into the two sides of the wire::

    code = ((x - x_mean) / x_std) @ down            sender:   x (T, Ds) -> code (T, r)
    y    = code @ up + y_mean                       receiver: code (T, r) -> y (T, Dr)

``y`` holds the receiver's keys and values of every layer for those T tokens; they are rotated to their
positions and placed where the receiver's own cache of the context would be, and the question is read
on top of them. For Gemma-3-270M -> SmolLM2-135M-Instruct: Ds = 9,216, Dr = 11,520, r = 512, so a
token costs 2,048 bytes in fp32, 516 in int8 and 260 in int4 (one fp32 scale per token each), against
46,080 bytes for the translated K/V itself. Runtime only: torch, transformers, safetensors::

    sender = load_adapter("kv-adapter")                            # sharer + receiver tokenizer
    data = sender.send("Ravel Doskin lives in Lisbon.").to_bytes(quantize="int8")
    receiver = load_adapter("kv-adapter", with_sharer=False)       # receiver model only
    receiver.receive(data, "Which city does Ravel Doskin live in?")
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from lcf.errors import LCFError
from lcf.runtime.format import AdapterError
from lcf.runtime.messages import (HEADER_KEY, MESSAGE_FORMAT, QUANTIZATIONS, MessageError, pack_int4, parse_bytes,
                                  tensor_checksum, unpack_int4)

MESSAGE_KIND = "token_codes"
PLACEHOLDER = "x"  # stands for the context when the receiver builds its prompt without it
PROBE_QUESTION = "?"


class LowRank(torch.nn.Module):
    """``y = ((x - x_mean) / x_std) @ down @ up + y_mean``, split into :meth:`encode` and :meth:`decode`."""

    def __init__(self, down: torch.Tensor, up: torch.Tensor, x_mean: torch.Tensor, x_std: torch.Tensor,
                 y_mean: torch.Tensor):
        super().__init__()
        if down.shape[1] != up.shape[0] or down.shape[0] != x_mean.numel() or up.shape[1] != y_mean.numel():
            raise LCFError(f"LowRank shapes do not chain: down {tuple(down.shape)}, up {tuple(up.shape)}, "
                           f"x_mean {x_mean.numel()}, y_mean {y_mean.numel()}")
        self.down, self.up = torch.nn.Parameter(down.clone()), torch.nn.Parameter(up.clone())
        for name, t in (("x_mean", x_mean), ("x_std", x_std), ("y_mean", y_mean)):
            self.register_buffer(name, t.clone())

    @property
    def rank(self) -> int:
        return self.down.shape[1]

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return ((x.to(self.down.dtype) - self.x_mean) / self.x_std) @ self.down

    def decode(self, code: torch.Tensor) -> torch.Tensor:
        return code.to(self.up.dtype) @ self.up + self.y_mean

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x)).to(x.dtype)

    def save(self, path: str | Path, report: dict[str, Any]) -> None:
        from safetensors.torch import save_file

        save_file({k: v.detach().contiguous() for k, v in self.state_dict().items()}, str(path),
                  metadata={"report": json.dumps(report)})

    @classmethod
    def load(cls, path: str | Path) -> tuple[LowRank, dict[str, Any]]:
        from safetensors import safe_open

        with safe_open(str(path), "pt") as f:
            t = {k: f.get_tensor(k) for k in f.keys()}
            report = json.loads((f.metadata() or {}).get("report", "{}"))
        return cls.from_state(t, str(path)), report

    @classmethod
    def from_state(cls, t: dict[str, torch.Tensor], where: str) -> LowRank:
        need = ("down", "up", "x_mean", "x_std", "y_mean")
        if sorted(t) != sorted(need):
            raise AdapterError(f"{where} does not hold a rank-r per-token map: expected tensors {list(need)}, got "
                               f"{sorted(t)[:6]} (a full ridge map? cut it with --finetune-steps / --rank)")
        return cls(*(t[k] for k in need))


def quantize_rows(t: torch.Tensor, scheme: str) -> dict[str, torch.Tensor]:
    """(T, r) codes -> the tensors that travel: ``codes`` (+ ``codes.scale``, one fp32 scale per token)."""
    t = t.detach().to("cpu", torch.float32).contiguous()
    if scheme == "int8":
        scale = t.abs().amax(dim=1, keepdim=True).clamp(min=1e-12) / 127.0
        return {"codes": torch.round(t / scale).clamp(-127, 127).to(torch.int8), "codes.scale": scale.reshape(-1)}
    if scheme == "int4":
        packed, scale = pack_int4(t[None])
        return {"codes": packed[0].contiguous(), "codes.scale": scale[0].contiguous()}
    return {"codes": t}


def dequantize_rows(tensors: dict[str, torch.Tensor], scheme: str) -> torch.Tensor:
    if "codes" not in tensors or (scheme != "none" and "codes.scale" not in tensors):
        raise MessageError(f"the per-token message lacks its codes (tensors {sorted(tensors)})")
    codes = tensors["codes"]
    if scheme == "int8":
        return codes.to(torch.float32) * tensors["codes.scale"].view(-1, 1)
    if scheme == "int4":
        return unpack_int4(codes[None], tensors["codes.scale"][None])[0]
    return codes.to(torch.float32)


@dataclass
class TokenMessage:
    """Codes (T, r), one per receiver token of the context, and a header naming who may read them."""

    codes: torch.Tensor
    header: dict[str, Any] = field(default_factory=dict)

    def to_bytes(self, quantize: str = "none") -> bytes:
        from safetensors.torch import save

        if quantize not in QUANTIZATIONS:
            raise MessageError(f"quantize must be one of {', '.join(QUANTIZATIONS)}, got {quantize!r}")
        tensors = quantize_rows(self.codes, quantize)
        header = dict(self.header) | {"format_version": MESSAGE_FORMAT, "kind": MESSAGE_KIND, "quantization": quantize,
                                      "tokens": int(self.codes.shape[0]), "checksum": tensor_checksum(tensors)}
        return save(tensors, metadata={HEADER_KEY: json.dumps(header, sort_keys=True)})

    @classmethod
    def from_bytes(cls, data: bytes) -> TokenMessage:
        tensors, header = parse_bytes(data)
        if header.get("kind") != MESSAGE_KIND:
            raise MessageError(f"this is not a per-token message (kind {header.get('kind')!r}, expected "
                               f"{MESSAGE_KIND!r}): it was made by a summary (LCF-X) adapter; read it with that one")
        if header.get("format_version") != MESSAGE_FORMAT or header.get("quantization") not in QUANTIZATIONS:
            raise MessageError(f"message format {header.get('format_version')!r} / quantization "
                               f"{header.get('quantization')!r} is not supported (expected {MESSAGE_FORMAT} and one "
                               f"of {', '.join(QUANTIZATIONS)}); upgrade lcf on the side that reads it")
        if header.get("checksum") != tensor_checksum(tensors):
            raise MessageError("the latent message's tensor data do not match the checksum in its header: it was "
                               "altered or damaged on the way; send it again")
        codes = dequantize_rows(tensors, header["quantization"])
        if codes.shape[0] != header.get("tokens"):
            raise MessageError(f"the message announces {header.get('tokens')} tokens but carries {codes.shape[0]}")
        return cls(codes, header)
