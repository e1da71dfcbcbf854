"""``convert``: put RAD twins into a model according to a plan."""

from __future__ import annotations

import copy
import warnings

from torch import nn

from .layers import to_twin, twin_for
from .layers.functional import is_pattern, route
from .layers.registry import type_name
from .layers.sequential import fuse
from .plan import Plan
from .sketch import Sketch


class CoverageWarning(UserWarning):
    """``convert`` was asked to randomize but leaves most of the model's weight layers exact."""


def _check_coverage(model: nn.Module, plan: Plan) -> None:
    """Warn if the plan sketches no module and no functional site named one by one, or if under half of the leaf modules
    holding a weight (a parameter of 2+ dimensions) have a randomized twin; name the types left exact."""
    sketched = sum(s is not None for s in plan.values())
    sites = sum(s is not None for k, s in plan.sites.items() if not is_pattern(k))  # patterns match as it runs
    weighted = [m for m in model.modules()
                if next(m.children(), None) is None and any(p.dim() >= 2 for p in m.parameters(recurse=False))]
    exact = [m for m in weighted if not getattr(twin_for(m), "randomized", False)]
    if not (sketched or sites) or 2 * len(exact) > len(weighted):
        types = sorted({type_name(type(m)) for m in exact})
        patterns = [k for k in plan.sites if is_pattern(k)]
        named = (f" and {sites} functional site(s)" if sites else "") + (
            f" (site patterns {patterns} match as the model runs)" if patterns else "")
        warnings.warn(f"convert: the plan sketches {sketched} module(s){named}; {len(exact)} of the model's "
                      f"{len(weighted)} weight layers stay exact, of types {types} (radvar has no randomized "
                      "twin for them; radvar.report.coverage shows what stays exact and why)",
                      CoverageWarning, stacklevel=4)


def convert(model: nn.Module, plan_or_sketch: Plan | Sketch | None, inplace: bool = False,
            compact: bool = True) -> nn.Module:
    """Return ``model`` with planned modules randomized and, if ``compact``, exact
    activations/pools/dropout replaced by twins that keep compact state.

    A :class:`Sketch` means ``Plan.uniform(model, sketch)`` (its modules and every
    functional site whose kind takes the sketch); ``None`` means all exact.
    Randomizable modules not named in the plan become exact twins. When the plan
    names functional sites, ``model`` routes them on every forward
    (:func:`radvar.layers.functional.route`); otherwise any routing it had is
    removed. A compact conversion also runs each ``nn.Sequential``'s compact ReLU and the RAD
    Linear after it as one op (:mod:`radvar.layers.sequential`; same bytes and gradients).
    Parameters and state_dict keys are unchanged. With ``inplace=False``
    the model is deep-copied first. Emits a :class:`CoverageWarning` when asked to
    randomize but the plan sketches nothing or most weight layers have no twin.
    """
    return _convert(model, plan_or_sketch, inplace, compact, warn=True)


def _convert(model: nn.Module, plan_or_sketch: Plan | Sketch | None, inplace: bool = False,
             compact: bool = True, warn: bool = False) -> nn.Module:
    """:func:`convert`, warning only if ``warn``: radvar's own tools call this, and report coverage themselves."""
    plan = Plan.coerce(model, plan_or_sketch, "convert")
    sketches = [*plan.values(), *plan.sites.values()]
    if warn and (isinstance(plan_or_sketch, Sketch) or any(s is not None for s in sketches)):
        _check_coverage(model, plan)
    if not inplace:
        model = copy.deepcopy(model)
    for name, module in list(model.named_modules()):
        twin = twin_for(module)
        if twin is None or not (twin.randomized or compact):
            continue
        to_twin(module, plan.get(name) if twin.randomized else None)
    if compact:
        fuse(model)
    route(model, plan.sites)
    return model
