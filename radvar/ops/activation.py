"""Elementwise activations: compact exact ReLUs, and RAD ops that keep a sketch of f'(x).

Compact: ReLU and LeakyReLU keep a 1-bit packed mask of x > 0. Exact:
relu'(x) = [x > 0] and leaky'(x) = [x > 0] + slope·[x ≤ 0] (the same
convention as torch's kernels); the mask costs 1/32 of a float32 activation.

Sketched: for any elementwise y = f(x) the input gradient is g ⊙ f'(x), linear
in d = f'(x). :class:`SketchedDerivativeFunction` computes y exactly, keeps an
unbiased sketch d̂ of d (E[d̂] = d, on the (rows, features) view of
:func:`radvar.ops._kept.rows_view`) instead of x or y, and returns g ⊙ d̂, so
E[∂x] = g ⊙ f'(x) and Var(∂x_i) = g_i²·Var(d̂_i) per entry. The ``rad_*`` ops
take the torch function's own arguments plus ``sketch`` and run the plain
function (bitwise plain gradients) when :func:`randomizes` is false. The
derivative forms follow torch's backward kernels, including their values at
kinks and thresholds.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Callable

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from .. import _bits, _native, rng
from ..sketch import Sketch
from ..sketch.base import less
from ._kept import keep, recorder, restore, sketching


def leaky_relu_mask(x: torch.Tensor, slope: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``(leaky_relu(x, slope), packed 1-bit mask of x > 0)`` (slope 0: ReLU); the backward multiplies
    by 1 where the mask is set, by ``slope`` elsewhere (:func:`radvar._bits.scale_by_mask`)."""
    if slope == 0.0:
        if _bits.kernel_ok(x) and x.is_contiguous():
            return _native.relu_mask(x)  # one pass, no bool tensor: bitwise the same output and mask
        y = torch.relu(x)
        return y, _bits.pack(y.bool())  # relu(x) != 0 iff x > 0 (a float->bool cast is cheaper than a compare)
    return F.leaky_relu(x, slope), _bits.pack(less(0.0, x))


class CompactLeakyReLUFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, slope: float) -> torch.Tensor:
        y, mask = leaky_relu_mask(x, slope)
        ctx.save_for_backward(mask)
        ctx.slope = slope
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx, gy: torch.Tensor):
        (packed,) = ctx.saved_tensors
        return _bits.scale_by_mask(gy, packed, 1.0, ctx.slope), None


def compact_relu(x: torch.Tensor) -> torch.Tensor:
    """``torch.relu`` keeping 1 bit per element for backward."""
    return CompactLeakyReLUFunction.apply(x, 0.0)


def compact_leaky_relu(x: torch.Tensor, negative_slope: float = 0.01) -> torch.Tensor:
    """``F.leaky_relu`` keeping 1 bit per element for backward."""
    return CompactLeakyReLUFunction.apply(x, float(negative_slope))


# ---- sketched derivatives: elementwise y = f(x), backward g ⊙ f'(x) ------------------------------------------------

Derivative = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""``derivative(x, y)`` = f'(x) for an elementwise ``y = f(x)`` (y given for forms that read it)."""

GELU_CUBIC = 0.044715


@dataclasses.dataclass
class SketchedCall:
    """One call of :class:`SketchedDerivativeFunction` as :func:`radvar.ops._kept.recording` records it: its
    input x (to tell which tensor it was: an in-place call overwrites its values), the derivative d = f'(x) it
    sketched, and (after backward) the gradient g of its output."""

    x: torch.Tensor
    derivative: torch.Tensor
    grad: torch.Tensor | None = None


class SketchedDerivativeFunction(torch.autograd.Function):
    """``y = f(x)`` exactly; keeps ``sketch`` of d = f'(x) (never x or y) and returns ``∂x = g ⊙ d̂``.

    E[d̂] = d, and g ⊙ d̂ is linear in d̂, so E[∂x] = g ⊙ f'(x), the exact input gradient.
    With ``inplace`` the output is written into x (as the in-place torch function does).
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, f: Callable[[torch.Tensor], torch.Tensor], derivative: Derivative,
                sketch: Sketch, key: int, inplace: bool) -> torch.Tensor:
        y = f(x)
        d = derivative(x, y)
        if (calls := recorder()) is not None:
            ctx.record = SketchedCall(x.detach(), d.detach())
            calls.append(ctx.record)
        saved: list[torch.Tensor] = []
        (ctx.kept,) = keep(sketch, d, (key,), saved)
        ctx.save_for_backward(*saved)
        ctx.sketch = sketch
        if inplace:
            ctx.mark_dirty(x)
            return x.copy_(y)
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx, g: torch.Tensor):
        if (record := getattr(ctx, "record", None)) is not None:
            record.grad = g.detach()
        return g * restore(ctx.sketch, ctx.kept, list(ctx.saved_tensors)), None, None, None, None, None


def randomizes(x: torch.Tensor, sketch: Sketch | None) -> bool:
    """Whether an op keeps a sketch: a non-exact sketch, outside ``radvar.exact()``, with a gradient
    wanted for x. Otherwise the ops run the plain torch function, so gradients are bitwise plain."""
    return sketching(sketch) and x.requires_grad


@torch.compiler.disable
def sketch_derivative(x: torch.Tensor, f: Callable[[torch.Tensor], torch.Tensor], derivative: Derivative,
                      sketch: Sketch, inplace: bool = False) -> torch.Tensor:
    """``f(x)`` (out of place; written into x if ``inplace``) keeping a sketch of ``derivative``; one
    fresh draw per call (runs eagerly under ``torch.compile``, so each step draws anew)."""
    return SketchedDerivativeFunction.apply(x, f, derivative, sketch, rng.next_key(), inplace)


def _unit(x: torch.Tensor) -> torch.Tensor:
    """A gradient of ones shaped like x (a broadcast scalar: no allocation)."""
    return torch.ones((), dtype=x.dtype, device=x.device).expand_as(x)


def gelu_derivative(x: torch.Tensor, approximate: str = "none") -> torch.Tensor:
    """GELU'(x) = Φ(x) + x·φ(x) (Φ, φ the standard normal cdf and density); for ``approximate="tanh"``,
    d/dx ½x(1 + t) = ½(1 + t) + ½x(1 − t²)·c(1 + 3·0.044715x²), t = tanh(c(x + 0.044715x³)),
    c = √(2/π). Computed by torch's backward kernel at unit gradient, so bitwise what autograd uses."""
    return torch.ops.aten.gelu_backward(_unit(x), x, approximate=approximate)


def tanh_gelu_derivative(x: torch.Tensor, c: float) -> torch.Tensor:
    """The tanh form of GELU'(x) with the constant c in place of √(2/π) (for formulas that round it):
    ½(1 + t) + ½x(1 − t²)·c(1 + 3·0.044715x²), t = tanh(c(x + 0.044715x³))."""
    t = torch.tanh(c * (x + GELU_CUBIC * x * x * x))
    return 0.5 * (1 + t) + 0.5 * x * (1 - t * t) * c * (1 + 3 * GELU_CUBIC * x * x)


def silu_derivative(x: torch.Tensor) -> torch.Tensor:
    """d/dx x·σ(x) = σ(x)·(1 + x·(1 − σ(x))) (torch's backward kernel at unit gradient)."""
    return torch.ops.aten.silu_backward(_unit(x), x)


def quick_gelu_derivative(x: torch.Tensor, a: float = 1.702) -> torch.Tensor:
    """d/dx x·σ(a·x) = σ(a·x)·(1 + a·x·(1 − σ(a·x)))."""
    s = torch.sigmoid(a * x)
    return s * (1 + a * x * (1 - s))


def softplus_derivative(x: torch.Tensor, beta: float = 1.0, threshold: float = 20.0) -> torch.Tensor:
    """softplus(x) = log(1 + e^{βx})/β, and x where βx > threshold (torch's rule), so its derivative is
    σ(βx) = z/(z + 1) with z = e^{βx}, and 1 where βx > threshold (torch's backward kernel)."""
    return torch.ops.aten.softplus_backward(_unit(x), x, beta, threshold)


def mish_derivative(x: torch.Tensor) -> torch.Tensor:
    """d/dx x·tanh(softplus(x)) = t + x·σ(x)·(1 − t²), t = tanh(softplus(x)) (torch's backward kernel)."""
    return torch.ops.aten.mish_backward(_unit(x), x)


def hardswish_derivative(x: torch.Tensor) -> torch.Tensor:
    """hardswish(x) = x·relu6(x + 3)/6: derivative 0 for x < −3, x/3 + ½ for −3 ≤ x ≤ 3, 1 for x > 3
    (torch's backward kernel, with its values at the kinks)."""
    return torch.ops.aten.hardswish_backward(_unit(x), x)


def hardtanh_derivative(x: torch.Tensor, min_val: float, max_val: float) -> torch.Tensor:
    """clamp(x, min, max): 1 where min < x < max, else 0 (torch's hardtanh backward; ReLU6 is [0, 6])."""
    return torch.ops.aten.hardtanh_backward(_unit(x), x, min_val, max_val)


def tanh_derivative(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """tanh'(x) = 1 − y², y = tanh(x) (torch's backward kernel)."""
    return torch.ops.aten.tanh_backward(_unit(y), y)


def sigmoid_derivative(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """σ'(x) = y(1 − y), y = σ(x) (torch's backward kernel)."""
    return torch.ops.aten.sigmoid_backward(_unit(y), y)


def clipped_gelu_derivative(x: torch.Tensor, min_val: float, max_val: float) -> torch.Tensor:
    """d/dx clip(GELU(x), min, max) = GELU'(x)·[min ≤ GELU(x) ≤ max] (torch's clamp passes the gradient
    where its input lies in [min, max], ends included)."""
    y = F.gelu(x)
    return gelu_derivative(x) * ((y >= min_val) & (y <= max_val)).to(x.dtype)


def laplace_derivative(x: torch.Tensor, mu: float, sigma: float) -> torch.Tensor:
    """d/dx ½(1 + erf((x − μ)/(σ√2))) = exp(−(x − μ)²/(2σ²))/(σ√(2π))."""
    z = (x - mu) / sigma
    return torch.exp(-0.5 * z * z) / (sigma * math.sqrt(2 * math.pi))


def relu_squared_derivative(x: torch.Tensor) -> torch.Tensor:
    """d/dx relu(x)² = 2·relu(x)."""
    return 2 * torch.relu(x)


def sqrt_softplus_derivative(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """d/dx √softplus(x) = softplus'(x)/(2y), y = √softplus(x) (:func:`softplus_derivative`)."""
    return softplus_derivative(x) / (2 * y)


def rad_gelu(input: torch.Tensor, approximate: str = "none", sketch: Sketch | None = None) -> torch.Tensor:
    """``F.gelu`` keeping a sketch of GELU'(x) (:func:`gelu_derivative`)."""
    if not randomizes(input, sketch):
        return F.gelu(input, approximate=approximate)
    return sketch_derivative(input, functools.partial(F.gelu, approximate=approximate),
                             lambda x, y: gelu_derivative(x, approximate), sketch)


def rad_silu(input: torch.Tensor, inplace: bool = False, sketch: Sketch | None = None) -> torch.Tensor:
    """``F.silu`` keeping a sketch of SiLU'(x) = σ(x)(1 + x(1 − σ(x)))."""
    if not randomizes(input, sketch):
        return F.silu(input, inplace=inplace)
    return sketch_derivative(input, F.silu, lambda x, y: silu_derivative(x), sketch, inplace)


def rad_tanh(input: torch.Tensor, sketch: Sketch | None = None) -> torch.Tensor:
    """``torch.tanh`` keeping a sketch of 1 − tanh²(x)."""
    if not randomizes(input, sketch):
        return torch.tanh(input)
    return sketch_derivative(input, torch.tanh, tanh_derivative, sketch)


def rad_sigmoid(input: torch.Tensor, sketch: Sketch | None = None) -> torch.Tensor:
    """``torch.sigmoid`` keeping a sketch of σ(x)(1 − σ(x))."""
    if not randomizes(input, sketch):
        return torch.sigmoid(input)
    return sketch_derivative(input, torch.sigmoid, sigmoid_derivative, sketch)


def rad_softplus(input: torch.Tensor, beta: float = 1.0, threshold: float = 20.0,
                 sketch: Sketch | None = None) -> torch.Tensor:
    """``F.softplus`` keeping a sketch of its derivative (:func:`softplus_derivative`)."""
    if not randomizes(input, sketch):
        return F.softplus(input, beta, threshold)
    return sketch_derivative(input, functools.partial(F.softplus, beta=beta, threshold=threshold),
                             lambda x, y: softplus_derivative(x, beta, threshold), sketch)


def rad_mish(input: torch.Tensor, inplace: bool = False, sketch: Sketch | None = None) -> torch.Tensor:
    """``F.mish`` keeping a sketch of its derivative (:func:`mish_derivative`)."""
    if not randomizes(input, sketch):
        return F.mish(input, inplace=inplace)
    return sketch_derivative(input, F.mish, lambda x, y: mish_derivative(x), sketch, inplace)


def rad_hardswish(input: torch.Tensor, inplace: bool = False, sketch: Sketch | None = None) -> torch.Tensor:
    """``F.hardswish`` keeping a sketch of its derivative (:func:`hardswish_derivative`)."""
    if not randomizes(input, sketch):
        return F.hardswish(input, inplace=inplace)
    return sketch_derivative(input, F.hardswish, lambda x, y: hardswish_derivative(x), sketch, inplace)


def rad_hardtanh(input: torch.Tensor, min_val: float = -1.0, max_val: float = 1.0, inplace: bool = False,
                 sketch: Sketch | None = None) -> torch.Tensor:
    """``F.hardtanh`` keeping a sketch of its 0/1 derivative (:func:`hardtanh_derivative`; with
    ``Quantize`` a 0/1 row is kept exactly: its levels are the row's min and max)."""
    if not randomizes(input, sketch):
        return F.hardtanh(input, min_val, max_val, inplace)
    return sketch_derivative(input, functools.partial(F.hardtanh, min_val=min_val, max_val=max_val),
                             lambda x, y: hardtanh_derivative(x, min_val, max_val), sketch, inplace)
