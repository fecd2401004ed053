"""A trained per-token map cut to a lower rank, closest to it on the codes it produces (no retraining).

    code = xs @ down (T, r)      xs: standardised sharer rows;  y = code @ up + y_mean
    C    = code^T code / T       (r, r), the codes' second moment on some contexts
    C^(1/2) @ up = Q S V^T       (SVD);  Q_k: the k leading left singular vectors
    down_k = down @ C^(-1/2) @ Q_k            (Ds, k)
    up_k   = Q_k^T @ C^(1/2) @ up             (k, Dr)

Among maps that read the rank-r code through a rank-k bottleneck, this one has the least mean squared error
to the rank-r map's output on those contexts: ``E||code @ up - code @ M @ up||^2 = ||B - P B||_F^2`` with
``B = C^(1/2) @ up`` and ``M = C^(-1/2) P C^(1/2)``, least for ``P = Q_k Q_k^T``. So the rank of a message can
be lowered after training (a rank x quantisation sweep costs evaluations, not trainings), and a cut map is a
natural start for a short tuning at that rank (``init: {from: RUN, cut_on: [...]}``, :mod:`lcf.token_map.init`).
"""
from __future__ import annotations

import torch

from lcf.errors import LCFError
from lcf.runtime.token_kv import LowRank


def cut_factors(low: LowRank, codes: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor, float]:
    """``(to_code, up_k, kept)``: ``to_code`` (r, k) = ``C^(-1/2) Q_k`` turns the map's rank-r codes into the cut
    map's (``down_k = down @ to_code``), ``up_k`` (k, Dr) decodes them, ``kept`` is the share of the codes'
    decoded energy (around y_mean) the cut keeps. ``codes`` (T, r): ``low.encode`` of sharer rows."""
    if not 0 < rank <= low.rank:
        raise LCFError(f"cut: rank must be in 1..{low.rank} (the map's rank), got {rank}")
    if codes.dim() != 2 or codes.shape[1] != low.rank or codes.shape[0] < low.rank:
        raise LCFError(f"cut: expected codes of shape (T >= {low.rank}, {low.rank}) from the map's encode(), got "
                       f"{tuple(codes.shape)}; give more contexts")
    c = codes.detach().double()
    second = c.T @ c / len(c)
    evals, evecs = torch.linalg.eigh(second)
    evals = evals.clamp(min=float(evals.max()) * 1e-10)
    half = evecs @ torch.diag(evals.sqrt()) @ evecs.T
    inv_half = evecs @ torch.diag(evals.rsqrt()) @ evecs.T
    q, s, _ = torch.linalg.svd(half @ low.up.detach().double(), full_matrices=False)
    qk = q[:, :rank]
    kept = float((s[:rank] ** 2).sum() / (s ** 2).sum())
    dtype = low.up.dtype
    return (inv_half @ qk).to(dtype), (qk.T @ half @ low.up.detach().double()).to(dtype), kept


def cut(low: LowRank, codes: torch.Tensor, rank: int) -> tuple[LowRank, dict[str, float]]:
    """``low`` at rank ``rank`` (see the module docstring) and a report (``energy_kept``: the share of the codes'
    decoded energy around y_mean the cut keeps)."""
    to_code, up_k, kept = cut_factors(low, codes, rank)
    down_k = (low.down.detach().double() @ to_code.double()).to(low.down.dtype)
    out = LowRank(down_k, up_k, low.x_mean, low.x_std, low.y_mean)
    return out, {"rank_from": low.rank, "rank": rank, "energy_kept": kept, "tokens": len(codes)}
