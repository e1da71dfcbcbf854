"""Feature subsampling: keep k = ceil(keep * n) features, scale n / k.

Shared (``per_example=False``, the paper's "same sample"): one index set for
all rows, so ``a @ x̂`` fills only k columns and costs k/n of the dense product.
Per example ("different sample"): an independent set per row.
Without replacement the estimator is unbiased since P(j kept) = k/n; with
replacement each of k uniform draws contributes n/k times its column.
Variances, from the view's col and tot (:mod:`radvar.sketch.moments`):
without replacement, finite-population sampling of a total (Cochran, *Sampling
Techniques*, 1977, Thm 2.2 applied to Horvitz–Thompson totals):
``n(n−k)/(k(n−1)) · (col − tot/n)``; with replacement (k i.i.d. uniform draws,
Hansen–Hurwitz): ``(n·col − tot)/k``. For Linear shared, col = tot = ‖G‖², so
(n/k − 1)‖G‖² without and (n − 1)/k ‖G‖² with replacement.
"""

from __future__ import annotations

import dataclasses

import torch

from .base import CLOSED, ColumnSketch, Meta, Saved, itemsize, k_subsets, kept_count
from .moments import ViewStats
from .registry import family


@family
@dataclasses.dataclass(frozen=True)
class Subsample(ColumnSketch):
    """k of n features, one set for all rows or one per row, scaled by n/k."""

    replace: bool = False
    kind = "subsample"

    def check(self) -> None:
        if not isinstance(self.replace, bool):
            raise TypeError(f"Subsample: replace must be a bool, got {self.replace!r}")

    def _indices(self, rows: int, n: int, gen: torch.Generator, like: torch.Tensor) -> torch.Tensor:
        k = kept_count(self.keep, n)
        device = like.device
        if self.per_example:
            if self.replace:
                return torch.randint(0, n, (rows, k), generator=gen, device=device)
            return k_subsets(rows, n, k, gen, like)
        if self.replace:
            return torch.randint(0, n, (k,), generator=gen, device=device)
        return torch.randperm(n, generator=gen, device=device)[:k]

    def compress(self, x: torch.Tensor, gen: torch.Generator) -> tuple[Saved, Meta]:
        rows, n = x.shape
        idx = self._indices(rows, n, gen, x)
        kept = x.gather(1, idx) if self.per_example else x.index_select(1, idx)
        return (kept,), {"shape": (rows, n)}

    def _scale(self, n: int) -> float:
        return n / kept_count(self.keep, n)

    def restore(self, saved: Saved, meta: Meta, gen: torch.Generator) -> torch.Tensor:
        (kept,) = saved
        rows, n = meta["shape"]
        idx = self._indices(rows, n, gen, kept)
        scaled = kept * self._scale(n)
        out = kept.new_zeros(rows, n)
        if self.per_example:
            return out.scatter_add_(1, idx, scaled) if self.replace else out.scatter_(1, idx, scaled)
        return out.index_add_(1, idx, scaled) if self.replace else out.index_copy_(1, idx, scaled)

    def shared_columns(self, n: int, gen: torch.Generator, like: torch.Tensor) -> tuple[torch.Tensor, float]:
        return self._indices(1, n, gen, like), self._scale(n)

    @property
    def distinct_columns(self) -> bool:
        return not self.replace

    def saved_bytes(self, shape: tuple[int, int], dtype: torch.dtype = torch.float32) -> int:
        rows, n = shape
        return rows * kept_count(self.keep, n) * itemsize(dtype)

    def variance(self, view: ViewStats) -> tuple[float, str]:
        """(n·col − tot)/k with replacement, n(n−k)/(k(n−1))·(col − tot/n) without."""
        n = view.n
        k = kept_count(self.keep, n)
        col, tot = view.col_tot(self.per_example)
        if self.replace:
            return max(n * col - tot, 0.0) / k, CLOSED
        if k == n:
            return 0.0, CLOSED
        return n * (n - k) / (k * (n - 1)) * max(col - tot / n, 0.0), CLOSED
