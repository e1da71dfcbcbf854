"""Random projection x ↦ (x R) Rᵀ with E[R Rᵀ] = I (the paper's projection estimator).

R is n × k with i.i.d. entries ±1/√k (Rademacher) or N(0, 1/k) (Gaussian),
k = ceil(keep · n). Only x R (rows × k) is stored; R is regenerated from the
seed. Shared R: ``a @ x̂ = (a (x R)) Rᵀ`` costs O(m·rows·k + m·k·n).
Variance: the error is a sum of k i.i.d. rank-one terms, so Var = V/k exactly,
with V the view's mixing moment (:mod:`radvar.sketch.moments`) for Rademacher
entries and V + 2·col for Gaussian ones (Isserlis' theorem adds the fourth
moment). For Linear, V = (n − 1)·tot: Rademacher (n − 1)/k ‖G‖², Gaussian
(n + 1)/k ‖G‖² for one R; an independent R per row multiplies Σ_i ‖g_i‖² ‖x_i‖².
"""

from __future__ import annotations

import dataclasses
import math
from typing import Iterator

import torch

from .base import Meta, Saved, Sketch, itemsize, kept_count, signs
from .moments import ViewStats
from .registry import family

DISTS = ("rademacher", "gaussian")
_CHUNK_ELEMENTS = 1 << 22  # per-example matrices are drawn a few rows at a time


@family
@dataclasses.dataclass(frozen=True)
class Projection(Sketch):
    """Project features onto k random directions and back."""

    dist: str = dataclasses.field(default="rademacher", metadata={"choices": DISTS})
    kind = "projection"
    mixes_features = True

    def check(self) -> None:
        if self.dist not in DISTS:
            raise ValueError(f"Projection: dist must be one of {DISTS}, got {self.dist!r}")

    def _draw(self, shape: tuple[int, ...], k: int, gen: torch.Generator, like: torch.Tensor) -> torch.Tensor:
        if self.dist == "rademacher":
            return signs(shape, gen, like, 1.0 / math.sqrt(k))
        return torch.randn(shape, generator=gen, device=like.device, dtype=like.dtype).mul_(1.0 / math.sqrt(k))

    def _row_chunks(self, rows: int, n: int, k: int) -> Iterator[slice]:
        step = max(1, _CHUNK_ELEMENTS // (n * k))
        for start in range(0, rows, step):
            yield slice(start, min(rows, start + step))

    def compress(self, x: torch.Tensor, gen: torch.Generator) -> tuple[Saved, Meta]:
        rows, n = x.shape
        k = kept_count(self.keep, n)
        if not self.per_example:
            return (x @ self._draw((n, k), k, gen, x),), {"shape": (rows, n)}
        out = x.new_empty(rows, k)
        for s in self._row_chunks(rows, n, k):
            r = self._draw((s.stop - s.start, n, k), k, gen, x)
            out[s] = torch.bmm(x[s].unsqueeze(1), r).squeeze(1)
        return (out,), {"shape": (rows, n)}

    def restore(self, saved: Saved, meta: Meta, gen: torch.Generator) -> torch.Tensor:
        (xr,) = saved
        rows, n = meta["shape"]
        k = xr.shape[1]
        if not self.per_example:
            return xr @ self._draw((n, k), k, gen, xr).t()
        out = xr.new_empty(rows, n)
        for s in self._row_chunks(rows, n, k):
            r = self._draw((s.stop - s.start, n, k), k, gen, xr)
            out[s] = torch.bmm(r, xr[s].unsqueeze(2)).squeeze(2)
        return out

    def left_matmul(self, a: torch.Tensor, saved: Saved, meta: Meta, gen: torch.Generator) -> torch.Tensor:
        if self.per_example:
            return super().left_matmul(a, saved, meta, gen)
        (xr,) = saved
        n, k = meta["shape"][1], xr.shape[1]
        return (a @ xr) @ self._draw((n, k), k, gen, xr).t()

    def right_matmul(self, saved: Saved, meta: Meta, gen: torch.Generator, b: torch.Tensor) -> torch.Tensor:
        if self.per_example:
            return super().right_matmul(saved, meta, gen, b)
        (xr,) = saved
        n, k = meta["shape"][1], xr.shape[1]
        return xr @ (self._draw((n, k), k, gen, xr).t() @ b)

    def saved_bytes(self, shape: tuple[int, int], dtype: torch.dtype = torch.float32) -> int:
        rows, n = shape
        return rows * kept_count(self.keep, n) * itemsize(dtype)

    def variance(self, view: ViewStats) -> tuple[float, str]:
        """V/k (Rademacher) or (V + 2·col)/k (Gaussian)."""
        v, _ = view.mix(self.per_example)
        if self.dist == "gaussian":
            v = v + 2.0 * view.col_tot(self.per_example)[0]
        return max(v, 0.0) / kept_count(self.keep, view.n), view.mix_method

    def variance_se(self, view: ViewStats) -> float:
        """se(V)/k when V is a Monte Carlo estimate."""
        return view.mix(self.per_example)[1] / kept_count(self.keep, view.n)
