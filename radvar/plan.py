"""``Plan``: which sketch each randomizable module of a model uses.

A plan maps module qualified names (as in ``model.named_modules()``) to a
:class:`~radvar.sketch.Sketch`, or to ``None`` for exact gradients, plus free
provenance metadata (budget, predicted memory and variance, ...). It is saved
as versioned JSON::

    {"format": "radvar.plan", "version": 1,
     "entries": {"net.0": {"kind": "subsample", "keep": 0.1, ...}, "net.4": "exact"},
     "provenance": {...}}
"""

from __future__ import annotations

import difflib
import json
import os
from collections.abc import Iterator, Mapping
from typing import Any

from torch import nn

from ._version import __version__
from ._atomic import write_text
from .layers import randomizable_types, twin_for
from .layers.registry import type_name
from .sketch import Sketch

FORMAT = "radvar.plan"
VERSION = 1


class Plan(Mapping[str, "Sketch | None"]):
    """An immutable mapping: module name -> sketch (or None = exact)."""

    def __init__(self, entries: Mapping[str, Sketch | None], provenance: Mapping[str, Any] | None = None):
        for name, sketch in entries.items():
            if not isinstance(name, str):
                raise TypeError(f"Plan: module names must be str, got {name!r}")
            if sketch is not None and not isinstance(sketch, Sketch):
                raise TypeError(f"Plan: entry {name!r} must be a radvar.sketch.Sketch or None (exact), "
                                f"got {sketch!r} ({type(sketch).__name__})")
        self._entries = dict(entries)
        self.provenance = dict(provenance or {})

    # ---- construction -----------------------------------------------------
    @classmethod
    def uniform(cls, model: nn.Module, sketch: Sketch | None) -> "Plan":
        """The same sketch on every module of ``model`` that radvar can randomize."""
        if sketch is not None and not isinstance(sketch, Sketch):
            raise TypeError(f"Plan.uniform: sketch must be a radvar.sketch.Sketch or None, got {sketch!r}")
        names = [name for name, m in model.named_modules()
                 if (t := twin_for(m)) is not None and t.randomized and t.accepts(sketch)]
        plan = cls({name: sketch for name in names}, {"kind": "uniform"})
        plan.validate(model)
        return plan

    @classmethod
    def coerce(cls, model: nn.Module, plan_or_sketch: "Plan | Sketch | None", owner: str = "plan") -> "Plan":
        """A validated plan for ``model``: a Plan as it is, a Sketch as :meth:`uniform`, None as all exact.

        ``owner`` names the caller in errors (e.g. ``convert``)."""
        if isinstance(plan_or_sketch, Plan):
            plan_or_sketch.validate(model)
            return plan_or_sketch
        if plan_or_sketch is None or isinstance(plan_or_sketch, Sketch):
            return cls.uniform(model, plan_or_sketch)
        raise TypeError(f"{owner}: plan must be a radvar.Plan, a radvar.sketch.Sketch or None, "
                        f"got {type(plan_or_sketch).__name__}")

    # ---- mapping ----------------------------------------------------------
    def __getitem__(self, name: str) -> Sketch | None:
        return self._entries[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Plan) and self._entries == other._entries

    def __repr__(self) -> str:
        body = ", ".join(f"{k!r}: {v.label() if v else 'exact'}" for k, v in self._entries.items())
        return f"Plan({{{body}}})"

    # ---- checks -----------------------------------------------------------
    def validate(self, model: nn.Module) -> None:
        """Raise if an entry names a missing module, an unsupported type, or a view it lacks."""
        modules = dict(model.named_modules())
        for name, sketch in self._entries.items():
            if name not in modules:
                close = difflib.get_close_matches(name, [n for n in modules if n], n=3)
                names = [n for n, m in modules.items() if (t := twin_for(m)) is not None and t.randomized]
                hint = f"; did you mean {close}?" if close else f"; its randomizable modules are {names[:10]}"
                raise ValueError(f"Plan names module {name!r}, which the model does not have{hint}")
            twin = twin_for(modules[name])
            if twin is None or not twin.randomized:
                raise TypeError(f"Plan entry {name!r} is a {type_name(type(modules[name]))}, which radvar cannot "
                                f"randomize; supported types: {randomizable_types()}")
            if not twin.accepts(sketch):
                raise ValueError(f"Plan entry {name!r} ({type_name(type(modules[name]))}): sketch family "
                                 f"{sketch.kind!r} is not allowed; allowed: {list(twin.families)} or 'exact'")
            if sketch is not None and sketch.view not in (None, *twin.views):
                raise ValueError(f"Plan entry {name!r} ({type(modules[name]).__name__}): view {sketch.view!r} "
                                 f"is not allowed; allowed: {[None, *twin.views]}")

    # ---- serialisation ----------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "version": VERSION,
            "radvar_version": __version__,
            "entries": {k: (v.to_dict() if v is not None else "exact") for k, v in self._entries.items()},
            "provenance": self.provenance,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Plan":
        if not isinstance(d, Mapping) or d.get("format") != FORMAT:
            raise ValueError(f"not a radvar plan: expected format {FORMAT!r}, got {d.get('format') if isinstance(d, Mapping) else d!r}")
        if d.get("version") != VERSION:
            raise ValueError(f"unsupported plan version {d.get('version')!r}; this radvar reads version {VERSION}")
        entries = d.get("entries")
        if not isinstance(entries, Mapping):
            raise ValueError("plan 'entries' must be an object mapping module names to sketches")
        parsed = {k: (None if v == "exact" else Sketch.from_dict(v)) for k, v in entries.items()}
        return cls(parsed, d.get("provenance") or {})

    def save(self, path: str | os.PathLike) -> None:
        """Write JSON atomically (a temp file renamed into place: never half-written)."""
        write_text(path, json.dumps(self.to_dict(), indent=2, sort_keys=False) + "\n")

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Plan":
        try:
            with open(path) as f:
                d = json.load(f)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ValueError(f"{path}: not valid JSON ({e})") from None
        try:
            return cls.from_dict(d)
        except (ValueError, TypeError) as e:
            raise type(e)(f"{path}: {e}") from None
