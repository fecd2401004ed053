"""A token alignment: for each receiver token position, the sharer token position it reads from.

The data both :mod:`lcf.align.tokens` (which computes it) and :mod:`lcf.align.ahead` (which shifts it)
work on, with the table it prints as (``lcf align``).
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

import torch


@dataclass
class TokenAlignment:
    """For each receiver position, the sharer position it reads from.

    receiver_ids (T_r,), sharer_ids (T_s,): the token ids of both tokenizations.
    sharer_index (T_r,): chosen sharer position; 0 where ``mask`` is False.
    mask (T_r,): True where fusion applies.
    coverage (T_r,): fraction of the receiver token's characters covered by the chosen sharer
        token; 0 where the token has no counterpart (it is kept for tokens masked only by
        ``min_coverage``).
    receiver_offsets (T_r, 2), sharer_offsets (T_s, 2): character spans of the tokens in
        ``receiver_text`` / ``sharer_text``.
    """

    receiver_ids: torch.Tensor
    sharer_ids: torch.Tensor
    sharer_index: torch.Tensor
    mask: torch.Tensor
    coverage: torch.Tensor
    receiver_offsets: torch.Tensor
    sharer_offsets: torch.Tensor
    receiver_text: str = ""
    sharer_text: str = ""

    def __len__(self) -> int:
        return int(self.receiver_ids.numel())

    @property
    def num_aligned(self) -> int:
        """Number of receiver positions where fusion applies."""
        return int(self.mask.sum())

    def to(self, device: str | torch.device) -> TokenAlignment:
        """A copy with all tensors on ``device``."""
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        return TokenAlignment(**{k: v.to(device) if torch.is_tensor(v) else v for k, v in values.items()})

    def rows(
        self, receiver_tokenizer: Any = None, sharer_tokenizer: Any = None
    ) -> list[tuple[int, str, int | None, str, float]]:
        """Table rows ``(receiver_pos, receiver_piece, sharer_pos | None, sharer_piece, coverage)``.

        Pieces are the tokens' text spans; zero-length tokens (BOS, ...) are shown by their token
        string when the tokenizer is given, else by ``<id N>``. Masked rows have ``sharer_pos=None``.
        """
        out = []
        for i in range(len(self)):
            r_id = int(self.receiver_ids[i])
            r_piece = _piece(self.receiver_text, self.receiver_offsets[i], r_id, receiver_tokenizer)
            if bool(self.mask[i]):
                j = int(self.sharer_index[i])
                s_piece = _piece(self.sharer_text, self.sharer_offsets[j], int(self.sharer_ids[j]), sharer_tokenizer)
                out.append((i, r_piece, j, s_piece, float(self.coverage[i])))
            else:
                out.append((i, r_piece, None, "", float(self.coverage[i])))
        return out

    def to_table(self, receiver_tokenizer: Any = None, sharer_tokenizer: Any = None) -> str:
        """The rows as aligned text columns: ``pos  receiver -> pos  sharer  coverage``."""
        lines = [f"{'r':>5}  {'receiver':<18} {'s':>5}  {'sharer':<18} cover"]
        for i, r_piece, j, s_piece, cov in self.rows(receiver_tokenizer, sharer_tokenizer):
            right = f"{j:>5}  {s_piece:<18} {cov:.2f}" if j is not None else f"{'-':>5}  {'(masked)':<18} {cov:.2f}"
            lines.append(f"{i:>5}  {r_piece:<18} {right}")
        return "\n".join(lines)


def _piece(text: str, span: torch.Tensor, token_id: int, tokenizer: Any) -> str:
    start, end = int(span[0]), int(span[1])
    if end > start:
        return repr(text[start:end])
    if tokenizer is not None:
        return str(tokenizer.convert_ids_to_tokens(token_id))
    return f"<id {token_id}>"
