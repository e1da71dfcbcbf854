"""Per-layer-kind variance statistics: where :mod:`radvar.variance.capture` finds them.

Each randomized layer kind registers its statistics with its twin, in its one
module of :mod:`radvar.layers` (see :mod:`radvar.layers.registry`);
:func:`kind_for` returns them for a plain or converted module.
"""

from __future__ import annotations

from ...layers.registry import Statistics, kind_for

Kind = Statistics  # the name before statistics were registered with their twins

__all__ = ["Kind", "Statistics", "kind_for"]
