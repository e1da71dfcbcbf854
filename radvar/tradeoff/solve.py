"""Solvers for the per-layer memory/variance allocation (a multiple-choice knapsack).

Every layer ``l`` offers options ``j`` with memory ``m_lj`` (bytes) and RAD
variance ``v_lj``; a plan picks one option per layer. Per-layer RAD errors are
independent and local to their weight gradient, so variances add
(docs/design.md §1). Two problems:

* memory budget ``M``:   minimise Σ_l v_l  subject to  fixed + Σ_l m_l ≤ M;
* variance budget ``V``: minimise Σ_l m_l  subject to  Σ_l v_l ≤ V.

:func:`lagrangian` solves the LP relaxation on each layer's lower convex hull
(water-filling on the Lagrange multiplier λ: take hull segments in decreasing
order of -Δv/Δm; the optimum has at most one fractional segment — Sinha &
Zoltners, Oper. Res. 27(3), 1979) and returns the integer solution next to it,
its LP bound and the duality gap. :func:`exact` is exact: it merges per-layer
Pareto fronts with dominance and budget pruning (a dynamic program over
non-dominated partial sums). :func:`brute_force` enumerates every plan and is
for tests on small instances.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from typing import Any, Sequence

import numpy as np

Options = Sequence[tuple[Any, Any]]


@dataclasses.dataclass(frozen=True)
class Solution:
    """One option index per layer, its totals, and a lower bound on the objective.

    ``bytes`` includes ``fixed``. ``objective`` is ``"variance"`` (memory budget)
    or ``"bytes"`` (variance budget); ``bound`` is a lower bound on that
    objective over all plans within the budget, ``gap = value - bound``
    (0 for :func:`exact` and :func:`brute_force`). ``multiplier`` is λ, the
    marginal variance per byte at the LP optimum (Lagrangian only).
    """

    choice: tuple[int, ...]
    bytes: int
    variance: float
    bound: float
    objective: str
    method: str
    multiplier: float = math.nan

    @property
    def gap(self) -> float:
        value = self.variance if self.objective == "variance" else float(self.bytes)
        return max(0.0, value - self.bound)


def _check_options(options: Options) -> list[tuple[np.ndarray, np.ndarray]]:
    if isinstance(options, (str, bytes)) or not isinstance(options, Sequence) or len(options) == 0:
        raise ValueError(f"options must be a non-empty sequence of (bytes, variance) pairs, one per layer; "
                         f"got {type(options).__name__}")
    out = []
    for l, pair in enumerate(options):
        if not isinstance(pair, Sequence) or len(pair) != 2:
            raise ValueError(f"options[{l}] must be a (bytes, variance) pair of equal-length arrays, got {pair!r}")
        m = np.asarray(pair[0], dtype=np.float64).reshape(-1)
        v = np.asarray(pair[1], dtype=np.float64).reshape(-1)
        if m.size == 0 or m.shape != v.shape:
            raise ValueError(f"options[{l}]: bytes and variance must be non-empty and of equal length, "
                             f"got {m.size} and {v.size}")
        if not (np.isfinite(m).all() and (m >= 0).all() and np.all(m == np.round(m))):
            raise ValueError(f"options[{l}]: bytes must be finite non-negative integers, got {m.tolist()}")
        if not (np.isfinite(v).all() and (v >= 0).all()):
            raise ValueError(f"options[{l}]: variance must be finite and non-negative, got {v.tolist()}")
        out.append((m.astype(np.int64), v))
    return out


def _check_budgets(budget: Any, variance_budget: Any, fixed: int) -> None:
    if (budget is None) == (variance_budget is None):
        raise ValueError(f"give exactly one of budget (bytes) or variance_budget; got budget={budget!r}, "
                         f"variance_budget={variance_budget!r}")
    for name, value in (("budget", budget), ("variance_budget", variance_budget)):
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
            raise TypeError(f"{name} must be a number, got {value!r} ({type(value).__name__})")
        if not math.isfinite(value):
            raise ValueError(f"{name} must be finite, got {value!r}")
    if budget is not None and budget <= 0:
        raise ValueError(f"budget must be positive bytes, got {budget!r}")
    if variance_budget is not None and variance_budget < 0:
        raise ValueError(f"variance_budget must be >= 0 (0 means every layer exact), got {variance_budget!r}")
    if isinstance(fixed, bool) or not isinstance(fixed, (int, np.integer)) or fixed < 0:
        raise ValueError(f"fixed must be a non-negative integer number of bytes, got {fixed!r}")


def _check_feasible(opts: list[tuple[np.ndarray, np.ndarray]], budget: float | None,
                    variance_budget: float | None, fixed: int) -> None:
    if budget is not None:
        smallest = fixed + int(sum(m.min() for m, _ in opts))
        if budget < smallest:
            raise ValueError(f"budget {budget:,.0f} bytes is infeasible: the smallest feasible budget is "
                             f"{smallest:,} bytes ({fixed:,} fixed + {smallest - fixed:,} for the cheapest "
                             f"option of every layer)")
    else:
        smallest_v = float(sum(v.min() for _, v in opts))
        if variance_budget < smallest_v * (1 - 1e-12):
            raise ValueError(f"variance_budget {variance_budget:.6g} is infeasible: the smallest feasible "
                             f"variance budget is {smallest_v:.6g} (the lowest-variance option of every layer)")


def _nondominated(m: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Indices of the points with strictly lower variance than every cheaper point, by bytes."""
    order = np.lexsort((v, m))
    sv = v[order]
    prev_min = np.concatenate([[np.inf], np.minimum.accumulate(sv)[:-1]])
    return order[sv < prev_min]


def hull(m: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Indices of the lower convex hull of points (m, v) that trade bytes for variance.

    Sorted by bytes increasing with variance strictly decreasing; its slopes
    Δv/Δm increase (are less negative) from left to right.
    """
    h: list[int] = []
    for i in _nondominated(m, v):  # monotone chain, lower hull
        while len(h) >= 2:
            a, b = h[-2], h[-1]
            cross = (m[b] - m[a]) * (v[i] - v[a]) - (v[b] - v[a]) * (m[i] - m[a])
            if cross <= 0:
                h.pop()
            else:
                break
        h.append(i)
    return np.asarray(h, dtype=np.int64)


def lagrangian(options: Options, budget: float | None = None, variance_budget: float | None = None,
               fixed: int = 0) -> Solution:
    """Water-filling on convex hulls: the LP optimum's integer neighbour, its bound and gap.

    Segments of all hulls are taken in decreasing efficiency ``-Δv/Δm``
    (variance removed per byte). Memory budget: stop before the first segment
    that does not fit (LP bound = that segment taken fractionally), then fill
    the leftover bytes with later segments that still fit. Variance budget:
    take segments until the total variance is within budget (LP bound = the
    last one taken fractionally).
    """
    opts = _check_options(options)
    _check_budgets(budget, variance_budget, fixed)
    _check_feasible(opts, budget, variance_budget, fixed)
    hulls = [hull(m, v) for m, v in opts]
    start = np.array([h[0] for h in hulls])
    seg_layer, seg_dm, seg_dv = [], [], []
    for l, ((m, v), h) in enumerate(zip(opts, hulls)):
        seg_layer.append(np.full(len(h) - 1, l))
        seg_dm.append(np.diff(m[h]))
        seg_dv.append(np.diff(v[h]))
    layer = np.concatenate(seg_layer)
    dm = np.concatenate(seg_dm).astype(np.float64)
    dv = np.concatenate(seg_dv)
    eff = -dv / dm
    rank = np.concatenate([np.arange(len(h) - 1) for h in hulls])
    order = np.lexsort((rank, layer, -eff))  # within a layer, efficiency strictly decreases with rank
    pos = start.copy()
    total_m = fixed + int(sum(m[i] for (m, _), i in zip(opts, start)))
    total_v = float(sum(v[i] for (_, v), i in zip(opts, start)))
    multiplier = 0.0
    if budget is not None:
        room = budget - total_m
        cum = np.cumsum(dm[order])
        n_full = int(np.searchsorted(cum, room, side="right"))
        taken = order[:n_full]
        bound = total_v + float(dv[taken].sum())
        if n_full < len(order):
            crit = order[n_full]
            left = room - (cum[n_full - 1] if n_full else 0.0)
            bound += dv[crit] * left / dm[crit]
            multiplier = float(eff[crit])
        advanced = np.bincount(layer[taken], minlength=len(opts))
        room -= float(dm[taken].sum())
        blocked = np.zeros(len(opts), dtype=bool)
        for s in order[n_full:]:  # greedy fill of the leftover bytes, one hull step at a time
            l = layer[s]
            if blocked[l]:
                continue
            if dm[s] <= room:
                advanced[l] += 1
                room -= dm[s]
            else:
                blocked[l] = True
        pos = np.array([h[a] for h, a in zip(hulls, advanced)])
        objective = "variance"
    else:
        excess = total_v - variance_budget
        cum = -np.cumsum(dv[order])
        n_need = int(np.searchsorted(cum, excess * (1 - 1e-12), side="left")) + 1 if excess > 0 else 0
        n_need = min(n_need, len(order))
        taken = order[:n_need]
        bound = float(total_m + dm[taken].sum())
        if n_need:
            crit = order[n_need - 1]
            before = cum[n_need - 2] if n_need > 1 else 0.0
            frac = min(1.0, max(0.0, (excess - before) / -dv[crit]))
            bound -= dm[crit] * (1 - frac)
            multiplier = float(eff[crit])
        advanced = np.bincount(layer[taken], minlength=len(opts))
        pos = np.array([h[a] for h, a in zip(hulls, advanced)])
        objective = "bytes"
    choice = tuple(int(i) for i in pos)
    tm = fixed + int(sum(m[i] for (m, _), i in zip(opts, choice)))
    tv = float(sum(v[i] for (_, v), i in zip(opts, choice)))
    return Solution(choice, tm, tv, float(bound), objective, "lagrangian", multiplier)


def pareto(options: Options, budget: float | None = None, variance_budget: float | None = None,
           fixed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The exact Pareto front of (total bytes, total variance) over all plans.

    Returns ``bytes`` (increasing, ``fixed`` included), ``variance`` (strictly
    decreasing) and ``choice`` (front points × layers, option indices). Partial
    sums that a cheaper one dominates, or that cannot meet the budget whatever
    the remaining layers pick, are dropped as layers are merged.
    """
    opts = _check_options(options)
    if budget is not None or variance_budget is not None:
        _check_budgets(budget, variance_budget, fixed)
        _check_feasible(opts, budget, variance_budget, fixed)
    min_m = np.array([m.min() for m, _ in opts], dtype=np.int64)
    min_v = np.array([v.min() for _, v in opts])
    rest_m = np.concatenate([np.cumsum(min_m[::-1])[::-1][1:], [0]])
    rest_v = np.concatenate([np.cumsum(min_v[::-1])[::-1][1:], [0.0]])
    front_m = np.array([fixed], dtype=np.int64)
    front_v = np.array([0.0])
    choice = np.zeros((1, 0), dtype=np.int64)
    for l, (m, v) in enumerate(opts):
        idx = _nondominated(m, v)
        sm = (front_m[:, None] + m[None, idx]).reshape(-1)
        sv = (front_v[:, None] + v[None, idx]).reshape(-1)
        parent = np.repeat(np.arange(front_m.size), idx.size)
        pick = np.tile(idx, front_m.size)
        ok = np.ones(sm.size, dtype=bool)
        if budget is not None:
            ok &= sm + rest_m[l] <= budget
        if variance_budget is not None:
            ok &= sv + rest_v[l] <= variance_budget * (1 + 1e-12)
        sm, sv, parent, pick = sm[ok], sv[ok], parent[ok], pick[ok]
        keep = _nondominated(sm, sv)
        front_m, front_v = sm[keep], sv[keep]
        choice = np.concatenate([choice[parent[keep]], pick[keep][:, None]], axis=1)
    return front_m, front_v, choice


def exact(options: Options, budget: float | None = None, variance_budget: float | None = None,
          fixed: int = 0) -> Solution:
    """The optimal plan, from the budget-pruned exact Pareto front (:func:`pareto`)."""
    opts = _check_options(options)
    _check_budgets(budget, variance_budget, fixed)
    front_m, front_v, choice = pareto(opts, budget, variance_budget, fixed)
    if budget is not None:
        i = int(np.argmin(front_v))  # the last point of the front within budget
        return Solution(tuple(int(c) for c in choice[i]), int(front_m[i]), float(front_v[i]),
                        float(front_v[i]), "variance", "exact")
    i = 0  # every surviving point meets the variance budget; the first is the cheapest
    return Solution(tuple(int(c) for c in choice[i]), int(front_m[i]), float(front_v[i]),
                    float(front_m[i]), "bytes", "exact")


def brute_force(options: Options, budget: float | None = None, variance_budget: float | None = None,
                fixed: int = 0) -> Solution:
    """Enumerate every plan (Π_l |options_l| of them); for checking on small instances."""
    opts = _check_options(options)
    _check_budgets(budget, variance_budget, fixed)
    _check_feasible(opts, budget, variance_budget, fixed)
    best: tuple[float, float, tuple[int, ...]] | None = None
    for choice in itertools.product(*(range(m.size) for m, _ in opts)):
        tm = fixed + sum(int(opts[l][0][c]) for l, c in enumerate(choice))
        tv = sum(float(opts[l][1][c]) for l, c in enumerate(choice))
        if budget is not None:
            key = (tv, tm) if tm <= budget else None
        else:
            key = (tm, tv) if tv <= variance_budget * (1 + 1e-12) else None
        if key is not None and (best is None or key < best[:2]):
            best = (*key, choice)
    assert best is not None  # feasibility was checked above
    if budget is not None:
        tv, tm, choice = best
        return Solution(choice, int(tm), tv, tv, "variance", "brute force")
    tm, tv, choice = best
    return Solution(choice, int(tm), tv, float(tm), "bytes", "brute force")
