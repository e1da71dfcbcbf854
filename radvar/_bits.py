"""Bit packing for boolean masks: 1 bit per element, in a uint8 tensor."""

from __future__ import annotations

import torch

_SHIFTS_CACHE: dict[torch.device, torch.Tensor] = {}


def _shifts(device: torch.device) -> torch.Tensor:
    if device not in _SHIFTS_CACHE:
        _SHIFTS_CACHE[device] = torch.arange(8, dtype=torch.uint8, device=device)
    return _SHIFTS_CACHE[device]


def pack(mask: torch.Tensor) -> torch.Tensor:
    """Pack a bool tensor (any shape) into ceil(numel / 8) bytes, little-endian bits."""
    flat = mask.reshape(-1)
    pad = (-flat.numel()) % 8
    if pad:
        flat = torch.cat([flat, flat.new_zeros(pad)])
    return (flat.view(-1, 8).to(torch.uint8) << _shifts(flat.device)).sum(1, dtype=torch.uint8)


def unpack(packed: torch.Tensor, shape: torch.Size | tuple[int, ...]) -> torch.Tensor:
    """Inverse of :func:`pack`: the bool tensor of ``shape``."""
    numel = 1
    for s in shape:
        numel *= s
    bits = (packed.unsqueeze(1) >> _shifts(packed.device)) & 1
    return bits.view(-1)[:numel].view(shape).bool()
