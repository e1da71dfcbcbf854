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

With ``batch_sizes`` (``fit(..., co_optimize=True)``) a re-tune also weighs other
batch sizes B': from the same batch it fits each layer's RAD variance as a function
of the batch (:func:`radvar.tradeoff.co_optimize`: ``v_l(B') = c_l + d_l/B'``, exact
for per-example sketches) and solves the plan at every B' within the budget in bytes
(a fraction is turned into bytes at the first re-tune, at the starting batch). It
switches batch and plan when the least predicted total variance
``tr Σ/B' + Σ_l v_l(B')`` is below ``(1 − min_gain)`` times the best at the current
batch, and the new plan's ledger at B' (measured on the first B' examples of
``pool``, the training data) fits the budget; otherwise it re-tunes the plan alone.
tr Σ is the monitor's. The learning rate is not rescaled.

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
from ..layers.functional import router_of
from ..plan import Plan
from ..sketch import Sketch
from ..tradeoff import DEFAULT_FAMILIES, DEFAULT_KEEPS, co_optimize, tune
from ..tradeoff.tune import measured_bytes
from ..variance import layer_variance
from ..variance import capture as capture_stats
from ..variance.kinds import kind_for
from .monitor import TOTAL, NoiseMonitor, isolated, save_records

SWITCH_COLUMNS = ["step", "reason", "rad_before", "rad_after", "data_variance", "equivalent_batch_before",
                  "equivalent_batch_after", "bytes_before", "bytes_after", "budget_bytes", "plan_before", "plan_after",
                  "batch_before", "batch_after"]


def current_plan(model: torch.nn.Module) -> Plan:
    """The sketch each randomizable module of ``model`` carries now (None: exact), and the functional-site
    entries (keys and patterns) its router holds (:attr:`Plan.sites`)."""
    router = router_of(model)
    sites = {} if router is None else {k: v for k, v in router.entries.items() if v is None or isinstance(v, Sketch)}
    return Plan({**{n: getattr(m, "sketch", None) for n, m in model.named_modules() if kind_for(m) is not None},
                 **sites})


def _check_co(batch_sizes: Any, pool: Any) -> tuple[list[int] | None, tuple[torch.Tensor, torch.Tensor] | None]:
    """(batch sizes, pool) of a co-optimising AutoPlan, checked; (None, None) without batch_sizes."""
    if batch_sizes is None:
        if pool is not None:
            raise ValueError("AutoPlan: pool (training data) applies only with batch_sizes (co-optimisation)")
        return None, None
    if isinstance(batch_sizes, (str, bytes)) or not hasattr(batch_sizes, "__iter__") or not list(batch_sizes) \
            or any(isinstance(b, bool) or not isinstance(b, int) or b < 2 for b in batch_sizes):
        raise ValueError(f"AutoPlan: batch_sizes must be a non-empty sequence of ints >= 2, got {batch_sizes!r}")
    sizes = sorted(set(batch_sizes))
    if not (isinstance(pool, (tuple, list)) and len(pool) == 2 and all(isinstance(t, torch.Tensor) for t in pool)
            and pool[0].shape[0] == pool[1].shape[0] >= sizes[-1]):
        got = f"{pool[0].shape[0]} examples" if isinstance(pool, (tuple, list)) and pool and \
            isinstance(pool[0], torch.Tensor) else type(pool).__name__
        raise ValueError(f"AutoPlan: batch_sizes needs pool, an (inputs, targets) pair of tensors with at least "
                         f"{sizes[-1]} examples (the largest batch size), got {got}")
    return sizes, (pool[0], pool[1])


def _labels(plan: Plan) -> str:
    """``name: sketch; ...`` over the plan's modules, then its site entries."""
    return "; ".join(f"{n}: {s.label() if s is not None else 'exact'}" for n, s in {**plan, **plan.sites}.items())


class AutoPlan:
    """Re-tunes the plan of ``monitor.model`` every ``every`` steps within ``budget`` (see the module docstring).

    ``budget``: bytes autograd may keep for backward (int), or a fraction in (0, 1] of the
    exact model's ledger bytes (as in :func:`radvar.tradeoff.tune`). ``every`` must be a
    multiple of ``monitor.every``. ``families``/``keeps``/``solver``: as in ``tune``.
    ``min_gain``: the smallest relative drop of RAD variance worth a switch. With ``out``,
    ``retune.csv`` and ``retune.json`` are rewritten atomically after each switch.
    ``batch_sizes`` (ints >= 2) and ``pool`` (the training data, an (inputs, targets) pair with at
    least max(batch_sizes) examples): also re-choose the batch size (module docstring);
    :attr:`batch_size` is then the batch the next steps should use.
    """

    def __init__(self, monitor: NoiseMonitor, budget: int | float, every: int = 200,
                 families: Sequence[Sketch] = DEFAULT_FAMILIES, keeps: Sequence[float] = DEFAULT_KEEPS,
                 solver: str = "exact", min_gain: float = 0.05, out: str | os.PathLike | None = None,
                 batch_sizes: Sequence[int] | None = None,
                 pool: tuple[torch.Tensor, torch.Tensor] | None = None) -> None:
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
        self.batch_sizes, self.pool = _check_co(batch_sizes, pool)
        self.batch_size: int | None = None  # the batch of the latest re-tune, or the one it switched to
        self.budget_bytes: int | None = None  # with batch_sizes: the budget in bytes, fixed at the first re-tune

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
        size = int(inputs.shape[0])
        self.batch_size = size
        budget = self.budget if self.budget_bytes is None else self.budget_bytes
        with isolated(model, inputs.device):
            stats = capture_stats(model, batch, loss_fn, importance=any(f.needs_entries for f in self.families))
            new = tune(model, batch, loss_fn, budget=budget, families=self.families, keeps=self.keeps,
                       solver=self.solver, stats=stats)
            old = current_plan(model)
            bytes_before = measured_bytes(model, old, batch, loss_fn)
        budget_bytes = int(new.provenance["budget"]["bytes"])
        rad_before = sum(layer_variance(stats[n], s)[0] for n, s in old.items())
        rad_after = float(new.provenance["predicted_rad_variance"])
        trace = data_variance * size
        if self.batch_sizes is not None:
            self.budget_bytes = budget_bytes
            if math.isfinite(trace):
                other = self._other_batch(batch, budget_bytes, trace)
                if other is not None:
                    b, plan, reason, rad_new, bytes_new = other
                    return self._switch(step, reason, old, plan, rad_before, rad_new, data_variance, trace,
                                        bytes_before, bytes_new, budget_bytes, size, b)
        if bytes_before > budget_bytes:
            reason = f"the plan in use keeps {bytes_before:,} bytes, over the budget of {budget_bytes:,}"
        elif new != old and rad_after < (1.0 - self.min_gain) * rad_before:
            reason = (f"RAD variance on this batch {rad_before:.4g} -> {rad_after:.4g} "
                      f"({1 - rad_after / rad_before:.1%} lower, at least {self.min_gain:.0%} needed) within "
                      f"{budget_bytes:,} bytes")
        else:
            return None
        return self._switch(step, reason, old, new, rad_before, rad_after, data_variance, trace, bytes_before,
                            int(new.provenance["measured_bytes"]), budget_bytes, size, size)

    def _other_batch(self, batch: tuple[torch.Tensor, torch.Tensor], budget_bytes: int,
                     trace: float) -> tuple[int, Plan, str, float, int] | None:
        """(batch size, plan, reason, predicted RAD variance, ledger bytes) of a better batch size than the
        current one, or None (module docstring); the variance model is fitted on ``batch``."""
        model, loss_fn = self.monitor.model, self.monitor.raw_loss_fn
        size = int(batch[0].shape[0])
        sizes = sorted({*self.batch_sizes, size})
        extra = sizes[-1] - size
        data = batch if extra <= 0 else tuple(torch.cat([t, p[:extra].to(t.device)]) for t, p in zip(batch, self.pool))
        with isolated(model, batch[0].device):
            co = co_optimize(model, data, loss_fn, budget_bytes, sizes, trace, fit_batch=size,
                             families=self.families, keeps=self.keeps, solver=self.solver)
        table = co.table.set_index("batch_size")
        here, best = float(table.loc[size, "total_variance"]), co.best
        b = int(best["batch_size"])
        if b == size or co.allocation is None or not best["total_variance"] < (1.0 - self.min_gain) * here:
            return None
        plan = co.allocation.plan()
        sample = tuple(t[:b].clone() for t in data)
        with isolated(model, batch[0].device):
            kept = measured_bytes(model, plan, sample, loss_fn)
        if kept > budget_bytes:
            return None
        reason = (f"batch {size} -> {b}: predicted total variance tr Σ/B + RAD {here:.4g} (best plan at batch {size}) "
                  f"-> {float(best['total_variance']):.4g} ({1 - float(best['total_variance']) / here:.1%} lower, at "
                  f"least {self.min_gain:.0%} needed) within {budget_bytes:,} bytes")
        return b, plan, reason, float(best["rad_variance"]), kept

    def _switch(self, step: int, reason: str, old: Plan, new: Plan, rad_before: float, rad_after: float,
                data_variance: float, trace: float, bytes_before: int, bytes_after: int, budget_bytes: int,
                batch_before: int, batch_after: int) -> dict[str, Any]:
        """Convert the model to ``new`` (and the batch to ``batch_after``); log and return the switch."""
        convert(self.monitor.model, new, inplace=True)
        self.batch_size = batch_after
        switch = {"step": step, "reason": reason, "rad_before": rad_before, "rad_after": rad_after,
                  "data_variance": data_variance,
                  "equivalent_batch_before": trace / (trace / batch_before + rad_before) if trace > 0 else math.nan,
                  "equivalent_batch_after": trace / (trace / batch_after + rad_after) if trace > 0 else math.nan,
                  "bytes_before": bytes_before, "bytes_after": bytes_after,
                  "budget_bytes": budget_bytes, "plan_before": _labels(old), "plan_after": _labels(new),
                  "batch_before": batch_before, "batch_after": batch_after}
        self.switches.append(switch)
        if self.out is not None:
            self.save(self.out)
        return switch

    def save(self, out: str | os.PathLike) -> None:
        """Write ``retune.csv`` and ``retune.json`` (settings and switches) into ``out``."""
        settings = {"budget": self.budget, "every": self.every, "min_gain": self.min_gain, "solver": self.solver,
                    "families": [f.label() for f in self.families], "keeps": list(self.keeps),
                    "batch_sizes": self.batch_sizes, "budget_bytes": self.budget_bytes}
        save_records(out, "retune", self.frame, settings, "switches", self.switches)

__all__ = ["AutoPlan", "current_plan", "SWITCH_COLUMNS"]
