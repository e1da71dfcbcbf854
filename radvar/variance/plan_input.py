"""The ``plan`` argument of the variance functions (a Plan, a Sketch (uniform) or None (all exact)), and what capture must keep for it."""

from __future__ import annotations

from typing import Any

from torch import nn

from ..plan import Plan


def as_plan(model: nn.Module, plan: Any, owner: str) -> Plan:
    """A validated :class:`~radvar.Plan` (:meth:`radvar.Plan.coerce`)."""
    return Plan.coerce(model, plan, owner)


def needs_entries(plan: Plan) -> bool:
    """Whether any entry of ``plan`` is of a family whose variance reads per-entry statistics
    (``needs_entries``; capture then keeps each view with its per-entry weights)."""
    return any(s is not None and s.needs_entries for s in plan.values())


needs_importance = needs_entries  # the name before families other than Importance could need entries
