"""Dropout that keeps its mask as 1 bit per element.

The mask is drawn exactly as ``torch.nn.functional.dropout`` draws it (a
Bernoulli(1 - p) tensor from torch's global generator), so converting a
model does not change its dropout draws; only the saved state shrinks.
"""

from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable

from .. import _bits


class CompactDropoutFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, p: float) -> torch.Tensor:
        keep = torch.empty_like(x).bernoulli_(1.0 - p)
        ctx.save_for_backward(_bits.pack(keep.bool()))
        ctx.scale = 1.0 / (1.0 - p)
        return x * keep.mul_(ctx.scale)

    @staticmethod
    @once_differentiable
    def backward(ctx, gy: torch.Tensor):
        (packed,) = ctx.saved_tensors
        return _bits.scale_by_mask(gy, packed, ctx.scale, 0.0), None


def compact_dropout(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """``F.dropout`` keeping 1 bit per element; p = 1 zeroes, p = 0 or eval is identity."""
    if not training or p == 0.0:
        return x
    if p == 1.0:
        return x * 0.0
    return CompactDropoutFunction.apply(x, p)
