"""Functional kinds for products of two activations: ``a * b`` (``mul``) and ``a @ b`` (``matmul``).

SwiGLU's ``act(gate) * up``, a gate or a norm's ``x * rsqrt(...)`` written
inline, and eager attention's ``Q Kᵀ`` and ``P V`` are such products: plain
autograd keeps both operands. A call is a site only when autograd is on and both
operands are floating tensors of one dtype that need a gradient (for ``matmul``
also of 2+ dimensions); any other call (``x * 0.5``, a product with a constant
mask, a no-grad forward) runs unchanged and takes no site index. The routed op
keeps independent sketches of both operands (:mod:`radvar.ops.product`).

Both kinds take only ``quantize`` sketches (which may sample first:
``Quantize(2, sample=Subsample(...))``): the error of an operand's sketch reaches
every gradient upstream of the product, and stochastic rounding adds at most
Δ²/4 per entry where dropping a fraction 1 − keep of the entries scales them by 1/keep.
"""

from __future__ import annotations

from typing import Any

import torch

from ..ops.product import rad_matmul, rad_mul
from ..sketch import Sketch
from .functional import Op, function_kind

FAMILIES = ("quantize",)


def _operands(args: tuple, kwargs: dict, min_dim: int) -> bool:
    """Whether ``(a, b)`` with no keyword arguments is a product of two activations: see the module docstring."""
    if len(args) != 2 or kwargs or not torch.is_grad_enabled():
        return False
    a, b = args
    return (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.requires_grad and b.requires_grad
            and a.is_floating_point() and a.dtype == b.dtype and min(a.dim(), b.dim()) >= min_dim)


@function_kind(torch.mul, torch.Tensor.mul, torch.multiply, torch.Tensor.multiply, name="mul", families=FAMILIES,
               when=lambda args, kwargs: _operands(args, kwargs, 0))
def mul_op(sketch: Sketch) -> Op:
    """``a * b`` keeping sketches of a and b (:func:`radvar.ops.product.rad_mul`)."""

    def op(a: torch.Tensor, b: torch.Tensor) -> Any:
        return rad_mul(a, b, sketch)

    return op


@function_kind(torch.matmul, torch.Tensor.matmul, torch.bmm, torch.Tensor.bmm, name="matmul", families=FAMILIES,
               when=lambda args, kwargs: _operands(args, kwargs, 2))
def matmul_op(sketch: Sketch) -> Op:
    """``a @ b`` (``torch.matmul``, ``torch.bmm``) keeping sketches of a and b
    (:func:`radvar.ops.product.rad_matmul`)."""

    def op(a: torch.Tensor, b: torch.Tensor) -> Any:
        return rad_matmul(a, b, sketch)

    return op
