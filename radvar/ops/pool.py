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


def _window(kernel: Sequence[int], dilation: Sequence[int], w_in: int, device: torch.device) -> torch.Tensor:
    """Flat input index of window offset o = i·k₁ + j relative to the window's corner: i·d₀·w_in + j·d₁."""
    o = torch.arange(kernel[0] * kernel[1], device=device)
    return (o // kernel[1]) * (dilation[0] * w_in) + (o % kernel[1]) * dilation[1]


def _corners(out: torch.Size, stride: Sequence[int], padding: Sequence[int], w_in: int,
             device: torch.device) -> torch.Tensor:
    """(H_out, W_out) flat input index of each window's (padded) corner: (oh·s₀ − p₀)·w_in + ow·s₁ − p₁."""
    oh = torch.arange(out[-2], device=device).view(-1, 1)
    ow = torch.arange(out[-1], device=device).view(1, -1)
    return (oh * stride[0] - padding[0]) * w_in + (ow * stride[1] - padding[1])


class MaxPool2dFunction(torch.autograd.Function):
    """Keeps the window offset o of each max; flat index = corner + :func:`_window`\\[o], no division."""

    @staticmethod
    def forward(ctx, x, kernel, stride, padding, dilation, ceil_mode):
        y, flat = F.max_pool2d(x, kernel, stride, padding, dilation, ceil_mode, return_indices=True)
        w_in = x.shape[-1]
        small = torch.uint8 if kernel[0] * kernel[1] <= 256 else torch.int16
        rel = flat - _corners(y.shape, stride, padding, w_in, x.device)
        if rel.numel() and int(rel.amin()) < 0:  # torch's index for a window that lies wholly in the padding
            raise ValueError(f"max_pool2d: a window lies wholly in the padding (input {tuple(x.shape)}, kernel "
                             f"{kernel}, padding {padding}, dilation {dilation}), where torch returns no valid "
                             f"index; allowed: settings whose every window overlaps the input")
        if (kernel[1] - 1) * dilation[1] < w_in:  # rel = i·d₀·w_in + j·d₁ is one-to-one in o: invert by lookup
            window = _window(kernel, dilation, w_in, x.device)
            inverse = torch.zeros(int(window[-1]) + 1, dtype=small, device=x.device)
            inverse[window] = torch.arange(window.numel(), device=x.device).to(small)
            offset = torch.take(inverse, rel)
        else:  # a dilated window row as wide as the input: rel is not one-to-one, split flat into (h, w)
            h0 = torch.arange(y.shape[-2], device=x.device).view(-1, 1) * stride[0] - padding[0]
            w0 = torch.arange(y.shape[-1], device=x.device).view(1, -1) * stride[1] - padding[1]
            offset = ((flat // w_in - h0) // dilation[0] * kernel[1] + (flat % w_in - w0) // dilation[1]).to(small)
        ctx.save_for_backward(offset)
        ctx.args, ctx.x_shape = (kernel, stride, padding, dilation), x.shape
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx, gy):
        (offset,) = ctx.saved_tensors
        kernel, stride, padding, dilation = ctx.args
        w_in = ctx.x_shape[-1]
        window = _window(kernel, dilation, w_in, gy.device)
        flat = (torch.take(window, offset.long()) + _corners(gy.shape, stride, padding, w_in, gy.device)).flatten(-2)
        gx = gy.new_zeros(*ctx.x_shape[:-2], ctx.x_shape[-2] * w_in)
        gx.scatter_add_(-1, flat, gy.flatten(-2))
        return (gx.view(ctx.x_shape),) + (None,) * 5


def max_pool2d(x: torch.Tensor, kernel: Sequence[int], stride: Sequence[int], padding: Sequence[int],
               dilation: Sequence[int], ceil_mode: bool) -> torch.Tensor:
    """``F.max_pool2d`` that keeps one small window offset per output."""
    return MaxPool2dFunction.apply(x, tuple(kernel), tuple(stride), tuple(padding), tuple(dilation), ceil_mode)
