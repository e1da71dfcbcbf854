"""Compact twins of ``nn.ReLU`` and ``nn.LeakyReLU``: 1 bit per element for backward."""

from __future__ import annotations

import torch
from torch import nn

from ..ops import activation
from .registry import Twin, register


@register(nn.ReLU)
class CompactReLU(nn.ReLU, Twin):
    """``nn.ReLU`` keeping a packed mask (``inplace`` is ignored: the output is new)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return activation.compact_relu(x)


@register(nn.LeakyReLU)
class CompactLeakyReLU(nn.LeakyReLU, Twin):
    """``nn.LeakyReLU`` keeping a packed mask."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return activation.compact_leaky_relu(x, self.negative_slope)
