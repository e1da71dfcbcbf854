"""Pooling that keeps (almost) nothing for backward.

Average pooling is linear with a fixed kernel: its backward needs only the
input's shape, so nothing is saved. Max pooling keeps, per output, the offset
of the max inside its window (uint8 for windows of up to 256 elements) instead
of the input and int64 flat indices; backward rebuilds the flat index.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable


def _shape_only(like: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    return like.new_zeros(()).expand(shape)


class AvgPool2dFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, kernel, stride, padding, ceil_mode, count_include_pad, divisor_override):
        ctx.args = (kernel, stride, padding, ceil_mode, count_include_pad, divisor_override)
        ctx.x_shape = x.shape
        return F.avg_pool2d(x, *ctx.args)

    @staticmethod
    @once_differentiable
    def backward(ctx, gy):
        gx = torch.ops.aten.avg_pool2d_backward(gy, _shape_only(gy, ctx.x_shape), *ctx.args)
        return (gx,) + (None,) * 6


class AdaptiveAvgPool2dFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, output_size):
        ctx.x_shape = x.shape
        return F.adaptive_avg_pool2d(x, output_size)

    @staticmethod
    @once_differentiable
    def backward(ctx, gy):
        return torch.ops.aten._adaptive_avg_pool2d_backward(gy, _shape_only(gy, ctx.x_shape)), None


def avg_pool1d(x: torch.Tensor, kernel: int, stride: int, padding: int, ceil_mode: bool,
               count_include_pad: bool) -> torch.Tensor:
    """``F.avg_pool1d`` that saves nothing (computed as a 2-d pool of height 1)."""
    y = AvgPool2dFunction.apply(x.unsqueeze(-2), (1, kernel), (1, stride), (0, padding), ceil_mode,
                                count_include_pad, None)
    return y.squeeze(-2)


def avg_pool2d(x: torch.Tensor, kernel: Sequence[int], stride: Sequence[int], padding: Sequence[int],
               ceil_mode: bool, count_include_pad: bool, divisor_override: int | None) -> torch.Tensor:
    """``F.avg_pool2d`` that saves nothing."""
    return AvgPool2dFunction.apply(x, tuple(kernel), tuple(stride), tuple(padding), ceil_mode,
                                   count_include_pad, divisor_override)


def adaptive_avg_pool2d(x: torch.Tensor, output_size) -> torch.Tensor:
    """``F.adaptive_avg_pool2d`` that saves nothing."""
    return AdaptiveAvgPool2dFunction.apply(x, output_size)


class MaxPool2dFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, kernel, stride, padding, dilation, ceil_mode):
        y, flat = F.max_pool2d(x, kernel, stride, padding, dilation, ceil_mode, return_indices=True)
        w_in = x.shape[-1]
        oh = torch.arange(y.shape[-2], device=x.device).view(-1, 1)
        ow = torch.arange(y.shape[-1], device=x.device).view(1, -1)
        h0, w0 = oh * stride[0] - padding[0], ow * stride[1] - padding[1]
        local_h = (flat // w_in - h0) // dilation[0]
        local_w = (flat % w_in - w0) // dilation[1]
        offset = local_h * kernel[1] + local_w
        small = torch.uint8 if kernel[0] * kernel[1] <= 256 else torch.int16
        ctx.save_for_backward(offset.to(small))
        ctx.args, ctx.x_shape = (kernel, stride, padding, dilation), x.shape
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx, gy):
        (offset,) = ctx.saved_tensors
        kernel, stride, padding, dilation = ctx.args
        w_in = ctx.x_shape[-1]
        offset = offset.long()
        oh = torch.arange(gy.shape[-2], device=gy.device).view(-1, 1)
        ow = torch.arange(gy.shape[-1], device=gy.device).view(1, -1)
        h = oh * stride[0] - padding[0] + (offset // kernel[1]) * dilation[0]
        w = ow * stride[1] - padding[1] + (offset % kernel[1]) * dilation[1]
        flat = (h * w_in + w).flatten(-2)
        gx = gy.new_zeros(*ctx.x_shape[:-2], ctx.x_shape[-2] * w_in)
        gx.scatter_add_(-1, flat, gy.flatten(-2))
        return (gx.view(ctx.x_shape),) + (None,) * 5


def max_pool2d(x: torch.Tensor, kernel: Sequence[int], stride: Sequence[int], padding: Sequence[int],
               dilation: Sequence[int], ceil_mode: bool) -> torch.Tensor:
    """``F.max_pool2d`` that keeps one small window offset per output."""
    return MaxPool2dFunction.apply(x, tuple(kernel), tuple(stride), tuple(padding), tuple(dilation), ceil_mode)
