"""``coverage``: which of the bytes a model keeps for backward radvar can sketch, and why the rest stays.

Measured with the saved-tensor ledger (:func:`radvar.memory.saved_bytes`) on the
model and on ``convert(model, plan)``. The ledger records, for every storage kept
for backward, each module that packed it (its *keepers*: the innermost module
running, ``(loss)`` for the loss, ``(top)`` outside any module). A keeper is
*covered* when ``convert`` replaces it: a randomized twin with a sketch in the plan,
or a compact twin (ReLU, pooling, dropout). A storage is *sketchable* when all its
keepers are covered: only then does converting free it. Everything else stays
exact, for one of these reasons (the ``why`` column):

* ``no twin for <type>`` — a leaf module radvar has no twin for (LayerNorm, GELU, ...);
* ``functional call inside <module>`` — bytes packed by a call in a module's own
  ``forward`` that is no functional site (e.g. ``torch.cat`` of rotary embeddings);
* ``no RAD op for <function>`` — a functional site (a keeper named by its site key,
  ``"<module>:<function>.<index>"``) whose function radvar intercepts but has no op for;
* ``<function> takes <families>`` — a site whose matching plan pattern has a sketch
  its kind does not take;
* ``exact in the plan`` — a randomizable module the plan leaves exact;
* ``input kept by <module>`` — a covered module whose input another, uncovered
  module keeps anyway, so sketching it frees nothing;
* ``the loss`` / ``outside any module``.

Bytes are attributed to a storage's first keeper, as in the ledger, so the
per-module ``bytes_plain`` and ``bytes_converted`` sum to the two ledger totals.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import functools
from typing import Any, Callable, Sequence

import pandas as pd
import torch
from torch import nn

from .. import memory
from ..convert import _convert as convert  # no CoverageWarning: this report explains it
from ..layers import twin_for
from ..layers.functional import FUNCTION_KINDS, is_pattern, is_site, site_entry, split_site
from ..layers.registry import type_name
from ..plan import Plan
from ..sketch import Sketch
from .tables import format_bytes

COLUMNS = ["module", "type", "status", "bytes_plain", "bytes_converted", "bytes_sketchable", "why", "reason"]


@dataclasses.dataclass
class Coverage:
    """Per-module rows (``per_layer``: :data:`COLUMNS`; ``why`` names modules, ``reason`` types) and
    ``total``: bytes plain, converted, sketchable (freed by converting), exact (kept exact),
    ``fraction_sketchable`` and ``ratio`` (plain / converted)."""

    rows: list[dict[str, Any]]
    total: dict[str, Any]

    @functools.cached_property
    def per_layer(self) -> pd.DataFrame:
        return pd.DataFrame(self.rows, columns=COLUMNS)

    def exact_left(self) -> pd.DataFrame:
        """What stays exact, grouped by (type, why) with the modules, largest bytes first."""
        rows = [r for r in self.rows if r["why"]]
        if not rows:
            return pd.DataFrame(columns=["type", "reason", "bytes", "modules"])
        frame = pd.DataFrame(rows).assign(bytes=lambda f: f["bytes_plain"] - f["bytes_sketchable"])
        groups = frame.groupby(["type", "reason"], sort=False).agg(bytes=("bytes", "sum"), modules=("module", list))
        return groups.reset_index().sort_values("bytes", ascending=False, kind="stable").reset_index(drop=True)

    def summary_lines(self, top: int = 8) -> list[str]:
        """One line with the sketchable fraction, then the largest exact groups with their modules."""
        t = self.total
        lines = [f"radvar can sketch {t['fraction_sketchable']:.1%} of the saved bytes "
                 f"({format_bytes(t['bytes_sketchable'])} of {format_bytes(t['bytes_plain'])}); "
                 f"{format_bytes(t['bytes_exact'])} stay exact"]
        left = self.exact_left()
        if len(left):
            lines.append("left exact:")
        for g in left.head(top).itertuples():
            names = ", ".join(g.modules[:3]) + (f", ... ({len(g.modules)} modules)" if len(g.modules) > 3 else "")
            lines.append(f"  {format_bytes(g.bytes):>9}  {g.type}: {g.reason} [{names}]")
        if len(left) > top:
            lines.append(f"  ... and {len(left) - top} more groups")
        return lines

    def summary(self) -> str:
        return self.per_layer.to_string(index=False) + "\n\n" + "\n".join(self.summary_lines())

    def _repr_html_(self) -> str:
        body = "".join(f"<p>{line}</p>" for line in self.summary_lines())
        return self.per_layer.to_html(index=False) + body

    def to_dict(self) -> dict[str, Any]:
        return {"total": dict(self.total), "per_layer": [dict(r) for r in self.rows]}


def _status(name: str, module: nn.Module | None, plan: Plan) -> tuple[str, str, str]:
    """(status, why, reason) of one keeper (``name`` as in the plan): ``sketched``/``compact`` with no
    reason, or ``exact`` with one (``why`` may name the module, ``reason`` does not). A functional site
    is ``sketched`` when the plan gives it a sketch."""
    if is_site(name):
        return _site_status(name, plan)
    if module is None:
        why = "the loss" if name == memory.LOSS else "outside any module"
        return "exact", why, why
    twin = twin_for(module)
    if twin is not None and twin.randomized:
        return ("sketched", "", "") if plan.get(name) is not None else ("exact",) + ("exact in the plan",) * 2
    if twin is not None:
        return "compact", "", ""
    if next(module.children(), None) is not None:
        return "exact", f"functional call inside {name or 'the model'}", "functional call in its forward"
    why = f"no twin for {type_name(type(module))}"
    return "exact", why, why


def _site_status(site: str, plan: Plan) -> tuple[str, str, str]:
    """(status, why, reason) of the functional site ``site`` under ``plan``'s site entries."""
    function = split_site(site)[1]
    kind = FUNCTION_KINDS.get(function)
    if kind is None:
        return "exact", f"no RAD op for {function}", f"no RAD op for {function}"
    if site_entry(plan.sites, site) is not None:
        return "sketched", "", ""
    refused = [s for k, s in plan.sites.items() if is_pattern(k) and fnmatch.fnmatchcase(site, k)
               and s is not None and not kind.accepts(s)]
    if refused:
        why = f"{function} takes {list(kind.families or [])} with view=None"
        return "exact", why, why
    return ("exact",) + ("exact in the plan",) * 2


def coverage(model: nn.Module, example_inputs: torch.Tensor | Sequence[torch.Tensor],
             loss: Callable[..., torch.Tensor] | None = None, target: torch.Tensor | None = None,
             plan_or_sketch: Plan | Sketch | None = None) -> Coverage:
    """Saved bytes of ``loss(model(*example_inputs), target)`` plain and after
    ``convert(model, plan_or_sketch)`` (a sketch: ``Plan.uniform``), per module, with what
    stays exact and why. Functional sites are keepers of their own, named by site key."""
    if not (plan_or_sketch is None or isinstance(plan_or_sketch, (Plan, Sketch))):
        raise TypeError(f"coverage: plan_or_sketch must be a radvar.Plan, a radvar.sketch.Sketch or None, "
                        f"got {type(plan_or_sketch).__name__}")
    plan = plan_or_sketch if isinstance(plan_or_sketch, Plan) else Plan.uniform(model, plan_or_sketch)
    plain = memory.saved_bytes(model, example_inputs, loss, target, sites=True)
    converted = memory.saved_bytes(convert(model, plan), example_inputs, loss, target, sites=True)
    modules = {(name or memory.TOP): (name, m) for name, m in model.named_modules()}
    status = {k: _status(*modules.get(k, (k, None)), plan)
              for k in {k for _, keepers in plain.storages for k in keepers} | set(converted.by_module)}

    sketchable: dict[str, int] = {}
    kept_by: dict[str, list[str]] = {}
    for nbytes, keepers in plain.storages:
        uncovered = [k for k in keepers if status[k][0] == "exact"]
        if not uncovered:
            sketchable[keepers[0]] = sketchable.get(keepers[0], 0) + nbytes
        for k in keepers:
            if k not in uncovered:
                kept_by.setdefault(k, []).extend(u for u in uncovered if u not in kept_by.get(k, []))

    rows = []
    for name in dict.fromkeys([*plain.by_module, *converted.by_module, *kept_by]):
        module = modules.get(name, (name, None))[1]
        kind = type_name(type(module)) if module is not None else split_site(name)[1] if is_site(name) else name
        state, why, reason = status[name]
        if kept_by.get(name):
            why = "input kept by " + ", ".join(kept_by[name])
            reason = "input kept by " + ", ".join(sorted({status[k][2] if modules.get(k) is None else
                                                          type_name(type(modules[k][1])) for k in kept_by[name]}))
        rows.append({"module": name, "type": kind, "status": state, "bytes_plain": plain.by_module.get(name, 0),
                     "bytes_converted": converted.by_module.get(name, 0), "bytes_sketchable": sketchable.get(name, 0),
                     "why": why, "reason": reason})
    total_sketchable = sum(sketchable.values())
    total = {"bytes_plain": plain.total, "bytes_converted": converted.total, "bytes_sketchable": total_sketchable,
             "bytes_exact": plain.total - total_sketchable,
             "fraction_sketchable": total_sketchable / plain.total if plain.total else 0.0,
             "ratio": plain.total / converted.total if converted.total else float("inf")}
    return Coverage(rows=rows, total=total)
