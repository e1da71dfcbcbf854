"""RAD twin of ``nn.Linear``: randomized weight gradient, exact input and bias gradients."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..ops import linear as linear_op
from ..sketch import Sketch
from .registry import Twin, register


@register(nn.Linear)
class RADLinear(nn.Linear, Twin):
    """``nn.Linear`` that keeps a sketch of its input instead of the input."""

    randomized = True
    axes = linear_op.AXES
    sketch: Sketch | None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self._randomizes():
            return F.linear(x, self.weight, self.bias)
        return linear_op.rad_linear(x, self.weight, self.bias, self.sketch)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, {self.sketch_label()}"
