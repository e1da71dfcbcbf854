"""RAD products of two tensors that both need a gradient: ``a * b`` and ``a @ b``.

Plain autograd keeps both operands: ``∂a = g ⊙ b`` reads b and ``∂b = g ⊙ a``
reads a (for ``C = A B``: ``∂A = G Bᵀ`` and ``∂B = Aᵀ G``). Each gradient is
linear in the *other* operand, so keeping an unbiased sketch of each operand
(``E[â] = a``, ``E[b̂] = b``) gives ``∂a = g ⊙ b̂`` and ``∂b = g ⊙ â``
(``∂A = G B̂ᵀ``, ``∂B = Âᵀ G``), unbiased. The two sketches are drawn with
different keys, so they are independent; no gradient multiplies them.

An operand with no ``grad_fn`` (a parameter or a leaf input) is kept as it is:
it outlives the forward anyway, so a sketch would add variance and bytes for
nothing. A sketch acts on the ``(rows, features)`` view of an operand (its last
dimension as features; a 0-d or 1-d operand is one row). Broadcast dimensions
are summed back to each operand's shape. ``rad_matmul`` takes operands of two or
more dimensions (``torch.matmul``'s batched case, ``torch.bmm``).
"""

from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable

from .. import rng
from ..sketch import Sketch
from ._autocast import autocast_dtype, autocast_off, cast
from ._kept import Kept, keep, restore, sketching


def _keep_operand(sketch: Sketch, t: torch.Tensor, leaf: bool, key: int, saved: list[torch.Tensor]) -> Kept | None:
    """Keep ``t`` itself if it is a leaf (None), else its sketch (:func:`radvar.ops._kept.keep`)."""
    if leaf:
        saved.append(t)
        return None
    return keep(sketch, t, (key,), saved)[0]


def _operand(sketch: Sketch, kept: Kept | None, saved: list[torch.Tensor]) -> torch.Tensor:
    """The kept operand: itself (a leaf), or its reconstruction with the draw it was compressed with."""
    return saved.pop(0) if kept is None else restore(sketch, kept, saved)


class _Product(torch.autograd.Function):
    """``out = a ⊙ b`` or ``a @ b``; keeps â only if b needs a gradient and b̂ only if a does."""

    @staticmethod
    def forward(ctx, a: torch.Tensor, b: torch.Tensor, matmul: bool, sketch: Sketch,
                key_a: int, key_b: int) -> torch.Tensor:
        dtype = autocast_dtype(a) if matmul else None
        leaf_a, leaf_b = (t.grad_fn is None and dtype in (None, t.dtype) for t in (a, b))  # before the cast
        a, b = cast(dtype, a, b)
        with autocast_off(a, dtype):
            out = torch.matmul(a, b) if matmul else torch.mul(a, b)
        need_a, need_b = ctx.needs_input_grad[:2]
        saved: list[torch.Tensor] = []
        kept_a = _keep_operand(sketch, a, leaf_a, key_a, saved) if need_b else None
        kept_b = _keep_operand(sketch, b, leaf_b, key_b, saved) if need_a else None
        ctx.save_for_backward(*saved)
        ctx.layout = (kept_a, kept_b, a.shape, b.shape, matmul, sketch)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, g: torch.Tensor):
        kept_a, kept_b, a_shape, b_shape, matmul, sketch = ctx.layout
        saved = list(ctx.saved_tensors)
        need_a, need_b = ctx.needs_input_grad[:2]
        a_hat = _operand(sketch, kept_a, saved) if need_b else None  # kept first, so restored first
        b_hat = _operand(sketch, kept_b, saved) if need_a else None
        ga = gb = None
        if need_a:
            g = g.to(b_hat.dtype)
            ga = (g @ b_hat.mT if matmul else g * b_hat).sum_to_size(a_shape)
        if need_b:
            g = g.to(a_hat.dtype)
            gb = (a_hat.mT @ g if matmul else g * a_hat).sum_to_size(b_shape)
        return ga, gb, None, None, None, None


def _plain(a: torch.Tensor, b: torch.Tensor, sketch: Sketch | None) -> bool:
    """Whether the product runs as plain autograd: exact sketch or mode, no grad, or no operand needing one."""
    return not sketching(sketch) or not (a.requires_grad or b.requires_grad)


def rad_mul(a: torch.Tensor, b: torch.Tensor, sketch: Sketch | None) -> torch.Tensor:
    """``a * b`` (broadcasting) keeping sketches â, b̂: ``∂a = Σ_bcast g ⊙ b̂``, ``∂b = Σ_bcast g ⊙ â``."""
    if _plain(a, b, sketch):
        return torch.mul(a, b)
    return _Product.apply(a, b, False, sketch, rng.next_key(), rng.next_key())


def rad_matmul(a: torch.Tensor, b: torch.Tensor, sketch: Sketch | None) -> torch.Tensor:
    """``a @ b``, operands of 2+ dims (batch dims broadcast), keeping Â, B̂: ``∂A = G B̂ᵀ``, ``∂B = Âᵀ G``."""
    if a.dim() < 2 or b.dim() < 2:
        raise ValueError(f"rad_matmul: operands must have at least 2 dimensions, got shapes "
                         f"{tuple(a.shape)} and {tuple(b.shape)}")
    if _plain(a, b, sketch):
        return torch.matmul(a, b)
    return _Product.apply(a, b, True, sketch, rng.next_key(), rng.next_key())
