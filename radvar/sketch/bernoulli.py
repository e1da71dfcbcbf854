"""Bernoulli sampling: keep each entry (or each feature, shared) with probability p, scale 1/p.

Per example: an independent mask per (row, feature); only the kept values are
stored (their positions are regenerated from the seed), so the saved bytes are
p · rows · n on average. Shared: one feature mask for all rows.
Variance (per example): (1/p - 1) Σ_i ‖g_i‖² ‖x_i‖² (../shared/DESIGN.md §2).
"""

from __future__ import annotations

import dataclasses

import torch

from .base import Meta, Saved, Sketch, itemsize, uniform


@dataclasses.dataclass(frozen=True)
class Bernoulli(Sketch):
    """Independent keep with probability ``keep``, scaled by 1/keep."""

    per_example: bool = True
    kind = "bernoulli"

    def _mask(self, rows: int, n: int, gen: torch.Generator, like: torch.Tensor) -> torch.Tensor:
        shape = (rows, n) if self.per_example else (n,)
        return uniform(shape, gen, like) < self.keep

    def compress(self, x: torch.Tensor, gen: torch.Generator) -> tuple[Saved, Meta]:
        rows, n = x.shape
        mask = self._mask(rows, n, gen, x)
        kept = x[mask] if self.per_example else x[:, mask]
        return (kept,), {"shape": (rows, n)}

    def restore(self, saved: Saved, meta: Meta, gen: torch.Generator) -> torch.Tensor:
        (kept,) = saved
        rows, n = meta["shape"]
        mask = self._mask(rows, n, gen, kept)
        out = kept.new_zeros(rows, n)
        if self.per_example:
            out[mask] = kept / self.keep
        else:
            out[:, mask] = kept / self.keep
        return out

    def left_matmul(self, a: torch.Tensor, saved: Saved, meta: Meta, gen: torch.Generator) -> torch.Tensor:
        if self.per_example:
            return super().left_matmul(a, saved, meta, gen)
        (kept,) = saved
        rows, n = meta["shape"]
        mask = self._mask(rows, n, gen, kept)
        out = kept.new_zeros(a.shape[0], n)
        out[:, mask] = (a @ kept) / self.keep
        return out

    def right_matmul(self, saved: Saved, meta: Meta, gen: torch.Generator, b: torch.Tensor) -> torch.Tensor:
        if self.per_example:
            return super().right_matmul(saved, meta, gen, b)
        (kept,) = saved
        rows, n = meta["shape"]
        mask = self._mask(rows, n, gen, kept)
        return (kept @ b[mask]) / self.keep

    def saved_bytes(self, shape: tuple[int, int], dtype: torch.dtype = torch.float32) -> int:
        rows, n = shape
        return round(self.keep * rows * n) * itemsize(dtype)
