"""The ``nn.Linear`` layer kind: its RAD twin (randomized weight gradient, exact input and bias
gradients) and its variance statistics. Also ``NonDynamicallyQuantizableLinear``, the ``nn.Linear``
subclass that ``nn.MultiheadAttention`` uses as ``out_proj`` (same forward; registration is by exact type).

Views (:func:`radvar.ops.linear.linear_view`): ``features`` — rows i are all
leading dims, ``C_ij = g_i x_ij`` in column j, so shared col = tot = ‖G‖², per
row col = tot = Σ_i ‖g_i‖²‖x_i‖², and the mixing moment V = (n − 1)·tot (moving
feature j to j' scales nothing, and the ⟨D_jj', D_j'j⟩ sum to the off-diagonal
part of ‖G‖²). ``rows`` — the view is xᵀ (n features as rows, N sample rows as
features), ``C_ji = x_ij g_i`` in column j of Gᵀ: shared col = Σ_i ‖g_i‖²‖x_i‖²,
tot = ‖G‖², per feature row the same totals, and V = Σ_{i≠i'} (‖x_i‖²‖g_i'‖² +
⟨x_i, x_i'⟩⟨g_i, g_i'⟩) = ‖X‖²‖Γ‖² + ‖G‖² − 2 Σ_i ‖x_i‖²‖g_i‖² for one draw and for
one draw per feature alike (features never share a column).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.linear import NonDynamicallyQuantizableLinear

from ..ops import linear as linear_op
from ..sketch import Sketch
from ..sketch.base import CLOSED
from ..sketch.moments import ViewStats
from .registry import Twin, register


class LinearStats:
    name = "linear"

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
        """‖∂W_b‖², ‖∂b_b‖² per example b (batch dim 0; further leading dims are summed). With T rows per
        example, ∂W_b = Σ_t g_t x_tᵀ: its entries are formed when that is cheaper (T·(n_in + n_out) ≥ n_in·n_out
        multiply-adds per row), else ‖∂W_b‖² = Σ_{t,s} (x_t·x_s)(g_t·g_s) from the two T x T Gram matrices."""
        x, g = x.double(), g.double()
        if x.dim() == 2:
            w = (x * x).sum(1) * (g * g).sum(1)
            b = (g * g).sum(1)
        else:
            x3, g3 = x.reshape(x.shape[0], -1, x.shape[-1]), g.reshape(g.shape[0], -1, g.shape[-1])
            rows, n_in, n_out = x3.shape[1], x3.shape[2], g3.shape[2]
            if rows * (n_in + n_out) >= n_in * n_out:
                w = (g3.transpose(1, 2) @ x3).square().sum((1, 2))
            else:
                w = ((x3 @ x3.transpose(1, 2)) * (g3 @ g3.transpose(1, 2))).sum((1, 2))
            b = g3.sum(1).square().sum(1)
        return w, (b if module.bias is not None else None)


@register(nn.Linear, NonDynamicallyQuantizableLinear, stats=LinearStats)
class RADLinear(nn.Linear, Twin):
    """``nn.Linear`` that keeps a sketch of its input instead of the input."""

    randomized = True
    views = linear_op.VIEWS
    sketch: Sketch | None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self._randomizes():
            return F.linear(x, self.weight, self.bias)
        return linear_op.rad_linear(x, self.weight, self.bias, self.sketch)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, {self.sketch_label()}"
