"""``convert``: put RAD twins into a model according to a plan."""

from __future__ import annotations

import copy

from torch import nn

from .layers import to_twin, twin_for
from .plan import Plan
from .sketch import Sketch


def convert(model: nn.Module, plan_or_sketch: Plan | Sketch | None, inplace: bool = False,
            compact: bool = True) -> nn.Module:
    """Return ``model`` with planned modules randomized and, if ``compact``, exact
    activations/pools/dropout replaced by twins that keep compact state.

    A :class:`Sketch` means ``Plan.uniform(model, sketch)``; ``None`` means all
    exact. Randomizable modules not named in the plan become exact twins.
    Parameters and state_dict keys are unchanged. With ``inplace=False`` the
    model is deep-copied first.
    """
    plan = Plan.coerce(model, plan_or_sketch, "convert")
    if not inplace:
        model = copy.deepcopy(model)
    for name, module in list(model.named_modules()):
        twin = twin_for(module)
        if twin is None or not (twin.randomized or compact):
            continue
        to_twin(module, plan.get(name) if twin.randomized else None)
    return model
