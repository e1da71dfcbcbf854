"""ReLU and LeakyReLU that keep a 1-bit packed mask of x > 0 for backward.

Exact: relu'(x) = [x > 0] and leaky'(x) = [x > 0] + slope·[x ≤ 0] (the same
convention as torch's kernels); the mask costs 1/32 of a float32 activation.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from .. import _bits


class CompactLeakyReLUFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, slope: float) -> torch.Tensor:
        if slope == 0.0:
            y = torch.relu(x)
            positive = y.bool()  # relu(x) != 0 iff x > 0 (a float->bool cast is cheaper than a compare)
        else:
            y = F.leaky_relu(x, slope)
            positive = x > 0
        ctx.save_for_backward(_bits.pack(positive))
        ctx.shape, ctx.slope = x.shape, slope
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx, gy: torch.Tensor):
        (packed,) = ctx.saved_tensors
        return gy * _bits.select(packed, ctx.shape, 1.0, ctx.slope, gy.dtype), None


def compact_relu(x: torch.Tensor) -> torch.Tensor:
    """``torch.relu`` keeping 1 bit per element for backward."""
    return CompactLeakyReLUFunction.apply(x, 0.0)


def compact_leaky_relu(x: torch.Tensor, negative_slope: float = 0.01) -> torch.Tensor:
    """``F.leaky_relu`` keeping 1 bit per element for backward."""
    return CompactLeakyReLUFunction.apply(x, float(negative_slope))
