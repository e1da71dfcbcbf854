"""Compact twin of :class:`radvar.rnn.IRNN`: a 1-bit ReLU mask per step when ``hh`` is sketched.

An IRNN's maps are ``nn.Linear`` children, so ``convert`` randomizes them as
``RADLinear`` (plan entries ``"<name>.ih"`` and ``"<name>.hh"``); each step's
call draws a fresh key (:func:`radvar.rng.next_key`), so steps are sketched
independently and indices are regenerated in backward, never stored. A step
then keeps a sketch of x_t, a sketch of h_{t-1} and, here, the ReLU mask in
1 bit an element (the plain loop keeps every h_t in full)::

    h_t = compact_relu(ih(x_t) + hh(h_{t-1}))

Input and bias gradients are exact, so the backpropagated
g_t = ∂L/∂(pre-activation at t) is exact and ∂Ŵ_hh = Σ_t g_tᵀ ĥ_{t-1} is
unbiased with variance Σ_t Var_t (independent draws add; likewise W_ih).
When ``hh`` keeps h_{t-1} in full (exact), plain ``torch.relu`` is used: its
saved output is that same tensor, so a mask would only add bytes.
"""

from __future__ import annotations

import torch

from ..ops.activation import compact_relu
from ..rnn import IRNN
from .registry import Twin, register


@register(IRNN)
class CompactIRNN(IRNN, Twin):
    """:class:`IRNN` whose ReLU keeps a packed mask while its ``hh`` map keeps a sketch."""

    def forward(self, x: torch.Tensor, h0: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        sketched = isinstance(self.hh, Twin) and self.hh._randomizes()
        return self.run(x, h0, compact_relu if sketched else torch.relu)
