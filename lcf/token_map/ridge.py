"""The closed-form initialisation of the per-token map: ridge regression from sharer rows to receiver rows.

    y = ((x - x_mean) / x_std) @ w + y_mean            w: (Ds, Dr), then cut to rank r: w ~ down @ up

Gram matrices are summed over streamed row blocks (memory: two (Ds, Ds) / (Ds, Dr) float64 sums, about
1.5 GB for Gemma-3-270M -> SmolLM2-135M), solved through one eigendecomposition for every candidate ridge
strength, and the strength with the best R^2 on held-out contexts is kept. Its rank-r cut (the leading
singular pairs of w) is where :class:`lcf.token_map.TokenMap` starts.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch

from lcf.errors import LCFError
from lcf.runtime.token_kv import LowRank

LAMBDAS = (1e-3, 1e-2, 3e-2, 1e-1, 1.0)


class Ridge:
    """y = ((x - x_mean) / x_std) @ w + y_mean, fitted by ridge regression on standardised inputs."""

    def __init__(self, w: torch.Tensor, x_mean: torch.Tensor, x_std: torch.Tensor, y_mean: torch.Tensor):
        self.w, self.x_mean, self.x_std, self.y_mean = w, x_mean, x_std, y_mean

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return (((x.to(self.w.dtype) - self.x_mean) / self.x_std) @ self.w + self.y_mean).to(x.dtype)

    @classmethod
    def fit(cls, rows: Iterable[tuple[torch.Tensor, torch.Tensor]], held: Sequence[tuple[torch.Tensor, torch.Tensor]],
            lambdas: Sequence[float] = LAMBDAS, chunk: int = 4096, standardize: bool = True
            ) -> tuple[Ridge, dict[str, Any]]:
        """Fit on ``rows`` (streamed (x, y) blocks); pick the ridge strength with the best R^2 on ``held``.
        ``standardize=False`` centres the inputs without scaling them (x_std = 1)."""
        sums: dict[str, torch.Tensor] = {}
        n, bx, by = 0, [], []

        def flush() -> None:
            nonlocal n
            x, y = torch.cat(bx).float(), torch.cat(by).float()
            bx.clear(), by.clear()
            for key, val in (("xx", x.T @ x), ("xy", x.T @ y), ("x", x.sum(0)), ("y", y.sum(0))):
                sums[key] = sums.get(key, 0) + val.double()
            n += len(x)

        for x, y in rows:
            bx.append(x), by.append(y)
            if sum(len(b) for b in bx) >= chunk:
                flush()
        if bx:
            flush()
        if n == 0 or not held:
            raise LCFError("the ridge initialisation needs training rows and held-out rows: give init.fit data sets "
                           "with more contexts than init.held")
        mx, my = sums["x"] / n, sums["y"] / n
        cxx = sums["xx"] / n - torch.outer(mx, mx)
        sd = cxx.diag().clamp(min=1e-12).sqrt() if standardize else torch.ones_like(mx)
        eig, q = torch.linalg.eigh(cxx / torch.outer(sd, sd))
        qc = q.T @ ((sums["xy"] / n - torch.outer(mx, my)) / sd[:, None])
        hx = (torch.cat([h[0] for h in held]).double() - mx) / sd
        hy = torch.cat([h[1] for h in held]).double()
        total = ((hy - my) ** 2).sum()
        report: dict[str, Any] = {"tokens": n, "held_tokens": len(hy), "r2": {}}
        best = None
        for lam in lambdas:
            w = q @ (qc / (eig.clamp(min=0) + lam)[:, None])
            r2 = float(1 - ((hy - (hx @ w + my)) ** 2).sum() / total)
            report["r2"][str(lam)] = r2
            if best is None or r2 > best[0]:
                best = (r2, lam, w)
        report["lambda"] = best[1]
        return cls(best[2].float(), mx.float(), sd.float(), my.float()), report

    def cut(self, rank: int, seed: int = 0) -> LowRank:
        """The leading ``rank`` singular pairs of ``w`` with this map's standardisation."""
        if not 0 < rank <= min(self.w.shape):
            raise LCFError(f"rank must be in 1..{min(self.w.shape)}, got {rank}")
        gen_state = torch.random.get_rng_state()
        torch.manual_seed(seed)  # svd_lowrank draws a random test matrix
        try:
            u, s, v = torch.svd_lowrank(self.w, q=min(rank + 32, min(self.w.shape)), niter=4)
        finally:
            torch.random.set_rng_state(gen_state)
        return LowRank(u[:, :rank] * s[:rank], v[:, :rank].T, self.x_mean, self.x_std, self.y_mean)
