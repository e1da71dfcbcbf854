"""RAD convolution (1-, 2- or 3-d; any stride, padding, dilation, groups, bias).

The weight gradient ∂W = conv_weight_grad(x, g) is linear in x, so replacing x
with an unbiased sketch x̂ keeps E[∂W] exact; ∂x needs only W and stays exact
(Oktay et al., ICLR 2021, §4). Saved: W and the sketch of x.

Views (``sketch.view``): ``None``/``"positions"`` — rows are (batch, channel)
pairs and features the spatial positions (the paper's choice); ``"examples"``
— rows are examples and features are (channel, position) pairs.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from .. import rng
from ..sketch import Sketch
from ._autocast import autocast_dtype, autocast_off, cast

AXES = (None, "positions", "examples")
_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}


def _view(x: torch.Tensor, axis: str | None) -> torch.Tensor:
    if axis == "examples":
        return x.reshape(x.shape[0], -1)
    return x.reshape(x.shape[0] * x.shape[1], -1)


class RADConvFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                stride: Sequence[int], padding: Sequence[int], dilation: Sequence[int], groups: int,
                sketch: Sketch, key: int) -> torch.Tensor:
        dtype = autocast_dtype(x)
        x, weight, bias = cast(dtype, x, weight, bias)
        with autocast_off(x, dtype):
            y = _CONV[x.dim() - 2](x, weight, bias, stride, padding, dilation, groups)
        saved, meta = sketch.compress(_view(x, sketch.view), rng.generator(key, x.device))
        ctx.save_for_backward(weight, *saved)
        ctx.sketch, ctx.meta, ctx.key = sketch, meta, key
        ctx.conv = (list(stride), list(padding), list(dilation), groups)
        ctx.x_shape, ctx.has_bias = x.shape, bias is not None
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx, gy: torch.Tensor):
        weight, *saved = ctx.saved_tensors
        gy = gy.to(weight.dtype)
        stride, padding, dilation, groups = ctx.conv
        need_x, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        need_b = ctx.has_bias and ctx.needs_input_grad[2]
        if need_w:
            gen = rng.generator(ctx.key, gy.device)
            x_hat = ctx.sketch.restore(tuple(saved), ctx.meta, gen).view(ctx.x_shape)
        else:  # the input gradient reads only the input's shape
            x_hat = gy.new_zeros(()).expand(ctx.x_shape)
        gx, gw, gb = torch.ops.aten.convolution_backward(
            gy, x_hat, weight, [weight.shape[0]] if ctx.has_bias else None,
            stride, padding, dilation, False, [0] * len(stride), groups, [need_x, need_w, need_b])
        return gx, gw, gb, None, None, None, None, None, None


@torch.compiler.disable
def rad_conv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, stride: Sequence[int],
             padding: Sequence[int], dilation: Sequence[int], groups: int, sketch: Sketch) -> torch.Tensor:
    """``F.convNd`` with a randomized weight gradient; one fresh RAD draw per call (eager under
    ``torch.compile``, like :func:`radvar.ops.rad_linear`)."""
    return RADConvFunction.apply(x, weight, bias, tuple(stride), tuple(padding), tuple(dilation), groups,
                                 sketch, rng.next_key())
