"""Closed-form RAD variances from a layer's cached statistics (docs/design.md §3).

A randomized layer contracts a sketch of a (rows, features) view of its input
with the output gradient. Its weight gradient is a sum of *contributions*
``C_rf`` of the entries of that view: ``G = Σ_rf C_rf`` and ``A_r = Σ_f C_rf``
(the row's part). Every closed form below needs only four numbers per view:

* shared sketches (one draw for all rows) see the feature totals
  ``C_f = Σ_r C_rf``: ``col = Σ_f ‖C_f‖²`` and ``tot = ‖G‖²``;
* per-example sketches (independent per row) add up per-row forms with
  ``col = Σ_rf ‖C_rf‖²`` and ``tot = Σ_r ‖A_r‖²``.

With n features, k = ceil(keep·n) and p = keep (for Linear: ``C_rf = g_r x_rf``
in column f, so ``col = tot = ‖G‖²`` shared and ``Σ_i ‖g_i‖²‖x_i‖²`` per row):

* Bernoulli, each feature kept with prob. p, scale 1/p: ``(1/p − 1)·col``.
* Subsample without replacement, scale n/k (finite-population sampling of a
  total; Cochran, *Sampling Techniques*, 1977, Thm 2.2 applied to Horvitz–
  Thompson totals): ``n(n−k)/(k(n−1)) · (col − tot/n)``.
* Subsample with replacement (k i.i.d. uniform draws, Hansen–Hurwitz):
  ``(n·col − tot)/k``.
* Projection ``x ↦ x R Rᵀ`` (n×k, i.i.d. entries of variance 1/k): the error
  is a sum of k i.i.d. rank-one terms, so Var = V/k exactly, with
  V = Σ_{f≠f'} (‖D_ff'‖² + ⟨D_ff', D_f'f⟩) for Rademacher (``D_ff'``: feature f
  of the view placed at feature f') and V + 2·col for Gaussian (Isserlis).
  For Linear V = (n − 1)·tot; conv: see ``kinds/conv.py``.
* Importance (Poisson, π ∝ |x| capped at 1, per row): ``Σ_rf (1/π_rf − 1)‖C_rf‖²``.

keep = 1 is exact in every twin (the layers skip the sketch), so it has 0 variance.
"""

from __future__ import annotations

import dataclasses

import torch

from ..sketch import Bernoulli, Importance, Projection, Sketch, Subsample, kept_count
from ..sketch.importance import poisson_scale

CLOSED = "closed form"
EXACT = "exact (keep = 1)"


@dataclasses.dataclass
class ImportanceStats:
    """Per row of the view, |x| sorted descending with suffix sums for π ∝ |x| capped at 1.

    ``s`` (rows, n) sorted |x|; ``tail[:, t] = Σ_{j≥t} s_j``; ``sw``/``s2w`` the suffix
    sums of ``s_j w_j`` and ``s_j² w_j`` with ``w_j = ‖C_rj‖² / x_rj²`` the weight of entry j.
    """

    s: torch.Tensor
    tail: torch.Tensor
    sw: torch.Tensor
    s2w: torch.Tensor

    @classmethod
    def build(cls, view: torch.Tensor, weight: torch.Tensor) -> "ImportanceStats":
        """``view`` (rows, n) and the per-entry weight ``w`` (broadcastable to it)."""
        a = view.detach().abs().double()
        w = weight.double().expand_as(a)
        s, order = a.sort(dim=1, descending=True)
        ws = w.gather(1, order)
        suffix = lambda t: t.flip(1).cumsum(1).flip(1)  # noqa: E731
        return cls(s, suffix(s), suffix(s * ws), suffix(s * s * ws))

    def variance(self, keep: float) -> float:
        """Σ_rj (1/π_rj − 1) x_rj² w_rj with π from :func:`radvar.sketch.inclusion_probabilities`.

        Per row π_j = min(1, c s_j) (c as there), so the sum runs over the suffix of
        entries with c s_j < 1: ``sw[j*]/c − s2w[j*]``.
        """
        rows, n = self.s.shape
        budget = keep * n
        c = poisson_scale(self.s, self.tail, budget)
        start = (c * self.s >= 1.0).sum(1, keepdim=True)
        pad = torch.zeros(rows, 1, dtype=self.s.dtype)
        sw = torch.cat([self.sw, pad], 1).gather(1, start)
        s2w = torch.cat([self.s2w, pad], 1).gather(1, start)
        per_row = (sw / c - s2w).clamp_min(0.0)
        nnz = (self.s > 0).sum(1, keepdim=True)
        per_row = torch.where(nnz <= budget, torch.zeros_like(per_row), per_row)
        return float(per_row.sum())


@dataclasses.dataclass
class ViewStats:
    """Statistics of one call of a layer on one 2-D view (see the module docstring).

    ``proj_shared``/``proj_row`` are the Rademacher V (Var = V/k) for a shared and a
    per-row projection; ``proj_method`` says how V was obtained and ``proj_*_se`` is
    the standard error of V when it is a Monte Carlo estimate (0 when exact).
    """

    rows: int
    n: int
    shared_col: float
    shared_tot: float
    row_col: float
    row_tot: float
    proj_shared: float
    proj_row: float
    proj_method: str
    importance: ImportanceStats | None
    proj_shared_se: float = 0.0
    proj_row_se: float = 0.0

    def variance(self, sketch: Sketch) -> tuple[float, str]:
        """E‖Ĝ − G‖²_F of this call's weight gradient under ``sketch`` and how it was obtained."""
        p, n = sketch.keep, self.n
        if p == 1.0:
            return 0.0, EXACT
        col, tot = (self.row_col, self.row_tot) if sketch.per_example else (self.shared_col, self.shared_tot)
        if isinstance(sketch, Bernoulli):
            return (1.0 / p - 1.0) * col, CLOSED
        if isinstance(sketch, Subsample):
            k = kept_count(p, n)
            if sketch.replace:
                return max(n * col - tot, 0.0) / k, CLOSED
            if k == n:
                return 0.0, CLOSED
            return n * (n - k) / (k * (n - 1)) * max(col - tot / n, 0.0), CLOSED
        if isinstance(sketch, Projection):
            k = kept_count(p, n)
            v = self.proj_row if sketch.per_example else self.proj_shared
            if sketch.dist == "gaussian":
                v = v + 2.0 * col
            return max(v, 0.0) / k, self.proj_method
        if isinstance(sketch, Importance):
            if self.importance is None:
                raise ValueError("layer_variance: Importance needs statistics captured with importance=True")
            return self.importance.variance(p), CLOSED
        raise TypeError(f"layer_variance: no variance form for sketch type {type(sketch).__name__}; "
                        f"allowed: Bernoulli, Subsample, Projection, Importance")

    def standard_error(self, sketch: Sketch) -> float:
        """Standard error of :meth:`variance` (non-zero only for Monte Carlo estimates)."""
        if not isinstance(sketch, Projection) or sketch.keep == 1.0:
            return 0.0
        se = self.proj_row_se if sketch.per_example else self.proj_shared_se
        return se / kept_count(sketch.keep, self.n)
