"""Memory/variance trade-offs: per-layer sketch and keep under a budget, batch-size co-optimisation, frontiers.

:func:`tune` returns a :class:`radvar.Plan`. Modules, bottom up: :mod:`.solve`
(knapsack solvers on abstract curves), :mod:`.candidates` (per-layer (bytes,
variance) curves from one exact pass and the ledger), :mod:`.allocate`
(solutions as allocations; uniform baselines), :mod:`.batch` (RAD variance
versus batch size; (batch, plan) co-optimisation), :mod:`.frontier` (Pareto
curves), :mod:`.tune`. Math and sources: docs/tradeoff.md.
"""

from . import allocate, batch, candidates, frontier, solve
from .allocate import Allocation
from .batch import BatchModel, CoOptimum, batch_model, co_optimize
from .candidates import DEFAULT_FAMILIES, DEFAULT_KEEPS, PAPER_FAMILIES, Candidates
from .frontier import Frontier
from .tune import tune

__all__ = ["solve", "candidates", "allocate", "batch", "frontier", "tune",
           "Allocation", "Candidates", "BatchModel", "CoOptimum", "Frontier",
           "batch_model", "co_optimize",
           "DEFAULT_FAMILIES", "DEFAULT_KEEPS", "PAPER_FAMILIES"]
