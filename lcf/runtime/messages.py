"""Latent messages: what a cross-context sharer sends instead of text.

A message is the compressor's summary of a context — per summarised sharer layer, keys and values of
shape ``(kv_heads, summary_len, head_dim)`` — serialised as safetensors bytes. The safetensors
metadata carries a JSON header (key ``lcf_message``) that fingerprints the sharer, the receiver and
the adapter, names the quantization (one of :data:`QUANTIZATIONS`) and holds a SHA-256 checksum of the
tensor data, so a receiver refuses messages it cannot read correctly or that were altered::

    data = adapter.send("Ravel Doskin lives in Lisbon. ...").to_bytes(quantize="int8")   # sender process
    msg = LatentMessage.from_bytes(data)                                                 # receiver process
    print(adapter.receive(msg, "Which city does Ravel Doskin live in?"))

``quantize="int8"``: symmetric int8 per (layer, head) with a float32 scale each; about 4x smaller than
fp32. ``quantize="int4"``: symmetric 4-bit per (layer, head, summary position), two values per byte,
about 8x smaller than fp32. Needs only torch and safetensors.
"""
from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from lcf.errors import LCFError

MESSAGE_FORMAT = 1
HEADER_KEY = "lcf_message"
QUANTIZATIONS = ("none", "int8", "int4")  # the closed set of labels a message may carry; add new schemes here
CHECKSUM = "sha256"


class MessageError(LCFError, ValueError):
    """A latent message that cannot be used: corrupted, truncated, or for another pair or adapter."""


@dataclass
class LatentMessage:
    """Summary K/V per sharer layer (``(H, L, D)`` each) plus the header that identifies who may read it."""

    keys: dict[int, torch.Tensor]
    values: dict[int, torch.Tensor]
    header: dict[str, Any] = field(default_factory=dict)

    @property
    def layers(self) -> list[int]:
        return sorted(self.keys)

    def num_values(self) -> int:
        return sum(t.numel() for t in (*self.keys.values(), *self.values.values()))

    # -- bytes ---------------------------------------------------------------------------------------
    def to_bytes(self, quantize: str = "none") -> bytes:
        """safetensors bytes of the message; ``quantize``: ``"none"`` (float32), ``"int8"`` or ``"int4"``."""
        from safetensors.torch import save

        if quantize not in QUANTIZATIONS:
            raise MessageError(f"quantize must be one of {', '.join(QUANTIZATIONS)}, got {quantize!r}")
        tensors: dict[str, torch.Tensor] = {}
        for kind, table in (("k", self.keys), ("v", self.values)):
            for layer, t in table.items():
                t = t.detach().to("cpu", torch.float32).clone()  # own memory: safetensors refuses shared storage
                if quantize == "int8":
                    scale = t.abs().amax(dim=(1, 2), keepdim=True).clamp(min=1e-12) / 127.0  # per head
                    tensors[f"{kind}.{layer}"] = torch.round(t / scale).clamp(-127, 127).to(torch.int8)
                    tensors[f"{kind}.{layer}.scale"] = scale.reshape(-1).contiguous()
                elif quantize == "int4":
                    tensors[f"{kind}.{layer}"], tensors[f"{kind}.{layer}.scale"] = pack_int4(t)
                else:
                    tensors[f"{kind}.{layer}"] = t
        header = dict(self.header) | {"format_version": MESSAGE_FORMAT, "quantization": quantize,
                                      "layers": self.layers, "checksum": tensor_checksum(tensors)}
        return save(tensors, metadata={HEADER_KEY: json.dumps(header, sort_keys=True)})

    @classmethod
    def from_bytes(cls, data: bytes) -> LatentMessage:
        """Parse safetensors bytes written by :meth:`to_bytes` (int8 messages are dequantised)."""
        tensors, header = parse_bytes(data)
        if header.get("kind", "summary") != "summary":
            raise MessageError(f"this latent message is of kind {header.get('kind')!r}, not an LCF-X summary: read it "
                               f"with the adapter that made it (load_adapter returns the right reader)")
        if header.get("format_version") != MESSAGE_FORMAT:
            raise MessageError(f"latent message format {header.get('format_version')!r} is not supported (expected "
                               f"{MESSAGE_FORMAT}); upgrade lcf on the side that reads it")
        if header.get("quantization") not in QUANTIZATIONS:
            raise MessageError(f"the latent message's quantization {header.get('quantization')!r} is not one of "
                               f"{', '.join(QUANTIZATIONS)}; it was corrupted, or written by a newer lcf (upgrade lcf "
                               f"on the side that reads it)")
        want, got = header.get("checksum"), tensor_checksum(tensors)
        if want != got:
            raise MessageError(
                f"the latent message's tensor data do not match the checksum in its header ("
                f"{'no checksum' if want is None else 'expected ' + str(want)[:23] + '...'}, got {got[:23]}...): "
                f"it was altered or damaged on the way; send it again"
            )
        keys, values = {}, {}
        for layer in header.get("layers", []):
            for kind, table in (("k", keys), ("v", values)):
                name = f"{kind}.{layer}"
                if name not in tensors:
                    raise MessageError(f"the latent message lacks tensor {name!r} that its header announces")
                t = tensors[name]
                if header.get("quantization") == "int8":
                    t = t.to(torch.float32) * tensors[f"{name}.scale"].view(-1, 1, 1)
                elif header.get("quantization") == "int4":
                    t = unpack_int4(t, tensors[f"{name}.scale"])
                table[int(layer)] = t
        return cls(keys, values, header)

    # -- to and from summary caches ------------------------------------------------------------------
    @classmethod
    def from_view(cls, view: Any, layers: Sequence[int], header: dict[str, Any], row: int = 0) -> LatentMessage:
        """The message of batch row ``row`` of a summary :class:`~lcf.models.kv.KVView`."""
        return cls({s: view.keys[s][row] for s in layers}, {s: view.values[s][row] for s in layers}, dict(header))

    def to_view(self, specs: Sequence[Any], batch: int = 1, device: Any = None, dtype: Any = None) -> Any:
        """A summary KVView (batch ``batch``) over all sharer layers ``specs``; unsent layers are empty."""
        from lcf.models.kv import KVView

        length = {t.shape[1] for t in self.keys.values()}
        if len(length) != 1:
            raise MessageError(f"the latent message mixes summary lengths {sorted(length)} across layers")
        keys, values = [], []
        for i, spec in enumerate(specs):
            if i in self.keys:
                k, v = self.keys[i], self.values[i]
            else:
                k = v = torch.zeros(spec.kv_heads, 0, spec.head_dim)
            keys.append(k.unsqueeze(0).expand(batch, -1, -1, -1).to(device=device, dtype=dtype))
            values.append(v.unsqueeze(0).expand(batch, -1, -1, -1).to(device=device, dtype=dtype))
        return KVView(keys, values, length.pop(), list(specs))

    def check(self, *, expected: dict[str, Any], shapes: dict[int, tuple[int, int, int]]) -> None:
        """Refuse a message whose header fingerprints differ from ``expected`` (keys ``sharer``,
        ``receiver``, ``adapter``) or whose tensors do not have ``shapes[layer]`` = (H, L, D)."""
        for role in ("sharer", "receiver", "adapter"):
            got, want = self.header.get(role), expected.get(role)
            if got != want:
                raise MessageError(
                    f"this latent message was made for {role} {got!r}, but this side uses {role} {want!r}: it comes "
                    f"from another model pair or adapter. Send it with the adapter the receiver has loaded."
                )
        if sorted(shapes) != self.layers:
            raise MessageError(f"the latent message carries sharer layers {self.layers}, the adapter expects "
                               f"{sorted(shapes)}")
        for layer, want in shapes.items():
            for kind, t in (("keys", self.keys[layer]), ("values", self.values[layer])):
                if tuple(t.shape) != tuple(want):
                    raise MessageError(f"the latent message's {kind} of sharer layer {layer} have shape "
                                       f"{tuple(t.shape)}, the adapter expects {tuple(want)} (heads, length, dim)")
            if not bool(torch.isfinite(self.keys[layer]).all() and torch.isfinite(self.values[layer]).all()):
                raise MessageError(f"the latent message holds NaN or infinite values in sharer layer {layer}")


def pack_int4(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(H, L, D)`` float -> (uint8 ``(H, L, ceil(D / 2))``, two 4-bit codes per byte; float32 scales
    ``(H, L)``). Codes are 1..15 (value / scale + 8, value / scale in -7..7); an odd ``D`` is padded
    with code 0, which no value has, so :func:`unpack_int4` recovers ``D`` from the bytes alone."""
    h, n, d = t.shape
    scale = t.abs().amax(dim=2, keepdim=True).clamp(min=1e-12) / 7.0
    codes = (torch.round(t / scale).clamp(-7, 7) + 8).to(torch.uint8)
    if d % 2:
        codes = torch.nn.functional.pad(codes, (0, 1), value=0)
    return (codes[..., 0::2] | (codes[..., 1::2] << 4)).contiguous(), scale.reshape(h, n).contiguous()


def unpack_int4(packed: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`pack_int4` (float32 ``(H, L, D)``)."""
    if packed.dtype != torch.uint8 or packed.dim() != 3 or tuple(scale.shape) != tuple(packed.shape[:2]):
        raise MessageError(f"an int4 tensor must be uint8 (heads, length, bytes) with (heads, length) scales, got "
                           f"{packed.dtype} {tuple(packed.shape)} and scales {tuple(scale.shape)}")
    codes = torch.stack([packed & 0x0F, packed >> 4], dim=-1).reshape(*packed.shape[:2], -1)
    if codes.numel() and bool((codes[..., -1] == 0).all()):  # odd D: drop the padding code
        codes = codes[..., :-1]
    return (codes.to(torch.float32) - 8) * scale.to(torch.float32).unsqueeze(-1)


def tensor_checksum(tensors: dict[str, torch.Tensor]) -> str:
    """``sha256:HEX`` over every tensor's name, dtype, shape and bytes, in name order."""
    import hashlib

    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().to("cpu").contiguous()
        h.update(f"{name}|{str(t.dtype)}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return f"{CHECKSUM}:{h.hexdigest()}"


def parse_bytes(data: bytes) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(tensors, JSON header) of a message's safetensors bytes; :class:`MessageError` if empty or damaged."""
    from safetensors import SafetensorError
    from safetensors.torch import load

    if not data:
        raise MessageError("the latent message is empty (0 bytes); was the sender's output written?")
    try:
        return load(bytes(data)), _header(bytes(data))
    except (SafetensorError, ValueError, RuntimeError, OSError) as exc:
        raise MessageError(f"the latent message ({len(data)} bytes) is truncated or corrupted "
                           f"({type(exc).__name__}: {exc}); send it again") from exc


def _header(data: bytes) -> dict[str, Any]:
    """The JSON header in the safetensors metadata of ``data``."""
    import struct

    if len(data) < 8:
        raise ValueError("shorter than the 8-byte safetensors length prefix")
    (n,) = struct.unpack("<Q", data[:8])
    meta = json.loads(data[8:8 + n]).get("__metadata__") or {}
    if HEADER_KEY not in meta:
        raise ValueError(f"no {HEADER_KEY!r} header in the safetensors metadata: not an lcf latent message")
    return json.loads(meta[HEADER_KEY])
