"""Variance analysis of RAD plans: closed forms, Monte Carlo, minibatch noise, and tests.

``capture`` (one exact pass, statistics per layer) -> ``layer_variance`` (a
closed form per sketch, cheap enough for a keep grid) -> ``analytic`` /
``empirical`` / ``minibatch`` -> :class:`VarianceReport`. Propagating sites (activations,
norms, attention) have no closed form: ``propagated`` estimates the total gradient variance
each adds with probes, pushed back by backward passes or scored against shared random directions. The math, with
sources, is in docs/variance.md and docs/design.md §3.
"""

from . import statistics
from .analytic import analytic
from .empirical import empirical
from .minibatch import minibatch
from .capture import Capture, LayerStats, capture, layer_variance, layer_variance_se
from .propagated import Probes, propagated
from .report import VarianceReport

__all__ = ["capture", "Capture", "LayerStats", "layer_variance", "layer_variance_se", "analytic",
           "empirical", "minibatch", "propagated", "Probes", "VarianceReport", "statistics"]
