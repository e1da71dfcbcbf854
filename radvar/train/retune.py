"""``AutoPlan``: re-solve the RAD plan during training from the monitored statistics, within a memory budget.

A :func:`radvar.train.fit` callback placed after a :class:`~radvar.train.monitor.NoiseMonitor`.
Every ``every`` steps, on the batch the monitor just measured, it captures the
per-view statistics once (:func:`radvar.variance.capture`), evaluates the plan in
use on them, and re-solves the per-layer sketch and keep with
:func:`radvar.tradeoff.tune` (the multiple-choice knapsack of
:mod:`radvar.tradeoff.solve`) for the least total RAD variance whose ledger bytes
fit ``budget``. It switches when the plan in use exceeds the budget, or when
the new plan's RAD variance is below ``(1 − min_gain)`` times the current one's
on the same batch. Callbacks run after the optimizer step and before the next
forward, so a switch happens between steps, never inside one: every step uses
one plan, and every plan's gradient is unbiased. Each switch is logged with its
reason, the variances before and after, the monitor's data noise tr Σ/B and the
equivalent batch sizes tr Σ / (tr Σ/B + RAD) before and after.

Re-tuning never consumes torch's global RNG; radvar's stream position is
restored, so between switches the RAD draws are those of the run without it.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Sequence

import pandas as pd
import torch

from ..convert import _convert as convert  # no CoverageWarning: radvar reports coverage itself
from ..plan import Plan
from ..sketch import Sketch
from ..tradeoff import DEFAULT_FAMILIES, DEFAULT_KEEPS, tune
from ..tradeoff.tune import measured_bytes
from ..variance import layer_variance
from ..variance import capture as capture_stats
from ..variance.kinds import kind_for
from .monitor import TOTAL, NoiseMonitor, isolated, save_records

SWITCH_COLUMNS = ["step", "reason", "rad_before", "rad_after", "data_variance", "equivalent_batch_before",
                  "equivalent_batch_after", "bytes_before", "bytes_after", "budget_bytes", "plan_before", "plan_after"]


def current_plan(model: torch.nn.Module) -> Plan:
    """The sketch each randomizable module of ``model`` carries now (None: exact)."""
    return Plan({n: getattr(m, "sketch", None) for n, m in model.named_modules() if kind_for(m) is not None})


def _labels(plan: Plan) -> str:
    return "; ".join(f"{n}: {s.label() if s is not None else 'exact'}" for n, s in plan.items())


class AutoPlan:
    """Re-tunes the plan of ``monitor.model`` every ``every`` steps within ``budget`` (see the module docstring).

    ``budget``: bytes autograd may keep for backward (int), or a fraction in (0, 1] of the
    exact model's ledger bytes (as in :func:`radvar.tradeoff.tune`). ``every`` must be a
    multiple of ``monitor.every``. ``families``/``keeps``/``solver``: as in ``tune``.
    ``min_gain``: the smallest relative drop of RAD variance worth a switch. With ``out``,
    ``retune.csv`` and ``retune.json`` are rewritten atomically after each switch.
    """

    def __init__(self, monitor: NoiseMonitor, budget: int | float, every: int = 200,
                 families: Sequence[Sketch] = DEFAULT_FAMILIES, keeps: Sequence[float] = DEFAULT_KEEPS,
                 solver: str = "exact", min_gain: float = 0.05, out: str | os.PathLike | None = None) -> None:
        if not isinstance(monitor, NoiseMonitor):
            raise TypeError(f"AutoPlan: monitor must be a radvar.train.monitor.NoiseMonitor, got {type(monitor).__name__}")
        if isinstance(every, bool) or not isinstance(every, int) or every < 1 or every % monitor.every:
            raise ValueError(f"AutoPlan: every must be a positive multiple of the monitor's every "
                             f"({monitor.every}), got {every!r}")
        if isinstance(budget, bool) or not isinstance(budget, (int, float)) or not budget > 0 \
                or (isinstance(budget, float) and budget > 1.0):
            raise ValueError(f"AutoPlan: budget must be an int (bytes) > 0 or a float in (0, 1] (fraction of the "
                             f"exact saved bytes), got {budget!r}")
        if isinstance(min_gain, bool) or not isinstance(min_gain, (int, float)) or not 0 <= min_gain < 1:
            raise ValueError(f"AutoPlan: min_gain must be a number in [0, 1), got {min_gain!r}")
        self.monitor, self.budget, self.every, self.min_gain = monitor, budget, every, float(min_gain)
        self.families, self.keeps, self.solver = tuple(families), tuple(keeps), solver
        self.out = None if out is None else Path(out)
        self.switches: list[dict[str, Any]] = []

    @property
    def frame(self) -> pd.DataFrame:
        """One row per switch."""
        return pd.DataFrame(self.switches, columns=SWITCH_COLUMNS)

    def __call__(self, row: dict[str, Any]) -> None:
        """fit callback: re-tune at multiples of ``every``, after the monitor measured this step."""
        step = int(row["step"])
        if step % self.every:
            return None
        logged = self.monitor.frame
        mine = logged[(logged["step"] == step) & (logged["layer"] == TOTAL)]
        if mine.empty:
            raise RuntimeError(f"AutoPlan: the monitor has no measurement at step {step}; pass callbacks=[monitor, "
                               "autoplan] (monitor first) with log_every dividing the monitor's every")
        self.retune(step, float(mine["data_variance"].iloc[0]))
        return None

    def retune(self, step: int, data_variance: float) -> dict[str, Any] | None:
        """Re-solve on the monitor's batch; switch and log when the rule says so. The switch, or None."""
        model, loss_fn = self.monitor.model, self.monitor.raw_loss_fn
        inputs, targets = self.monitor.batch
        batch = (inputs.clone(), targets.clone())  # the ledger counts whole storages; a slice views all the data
        with isolated(model, inputs.device):
            stats = capture_stats(model, batch, loss_fn, importance=any(f.needs_entries for f in self.families))
            new = tune(model, batch, loss_fn, budget=self.budget, families=self.families, keeps=self.keeps,
                       solver=self.solver, stats=stats)
            old = current_plan(model)
            bytes_before = measured_bytes(model, old, batch, loss_fn)
        budget_bytes = int(new.provenance["budget"]["bytes"])
        rad_before = sum(layer_variance(stats[n], s)[0] for n, s in old.items())
        rad_after = float(new.provenance["predicted_rad_variance"])
        if bytes_before > budget_bytes:
            reason = f"the plan in use keeps {bytes_before:,} bytes, over the budget of {budget_bytes:,}"
        elif new != old and rad_after < (1.0 - self.min_gain) * rad_before:
            reason = (f"RAD variance on this batch {rad_before:.4g} -> {rad_after:.4g} "
                      f"({1 - rad_after / rad_before:.1%} lower, at least {self.min_gain:.0%} needed) within "
                      f"{budget_bytes:,} bytes")
        else:
            return None
        convert(model, new, inplace=True)
        trace = data_variance * int(inputs.shape[0])
        switch = {"step": step, "reason": reason, "rad_before": rad_before, "rad_after": rad_after,
                  "data_variance": data_variance,
                  "equivalent_batch_before": trace / (data_variance + rad_before) if trace > 0 else math.nan,
                  "equivalent_batch_after": trace / (data_variance + rad_after) if trace > 0 else math.nan,
                  "bytes_before": bytes_before, "bytes_after": int(new.provenance["measured_bytes"]),
                  "budget_bytes": budget_bytes, "plan_before": _labels(old), "plan_after": _labels(new)}
        self.switches.append(switch)
        if self.out is not None:
            self.save(self.out)
        return switch

    def save(self, out: str | os.PathLike) -> None:
        """Write ``retune.csv`` and ``retune.json`` (settings and switches) into ``out``."""
        settings = {"budget": self.budget, "every": self.every, "min_gain": self.min_gain, "solver": self.solver,
                    "families": [f.label() for f in self.families], "keeps": list(self.keeps)}
        save_records(out, "retune", self.frame, settings, "switches", self.switches)

__all__ = ["AutoPlan", "current_plan", "SWITCH_COLUMNS"]
