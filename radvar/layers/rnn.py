"""RAD twin of :class:`radvar.rnn.IRNN`: both weight gradients randomized at every step.

A step is composed of existing ops, so each keeps what it keeps alone::

    h_t = compact_relu(rad_linear(x_t, W_ih, b_ih, s) + rad_linear(h_{t-1}, W_hh, b_hh, s))

Saved per step: a sketch of x_t, a sketch of h_{t-1} and a 1-bit ReLU mask
(the plain loop keeps h_t in full). Each ``rad_linear`` call draws a fresh
key from :func:`radvar.rng.next_key`, so steps are sketched independently and
indices are regenerated in backward, never stored. Input and bias gradients
are exact, so the backpropagated g_t = ∂L/∂(pre-activation at t) is exact and
the estimate ∂Ŵ_hh = Σ_t g_tᵀ ĥ_{t-1} is unbiased with variance
Σ_t Var_t (independent draws: per-step variances add; likewise for W_ih).
"""

from __future__ import annotations

import torch

from .. import rng
from ..ops import linear as linear_op
from ..ops.activation import compact_relu
from ..rnn import IRNN
from ..sketch import Sketch
from .registry import Twin, register


@register(IRNN)
class RADIRNN(IRNN, Twin):
    """:class:`IRNN` that keeps sketches of x_t and h_{t-1} and a ReLU bit mask per step."""

    randomized = True
    axes = linear_op.AXES
    sketch: Sketch | None

    def adopt(self, sketch: Sketch | None) -> None:
        self.sketch = sketch

    def rad_cell(self, x_t: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        """One RAD step (see the module docstring)."""
        pre = (linear_op.rad_linear(x_t, self.weight_ih, self.bias_ih, self.sketch)
               + linear_op.rad_linear(h, self.weight_hh, self.bias_hh, self.sketch))
        return compact_relu(pre)

    def forward(self, x: torch.Tensor, h0: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        if self.sketch is None or self.sketch.keep == 1.0 or rng.is_exact() or not torch.is_grad_enabled():
            return self.run(x, h0, self.cell)
        return self.run(x, h0, self.rad_cell)

    def extra_repr(self) -> str:
        label = self.sketch.label() if self.sketch is not None else "exact"
        return f"{super().extra_repr()}, sketch={label}"
