"""Bernoulli sampling: keep each entry (or each feature, shared) with probability p, scale 1/p.

Per example: an independent mask per (row, feature); only the kept values are
stored (their positions are regenerated from the seed), so the saved bytes are
p · rows · n on average. Shared: one feature mask for all rows.
Variance: each entry (shared: each feature total) is a Horvitz–Thompson term kept
independently with probability p, so Var = (1/p − 1)·col (per example: col =
Σ_rf ‖C_rf‖², for Linear Σ_i ‖g_i‖² ‖x_i‖²; see :mod:`radvar.sketch.moments`).
The kept count is Binomial: the tuner reserves :data:`~radvar.sketch.base.Z_MARGIN`
standard deviations of it on top of the mean.
"""

from __future__ import annotations

import dataclasses

import torch

from .base import CLOSED, ColumnSketch, Meta, Saved, bernoulli_positions, coins, count_margin, itemsize, scatter_flat
from .moments import ViewStats
from .registry import family


@family
@dataclasses.dataclass(frozen=True)
class Bernoulli(ColumnSketch):
    """Independent keep with probability ``keep``, scaled by 1/keep."""

    per_example: bool = True
    kind = "bernoulli"

    def compress(self, x: torch.Tensor, gen: torch.Generator) -> tuple[Saved, Meta]:
        rows, n = x.shape
        if self.per_example:
            kept = x.reshape(-1).index_select(0, bernoulli_positions(rows * n, self.keep, gen, x))
        else:
            kept = x[:, coins((n,), self.keep, gen, x)]
        return (kept,), {"shape": (rows, n)}

    def restore(self, saved: Saved, meta: Meta, gen: torch.Generator) -> torch.Tensor:
        (kept,) = saved
        rows, n = meta["shape"]
        if self.per_example:
            return scatter_flat(kept / self.keep, bernoulli_positions(rows * n, self.keep, gen, kept), (rows, n))
        out = kept.new_zeros(rows, n)
        out[:, coins((n,), self.keep, gen, kept)] = kept / self.keep
        return out

    @property
    def independent_entries(self) -> bool:
        """Per example: one coin per entry (shared: one per column, so the rows move together)."""
        return self.per_example

    def entry_variance(self, x: torch.Tensor) -> torch.Tensor:
        """Var(x̂) = x² (1/p − 1) for every entry of the (rows, n) view ``x`` (per example)."""
        if not self.per_example:
            return super().entry_variance(x)
        return x.detach().square() * (1.0 / self.keep - 1.0)

    def shared_columns(self, n: int, gen: torch.Generator, like: torch.Tensor) -> tuple[torch.Tensor, float]:
        return coins((n,), self.keep, gen, like).nonzero().squeeze(1), 1.0 / self.keep

    distinct_columns = True

    def saved_bytes(self, shape: tuple[int, int], dtype: torch.dtype = torch.float32) -> int:
        rows, n = shape
        return round(self.keep * rows * n) * itemsize(dtype)

    def reserve_bytes(self, shape: tuple[int, int], dtype: torch.dtype = torch.float32) -> int:
        """Mean plus Z_MARGIN sd of the Binomial count (shared: of the kept features, times rows)."""
        rows, n = shape
        p = self.keep
        if self.per_example:
            return self.saved_bytes(shape, dtype) + count_margin(rows * n * p * (1 - p)) * itemsize(dtype)
        return self.saved_bytes(shape, dtype) + count_margin(n * p * (1 - p)) * rows * itemsize(dtype)

    def variance(self, view: ViewStats) -> tuple[float, str]:
        """(1/p − 1)·col."""
        col, _ = view.col_tot(self.per_example)
        return (1.0 / self.keep - 1.0) * col, CLOSED
