"""The transformers ``Conv1D`` layer kind (GPT-2, GPT, ...): ``y = x W + b`` with W of shape
(in, out), a linear map with a transposed weight.

Registered only when transformers imports (transformers stays optional). The
twin computes ``F.linear(x, Wᵀ, b)`` and reuses the linear op and the linear
statistics: ∂W = (gᵀ x̂)ᵀ has the same entries as the ``nn.Linear`` weight
gradient, so every ``ViewStats`` and per-example norm is the linear one.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..ops import linear as linear_op
from ..sketch import Sketch
from .linear import LinearStats
from .registry import Twin, register

try:
    from transformers.pytorch_utils import Conv1D
except ImportError:  # transformers is optional
    Conv1D = None

if Conv1D is not None:

    @register(Conv1D, stats=LinearStats)
    class RADHFConv1D(Conv1D, Twin):
        """transformers ``Conv1D`` that keeps a sketch of its input instead of the input."""

        randomized = True
        views = linear_op.VIEWS
        sketch: Sketch | None

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if not self._randomizes():
                return super().forward(x)
            return linear_op.rad_linear(x, self.weight.t(), self.bias, self.sketch)

        def __repr__(self) -> str:
            return f"{super().__repr__()[:-1]}, {self.sketch_label()})"
