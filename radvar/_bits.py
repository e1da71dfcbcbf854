"""Bit packing: boolean masks at 1 bit per element, and unsigned b-bit codes
(b in {1, 2, 4, 8}) at 8/b codes per byte, in a uint8 tensor.

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

b-bit codes (:func:`pack_codes`) put code 8i/b + j in bits [b·j, b·(j+1)) of
byte i (little-endian lanes, as for masks), gathered from 8/b code bytes read as
one 16- or 32-bit word by shifts and ors; :func:`unpack_codes` decodes them
with the same one-lookup table scheme, row β of the table holding the 8/b codes
of byte β.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from . import _native

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


def _code_table(device: torch.device, dtype: torch.dtype, bits: int) -> torch.Tensor:
    """(256, 8 / bits) table: row b, column j is the code in bits [bits·j, bits·(j+1)) of b."""
    key = (device, dtype, "codes", bits)
    if key not in _TABLES:
        lanes = torch.arange(0, 8, bits)
        codes = (torch.arange(256).unsqueeze(1) >> lanes) & ((1 << bits) - 1)
        _TABLES[key] = codes.to(device=device, dtype=dtype)
    return _TABLES[key]


def _decode(packed: torch.Tensor, shape: torch.Size | tuple[int, ...], table: torch.Tensor) -> torch.Tensor:
    numel = math.prod(shape)
    if numpy_ok(packed) and table.dtype != torch.bfloat16:  # numpy has no bfloat16
        # reshape in numpy: a torch view costs microseconds per call, a numpy one far less
        lanes = np.take(table.numpy(), packed.numpy(), axis=0).reshape(-1)[:numel].reshape(shape)
        return torch.from_numpy(lanes)
    return table.index_select(0, packed.to(torch.int64)).view(-1)[:numel].view(shape)


def numpy_ok(t: torch.Tensor) -> bool:
    """Whether work on ``t`` may go through numpy: a CPU tensor, outside ``torch.compile`` tracing."""
    return t.device.type == "cpu" and not torch.compiler.is_compiling()


def kernel_ok(t: torch.Tensor) -> bool:
    """Whether radvar's compiled float32 kernels (:mod:`radvar._native`) take ``t``: float32 on the CPU,
    outside ``torch.compile`` tracing, with the kernels built."""
    return t.dtype == torch.float32 and numpy_ok(t) and _native.available()


def pack(mask: torch.Tensor) -> torch.Tensor:
    """Pack a bool tensor (any shape) into ceil(numel / 8) bytes; bit j of byte i is element 8i + j."""
    if numpy_ok(mask):
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
    if numpy_ok(packed):
        bits = np.unpackbits(packed.numpy(), count=math.prod(shape), bitorder="little")
        return torch.from_numpy(bits.view(np.bool_).reshape(shape))
    return _decode(packed, shape, _table(packed.device, torch.bool, 1.0, 0.0))


def select(packed: torch.Tensor, shape: torch.Size | tuple[int, ...], on: float, off: float,
           dtype: torch.dtype) -> torch.Tensor:
    """``where(unpack(packed, shape), on, off)`` in ``dtype``, decoded in one lookup."""
    return _decode(packed, shape, _table(packed.device, dtype, float(on), float(off)))


def scale_by_mask(g: torch.Tensor, packed: torch.Tensor, on: float, off: float, inplace: bool = False) -> torch.Tensor:
    """``g * select(packed, g.shape, on, off, g.dtype)`` (written into ``g`` if ``inplace``): a backward's
    gradient through a kept 1-bit mask. Contiguous float32 CPU ``g`` goes through radvar's compiled kernel
    where it is built (:mod:`radvar._native`: one pass, no decoded mask; 1.7 against 3.2 ms on
    150 x 32 x 32 x 32, bitwise the same product)."""
    if kernel_ok(g) and g.is_contiguous():
        return _native.mask_scale(g, packed, float(on), float(off), g if inplace else torch.empty_like(g))
    factors = select(packed, g.shape, on, off, g.dtype)
    return g.mul_(factors) if inplace else g * factors


CODE_BITS = (1, 2, 4, 8)


def _check_code_bits(bits: int) -> None:
    if bits not in CODE_BITS:
        raise ValueError(f"bits must be one of {CODE_BITS}, got {bits!r}")


def pack_codes(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Pack uint8 codes below 2**bits (any shape, C order) into ceil(numel · bits / 8) bytes."""
    _check_code_bits(bits)
    if bits == 1:
        return pack(codes.bool())
    flat = codes.reshape(-1)
    if bits == 8:  # one code a byte; own exactly these bytes (the ledger counts whole storages)
        return flat if flat.untyped_storage().nbytes() == flat.numel() else flat.clone()
    per = 8 // bits
    if flat.numel() % per:
        flat = torch.cat([flat, flat.new_zeros((-flat.numel()) % per)])
    # a word of `per` code bytes (little-endian): code j sits at bit 8j and belongs at bit bits·j, so
    # shifting the word right by j·(8 − bits) for each j and or-ing puts all of them in the low byte
    shifts = [j * (8 - bits) for j in range(1, per)]
    if numpy_ok(flat):
        words = flat.numpy().view(np.uint16 if per == 2 else np.uint32)
        out = words.copy()
        for s in shifts:
            out |= words >> s
        return torch.from_numpy(out.astype(np.uint8))  # keeps the low byte
    words = flat.contiguous().view(torch.int16 if per == 2 else torch.int32)  # codes < 16: no sign bit set
    out = words.clone()
    for s in shifts:
        out.bitwise_or_(words >> s)
    return out.bitwise_and_(0xFF).to(torch.uint8)


def unpack_codes(packed: torch.Tensor, shape: torch.Size | tuple[int, ...], bits: int,
                 dtype: torch.dtype) -> torch.Tensor:
    """Inverse of :func:`pack_codes`: the codes of ``shape`` as values of ``dtype``, in one lookup."""
    _check_code_bits(bits)
    return _decode(packed, shape, _code_table(packed.device, dtype, bits))
