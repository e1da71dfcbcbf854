"""The largest batch that fits: measured on CUDA, predicted from the ledger on CPU.

CPU (``method="ledger"``): the bytes autograd keeps grow affinely with the
batch, ``bytes(B) = fixed + per_example · B``; two ledger measurements
(:func:`radvar.memory.saved_bytes`) at ``probe`` batch sizes give the line,
the prediction is ``floor((memory_limit − fixed) / per_example)``, and the
ledger is measured again at that batch (``measured_bytes``) and stepped down
until it fits.

CUDA (``method="cuda"``): a real forward+backward step per candidate batch,
doubling then bisecting; a batch fits if it raises no out-of-memory error and,
with ``memory_limit``, its peak allocated memory stays under the limit.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable

import torch
from torch import nn

from ..convert import _convert as convert  # no CoverageWarning: radvar reports coverage itself
from ..memory import saved_bytes
from ..plan import Plan
from ..sketch import Sketch


@dataclasses.dataclass(frozen=True)
class Capacity:
    """Result of :func:`max_batch_size`; bytes are ledger bytes (CPU) or peak allocated (CUDA)."""

    batch_size: int
    method: str
    memory_limit: int | None
    measured_bytes: int
    per_example_bytes: float | None = None
    fixed_bytes: float | None = None


def _batch(sample: tuple[torch.Tensor, torch.Tensor], size: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    x, y = sample
    idx = torch.arange(size) % x.shape[0]
    return x[idx].to(device), y[idx].to(device)


def _check(sample, memory_limit, probe, max_batch) -> None:
    if (not isinstance(sample, (tuple, list)) or len(sample) != 2
            or not all(isinstance(t, torch.Tensor) for t in sample) or sample[0].shape[0] != sample[1].shape[0]
            or sample[0].shape[0] == 0):
        raise TypeError(f"max_batch_size: sample must be a non-empty (inputs, targets) pair of tensors with "
                        f"equal first dims, got {type(sample).__name__}")
    if memory_limit is not None and (isinstance(memory_limit, bool) or not isinstance(memory_limit, int) or memory_limit <= 0):
        raise ValueError(f"max_batch_size: memory_limit must be a positive int (bytes) or None, got {memory_limit!r}")
    if (len(probe) != 2 or not all(isinstance(b, int) and b > 0 for b in probe) or probe[0] >= probe[1]):
        raise ValueError(f"max_batch_size: probe must be two increasing positive ints, got {probe!r}")
    if isinstance(max_batch, bool) or not isinstance(max_batch, int) or max_batch < 1:
        raise ValueError(f"max_batch_size: max_batch must be a positive int, got {max_batch!r}")


def max_batch_size(model: nn.Module, plan: Plan | Sketch | None, sample: tuple[torch.Tensor, torch.Tensor],
                   loss_fn: Callable[..., torch.Tensor], *, memory_limit: int | None = None,
                   device: str | torch.device = "auto", probe: tuple[int, int] = (16, 32),
                   max_batch: int = 1 << 20) -> Capacity:
    """Largest batch (≤ ``max_batch``) of ``convert(model, plan)`` that fits.

    ``sample`` is a small (inputs, targets) batch; candidate batches repeat its
    rows. On CPU ``memory_limit`` (bytes kept for backward) is required.
    ``plan=None`` means the exact model (with radvar's compact exact twins).
    """
    _check(sample, memory_limit, probe, max_batch)
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device)
    net = convert(model, plan).to(device)
    if device.type == "cuda":
        return _cuda_search(net, sample, loss_fn, device, memory_limit, max_batch)
    if memory_limit is None:
        raise ValueError("max_batch_size: on a CPU device memory_limit (bytes kept for backward) is required")

    def ledger(b: int) -> int:
        x, y = _batch(sample, b, device)
        return saved_bytes(net, x, loss_fn, y).total

    (b1, b2), (m1, m2) = probe, (ledger(probe[0]), ledger(probe[1]))
    per = (m2 - m1) / (b2 - b1)
    fixed = m1 - per * b1
    batch = max_batch if per <= 0 else max(0, min(max_batch, math.floor((memory_limit - fixed) / per)))
    measured = ledger(batch) if batch else 0
    while batch > 0 and measured > memory_limit:
        batch -= 1
        measured = ledger(batch) if batch else 0
    return Capacity(batch, "ledger", memory_limit, measured, per, fixed)


def _cuda_search(net: nn.Module, sample, loss_fn, device: torch.device, memory_limit: int | None,
                 max_batch: int) -> Capacity:
    peaks: dict[int, int] = {}

    def fits(b: int) -> bool:
        x, y = _batch(sample, b, device)
        net.zero_grad(set_to_none=True)
        torch.cuda.empty_cache()
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        try:
            loss_fn(net(x), y).backward()
            torch.cuda.synchronize(device)
        except torch.cuda.OutOfMemoryError:
            return False
        finally:
            del x, y
            net.zero_grad(set_to_none=True)
        peaks[b] = torch.cuda.max_memory_allocated(device)
        return memory_limit is None or peaks[b] <= memory_limit

    if not fits(1):
        return Capacity(0, "cuda", memory_limit, peaks.get(1, 0))
    lo, hi = 1, 2
    while hi <= max_batch and fits(hi):
        lo, hi = hi, hi * 2
    hi = min(hi, max_batch + 1)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    torch.cuda.empty_cache()
    return Capacity(lo, "cuda", memory_limit, peaks[lo])
