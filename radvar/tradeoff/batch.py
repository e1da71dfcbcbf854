"""Batch-size co-optimisation: the (batch size, plan) pair with the least total gradient variance in a memory budget.

Total variance of a RAD step at batch B (docs/design.md §4):
``tr Σ / B + Σ_l v_l(B)`` — data noise of the minibatch mean plus the RAD
variance of each layer, given the batch, averaged over batches.

How ``v_l`` depends on B (derived here; tested against direct measurement).
With a mean-reduced loss every closed form of :mod:`radvar.variance.forms` is
linear in quadratic statistics of the batch-mean contributions
``C̄ = (1/B) Σ_b c_b`` (c_b: example b's part). Over a batch S of size s drawn
from a population of examples, a quadratic statistic splits into the average
self term ``d̄`` and the average cross term ``c̄`` between two distinct examples:
``E q(S) = c̄ + (d̄ − c̄)/s``. Hence

* per-example sketches (independent draws per row; rows are examples, or
  example × channel): no cross terms, ``v(B') = v(B) · B / B'`` — exactly, for
  the average over the groups of any partition of the batch;
* shared sketches (one draw for all rows): ``v(B') = c + d / B'`` with ``c``, ``d``
  from the batch's value ``q_B = c + d/B`` and the mean ``q_s = c + d/s`` over
  ``groups`` disjoint sub-batches of size s: ``d = (q_s − q_B)/(1/s − 1/B)``,
  ``c = q_B − d/B`` (both unbiased; for Linear, ``c = ‖E g‖²``-type mean and
  ``d = tr Σ``-type spread, docs/design.md §4: ``(n/k − 1)(‖μ‖² + tr Σ/B)``).

Memory at B': the ledger measures fixed costs and the all-exact total at each
batch size; each layer's view (rows, features) has exactly one dimension that
scales with B (found by comparing the captures at B and s), so reserved bytes
are those of the scaled view.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd
import torch
from torch import nn

from .._data import split_batch
from ..sketch import Sketch, as_family
from ..variance.capture import Capture, capture, layer_variance
from . import solve
from .allocate import Allocation
from .candidates import (DEFAULT_FAMILIES, DEFAULT_KEEPS, Candidates, candidates, fixed_bytes,
                         reserved_bytes)


def _scaled(shape_b: tuple[int, int], shape_s: tuple[int, int], b: int, s: int, target: int) -> tuple[int, int]:
    """The view shape at batch ``target`` from the shapes at batches ``b`` and ``s``: the dimension that
    differs scales with the batch."""
    (r, n), (rs, ns) = shape_b, shape_s
    if n == ns and r * s == rs * b and r % b == 0:
        return r // b * target, n
    if r == rs and n * s == ns * b and n % b == 0:
        return r, n // b * target
    raise ValueError(f"cannot scale view {shape_b} (batch {b}) vs {shape_s} (batch {s}) to batch {target}: "
                     f"exactly one dimension must be proportional to the batch size")


@dataclasses.dataclass
class BatchModel:
    """Per (layer, option) of ``base.table``: ``v(B') = c + d / B'`` (columns ``c``, ``d``).

    ``base``: candidates at batch ``base.batch_size``; ``group_size``: s;
    ``group_values``: (groups, options) shared-sketch variances of the sub-batches
    (0 for per-example options); ``group_stats``: the last sub-batch's capture (view shapes at s).
    """

    table: pd.DataFrame
    base: Candidates
    group_stats: Capture
    group_size: int
    group_values: np.ndarray

    def variance_at(self, batch: int) -> np.ndarray:
        """Modelled E[v_l] at batch size ``batch``, one value per table row (clipped at 0)."""
        return np.maximum(0.0, self.table["c"].to_numpy() + self.table["d"].to_numpy() / batch)

    def variance_se_at(self, batch: int) -> np.ndarray:
        """Standard error of :meth:`variance_at` from the spread of the sub-batch values.

        ``v(B') = (1 − w) q_B + w q_s`` with ``w = (1/B' − 1/B)/(1/s − 1/B)`` and ``q_s`` a mean of
        ``groups`` values, so SE = |w| sd(q_g)/√groups (per-example options: 0, their scaling is exact).
        """
        b, s = self.base.batch_size, self.group_size
        w = (1 / batch - 1 / b) / (1 / s - 1 / b)
        groups = self.group_values.shape[0]
        return abs(w) * self.group_values.std(0, ddof=1) / np.sqrt(groups)

    def bytes_at(self, batch: int) -> np.ndarray:
        """Reserved bytes of every option at batch size ``batch`` (scaled views)."""
        b, s = self.base.batch_size, self.group_size
        out = []
        for r in self.table.itertuples():
            big, small = self.base.capture[r.layer], self.group_stats[r.layer]
            sketch = r.sketch if isinstance(r.sketch, Sketch) else None
            axis_shapes = zip(big.view_shapes(sketch) if sketch else _exact_shapes(big),
                              small.view_shapes(sketch) if sketch else _exact_shapes(small))
            out.append(sum(reserved_bytes(sketch, _scaled(sb, ss, b, s, batch), big.dtype)
                           for sb, ss in axis_shapes))
        return np.asarray(out, dtype=np.int64)

    def options_at(self, batch: int) -> list[tuple[np.ndarray, np.ndarray]]:
        """Per layer (bytes, variance) at ``batch`` for :mod:`radvar.tradeoff.solve`."""
        frame = pd.DataFrame({"layer": self.table["layer"], "m": self.bytes_at(batch), "v": self.variance_at(batch)})
        return [(g["m"].to_numpy(np.int64), g["v"].to_numpy()) for _, g in frame.groupby("layer", sort=False)]


def _exact_shapes(stats: Any) -> list[tuple[int, int]]:
    first = stats.axes[0]
    return [(c[first].rows, c[first].n) for c in stats.calls]


def batch_model(model: nn.Module, batch: tuple[Any, torch.Tensor], loss_fn: Callable[..., torch.Tensor],
                families: Sequence[Sketch] = DEFAULT_FAMILIES, keeps: Sequence[float] = DEFAULT_KEEPS,
                groups: int = 10, base: Candidates | None = None) -> BatchModel:
    """Fit ``v(B') = c + d/B'`` for every candidate from ``batch`` and ``groups`` disjoint sub-batches of it.

    Layers with closed forms only: propagating sites (probe estimates) stay exact here, their bytes fixed."""
    inputs, targets = split_batch(batch, "batch_model")
    b = int(inputs[0].shape[0])
    if isinstance(groups, bool) or not isinstance(groups, int) or not 2 <= groups <= b:
        raise ValueError(f"batch_model: groups must be an int in [2, {b}] (the batch size), got {groups!r}")
    if any(as_family(f).view == "rows" for f in families):
        raise ValueError("batch_model: families with view='rows' sample examples themselves; the batch-size "
                         "model covers views whose rows are examples (view None, 'features', 'positions', 'examples')")
    base = base or candidates(model, batch, loss_fn, families, keeps)
    s = b // groups
    table = base.table[base.table["layer"].isin(base.capture.layers)].reset_index(drop=True)  # sites stay exact
    per_example = table["sketch"].map(lambda sk: isinstance(sk, Sketch) and sk.per_example).to_numpy()
    values = np.zeros((groups, len(table)))
    group_stats = None
    for j in range(groups):
        part = slice(j * s, (j + 1) * s)
        sub = (tuple(t[part] for t in inputs), targets[part])
        group_stats = capture(model, sub, loss_fn, importance=False)
        for i, r in enumerate(table.itertuples()):
            if isinstance(r.sketch, Sketch) and not r.sketch.per_example:
                values[j, i] = layer_variance(group_stats[r.layer], r.sketch)[0]
    q_b = table["variance"].to_numpy()
    q_s = values.mean(0)
    d = np.where(per_example, q_b * b, (q_s - q_b) / (1 / s - 1 / b))
    c = np.where(per_example, 0.0, q_b - d / b)
    table["c"], table["d"] = c, d
    return BatchModel(table, base, group_stats, s, values)


@dataclasses.dataclass
class CoOptimum:
    """``table``: one row per batch size — fixed and exact ledger bytes, whether the exact batch fits,
    the tuned RAD plan's predicted bytes and variance, data variance tr Σ/B and the total.
    ``best``: the row with the least total; ``best_exact``: the largest exact batch that fits."""

    table: pd.DataFrame
    budget: int
    allocation: Allocation | None
    trace_sigma: float

    @property
    def best(self) -> pd.Series:
        return self.table.loc[self.table["total_variance"].idxmin()]

    @property
    def best_exact(self) -> pd.Series | None:
        fits = self.table[self.table["exact_fits"]]
        return None if fits.empty else fits.loc[fits["batch_size"].idxmax()]

    def summary(self) -> str:
        best, exact = self.best, self.best_exact
        lines = [self.table.to_string(index=False),
                 f"budget {self.budget:,} bytes; tr Σ = {self.trace_sigma:.6g}",
                 f"best: batch {int(best.batch_size)} with {best.plan} — total variance {best.total_variance:.6g}"]
        if exact is not None:
            lines.append(f"best exact batch that fits: {int(exact.batch_size)} — variance {exact.data_variance:.6g} "
                         f"({exact.data_variance / best.total_variance:.2f}x the best)")
        return "\n".join(lines)


def co_optimize(model: nn.Module, data: Any, loss_fn: Callable[..., torch.Tensor], budget: int,
                batch_sizes: Sequence[int], trace_sigma: float, *, fit_batch: int | None = None,
                families: Sequence[Sketch] = DEFAULT_FAMILIES, keeps: Sequence[float] = DEFAULT_KEEPS,
                groups: int = 10, solver: str = "exact") -> CoOptimum:
    """For every batch size in ``batch_sizes``: the tuned plan within ``budget`` bytes and its total variance
    ``trace_sigma / B + Σ_l v_l(B)``; an exact batch is the all-exact plan (RAD variance 0).

    ``trace_sigma``: tr Σ of per-example gradients (``radvar.variance.minibatch(...).total['trace_sigma']``).
    The variance model is fitted on the first ``fit_batch`` examples (default: max of batch_sizes);
    ledger bytes are measured at every batch size on the first B examples of ``data``.
    """
    inputs, targets = split_batch(data, "co_optimize")
    n = int(inputs[0].shape[0])
    sizes = sorted({int(b) for b in batch_sizes})
    if not sizes or sizes[0] < 1 or sizes[-1] > n:
        raise ValueError(f"co_optimize: batch_sizes must be ints in [1, {n}] (the examples in data), "
                         f"got {list(batch_sizes)!r}")
    if isinstance(budget, bool) or not isinstance(budget, int) or budget <= 0:
        raise ValueError(f"co_optimize: budget must be a positive int of bytes, got {budget!r}")
    fit = fit_batch or sizes[-1]
    batch = (tuple(t[:fit].clone() for t in inputs), targets[:fit].clone())
    bm = batch_model(model, batch, loss_fn, families, keeps, groups)
    rows, best_alloc, best_total = [], None, np.inf
    for b in sizes:
        sub = (tuple(t[:b].clone() for t in inputs), targets[:b].clone())
        fixed, exact_total = fixed_bytes(model, sub[0], loss_fn, sub[1])
        opts = bm.options_at(b)
        smallest = fixed + sum(int(m.min()) for m, _ in opts)
        row = {"batch_size": b, "fixed_bytes": fixed, "exact_bytes": exact_total,
               "exact_fits": exact_total <= budget, "data_variance": trace_sigma / b}
        if budget < smallest:
            rows.append({**row, "plan": "infeasible", "rad_bytes": np.nan, "rad_variance": np.nan,
                         "total_variance": np.inf})
            continue
        sol = getattr(solve, solver)(opts, budget=budget, fixed=fixed)
        picked = bm.table.groupby("layer", sort=False)
        chosen = pd.DataFrame([g.iloc[c] for (_, g), c in zip(picked, sol.choice)]).reset_index(drop=True)
        chosen["bytes"] = [int(m[c]) for (m, _), c in zip(opts, sol.choice)]
        chosen["variance"] = [float(v[c]) for (_, v), c in zip(opts, sol.choice)]
        alloc = Allocation(chosen, fixed, sol, f"tuned at batch {b}")
        total = trace_sigma / b + alloc.variance
        label = "exact" if (chosen["family"] == "exact").all() else ", ".join(
            f"{r.family} {r.keep:g}" for r in chosen.itertuples())
        rows.append({**row, "plan": label, "rad_bytes": alloc.bytes, "rad_variance": alloc.variance,
                     "total_variance": total})
        if total < best_total:
            best_alloc, best_total = alloc, total
    return CoOptimum(pd.DataFrame(rows), budget, best_alloc, trace_sigma)
