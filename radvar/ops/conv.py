"""RAD convolution, plain or transposed (1-, 2- or 3-d; any stride, padding, dilation, groups, bias).

The weight gradient ∂W of ``aten.convolution`` is linear in its input x (for
a transposed convolution too: it is the adjoint of a convolution, whose
weight gradient is linear in the output gradient it is given), so replacing x
with an unbiased sketch x̂ keeps E[∂W] exact; ∂x needs only W and stays exact
(Oktay et al., ICLR 2021, §4). Saved: W and the sketch of x.

Views: ``"positions"`` (the default) — rows are (batch, channel) pairs and
features the spatial positions (the paper's choice); ``"examples"`` — rows are
examples and features are (channel, position) pairs.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch.autograd.function import once_differentiable

from .. import rng
from ..sketch import Sketch
from ._autocast import autocast_dtype, autocast_off, cast
from .linear import load_sketch, save_sketch

VIEWS = ("positions", "examples")


def conv_view(x: torch.Tensor, view: str | None) -> torch.Tensor:
    """The 2-D view of a (batch, channels, *spatial) input that a sketch sees (None: positions)."""
    if view == "examples":
        return x.reshape(x.shape[0], -1)
    return x.reshape(x.shape[0] * x.shape[1], -1)


class RADConvFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                stride: Sequence[int], padding: Sequence[int], dilation: Sequence[int], transposed: bool,
                output_padding: Sequence[int], groups: int, sketch: Sketch, key: int) -> torch.Tensor:
        dtype = autocast_dtype(x)
        x, weight, bias = cast(dtype, x, weight, bias)
        conv = (list(stride), list(padding), list(dilation), transposed, list(output_padding), groups)
        with autocast_off(x, dtype):
            y = torch.ops.aten.convolution(x, weight, bias, *conv)
        save_sketch(ctx, conv_view(x, sketch.view), x.shape, weight, bias, sketch, key)
        ctx.conv = conv
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx, gy: torch.Tensor):
        weight, saved, gy = load_sketch(ctx, gy)
        need_x, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        need_b = ctx.has_bias and ctx.needs_input_grad[2]
        if need_w:
            gen = rng.generator(ctx.key, gy.device)
            x_hat = ctx.sketch.restore(saved, ctx.meta, gen).view(ctx.x_shape)
        else:  # the input gradient reads only the input's shape
            x_hat = gy.new_zeros(()).expand(ctx.x_shape)
        bias_sizes = [weight.shape[1] * ctx.conv[-1] if ctx.conv[3] else weight.shape[0]] if ctx.has_bias else None
        gx, gw, gb = torch.ops.aten.convolution_backward(gy, x_hat, weight, bias_sizes, *ctx.conv,
                                                         [need_x, need_w, need_b])
        return gx, gw, gb, None, None, None, None, None, None, None, None


@torch.compiler.disable
def rad_convolution(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, stride: Sequence[int],
                    padding: Sequence[int], dilation: Sequence[int], transposed: bool,
                    output_padding: Sequence[int], groups: int, sketch: Sketch) -> torch.Tensor:
    """``aten.convolution`` (``F.convNd`` or, with ``transposed``, ``F.conv_transposeNd``) with a randomized
    weight gradient; one fresh RAD draw per call (eager under ``torch.compile``, like
    :func:`radvar.ops.rad_linear`)."""
    return RADConvFunction.apply(x, weight, bias, tuple(stride), tuple(padding), tuple(dilation), bool(transposed),
                                 tuple(output_padding), groups, sketch, rng.next_key())


def rad_conv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, stride: Sequence[int],
             padding: Sequence[int], dilation: Sequence[int], groups: int, sketch: Sketch) -> torch.Tensor:
    """``F.convNd`` with a randomized weight gradient (:func:`rad_convolution`, not transposed)."""
    return rad_convolution(x, weight, bias, stride, padding, dilation, False, (0,) * len(stride), groups, sketch)
