"""A step-time budget on top of the memory budget: the least-variance plan within both.

Each candidate (layer l, option j) costs ``s_lj`` extra seconds per step over plain
PyTorch (:meth:`radvar.bench.cost.CostModel.extra_seconds`; exact: 0). With ``T`` the
measured plain step, a plan meets ``max_slowdown`` when ``T + Σ_l s_l ≤ max_slowdown · T``.

The problem — minimise Σ v_l subject to Σ m_l ≤ M and Σ s_l ≤ S — is a multiple-choice
knapsack with two constraints. :func:`within_time` relaxes the time constraint with a
Lagrange multiplier μ ≥ 0: for fixed μ it solves the one-constraint problem (memory) on
``v_lj + μ (s_lj − min_j s_lj)`` (the solvers' ranking value ``ucb`` shifted alike) with the memory solver, and it searches μ by doubling
then bisection (``STEPS`` solves) for the smallest μ whose plan meets the time budget.
Every returned plan meets both budgets (as predicted); as with any Lagrangian relaxation
of an integer problem it may not be the optimum (the duality gap is not bounded here).
μ = 0 is tried first, so when the memory-optimal plan is already fast enough it is returned.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import nn

from ..bench.cost import CostModel, input_shapes
from ..convert import _convert as convert  # no CoverageWarning: an all-exact conversion sketches nothing
from ..layers.sequential import fused_pairs
from ..sketch import Sketch
from .allocate import Allocation, allocate
from .candidates import Candidates

STEPS = 40


def check_max_slowdown(value: Any, owner: str = "tune") -> float:
    """A step-time ratio to plain PyTorch: a finite number > 1."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{owner}: max_slowdown must be a number > 1 (step time / plain PyTorch step time), "
                        f"got {value!r} ({type(value).__name__})")
    value = float(value)
    if not math.isfinite(value) or value <= 1.0:
        raise ValueError(f"{owner}: max_slowdown must be a finite number > 1 (step time / plain PyTorch step "
                         f"time, e.g. 1.3), got {value!r}")
    return value


def option_seconds(cands: Candidates, model: nn.Module, inputs: Any, cost: CostModel) -> np.ndarray:
    """Extra seconds per step of every row of ``cands.table`` (exact rows 0), from ``cost``. Functional
    sites (plan patterns ``"<module>:*"``, no module of their own to time alone) count 0. A sketched Linear
    that follows a ReLU in an ``nn.Sequential`` (:func:`radvar.layers.sequential.fused_pairs`) also pays
    that ReLU's 1-bit mask, which the ReLU does not keep while the Linear is exact: the compact ReLU's
    extra time over ``nn.ReLU`` on the same input, timed alone."""
    sketch_seconds = _sketch_seconds(model, inputs, cost)
    out = np.zeros(len(cands.table))
    for i, (layer, sketch) in enumerate(zip(cands.table["layer"], cands.table["sketch"])):
        if sketch is not None and not (isinstance(sketch, float) and math.isnan(sketch)):
            out[i] = sketch_seconds(layer, sketch)
    cost.save()
    return out


def plan_extra_seconds(model: nn.Module, inputs: Any, plan: Any, cost: CostModel) -> float:
    """The extra seconds per step that ``cost`` predicts for ``plan`` (a :class:`radvar.Plan`) on ``model``, each
    sketched module charged as :func:`option_seconds` charges it (NaN where a timing is missing from a cost model
    that does not measure)."""
    sketch_seconds = _sketch_seconds(model, inputs, cost)
    return sum(sketch_seconds(name, sketch) for name, sketch in plan.items() if sketch is not None)


def _sketch_seconds(model: nn.Module, inputs: Any, cost: CostModel) -> Callable[[str, Sketch], float]:
    """``(module name, sketch) -> extra seconds per step``: the module's under that sketch over its calls on
    ``inputs``, plus, for a Linear right after a ReLU in an ``nn.Sequential`` sketched with a non-exact sketch,
    the ReLU's mask (:meth:`CostModel.compact_seconds`); 0 for a name that is not a module (a functional site)."""
    shapes, modules, relu_before = input_shapes(model, inputs), dict(model.named_modules()), fused_pairs(model)

    def seconds(name: str, sketch: Sketch) -> float:
        if name not in modules:
            return 0.0
        extra = cost.extra_seconds(modules[name], shapes.get(name, []), sketch)
        if name in relu_before and not sketch.exact:
            extra += cost.compact_seconds(modules[relu_before[name]], shapes.get(name, []))
        return extra
    return seconds


def _penalised(cands: Candidates, seconds: np.ndarray, mu: float) -> Candidates:
    table = cands.table.copy()
    floor = table.assign(_s=seconds).groupby("layer", sort=False)["_s"].transform("min").to_numpy()
    for column in ("variance", "ucb"):  # the solvers rank by ucb (variance + z · se) where it exists
        if column in table:
            table[column] = table[column].to_numpy() + mu * (seconds - floor)
    return dataclasses.replace(cands, table=table)


@dataclasses.dataclass
class TimedAllocation:
    """The chosen allocation (true variances), its predicted extra seconds and the multiplier μ used."""

    allocation: Allocation
    seconds: float
    multiplier: float


def within_time(cands: Candidates, seconds: Sequence[float], budget: int, time_budget: float,
                solver: str = "exact") -> TimedAllocation:
    """The least-variance allocation found with ``fixed + Σ bytes ≤ budget`` and ``Σ seconds ≤ time_budget``
    (extra seconds over plain; see the module docstring). Raises, naming the fastest plan's extra time, when
    no multiplier meets the time budget."""
    seconds = np.asarray(seconds, dtype=np.float64)
    if seconds.shape != (len(cands.table),) or not np.isfinite(seconds).all():
        raise ValueError(f"within_time: seconds must be {len(cands.table)} finite numbers, one per candidate row")

    def solve(mu: float) -> tuple[Allocation, float]:
        alloc = allocate(_penalised(cands, seconds, mu), budget, None, solver)
        picked = _picked_rows(cands, alloc)
        true = cands.table.iloc[picked].copy()
        alloc = dataclasses.replace(alloc, per_layer=cands._charge_joint(true.reset_index(drop=True)))
        return alloc, float(seconds[picked].sum())

    alloc, spent = solve(0.0)
    if spent <= time_budget:
        return TimedAllocation(alloc, spent, 0.0)
    positive = seconds[seconds > 0]
    v = cands.table["variance"].to_numpy()
    scale = (v.max() - v.min() + 1.0) / (positive.min() if positive.size else 1.0)
    hi, best = scale, None
    for _ in range(STEPS):
        alloc, spent = solve(hi)
        if spent <= time_budget:
            best = (alloc, spent, hi)
            break
        hi *= 2.0
    if best is None:
        raise ValueError(f"the time budget cannot be met within the memory budget: the fastest plan found adds "
                         f"{spent:.4g} s per step, over the allowed {time_budget:.4g} s; raise max_slowdown or "
                         f"the memory budget")
    lo = 0.0
    for _ in range(STEPS):
        mid = (lo + hi) / 2
        alloc, spent = solve(mid)
        if spent <= time_budget:
            hi, best = mid, (alloc, spent, mid)
        else:
            lo = mid
        if hi - lo <= 1e-6 * hi:
            break
    return TimedAllocation(best[0], best[1], best[2])


def _picked_rows(cands: Candidates, alloc: Allocation) -> np.ndarray:
    """Positions in ``cands.table`` of the allocation's rows (matched by layer, family and keep)."""
    positions = []
    for layer, family, keep in zip(alloc.per_layer["layer"], alloc.per_layer["family"], alloc.per_layer["keep"]):
        rows = np.flatnonzero((cands.table["layer"] == layer).to_numpy() & (cands.table["family"] == family).to_numpy()
                              & (cands.table["keep"] == keep).to_numpy())
        positions.append(int(rows[0]))
    return np.asarray(positions, dtype=np.int64)


def _interleaved(cost: CostModel, models: Sequence[nn.Module], x: torch.Tensor, y: Any, loss_fn: Callable,
                 pairs: int) -> list[list[float]]:
    """Per model, ``pairs`` step times (:meth:`CostModel.step_seconds` of one step), the models stepped in turn
    after one warm-up round, so that a change of load between them does not count."""
    times: list[list[float]] = [[] for _ in models]
    for rep in range(pairs + 1):
        for m, t in zip(models, times):
            step = cost.step_seconds(m, x, y, loss_fn, reps=1, warmup=0)
            if rep:
                t.append(step)
    return times


def reference_seconds(model: nn.Module, x: torch.Tensor, y: Any, loss_fn: Callable, cost: CostModel,
                      pairs: int = 8) -> tuple[float, float]:
    """(the plain step, what converting ``model`` with every layer exact adds to it): the fastest of ``pairs``
    plain steps, and the fastest of as many converted ones less that, at least 0 (compact twins: masks of
    pools, dropout, leaky ReLUs), the two interleaved (:func:`_interleaved`)."""
    plain, converted = _interleaved(cost, [model, convert(model, None)], x, y, loss_fn, pairs)
    return min(plain), max(min(converted) - min(plain), 0.0)


def measured_slowdown(model: nn.Module, plan: Any, x: torch.Tensor, y: Any, loss_fn: Callable, cost: CostModel,
                      pairs: int = 8) -> float:
    """``plan``'s step over the plain step, as ``radvar analyze`` reports it: the ratio of the medians of
    ``pairs`` interleaved steps each (:func:`_interleaved`)."""
    plain, planned = _interleaved(cost, [model, convert(model, plan)], x, y, loss_fn, pairs)
    return statistics.median(planned) / statistics.median(plain)

