"""``Plan``: which sketch each randomizable module of a model uses.

A plan maps module qualified names (as in ``model.named_modules()``) to a
:class:`~radvar.sketch.Sketch`, or to ``None`` for exact gradients, plus free
provenance metadata (budget, predicted memory and variance, ...). Keys with a
``:`` name *functional sites* instead (:mod:`radvar.layers.functional`): one call
``"<module>:<function>.<index>"`` (e.g. ``"h.0.attn:matmul.1"``) or an fnmatch
pattern of them (``"*:mul.*"``; ``"*:*"`` is every site). As a mapping a plan
holds its module entries (what the per-layer analyses iterate); :attr:`Plan.sites`
holds the site entries. It is saved as versioned JSON, both kinds in ``entries``::

    {"format": "radvar.plan", "version": 1,
     "entries": {"net.0": {"kind": "subsample", "keep": 0.1, ...}, "net.4": "exact",
                 "*:*": {"kind": "quantize", "bits": 2, ...}},
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
from .layers.functional import ALL_SITES, FUNCTION_KINDS, functional_sites, is_pattern, is_site, split_site
from .layers.registry import type_name
from .sketch import Sketch

FORMAT = "radvar.plan"
VERSION = 1


class Plan(Mapping[str, "Sketch | None"]):
    """An immutable mapping: module name -> sketch (or None = exact); ``sites``: site key or pattern -> sketch."""

    def __init__(self, entries: Mapping[str, Sketch | None], provenance: Mapping[str, Any] | None = None):
        if isinstance(entries, Plan):  # a Plan iterates its module entries only: copy its sites too
            entries = {**entries._entries, **entries.sites}
        for name, sketch in entries.items():
            if not isinstance(name, str):
                raise TypeError(f"Plan: module names must be str, got {name!r}")
            if sketch is not None and not isinstance(sketch, Sketch):
                raise TypeError(f"Plan: entry {name!r} must be a radvar.sketch.Sketch or None (exact), "
                                f"got {sketch!r} ({type(sketch).__name__})")
        self._entries = {k: v for k, v in entries.items() if not is_site(k)}
        self.sites: dict[str, Sketch | None] = {k: v for k, v in entries.items() if is_site(k)}
        self.provenance = dict(provenance or {})

    # ---- construction -----------------------------------------------------
    @classmethod
    def uniform(cls, model: nn.Module, sketch: Sketch | None, example_inputs: Any = None) -> "Plan":
        """The same sketch on every module of ``model`` that radvar can randomize and takes it, and on
        every functional site whose kind takes it: the pattern ``"*:*"``, matched as the model runs, or
        with ``example_inputs`` (a tensor or a tuple of positional inputs) the sites one forward reaches,
        named one by one. None (all exact) names no site."""
        if sketch is not None and not isinstance(sketch, Sketch):
            raise TypeError(f"Plan.uniform: sketch must be a radvar.sketch.Sketch or None, got {sketch!r}")
        entries = {name: sketch for name, m in model.named_modules()
                   if (t := twin_for(m)) is not None and t.randomized and t.accepts(sketch)}
        if sketch is not None and example_inputs is not None:
            inputs = example_inputs if isinstance(example_inputs, tuple) else (example_inputs,)
            entries.update({site: sketch for site, name in functional_sites(model, *inputs).items()
                            if name in FUNCTION_KINDS and FUNCTION_KINDS[name].accepts(sketch)})
        elif sketch is not None and any(kind.accepts(sketch) for kind in FUNCTION_KINDS.values()):
            entries[ALL_SITES] = sketch
        plan = cls(entries, {"kind": "uniform"})
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
        return isinstance(other, Plan) and self._entries == other._entries and self.sites == other.sites

    def __repr__(self) -> str:
        body = ", ".join(f"{k!r}: {v.label() if v else 'exact'}" for k, v in {**self._entries, **self.sites}.items())
        return f"Plan({{{body}}})"

    # ---- checks -----------------------------------------------------------
    def validate(self, model: nn.Module) -> None:
        """Raise if an entry names a missing module, an unsupported type, or a view it lacks, or if a site
        entry names a missing module, one with its own twin, an unknown function, or a sketch it does not take.
        (A site no call reaches is found when the converted model runs: see :mod:`radvar.layers.functional`.)"""
        modules = dict(model.named_modules())
        for key, sketch in self.sites.items():
            _validate_site(key, sketch, modules)
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
            "entries": {k: (v.to_dict() if v is not None else "exact")
                        for k, v in {**self._entries, **self.sites}.items()},
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


def _validate_site(key: str, sketch: Sketch | None, modules: Mapping[str, nn.Module]) -> None:
    """Raise naming ``key`` if its module part is missing or has its own twin, its function is not a
    registered kind, its index is not an int, or the kind does not take ``sketch`` (literal parts only)."""
    module, name, index = split_site(key)
    if not is_pattern(module):
        if module not in modules:
            close = difflib.get_close_matches(module, [n for n in modules if n], n=3)
            raise ValueError(f"Plan site {key!r}: the model has no module {module!r}"
                             + (f"; did you mean {close}?" if close else "; '' is the model itself"))
        if twin_for(modules[module]) is not None:
            raise ValueError(f"Plan site {key!r}: {module!r} is a {type_name(type(modules[module]))}, which has its "
                             f"own twin (its calls are not sites); name the module {module!r} instead")
    if not is_pattern(name) and name not in FUNCTION_KINDS:
        raise ValueError(f"Plan site {key!r}: no functional kind {name!r}; allowed: {sorted(FUNCTION_KINDS)}")
    if not is_pattern(key) and not index.isdigit():
        raise ValueError(f"Plan site {key!r}: a site key is '<module>:<function>.<index>' with a 0-based int "
                         f"index, or an fnmatch pattern such as '*:mul.*', got index {index!r}")
    kind = FUNCTION_KINDS.get(name)
    if kind is not None and not kind.accepts(sketch):
        if sketch.view is not None:
            raise ValueError(f"Plan site {key!r}: view {sketch.view!r} is not allowed; functional sites take "
                             f"view=None (the op picks its view)")
        raise ValueError(f"Plan site {key!r} ({name}): sketch family {sketch.kind!r} is not allowed; "
                         f"allowed: {list(kind.families)} or 'exact'")
