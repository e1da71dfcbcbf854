"""Coerce the ``plan`` argument of the variance functions: a Plan, a Sketch (uniform) or None (all exact)."""

from __future__ import annotations

from typing import Any

from torch import nn

from ..plan import Plan
from ..sketch import Importance, Sketch


def as_plan(model: nn.Module, plan: Any, owner: str) -> Plan:
    """A validated :class:`~radvar.Plan` (``Plan.validate`` names a missing layer)."""
    if isinstance(plan, Plan):
        plan.validate(model)
        return plan
    if plan is None or isinstance(plan, Sketch):
        return Plan.uniform(model, plan)
    raise TypeError(f"{owner}: plan must be a radvar.Plan, a radvar.sketch.Sketch or None, got {type(plan).__name__}")


def needs_importance(plan: Plan) -> bool:
    """Whether any entry of ``plan`` is an Importance sketch (capture then keeps sorted |x|)."""
    return any(isinstance(s, Importance) for s in plan.values())
