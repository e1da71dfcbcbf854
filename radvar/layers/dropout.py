"""Compact twin of ``nn.Dropout``: the same draws, a 1-bit mask for backward."""

from __future__ import annotations

import torch
from torch import nn

from ..ops import dropout
from .registry import Twin, register


@register(nn.Dropout)
class CompactDropout(nn.Dropout, Twin):
    """``nn.Dropout`` keeping a packed mask (``inplace`` is ignored)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return dropout.compact_dropout(x, self.p, self.training)
