"""Closed-form RAD variances: where they live.

A randomized layer contracts a sketch of a (rows, features) view of its input
with the output gradient. Its weight gradient is a sum of *contributions*
``C_rf`` of the entries of that view. A layer kind (its module in :mod:`radvar.layers`)
reduces one call to the family-independent numbers of
:class:`~radvar.sketch.moments.ViewStats` (col, tot, the mixing moment V, and
optionally the view itself with per-entry weights), and each sketch family
turns them into E‖Ĝ − G‖²_F in its own module (``Sketch.variance``):

* Bernoulli: ``(1/p − 1)·col``;
* Subsample: ``n(n−k)/(k(n−1))·(col − tot/n)`` without, ``(n·col − tot)/k`` with replacement;
* Projection: ``V/k`` (Rademacher), ``(V + 2·col)/k`` (Gaussian);
* Importance: ``Σ_rf (1/π_rf − 1)‖C_rf‖²``.

keep = 1 is exact in every twin (the layers skip the sketch), so it has 0 variance.
"""

from __future__ import annotations

from ..sketch.base import CLOSED, EXACT
from ..sketch.importance import ImportanceStats
from ..sketch.moments import ViewStats

__all__ = ["ViewStats", "ImportanceStats", "CLOSED", "EXACT"]
