"""Compact twin of :class:`radvar.rnn.IRNN`: its ReLU keeps a 1-bit mask per step.

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
As with ``CompactReLU`` before an exact ``Linear``, an exact ``hh`` still keeps
h_{t-1} in full, so the all-exact twin keeps the plain bytes plus the masks;
the ledger then attributes h_{t-1} to ``hh``, the map whose sketch removes it.
"""

from __future__ import annotations

import torch

from ..ops.activation import compact_relu
from ..rnn import IRNN
from .registry import Twin, register


@register(IRNN)
class CompactIRNN(IRNN, Twin):
    """:class:`IRNN` whose ReLU keeps a packed mask (1 bit an element) for backward."""

    def forward(self, x: torch.Tensor, h0: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        return self.run(x, h0, compact_relu)
