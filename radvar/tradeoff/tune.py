"""``radvar.tune``: choose every layer's sketch and keep fraction under a memory or a variance budget.

Pipeline: candidate curves from one exact pass and one ledger pass
(:mod:`radvar.tradeoff.candidates`), the exact multiple-choice knapsack (or its
Lagrangian relaxation) on them (:mod:`radvar.tradeoff.solve`), a check against
the best uniform plan of every family, then the plan is converted and the
ledger measured: if the measured bytes exceed the budget, it is solved again
under the budget less that plan's prediction error (measured - predicted),
``RETRIES`` solves at most, then once more for the cheapest plan (the measured
figure is the one that counts). With a step-time budget the chosen plan's step is timed as well, and
solved again under a tighter time allowance while it is slower than allowed (:func:`_meet_measured_time`).
The :class:`radvar.Plan` carries all of it in ``provenance`` (JSON).
"""

from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import torch
from torch import nn

from .._data import take_batch
from .._version import __version__
from ..convert import _convert as convert  # no CoverageWarning: radvar reports coverage itself
from ..memory import saved_bytes
from ..plan import Plan
from ..sketch import Sketch
from ..variance import Capture, minibatch
from ..variance.minibatch import untouched
from ..variance.propagated import Probes
from .allocate import SOLVERS, Allocation, allocate, best_uniform
from ..bench.cost import CostModel
from .candidates import (DEFAULT_FAMILIES, DEFAULT_KEEPS, SITE_PROBES, Candidates, candidates, check_families,
                         check_keeps, family_name)
from .timebudget import check_max_slowdown, measured_slowdown, option_seconds, reference_seconds, within_time

RETRIES = 3


def resolve_budget(budget: Any, exact_total: int, smallest: int) -> int:
    """Bytes from ``budget``: an int is bytes, a float in (0, 1] a fraction of the exact ledger total.

    Raises if it is below ``smallest``, the smallest feasible budget.
    """
    if isinstance(budget, bool) or not isinstance(budget, (int, float)):
        raise TypeError(f"budget must be an int (bytes) or a float in (0, 1] (fraction of the exact saved bytes, "
                        f"{exact_total:,}), got {budget!r} ({type(budget).__name__})")
    if isinstance(budget, float):
        if math.isnan(budget) or not 0.0 < budget <= 1.0:
            raise ValueError(f"budget as a float is a fraction of the exact saved bytes ({exact_total:,}) and must "
                             f"be in (0, 1], got {budget!r}; the smallest feasible budget is {smallest:,} bytes "
                             f"({smallest / exact_total:.4f})")
        value = math.floor(budget * exact_total)
    else:
        value = budget
    if value <= 0:
        raise ValueError(f"budget must be positive, got {budget!r}; the smallest feasible budget is {smallest:,} bytes "
                         f"({smallest / exact_total:.4f} of the exact {exact_total:,})")
    if value < smallest:
        raise ValueError(f"budget {value:,} bytes is below the fixed costs plus the cheapest sketch of every layer; "
                         f"the smallest feasible budget is {smallest:,} bytes ({smallest / exact_total:.4f} of the "
                         f"exact {exact_total:,})")
    return int(value)


def measured_bytes(model: nn.Module, plan: Plan, batch: tuple[tuple[torch.Tensor, ...], torch.Tensor],
                   loss_fn: Callable) -> int:
    """Ledger total of ``model`` converted with ``plan`` on one forward + loss."""
    inputs, targets = batch
    return saved_bytes(convert(model, plan), inputs, loss_fn, targets).total


def _choose(cands: Candidates, budget: int | None, variance_budget: float | None, solver: str,
            families: Sequence[Sketch], keeps: Sequence[float]) -> tuple[Allocation, Allocation | None]:
    """The solver's allocation, or the best uniform plan when that is better (possible only with the
    Lagrangian solver); also the best uniform plan (memory budget only)."""
    alloc = allocate(cands, budget, variance_budget, solver)
    if budget is None:
        return alloc, None
    uniforms = [u for f in families if (u := best_uniform(cands, f, budget, keeps)) is not None]
    best = min(uniforms, key=lambda u: u.ucb, default=None)
    if best is not None and best.ucb < alloc.ucb:
        return best, best
    return alloc, best


def _meet_measured_time(model: nn.Module, batch: tuple[tuple[torch.Tensor, ...], torch.Tensor], loss_fn: Callable,
                        cands: Candidates, seconds: Any, limit: int, target: int, solver: str, cost: CostModel,
                        timing: dict[str, Any], alloc: Allocation, measured: int,
                        attempts: list[dict[str, int]]) -> tuple[Allocation, int]:
    """Time ``alloc``'s converted model against the plain one (:func:`~radvar.tradeoff.timebudget.measured_slowdown`:
    the ratio of medians of interleaved steps, the figure ``radvar analyze`` prints); while that slowdown
    exceeds ``max_slowdown``, solve again with the extra-time allowance divided by how far the
    cost model under-predicted this plan's extra time (``RETRIES`` solves at most). Raises when no plan
    found meets the time budget as measured. Records each try in ``timing["measured"]``."""
    (x, *_), y = batch
    plain, fixed = timing["plain_step_seconds"], timing["fixed_extra_seconds"]
    allowance = (timing["max_slowdown"] - 1.0) * plain - fixed  # for the sketched layers' extra seconds
    timing["measured"] = []
    for _ in range(RETRIES + 1):
        with untouched(model, x.device):
            slowdown = measured_slowdown(model, alloc.plan(), x, y, loss_fn, cost)
        predicted = timing["predicted_extra_seconds"]
        timing["measured"].append({"predicted_slowdown": 1.0 + predicted / plain, "measured_slowdown": slowdown})
        if slowdown <= timing["max_slowdown"]:
            timing["measured_slowdown"] = slowdown
            return alloc, measured
        # the layers, timed alone, under-predicted their extra time by (measured - fixed) / (predicted - fixed)
        allowance *= max(predicted - fixed, 1e-12) / max((slowdown - 1.0) * plain - fixed, 1e-12) * 0.95
        try:
            timed = within_time(cands, seconds, limit, allowance, solver)
        except ValueError:  # no plan is predicted to fit the tightened allowance
            break
        alloc = timed.allocation
        timing.update(predicted_extra_seconds=fixed + timed.seconds, time_multiplier=timed.multiplier,
                      predicted_slowdown=1.0 + (fixed + timed.seconds) / plain)
        measured = measured_bytes(model, alloc.plan(), batch, loss_fn)
        attempts.append({"solved_for": limit, "predicted_bytes": alloc.bytes, "measured_bytes": measured})
        if target is not None and measured > target:
            break
    tries = timing["measured"]
    found = ", ".join(f"{m['measured_slowdown']:.2f}x" for m in tries)
    guessed = ", ".join(f"{m['predicted_slowdown']:.2f}x" for m in tries)
    raise ValueError(f"tune: the time budget of {timing['max_slowdown']:g}x the plain step cannot be met as "
                     f"measured within the memory budget: the plans found measured {found} (predicted {guessed}); "
                     f"raise max_slowdown or the memory budget")


def data_summary(batch: tuple[tuple[torch.Tensor, ...], torch.Tensor], data: Any) -> dict[str, Any]:
    inputs, targets = batch
    return {"examples_in_data": int(data[0][0].shape[0] if isinstance(data[0], tuple) else data[0].shape[0]),
            "batch_size": int(inputs[0].shape[0]),
            "input_shapes": [list(t.shape[1:]) for t in inputs], "input_dtypes": [str(t.dtype) for t in inputs],
            "targets": {"shape": list(targets.shape[1:]), "dtype": str(targets.dtype)}}


def tune(model: nn.Module, data: Any, loss_fn: Callable[..., torch.Tensor], budget: int | float | None = None,
         variance_budget: float | None = None, *, relative: bool = False, batch_size: int | None = None,
         families: Sequence[Sketch] = DEFAULT_FAMILIES, keeps: Sequence[float] = DEFAULT_KEEPS,
         solver: str = "exact", stats: Capture | None = None, probes: int | Probes = SITE_PROBES,
         max_slowdown: float | None = None, cost: CostModel | None = None) -> Plan:
    """A :class:`radvar.Plan` for ``model`` from statistics of one batch of ``data = (inputs, targets)``.

    ``budget``: bytes autograd may keep for backward (int), or a fraction in (0, 1]
    (float) of the exact model's saved bytes (the ledger on the model converted
    all-exact with compact activations); minimises the total RAD variance
    Σ_l E‖Ĝ_l − G_l‖² under it, and the plan's ledger bytes after
    :func:`radvar.convert` are checked to be within it.
    ``variance_budget``: the largest total RAD variance allowed; minimises memory.
    With ``relative=True`` it is a fraction of the data noise at this batch size,
    ``tr Σ / B`` over all of ``data`` (:func:`radvar.variance.minibatch`): 0.1 means
    "RAD may add at most 10% to the minibatch variance". Give exactly one. ``batch_size``: the step's batch, the first examples of
    ``data`` (default: all of it). ``families``: sketch templates (keep ignored);
    ``keeps``: the keep grid (exact is always a candidate); ``solver``:
    ``"exact"`` or ``"lagrangian"``. ``stats``: a :func:`radvar.variance.capture` of the same
    model on the same batch, to reuse (the capture is the expensive step). ``probes``: probes per
    candidate of each propagating site (activations, norms, attention; :mod:`radvar.variance.propagated`):
    an int (that many backward passes), or a :class:`radvar.variance.Probes` policy (default
    :data:`~radvar.tradeoff.candidates.SITE_PROBES`: up to 8, stopping once the standard error is within 10% of
    the estimate, scored against 8 shared random directions).
    Options are ranked by ``variance + UCB_Z · se`` (:mod:`radvar.tradeoff.candidates`): an estimated variance
    counts at an upper confidence value, a closed form at its value.
    ``max_slowdown`` (with a memory budget): the plan's predicted step time may be at most this
    multiple (> 1) of the plain step, measured on the batch: the plain step, plus what the all-exact
    conversion adds (measured: compact activations, pools, dropout), plus each sketched layer's extra
    seconds from ``cost`` (default: :class:`radvar.bench.cost.CostModel`, cached per machine); the two budgets
    are met together by :func:`radvar.tradeoff.timebudget.within_time` (the uniform-plan check is
    then skipped).
    """
    if (budget is None) == (variance_budget is None):
        raise ValueError(f"tune: give exactly one of budget (memory) or variance_budget; got budget={budget!r}, "
                         f"variance_budget={variance_budget!r}")
    if solver not in SOLVERS:
        raise ValueError(f"tune: solver must be one of {sorted(SOLVERS)}, got {solver!r}")
    if variance_budget is not None and (isinstance(variance_budget, bool)
                                        or not isinstance(variance_budget, (int, float))):
        raise TypeError(f"tune: variance_budget must be a number >= 0, got {variance_budget!r}")
    if not isinstance(relative, bool) or (relative and variance_budget is None):
        raise ValueError(f"tune: relative=True applies to variance_budget (a fraction of the data noise); "
                         f"got relative={relative!r}, variance_budget={variance_budget!r}")
    if max_slowdown is not None:
        max_slowdown = check_max_slowdown(max_slowdown, "tune")
        if budget is None:
            raise ValueError("tune: max_slowdown applies with a memory budget (budget=...), not with variance_budget")
    families, keeps = check_families(families), check_keeps(keeps)
    batch = take_batch(data, batch_size, "tune")
    cands = candidates(model, batch, loss_fn, families, keeps, stats=stats, probes=probes)
    keep_grid = sorted(set(cands.table.loc[cands.table["family"] != "exact", "keep"]))
    smallest = cands.fixed + int(cands.table.groupby("layer")["bytes"].min().sum())
    target = None if budget is None else resolve_budget(budget, cands.exact_total, smallest)
    data_variance = (float(minibatch(model, data, loss_fn, cands.batch_size).total["data_variance"].iloc[0])
                     if relative else None)
    absolute = variance_budget * data_variance if relative else variance_budget
    timing: dict[str, Any] | None = None
    if max_slowdown is not None:
        cost = cost or CostModel()
        with untouched(model, batch[0][0].device):  # BatchNorm statistics and torch's RNG as they were
            seconds = option_seconds(cands, model, batch[0][0], cost)
            plain, fixed = reference_seconds(model, batch[0][0], batch[1], loss_fn, cost)
        timing = {"max_slowdown": max_slowdown, "plain_step_seconds": plain, "fixed_extra_seconds": fixed}
        if (max_slowdown - 1.0) * plain <= fixed:
            raise ValueError(f"tune: the time budget of {max_slowdown:g}x the plain step cannot be met: the model "
                             f"converted with every layer exact (compact activations, pools, dropout) already "
                             f"steps at {1.0 + fixed / plain:.2f}x plain; raise max_slowdown")
    attempts: list[dict[str, int]] = []
    limit = target
    for attempt in range(RETRIES + 1):
        if timing is None:
            alloc, best_uni = _choose(cands, limit, absolute, solver, families, keep_grid)
        else:
            timed = within_time(cands, seconds, limit, (max_slowdown - 1.0) * plain - fixed, solver)
            alloc, best_uni = timed.allocation, None
            timing.update(predicted_extra_seconds=fixed + timed.seconds, time_multiplier=timed.multiplier,
                          predicted_slowdown=1.0 + (fixed + timed.seconds) / plain)
        measured = measured_bytes(model, alloc.plan(), batch, loss_fn)
        attempts.append({"solved_for": limit, "predicted_bytes": alloc.bytes, "measured_bytes": measured})
        if target is None or measured <= target or limit == smallest:
            break
        # the ledger is what counts: solve again so that this plan's prediction error would still fit;
        # the last try is the cheapest plan
        limit = smallest if attempt == RETRIES - 1 else max(target - (measured - alloc.bytes), smallest)
    if target is not None and measured > target:
        raise ValueError(f"tune: the memory budget {target:,} bytes cannot be met as measured by the ledger; the "
                         f"smallest feasible budget is {measured:,} bytes ({measured / cands.exact_total:.4f} of the "
                         f"exact {cands.exact_total:,}), the ledger bytes of the cheapest sketch of every layer")
    if timing is not None:
        alloc, measured = _meet_measured_time(model, batch, loss_fn, cands, seconds, limit, target, solver, cost,
                                              timing, alloc, measured, attempts)
    provenance = {
        "kind": "tuned",
        "radvar_version": __version__,
        "objective": "min variance under memory" if target is not None else "min memory under variance",
        "budget": {"given": budget, "bytes": target} if target is not None else None,
        "variance_budget": None if variance_budget is None else {"given": variance_budget, "relative": relative,
                                                                  "absolute": absolute},
        "data_variance": data_variance,
        "solver": solver, "chosen": alloc.label,
        "gap": None if alloc.solution is None else alloc.solution.gap,
        "predicted_bytes": alloc.bytes, "measured_bytes": measured,
        "fixed_bytes": cands.fixed, "exact_bytes": cands.exact_total, "shared_inputs": cands.shared,
        "joint_inputs": [{"bytes": b, "kept_by": list(k)} for b, k in cands.joint],
        "predicted_rad_variance": alloc.variance, "predicted_rad_variance_se": alloc.se,
        "predicted_rad_variance_ucb": alloc.ucb,
        "best_uniform": None if best_uni is None else {"plan": best_uni.label, "bytes": best_uni.bytes,
                                                        "rad_variance": best_uni.variance},
        "families": [family_name(f) for f in families], "keeps": list(keep_grid),
        "data": data_summary(batch, data), "loss": cands.capture.loss,
        "per_layer": [{"layer": r.layer, "family": r.family, "keep": float(r.keep), "bytes": int(r.bytes),
                       "rad_variance": float(r.variance), "method": r.method} for r in alloc.per_layer.itertuples()],
        "attempts": attempts,
        "step_time": timing,
    }
    return alloc.plan(provenance)
