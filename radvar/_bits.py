"""Bit packing for boolean masks: 1 bit per element, in a uint8 tensor.

Eight mask bytes are handled as one int64 word, so both directions cost a
few passes over numel / 8 words (SWAR, "SIMD within a register"):
pack — bytes b_j ∈ {0, 1} at byte j; (word · 0x0102040810204080) >> 56
gathers b_j into bit j of the top byte (the product wraps modulo 2⁶⁴);
unpack — one lookup in a 256-entry table whose row b holds the 8 decoded
lanes of byte b (bools for :func:`unpack`, two chosen values for
:func:`select`, which backward passes multiply by directly: a float x float
product is much faster on CPU than a float x bool one).

On CPU (outside ``torch.compile``) the same bytes are produced by numpy's
``packbits``/``take`` on shared memory: one C call instead of a handful of
tensor ops, which dominates for activations of a few thousand elements.
"""

from __future__ import annotations

import math

import numpy as np
import torch

_GATHER = 0x0102040810204080
_TABLES: dict[tuple, torch.Tensor] = {}


def _table(device: torch.device, dtype: torch.dtype, on: float, off: float) -> torch.Tensor:
    """(256, 8) table: row b, column j is ``on`` if bit j of b is set, else ``off``."""
    key = (device, dtype, on, off)
    if key not in _TABLES:
        bits = ((torch.arange(256).unsqueeze(1) >> torch.arange(8)) & 1).bool()
        table = torch.where(bits, torch.tensor(on, dtype=torch.float64), torch.tensor(off, dtype=torch.float64))
        _TABLES[key] = table.to(device=device, dtype=dtype)
    return _TABLES[key]


def _decode(packed: torch.Tensor, shape: torch.Size | tuple[int, ...], table: torch.Tensor) -> torch.Tensor:
    numel = math.prod(shape)
    if _numpy_ok(packed) and table.dtype != torch.bfloat16:  # numpy has no bfloat16
        # reshape in numpy: a torch view costs microseconds per call, a numpy one far less
        lanes = np.take(table.numpy(), packed.numpy(), axis=0).reshape(-1)[:numel].reshape(shape)
        return torch.from_numpy(lanes)
    return table.index_select(0, packed.to(torch.int64)).view(-1)[:numel].view(shape)


def _numpy_ok(t: torch.Tensor) -> bool:
    return t.device.type == "cpu" and not torch.compiler.is_compiling()


def pack(mask: torch.Tensor) -> torch.Tensor:
    """Pack a bool tensor (any shape) into ceil(numel / 8) bytes; bit j of byte i is element 8i + j."""
    if _numpy_ok(mask):
        return torch.from_numpy(np.packbits(mask.numpy(), bitorder="little"))  # flattens in C order
    flat = mask.reshape(-1)
    if flat.numel() % 8:
        padded = flat.new_zeros(flat.numel() + (-flat.numel()) % 8)
        padded[: flat.numel()] = flat
        flat = padded
    words = flat.contiguous().view(torch.uint8).view(torch.int64)
    return ((words * _GATHER) >> 56).to(torch.uint8)


def unpack(packed: torch.Tensor, shape: torch.Size | tuple[int, ...]) -> torch.Tensor:
    """Inverse of :func:`pack`: the bool tensor of ``shape``."""
    return _decode(packed, shape, _table(packed.device, torch.bool, 1.0, 0.0))


def select(packed: torch.Tensor, shape: torch.Size | tuple[int, ...], on: float, off: float,
           dtype: torch.dtype) -> torch.Tensor:
    """``where(unpack(packed, shape), on, off)`` in ``dtype``, decoded in one lookup."""
    return _decode(packed, shape, _table(packed.device, dtype, float(on), float(off)))
