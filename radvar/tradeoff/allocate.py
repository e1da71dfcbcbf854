"""From candidate curves to a per-layer allocation under a budget, and the uniform plans to beat."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import pandas as pd

from ..plan import Plan
from ..sketch import Sketch
from ..variance.propagated import sum_se
from . import solve
from .candidates import Candidates

SOLVERS = {"exact": solve.exact, "lagrangian": solve.lagrangian}
SHOWN = ["layer", "type", "family", "keep", "k", "bytes", "variance", "se", "ucb", "method"]


@dataclasses.dataclass
class Allocation:
    """One option per layer. ``per_layer``: the chosen rows of the candidate table;
    ``bytes`` = fixed + Σ reserved bytes (predicted ledger total); ``variance`` = Σ RAD
    variances; ``solution``: the solver's record (bound, gap, multiplier)."""

    per_layer: pd.DataFrame
    fixed: int
    solution: solve.Solution | None
    label: str

    @property
    def bytes(self) -> int:
        return self.fixed + int(self.per_layer["bytes"].sum())

    @property
    def variance(self) -> float:
        return float(self.per_layer["variance"].sum())

    @property
    def ucb(self) -> float:
        """Σ of the rows' ``ucb`` (variance + ``UCB_Z`` · se): what the solvers minimise and compare."""
        return float(self.per_layer["ucb"].sum())

    @property
    def se(self) -> float:
        """Standard error of :attr:`variance` (independent estimates add in quadrature, probe estimates scored
        against shared directions add their direction noise per direction first; closed forms 0)."""
        return sum_se(zip(self.per_layer["se"], self.per_layer["shared"]))

    def plan(self, provenance: dict[str, Any] | None = None) -> Plan:
        """The :class:`radvar.Plan` (exact layers map to None)."""
        entries = {r.layer: (r.sketch if isinstance(r.sketch, Sketch) else None)
                   for r in self.per_layer.itertuples()}
        return Plan(entries, provenance)

    def summary(self) -> str:
        table = self.per_layer[SHOWN].to_string(index=False)
        return (f"{self.label}\n{table}\npredicted saved bytes: {self.bytes:,} "
                f"({self.fixed:,} fixed); total RAD variance: {self.variance:.6g}")


def allocate(cands: Candidates, budget: int | None = None, variance_budget: float | None = None,
             solver: str = "exact") -> Allocation:
    """Solve the multiple-choice knapsack on ``cands`` (see :mod:`radvar.tradeoff.solve`)."""
    if solver not in SOLVERS:
        raise ValueError(f"solver must be one of {sorted(SOLVERS)}, got {solver!r}")
    sol = SOLVERS[solver](cands.options(), budget=budget, variance_budget=variance_budget, fixed=cands.fixed)
    return Allocation(cands.rows(sol.choice), cands.fixed, sol, f"tuned ({solver})")


def uniform(cands: Candidates, template: Sketch | None, keep: float = 1.0) -> Allocation:
    """The uniform plan ``template`` at ``keep`` on every layer (None: all exact)."""
    rows = cands.uniform(template, keep)
    label = "exact" if template is None else rows["family"].iloc[0] + f" keep {keep:g}"
    return Allocation(rows, cands.fixed, None, label)


def best_uniform(cands: Candidates, template: Sketch, budget: int, keeps: np.ndarray) -> Allocation | None:
    """The uniform plan of ``template``'s family over ``keeps`` within ``budget`` (predicted bytes) with the
    lowest :attr:`Allocation.ucb` (the variance where it is a closed form), or None if none fits."""
    best: Allocation | None = None
    for keep in sorted(float(k) for k in keeps):
        alloc = uniform(cands, template, keep)
        if alloc.bytes <= budget and (best is None or alloc.ucb < best.ucb):
            best = alloc
    return best

