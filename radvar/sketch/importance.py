"""Importance (Poisson) sampling: keep x_ij with probability π_ij ∝ |x_ij|, capped at 1.

Per row, π_ij = min(1, c_i |x_ij|) with c_i chosen so that Σ_j π_ij = keep · n
(the expected number kept), the minimiser of Σ_j x_ij² / π_ij under that
budget; kept values are scaled by 1/π_ij, so E[x̂] = x and, each entry being an
independent Horvitz–Thompson term, Var(Ĝ) = Σ_ij (1/π_ij − 1)‖C_ij‖²
(for Linear ‖C_ij‖² = x_ij² ‖g_i‖²).
The kept positions depend on the data, so they are stored: as a bitmap
(n/8 bytes a row) or as int16 column indices plus per-row counts, whichever
is smaller for this draw. π, the uniforms and the scaled values are computed in
float64 for float64 data (float32 otherwise), so a float64 path loses nothing.
"""

from __future__ import annotations

import dataclasses
import math

import torch

from .. import _bits, _native
from .base import (CLOSED, PCG_INCREMENT, Meta, Saved, Sketch, count_margin, flat_nonzero, itemsize, less,
                   pcg_state, scatter_flat, uniform, work_dtype)
from .moments import ViewStats
from .registry import family


def poisson_scale(s: torch.Tensor, tail: torch.Tensor, budget: float) -> torch.Tensor:
    """Per row, the c of π_j = min(1, c s_j) with Σ_j π_j = budget (rows with more than
    ``budget`` nonzeros). ``s`` (rows, n) is |x| sorted descending, ``tail[:, t] = Σ_{j≥t} s_j``:
    with the t largest capped, c = (budget − t) / tail_t, valid for the first t whose
    (t+1)-th largest stays below the cap, (budget − t) s_t ≤ tail_t. That t is at most ⌈budget⌉
    (there the left side is ≤ 0), so only the first ⌈budget⌉ + 1 columns are read."""
    m = min(s.shape[1], math.ceil(budget) + 1)
    s, tail = s[:, :m], tail[:, :m]
    t = torch.arange(m, device=s.device, dtype=s.dtype)
    first = ((budget - t) * s <= tail).to(torch.int8).argmax(dim=1, keepdim=True)
    return (budget - first.to(s.dtype)) / tail.gather(1, first).clamp_min(torch.finfo(s.dtype).tiny)


def inclusion_probabilities(x: torch.Tensor, keep: float) -> torch.Tensor:
    """π = min(1, c |x|) per row with Σ_j π_ij = min(keep · n, nnz_i), in float64 for float64 ``x``
    (float32 otherwise).

    A row whose largest entry stays below the cap at c₀ = keep · n / Σ_j |x_ij| has c = c₀ (nothing
    capped): one sum and one max. Only the other rows (some entry capped, or at most keep · n nonzeros)
    are sorted, in float64, for the c of :func:`poisson_scale`; on CUDA every row takes that path, so
    the op never waits on the host for which rows do."""
    return _scaled_magnitudes(x, keep).clamp_max_(1.0).nan_to_num_(0.0)


def _scaled_magnitudes(x: torch.Tensor, keep: float) -> torch.Tensor:
    """c·|x| per row, the c of :func:`inclusion_probabilities`, uncapped: π = min(1, c·|x|), and NaN
    (c = ∞ times 0) where π = 0."""
    a, c = _row_scales(x, keep)
    return a.mul_(c)


def _row_scales(x: torch.Tensor, keep: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(|x| in the work dtype, the c (rows, 1) of :func:`inclusion_probabilities`; ∞ for a row with at
    most keep · n nonzeros, all of which are kept)."""
    a = x.detach().abs().to(work_dtype(x.dtype))
    budget = keep * a.shape[1]
    c = budget / a.sum(1, keepdim=True)
    if a.device.type == "cpu":
        rows = ((c * a.amax(1, keepdim=True) > 1.0) | ~torch.isfinite(c)).squeeze(1).nonzero().squeeze(1)
    else:
        rows = torch.arange(a.shape[0], device=a.device)
    if rows.numel():
        sub = a.index_select(0, rows).double()
        s, _ = sub.sort(dim=1, descending=True)
        sub_c = poisson_scale(s, s.flip(1).cumsum(1).flip(1), budget)
        sub_c = torch.where((sub > 0).sum(1, keepdim=True) <= budget, math.inf, sub_c)
        c.index_copy_(0, rows, sub_c.to(c.dtype))
    return a, c


def _int16_index(kept: int, rows: int, n: int) -> bool:
    """Whether ``kept`` entries of a (rows, n) draw are indexed in fewer bytes by int16 columns and int32
    per-row counts than by a packed mask."""
    return n <= torch.iinfo(torch.int16).max and 2 * kept + 4 * rows < (rows * n + 7) // 8


def _stored(values: torch.Tensor, index: tuple[torch.Tensor, ...], rows: int, n: int) -> tuple[Saved, Meta]:
    """What Importance keeps: the kept values and ``index``, (int16 columns, int32 counts) or (packed mask,)."""
    return (values, *index), {"shape": (rows, n), "format": "int16" if len(index) == 2 else "bitmap"}


@dataclasses.dataclass
class ImportanceStats:
    """Per row of the view, |x| sorted descending with suffix sums for π ∝ |x| capped at 1.

    ``s`` (rows, n) sorted |x|; ``tail[:, t] = Σ_{j≥t} s_j``; ``sw``/``s2w`` (rows, n + 1) the suffix
    sums of ``s_j w_j`` and ``s_j² w_j`` with ``w_j = ‖C_rj‖² / x_rj²`` the weight of entry j (a zero
    column appended); ``nnz`` (rows, 1) the nonzero count of each row.
    """

    s: torch.Tensor
    tail: torch.Tensor
    sw: torch.Tensor
    s2w: torch.Tensor
    nnz: torch.Tensor

    @classmethod
    def build(cls, view: torch.Tensor, weight: torch.Tensor) -> "ImportanceStats":
        """``view`` (rows, n) and the per-entry weight ``w`` (broadcastable to it)."""
        a = view.detach().abs().double()
        w = weight.double().expand_as(a)
        s, order = a.sort(dim=1, descending=True)
        ws = w.gather(1, order)
        pad = s.new_zeros(s.shape[0], 1)
        suffix = lambda t: torch.cat([t.flip(1).cumsum(1).flip(1), pad], 1)  # noqa: E731
        return cls(s, suffix(s)[:, :-1], suffix(s * ws), suffix(s * s * ws), (s > 0).sum(1, keepdim=True))

    def variance(self, keep: float) -> float:
        """Σ_rj (1/π_rj − 1) x_rj² w_rj with π from :func:`inclusion_probabilities`.

        Per row π_j = min(1, c s_j) (c as there), so the sum runs over the suffix of
        entries with c s_j < 1: ``sw[j*]/c − s2w[j*]``. At most ⌈keep · n⌉ entries are
        capped, so j* is counted on that many leading columns.
        """
        budget = keep * self.s.shape[1]
        c = poisson_scale(self.s, self.tail, budget)
        head = self.s[:, :min(self.s.shape[1], math.ceil(budget))]
        start = (c * head >= 1.0).sum(1, keepdim=True)
        per_row = (self.sw.gather(1, start) / c - self.s2w.gather(1, start)).clamp_min(0.0)
        per_row = torch.where(self.nnz <= budget, torch.zeros_like(per_row), per_row)
        return float(per_row.sum())


@family
@dataclasses.dataclass(frozen=True)
class Importance(Sketch):
    """Poisson sampling with probability proportional to |x|, expected keep · n per row."""

    per_example: bool = True
    kind = "importance"
    needs_entries = True

    def check(self) -> None:
        if not self.per_example:
            raise ValueError("Importance: per_example must be True (its probabilities depend on each row)")

    def compress(self, x: torch.Tensor, gen: torch.Generator) -> tuple[Saved, Meta]:
        rows, n = x.shape
        if _bits.kernel_ok(x):
            # C: the row scales without sorting (equal to _row_scales' up to rounding), then one pass that draws
            # and stores bitwise what the numpy path below does with the same scales
            flat = x.detach().contiguous()
            values, cols, counts, packed = _native.poisson_keep(flat, _native.importance_scales(flat, self.keep),
                                                                pcg_state(gen), PCG_INCREMENT)
            index = (cols.to(torch.int16), counts) if _int16_index(values.numel(), rows, n) else (packed,)
            return _stored(values, index, rows, n)
        scaled = _scaled_magnitudes(x, self.keep)  # π = min(1, scaled); U < π iff U < scaled (U < 1, NaN: π = 0)
        mask = less(uniform((rows, n), gen, x), scaled)
        kept = flat_nonzero(mask)
        pi = scaled.reshape(-1).index_select(0, kept).clamp_max_(1.0)
        values = (x.reshape(-1).index_select(0, kept).to(pi.dtype) / pi).to(x.dtype)
        if _int16_index(kept.numel(), rows, n):
            return _stored(values, ((kept % n).to(torch.int16), mask.sum(1, dtype=torch.int32)), rows, n)
        return _stored(values, (_bits.pack(mask),), rows, n)

    independent_entries = True  # Poisson sampling: each entry kept by its own uniform

    def entry_variance(self, x: torch.Tensor) -> torch.Tensor:
        """Var(x̂) = x² (1/π − 1) for every entry of the (rows, n) view ``x`` (0 where π = 1 or x = 0)."""
        pi = inclusion_probabilities(x, self.keep)
        work = x.detach().to(pi.dtype)
        return torch.where(pi > 0, work.square() * (1.0 / pi - 1.0), 0.0)

    def restore(self, saved: Saved, meta: Meta, gen: torch.Generator) -> torch.Tensor:
        rows, n = meta["shape"]
        values = saved[0]
        if _bits.kernel_ok(values):
            return _native.scatter_kept(values, tuple(saved[1:]), (rows, n))  # one C pass: 1.7-5x faster
        if meta["format"] == "int16":
            cols, counts = saved[1], saved[2]
            row_start = torch.repeat_interleave(torch.arange(0, rows * n, n, device=values.device), counts.long())
            return scatter_flat(values, row_start + cols.long(), (rows, n))
        return scatter_flat(values, flat_nonzero(_bits.unpack(saved[1], (rows, n))), (rows, n))

    def saved_bytes(self, shape: tuple[int, int], dtype: torch.dtype = torch.float32) -> int:
        """An upper bound on the *mean* bytes over draws (not a per-draw bound: the kept count is
        Poisson-binomial). Row i keeps Σ_j π_ij = min(keep · n, nnz_i) ≤ keep · n values on average, and
        the index costs min(bitmap, 2 · count + 4 · rows), a concave function of the count, so by
        Jensen its mean is at most its value at keep · rows · n. A per-draw bound for reservations:
        :meth:`reserve_bytes`."""
        rows, n = shape
        nnz = math.ceil(self.keep * rows * n - 1e-9)
        index = (rows * n + 7) // 8
        if n <= torch.iinfo(torch.int16).max:
            index = min(index, 2 * nnz + 4 * rows)
        return nnz * itemsize(dtype) + index

    def reserve_bytes(self, shape: tuple[int, int], dtype: torch.dtype = torch.float32) -> int:
        """:meth:`saved_bytes` plus Z_MARGIN sd of the kept count (sd ≤ √mean ≤ √(keep·rows·n) for a
        Poisson-binomial count), each extra value costing its bytes plus an int16 index."""
        rows, n = shape
        return self.saved_bytes(shape, dtype) + count_margin(self.keep * rows * n) * (itemsize(dtype) + 2)

    def variance(self, view: ViewStats) -> tuple[float, str]:
        """Σ_rf (1/π_rf − 1)‖C_rf‖² from the view's sorted |x| (:class:`ImportanceStats`)."""
        return view.entries(Importance).variance(self.keep), CLOSED

    @classmethod
    def entry_stats(cls, x: torch.Tensor, weight: torch.Tensor) -> ImportanceStats:
        return ImportanceStats.build(x, weight)
