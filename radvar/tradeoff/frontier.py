"""The memory–variance frontier: uniform plans per family, tuned plans, and small-batch exact training.

Every point is (bytes autograd keeps for backward, total gradient variance)
with total = data variance ``tr Σ / B`` + RAD variance (docs/design.md §4). RAD points
(uniform and tuned) are at the fit batch ``B``; their bytes are the predicted
ledger totals (``fixed + Σ`` reserved bytes, see :mod:`.candidates`). Small-batch
exact points are ledger totals of the all-exact model at each smaller batch
``b`` (measured), with variance ``tr Σ / b``. Tuned points are the exact Pareto
front of the multiple-choice knapsack (:func:`radvar.tradeoff.solve.pareto`).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd
import torch
from torch import nn

from .._data import split_batch
from ..sketch import Sketch
from . import solve
from .allocate import uniform
from .candidates import DEFAULT_FAMILIES, Candidates, family_name, fixed_bytes

COLUMNS = ["curve", "plan", "batch_size", "bytes", "rad_variance", "data_variance", "total_variance"]
TUNED = "tuned"
SMALL_BATCH = "exact, smaller batch"


@dataclasses.dataclass
class Frontier:
    """``table``: one row per point with columns curve, plan, batch_size, bytes, rad_variance,
    data_variance, total_variance; ``exact_bytes``: the all-exact model at the fit batch."""

    table: pd.DataFrame
    batch_size: int
    exact_bytes: int
    trace_sigma: float

    def at(self, budget: int) -> pd.DataFrame:
        """The best point of every curve within ``budget`` bytes (least total variance)."""
        fit = self.table[self.table["bytes"] <= budget]
        return fit.loc[fit.groupby("curve", sort=False)["total_variance"].idxmin()].reset_index(drop=True)

    def plot(self, ax: Any = None) -> Any:
        """Seaborn line plot of total variance against saved bytes (log-log), one line per curve."""
        import matplotlib.pyplot as plt
        import seaborn as sns
        from matplotlib.ticker import FuncFormatter, NullFormatter

        ax = ax or plt.subplots(figsize=(7, 4.5))[1]
        frame = self.table.assign(kib=self.table["bytes"] / 1024)
        sns.lineplot(data=frame, x="kib", y="total_variance", hue="curve", marker="o", markersize=3,
                     drawstyle="steps-post", estimator=None, sort=True, ax=ax)
        ax.set(xscale="log", yscale="log", xlabel="bytes kept for backward (KiB)",
               ylabel="total gradient variance  tr Σ/B + RAD")
        plain = FuncFormatter(lambda v, _: f"{v:g}")
        ax.xaxis.set_major_formatter(plain)
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.axvline(self.exact_bytes / 1024, color="grey", lw=0.8, ls=":")
        ax.legend(loc="lower left", fontsize=8)
        ax.set_title(f"memory–variance frontier (RAD at batch {self.batch_size})")
        return ax


def smallest_batch(model: nn.Module) -> int:
    """The smallest batch ``model`` runs on: 2 with a BatchNorm in training mode (it needs more than one
    value per channel), else 1."""
    return 2 if any(isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training for m in model.modules()) else 1


def frontier(model: nn.Module, data: Any, loss_fn: Callable[..., torch.Tensor], cands: Candidates,
             trace_sigma: float, small_batches: Sequence[int] = (), families: Sequence[Sketch] = DEFAULT_FAMILIES,
             max_tuned_points: int = 400) -> Frontier:
    """Frontier at ``cands``' batch size B with data noise ``trace_sigma`` (tr Σ of per-example gradients, e.g.
    ``radvar.variance.minibatch(...).total['trace_sigma']``).

    ``small_batches``: exact batch sizes b whose ledger bytes are measured on the first b examples of
    ``data``; a size below :func:`smallest_batch` of the model is measured at that size instead. ``max_tuned_points``: the tuned Pareto front is thinned to at most this many points
    (evenly in log bytes; its end points kept).
    """
    if not (isinstance(trace_sigma, (int, float)) and trace_sigma >= 0):
        raise ValueError(f"frontier: trace_sigma must be a number >= 0, got {trace_sigma!r}")
    inputs, targets = split_batch(data, "frontier")
    b = cands.batch_size
    noise = trace_sigma / b
    rows = []
    exact = uniform(cands, None)
    rows.append({"curve": "exact", "plan": "exact", "batch_size": b, "bytes": exact.bytes, "rad_variance": 0.0})
    for template in families:  # each family at its own candidates' keeps (Quantize: b/32 per bit width)
        for keep in sorted(set(cands.table.loc[cands.table["family"] == family_name(template), "keep"])):
            alloc = uniform(cands, template, keep)
            rows.append({"curve": f"uniform {family_name(template)}", "plan": alloc.label, "batch_size": b,
                         "bytes": alloc.bytes, "rad_variance": alloc.variance})
    fm, fv, _ = solve.pareto(cands.options(), fixed=cands.fixed)
    if fm.size > max_tuned_points:
        grid = np.geomspace(fm[0], fm[-1], max_tuned_points)
        idx = np.unique(np.clip(np.searchsorted(fm, grid, side="right") - 1, 0, fm.size - 1))
        fm, fv = fm[idx], fv[idx]
    rows += [{"curve": TUNED, "plan": TUNED, "batch_size": b, "bytes": int(m), "rad_variance": float(v)}
             for m, v in zip(fm, fv)]
    table = pd.DataFrame(rows)
    table["data_variance"] = noise
    small = []
    for sb in sorted({int(s) for s in small_batches}):
        if not 1 <= sb <= inputs[0].shape[0]:
            raise ValueError(f"frontier: small_batches must be in [1, {inputs[0].shape[0]}], got {sb}")
    floor = min(smallest_batch(model), b)
    for sb in sorted({max(int(s), floor) for s in small_batches}):
        _, total = fixed_bytes(model, tuple(t[:sb].clone() for t in inputs), loss_fn, targets[:sb].clone())
        small.append({"curve": SMALL_BATCH, "plan": f"exact batch {sb}", "batch_size": sb, "bytes": total,
                      "rad_variance": 0.0, "data_variance": trace_sigma / sb})
    table = pd.concat([table, pd.DataFrame(small)], ignore_index=True) if small else table
    table["total_variance"] = table["data_variance"] + table["rad_variance"]
    return Frontier(table[COLUMNS], b, cands.exact_total, float(trace_sigma))
