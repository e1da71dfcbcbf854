"""``ViewStats``: what a layer kind measures about one call on one 2-D view, for any family.

A randomized layer contracts a sketch of a (rows, features) view of its input
with the output gradient. Its weight gradient is a sum of *contributions*
``C_rf`` of the entries of that view: ``G = Σ_rf C_rf`` and ``A_r = Σ_f C_rf``
(the row's part). A layer kind (its module in ``radvar/layers``) reduces one call to
these family-independent numbers; each family's :meth:`~radvar.sketch.Sketch.variance`
reads the ones its closed form needs:

* ``shared_col = Σ_f ‖C_f‖²`` with ``C_f = Σ_r C_rf`` and ``shared_tot = ‖G‖²``
  (one draw for all rows);
* ``row_col = Σ_rf ‖C_rf‖²`` and ``row_tot = Σ_r ‖A_r‖²`` (independent draws per row);
* ``mix_shared``/``mix_row``: the second moment of moving feature f's values to
  feature f', ``V = Σ_{f≠f'} (‖D_ff'‖² + ⟨D_ff', D_f'f⟩)`` with ``D_ff'`` the
  contribution of feature f placed at f' (what feature-mixing sketches such as
  random projections need), how it was obtained (``mix_method``) and its
  standard error when it is a Monte Carlo estimate (0 when exact);
* ``x`` (the view in float64) and ``weight`` (``w_rf = ‖C_rf‖² / x_rf²``, broadcastable
  to x), kept only when a family with ``needs_entries`` is analysed; each such family
  builds its own per-entry statistics from them once (:meth:`ViewStats.entries`).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from .base import EXACT, Sketch


@dataclasses.dataclass
class ViewStats:
    """Statistics of one call of a layer on one 2-D view (see the module docstring)."""

    rows: int
    n: int
    shared_col: float
    shared_tot: float
    row_col: float
    row_tot: float
    mix_shared: float
    mix_row: float
    mix_method: str
    x: torch.Tensor | None = None
    weight: torch.Tensor | None = None
    mix_shared_se: float = 0.0
    mix_row_se: float = 0.0
    _entries: dict[type, Any] = dataclasses.field(default_factory=dict, repr=False, compare=False)
    _variances: dict[Sketch, tuple[float, str]] = dataclasses.field(default_factory=dict, repr=False, compare=False)

    def col_tot(self, per_example: bool) -> tuple[float, float]:
        """(col, tot) for per-row draws (``per_example``) or one shared draw."""
        return (self.row_col, self.row_tot) if per_example else (self.shared_col, self.shared_tot)

    def mix(self, per_example: bool) -> tuple[float, float]:
        """(V, standard error of V) for per-row or shared draws."""
        return (self.mix_row, self.mix_row_se) if per_example else (self.mix_shared, self.mix_shared_se)

    def entries(self, family: type[Sketch]) -> Any:
        """``family.entry_stats(x, weight)``, built on first use and cached."""
        if self.x is None or self.weight is None:
            raise ValueError(f"{family.__name__}: its variance needs per-entry statistics; capture with "
                             f"entries kept (radvar.variance.capture(..., importance=True))")
        if family not in self._entries:
            self._entries[family] = family.entry_stats(self.x, self.weight)
        return self._entries[family]

    def variance(self, sketch: Sketch) -> tuple[float, str]:
        """E‖Ĝ − G‖²_F of this call's weight gradient under ``sketch`` and how it was obtained
        (computed once per sketch: sketches are frozen, so a tuner's repeated questions are free)."""
        if sketch.exact:
            return 0.0, EXACT
        if sketch not in self._variances:
            self._variances[sketch] = sketch.variance(self)
        return self._variances[sketch]

    def standard_error(self, sketch: Sketch) -> float:
        """Standard error of :meth:`variance` (non-zero only for Monte Carlo estimates)."""
        return 0.0 if sketch.exact else sketch.variance_se(self)
