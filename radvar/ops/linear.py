"""RAD linear map ``y = x Wᵀ + b`` for inputs of any leading dims.

Saved for backward: W and a sketch of x (never x itself). Gradients:
``∂x = g W`` and ``∂b = Σ_rows g`` exactly; ``∂W = gᵀ x̂`` with E[x̂] = x, so
E[∂W] = gᵀ x, the exact weight gradient (Oktay et al., ICLR 2021, §4).

:func:`rad_relu_linear` is ``rad_linear(leaky_relu(h))`` as one autograd Function: it keeps a
1-bit mask of h > 0 beside the sketch of the activation and returns ``∂h = (g W) ⊙ relu'(h)``
(leaky: the slope where h ≤ 0): the bytes and the gradients of the two ops run apart, for one
Function call instead of two.

Views: ``"features"`` (the default) — rows are all leading dims, the sketch
samples the n input features; ``"rows"`` — the sketch samples rows (tokens /
examples) of the (rows, n) view: ∂W = (Ŷ g)ᵀ with Y = xᵀ.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from .. import _bits, rng
from ..sketch import Sketch
from ._autocast import autocast_dtype, autocast_off, cast
from .activation import leaky_relu_mask

VIEWS = ("features", "rows")


def linear_view(x: torch.Tensor, view: str | None) -> torch.Tensor:
    """The 2-D view of an input (..., n) that a sketch sees: (rows, n), or its transpose for ``"rows"``."""
    flat = x if x.dim() == 2 else x.reshape(-1, x.shape[-1])
    return flat.t() if view == "rows" else flat


def save_sketch(ctx: Any, view: torch.Tensor, x_shape: torch.Size, weight: torch.Tensor,
                bias: torch.Tensor | None, sketch: Sketch, key: int, *extra: torch.Tensor) -> None:
    """Compress ``view`` (the input as the sketch sees it) with draw ``key`` and save, on ``ctx``,
    what a RAD weight-gradient backward needs: the weight, the sketch's tensors and its metadata
    (and ``extra`` tensors of the op, saved first: :func:`load_sketch` returns them in ``ctx.extra``)."""
    saved, meta = sketch.compress(view, rng.generator(key, view.device))
    ctx.save_for_backward(*extra, weight, *saved)
    ctx.extras = len(extra)
    ctx.sketch, ctx.meta, ctx.key = sketch, meta, key
    ctx.x_shape, ctx.has_bias = x_shape, bias is not None


def load_sketch(ctx: Any, gy: torch.Tensor) -> tuple[torch.Tensor, tuple[torch.Tensor, ...], torch.Tensor]:
    """What :func:`save_sketch` saved: the weight, the sketch's tensors, and ``gy`` in the weight's dtype."""
    tensors = ctx.saved_tensors
    extras = ctx.extras
    ctx.extra = tensors[:extras]
    weight = tensors[extras]
    return weight, tensors[extras + 1:], gy if gy.dtype == weight.dtype else gy.to(weight.dtype)


class RADLinearFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                sketch: Sketch, key: int, slope: float | None = None) -> torch.Tensor:
        dtype = autocast_dtype(x)
        x, weight, bias = cast(dtype, x, weight, bias)
        mask = ()
        if slope is not None:  # fused leaky_relu in front (ReLU: slope 0)
            if ctx.needs_input_grad[0]:
                x, packed = leaky_relu_mask(x, slope)
                mask = (packed,)
            else:
                x = torch.relu(x) if slope == 0.0 else F.leaky_relu(x, slope)
        ctx.slope = slope
        if dtype is None:
            y = F.linear(x, weight, bias)
        else:
            with autocast_off(x, dtype):
                y = F.linear(x, weight, bias)
        save_sketch(ctx, linear_view(x, sketch.view), x.shape, weight, bias, sketch, key, *mask)
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx, gy: torch.Tensor):
        weight, saved, gy = load_sketch(ctx, gy)
        g2d = gy if gy.dim() == 2 else gy.reshape(-1, gy.shape[-1])
        gx = gw = gb = None
        needs = ctx.needs_input_grad
        if needs[0]:
            gx = gy @ weight  # (..., n): the input's shape
            if ctx.slope is not None:
                gx = _bits.scale_by_mask(gx, ctx.extra[0], 1.0, ctx.slope, inplace=True)
        if needs[1]:
            gen = rng.generator(ctx.key, gy.device)
            if ctx.sketch.view == "rows":
                gw = ctx.sketch.right_matmul(saved, ctx.meta, gen, g2d).t()
            else:
                gw = ctx.sketch.left_matmul(g2d.t(), saved, ctx.meta, gen)
        if ctx.has_bias and needs[2]:
            gb = g2d.sum(0)
        return gx, gw, gb, None, None, None


@torch.compiler.disable
def rad_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, sketch: Sketch) -> torch.Tensor:
    """``F.linear`` with a randomized weight gradient; one fresh RAD draw per call.

    Runs eagerly under ``torch.compile`` (a graph break): traced, the key drawn
    here would be baked into the graph and every step would reuse one sketch.
    """
    return RADLinearFunction.apply(x, weight, bias, sketch, rng.next_key())


@torch.compiler.disable
def rad_relu_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, sketch: Sketch,
                    negative_slope: float = 0.0) -> torch.Tensor:
    """``rad_linear(F.leaky_relu(x, negative_slope), ...)`` (``negative_slope=0``: ReLU) in one
    autograd Function; same bytes, draw and gradients as the two ops apart."""
    return RADLinearFunction.apply(x, weight, bias, sketch, rng.next_key(), float(negative_slope))
