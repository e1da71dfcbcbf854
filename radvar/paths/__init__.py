"""Linearized computational graphs (LCGs), exact Jacobians by path sums, and randomized estimators.

Bauer (1974) for path sums; Oktay et al., "Randomized Automatic
Differentiation", ICLR 2021, for path sampling and random matrix injection.
See docs/paths.md.
"""

from .estimators import (
    EdgeBernoulli,
    Estimator,
    Injection,
    PathSampling,
    enumerated_moments,
    monte_carlo,
)
from .graph import LCG, from_jacobians
from .jacobian import Paths, accumulate, eliminate, jacobian, path_count, path_sum, paths
from .trace import trace

__all__ = [
    "LCG", "from_jacobians", "trace",
    "accumulate", "jacobian", "eliminate", "path_sum", "path_count", "paths", "Paths",
    "Estimator", "PathSampling", "EdgeBernoulli", "Injection",
    "enumerated_moments", "monte_carlo",
]
