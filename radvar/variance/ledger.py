"""Measured bytes for the reports: the saved-tensor ledger on the model as given and on its conversion.

``bytes_exact`` comes from :func:`radvar.memory.saved_bytes` on the model run
exactly; ``bytes_plan`` from the converted model (``radvar.convert``), once
per requested keep fraction by resetting the twins' sketches in place
(:func:`radvar.variance.analytic` asks only for the plan as given, ``None``).
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Sequence

import torch
from torch import nn

from .. import rng
from ..convert import _convert as convert  # no CoverageWarning: radvar reports coverage itself
from ..memory import SavedBytesReport, saved_bytes
from ..plan import Plan


@dataclasses.dataclass
class Ledger:
    """Per-module and total bytes for the exact model and for the plan at each keep (None: as planned)."""

    exact: SavedBytesReport
    plan: dict[float | None, SavedBytesReport]

    def __post_init__(self) -> None:
        self._by_module = {key: r.by_module for key, r in [("exact", self.exact), *self.plan.items()]}

    def bytes_exact(self, name: str) -> int:
        return self._by_module["exact"].get(name, 0)

    def bytes_plan(self, name: str, keep: float | None) -> int:
        return self._by_module[keep].get(name, 0)


def measure(model: nn.Module, inputs: tuple, targets: torch.Tensor, loss_fn: Callable, plan: Plan,
            keeps: Sequence[float | None]) -> Ledger:
    """One ledger forward for the exact model and one per keep for the converted model."""
    with rng.exact():
        exact = saved_bytes(model, inputs, loss_fn, targets)
    converted = convert(model, plan)
    modules = dict(converted.named_modules())
    per_keep = {}
    for keep in keeps:
        for name, sketch in plan.items():
            if sketch is not None:
                modules[name].adopt(sketch if keep is None else sketch.at(keep))
        per_keep[keep] = saved_bytes(converted, inputs, loss_fn, targets)
    return Ledger(exact, per_keep)
