"""Autocast for custom Functions: cast once in forward, then run in that dtype.

Under ``torch.autocast`` a RAD op casts its floating inputs to the autocast
dtype *before* sketching, so the saved state is kept in that dtype (as plain
autocast keeps its casted inputs), and computes with autocast off. Backward
then works in the saved dtype; autograd casts the returned gradients to each
input's dtype.
"""

from __future__ import annotations

import contextlib
import torch


def autocast_dtype(t: torch.Tensor) -> torch.dtype | None:
    """The dtype autocast would use on ``t``'s device, or None when it is off."""
    device_type = t.device.type
    if torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    return None


def cast(dtype: torch.dtype | None, *tensors: torch.Tensor | None) -> tuple[torch.Tensor | None, ...]:
    """Cast floating tensors to ``dtype`` (no-op for None or when dtype is None)."""
    if dtype is None:
        return tensors
    return tuple(t.to(dtype) if t is not None and t.is_floating_point() else t for t in tensors)


def autocast_off(t: torch.Tensor, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    """Disable autocast on ``t``'s device for the block (a no-op when ``dtype`` is None:
    autocast was off, and entering ``torch.autocast`` costs more than a small matmul)."""
    return torch.autocast(t.device.type, enabled=False) if dtype is not None else contextlib.nullcontext()
