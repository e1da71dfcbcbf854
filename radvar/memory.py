"""What autograd keeps for backward, measured.

:func:`saved_bytes` runs one forward pass (and the loss) under
``torch.autograd.graph.saved_tensors_hooks`` and records every tensor packed
for backward. The ledger counts each underlying storage once (views of one
storage share bytes), excludes the model's parameters, and attributes each
storage to the innermost module running when it was first packed (and lists
every module that packed it: ``SavedBytesReport.storages``); tensors packed
by the loss go to ``"(loss)"``, those packed outside any module to ``"(top)"``.
With ``sites=True`` a storage packed by a functional call (:mod:`radvar.layers.functional`)
goes to its site key instead, e.g. ``"h.0.mlp:mul.0"``.
It measures what autograd holds, not what a sketch promises: masks, indices
and metadata tensors are all counted.

:func:`cuda_peak_bytes` is the end-to-end measure on a GPU: the rise of
``torch.cuda.max_memory_allocated`` over one call.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
from typing import Any, Callable, Iterable, Sequence

import pandas as pd
import torch
from torch import nn

from .layers.functional import current_site, intercept, is_site, split_site

LOSS = "(loss)"
TOP = "(top)"


@dataclasses.dataclass
class SavedBytesReport:
    """``total`` bytes kept for backward; ``rows`` one dict per module (module, type, bytes, tensors);
    ``storages`` one (bytes, keepers) per storage, keepers being every module that packed it (the
    first is the one its bytes are attributed to).

    ``per_module`` is the same as a DataFrame, ``by_module`` as {module: bytes}.
    """

    total: int
    rows: list[dict[str, Any]]
    storages: list[tuple[int, tuple[str, ...]]] = dataclasses.field(default_factory=list)

    @functools.cached_property
    def per_module(self) -> pd.DataFrame:
        return pd.DataFrame(self.rows, columns=["module", "type", "bytes", "tensors"])

    @property
    def by_module(self) -> dict[str, int]:
        return {r["module"]: r["bytes"] for r in self.rows}

    def summary(self) -> str:
        table = self.per_module.to_string(index=False)
        return f"{table}\ntotal saved for backward: {self.total:,} bytes"

    def _repr_html_(self) -> str:
        return self.per_module.to_html(index=False) + f"<p>total: {self.total:,} bytes</p>"

    def to_dict(self) -> dict[str, Any]:
        return {"total": self.total, "per_module": list(self.rows)}


def _key(storage: torch.UntypedStorage) -> tuple[str, int]:
    return str(storage.device), storage.data_ptr()


def _as_tuple(inputs: Any) -> tuple:
    return inputs if isinstance(inputs, tuple) else (inputs,)


class _Ledger:
    """Pack hook that records each unique storage once, skipping ``exclude``'s storages.

    A storage is keyed by (device, address). Every recorded storage is held until the ledger
    is dropped, so an address freed during the measurement (a branch whose output the loss
    never uses) cannot be reused by a later tensor and be taken for the first. The hook packs
    ``t.detach()``: a saved output packed as itself would own its own ``grad_fn`` through the
    saved variable, a cycle through C++ that the garbage collector cannot free.
    """

    def __init__(self, exclude: Iterable[torch.Tensor], owner: Callable[[], str] = lambda: TOP):
        self.skip = {_key(t.untyped_storage()) for t in exclude}
        self.owner = owner
        self.seen: dict[tuple[str, int], tuple[int, str]] = {}
        self.keepers: dict[tuple[str, int], list[str]] = {}  # every owner that packed the storage, first first
        self.held: list[torch.UntypedStorage] = []

    def pack(self, t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        key = _key(storage)
        if key not in self.skip and storage.nbytes() > 0:
            owner = self.owner()
            if key not in self.seen:
                self.seen[key] = (storage.nbytes(), owner)
                self.held.append(storage)
            keepers = self.keepers.setdefault(key, [])
            if owner not in keepers:
                keepers.append(owner)
        return t.detach()

    def hooks(self) -> torch.autograd.graph.saved_tensors_hooks:
        return torch.autograd.graph.saved_tensors_hooks(self.pack, lambda t: t)

    @property
    def total(self) -> int:
        return sum(nbytes for nbytes, _ in self.seen.values())


def saved_bytes_of(fn: Callable[[], Any], exclude: Iterable[torch.Tensor] = ()) -> int:
    """Bytes autograd keeps for backward from what ``fn()`` computes (storages of ``exclude``,
    e.g. parameters, left out). The same counting rule as :func:`saved_bytes`, for any callable."""
    ledger = _Ledger(exclude)
    with torch.enable_grad(), ledger.hooks():
        fn()
    return ledger.total


def saved_bytes(model: nn.Module, inputs: torch.Tensor | Sequence[torch.Tensor],
                loss_fn: Callable[..., torch.Tensor] | None = None,
                targets: torch.Tensor | None = None, sites: bool = False) -> SavedBytesReport:
    """Ledger of the bytes autograd keeps after ``loss_fn(model(*inputs)[, targets])``.

    ``inputs`` is a tensor or a tuple of positional inputs. Without ``loss_fn``
    only the model's forward is measured. ``sites``: attribute what functional
    calls keep to their site keys (see the module docstring).
    """
    names = {m: (name or TOP) for name, m in model.named_modules()}
    stack: list[str] = []

    def owner() -> str:
        return (sites and current_site()) or (stack[-1] if stack else TOP)

    ledger = _Ledger(model.parameters(), owner=owner)

    called: list[str] = []

    def enter(module: nn.Module, args: Any) -> None:
        stack.append(names[module])

    def leave(module: nn.Module, args: Any, output: Any) -> None:
        name = stack.pop()
        if not list(module.children()):
            called.append(name)

    handles = []
    for module in names:
        handles.append(module.register_forward_pre_hook(enter))
        handles.append(module.register_forward_hook(leave))
    try:
        with torch.enable_grad(), ledger.hooks(), intercept(model) if sites else contextlib.nullcontext():
            out = model(*_as_tuple(inputs))
            if loss_fn is not None:
                stack.append(LOSS)
                loss = loss_fn(out, targets) if targets is not None else loss_fn(out)
                stack.pop()
                del loss
            del out
    finally:
        for h in handles:
            h.remove()

    per: dict[str, int] = {}
    count: dict[str, int] = {}
    for nbytes, owner in ledger.seen.values():
        per[owner] = per.get(owner, 0) + nbytes
        count[owner] = count.get(owner, 0) + 1
    modules = dict(model.named_modules())
    order = list(dict.fromkeys(called + list(per)))
    rows = [{"module": n, "type": type(modules[n]).__name__ if n in modules else split_site(n)[1] if is_site(n) else n,
             "bytes": per.get(n, 0), "tensors": count.get(n, 0)} for n in order]
    storages = [(nbytes, tuple(ledger.keepers[ptr])) for ptr, (nbytes, _) in ledger.seen.items()]
    return SavedBytesReport(total=ledger.total, rows=rows, storages=storages)


def cuda_peak_bytes(fn: Callable[[], Any], device: torch.device | str | None = None) -> int:
    """Rise of CUDA peak allocated memory over one call of ``fn`` (bytes)."""
    if not torch.cuda.is_available():
        raise RuntimeError("cuda_peak_bytes needs a CUDA device; torch.cuda.is_available() is False")
    torch.cuda.synchronize(device)
    base = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    fn()
    torch.cuda.synchronize(device)
    return torch.cuda.max_memory_allocated(device) - base
