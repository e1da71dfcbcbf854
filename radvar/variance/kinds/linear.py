"""Statistics of ``nn.Linear`` for the closed forms (views: ``features`` and ``rows``).

``features``: rows i are all leading dims, ``C_ij = g_i x_ij`` in column j, so
shared col = tot = ‖G‖², per row col = tot = Σ_i ‖g_i‖²‖x_i‖²; Rademacher
V = (n − 1)·tot. ``rows``: the view is xᵀ
(n features as rows, N sample rows as features), ``C_ji = x_ij g_i`` in
column j of Gᵀ: shared col = Σ_i ‖g_i‖²‖x_i‖², tot = ‖G‖²; per feature row the
same totals. Mixing moment: on features V = (n − 1)·tot (moving feature f to f'
scales nothing, and ⟨D_ff', D_f'f⟩ sums to the off-diagonal of ‖G‖²); on rows
V = Σ_{i≠i'} (‖x_i‖²‖g_i'‖² + ⟨x_i, x_i'⟩⟨g_i, g_i'⟩) = ‖X‖²‖Γ‖² + ‖G‖² − 2 Σ_i ‖x_i‖²‖g_i‖²
for one draw and for one draw per feature alike (features never share a column).
"""

from __future__ import annotations

import torch
from torch import nn

from ...layers import RADLinear
from ...sketch.base import CLOSED
from ...sketch.moments import ViewStats
from . import register


@register(RADLinear)
class LinearKind:
    name = "linear"
    axes = ("features", "rows")

    def view_stats(self, module: nn.Module, x: torch.Tensor, g: torch.Tensor, gen: torch.Generator,
                   projection_pairs: int, entries: bool) -> dict[str, ViewStats]:
        x = x.reshape(-1, x.shape[-1]).double()
        g = g.reshape(-1, g.shape[-1]).double()
        rows, n = x.shape
        xn, gn = (x * x).sum(1), (g * g).sum(1)
        tot = float((g.t() @ x).square().sum())
        per_row = float((xn * gn).sum())
        cross = float(xn.sum() * gn.sum()) + tot - 2.0 * per_row
        features = ViewStats(rows, n, tot, tot, per_row, per_row, (n - 1) * tot, (n - 1) * per_row, CLOSED,
                             *((x, gn[:, None]) if entries else ()))
        by_rows = ViewStats(n, rows, per_row, tot, per_row, tot, cross, cross, CLOSED,
                            *((x.t(), gn[None, :]) if entries else ()))
        return {"features": features, "rows": by_rows}

    def per_example_sq_norms(self, module: nn.Module, x: torch.Tensor,
                             g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """‖∂W_b‖², ‖∂b_b‖² per example b (batch dim 0; further leading dims are summed)."""
        x, g = x.double(), g.double()
        if x.dim() == 2:
            w = (x * x).sum(1) * (g * g).sum(1)
            b = (g * g).sum(1)
        else:
            x3, g3 = x.reshape(x.shape[0], -1, x.shape[-1]), g.reshape(g.shape[0], -1, g.shape[-1])
            w = (g3.transpose(1, 2) @ x3).square().sum((1, 2))
            b = g3.sum(1).square().sum(1)
        return w, (b if module.bias is not None else None)
