"""Mixed precision for :func:`radvar.train.fit`: bf16 autocast (CPU, GPU) and fp16 with a GradScaler (GPU).

RAD ops cast their inputs to the autocast dtype before sketching
(:mod:`radvar.ops._autocast`), so what they keep for backward is in that dtype.
fp16 needs loss scaling (Micikevicius et al., "Mixed Precision Training",
ICLR 2018); bf16 has fp32's exponent range and needs none.
"""

from __future__ import annotations

import contextlib
import dataclasses
from typing import ContextManager

import torch

DTYPES: dict[str, torch.dtype] = {"bf16": torch.bfloat16, "fp16": torch.float16}


@dataclasses.dataclass(frozen=True)
class Amp:
    """Resolved AMP setting: ``dtype`` None means full precision."""

    device_type: str
    dtype: torch.dtype | None = None

    def autocast(self) -> ContextManager[None]:
        """``torch.autocast`` in ``dtype`` on the device, or a no-op."""
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.dtype)

    def scaler(self) -> torch.amp.GradScaler | None:
        """A GradScaler for fp16, None otherwise."""
        if self.dtype is torch.float16:
            return torch.amp.GradScaler(self.device_type)
        return None


def resolve_amp(amp: str | None, device: torch.device) -> Amp:
    """Check ``amp`` (None, "bf16" or "fp16") against ``device``; raise ValueError if unsupported."""
    if amp is None:
        return Amp(device.type)
    if not isinstance(amp, str) or amp not in DTYPES:
        raise ValueError(f"fit: amp must be None, 'bf16' or 'fp16', got {amp!r}")
    if amp == "fp16" and device.type != "cuda":
        raise ValueError(f"fit: amp='fp16' (autocast with a GradScaler) needs a CUDA device, got device "
                         f"{str(device)!r}; on {device.type} use amp=None or 'bf16'")
    if amp == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ValueError(f"fit: amp='bf16' is not supported by {torch.cuda.get_device_name(device)}; "
                         f"use amp=None or 'fp16'")
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"fit: amp={amp!r} is supported on 'cpu' and 'cuda' devices, got {str(device)!r}")
    return Amp(device.type, DTYPES[amp])
