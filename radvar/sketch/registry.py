"""The family registry: one module per sketch family, registered with :func:`family`.

A *family* is a frozen dataclass subclass of :class:`~radvar.sketch.Sketch`
defined in one module of ``radvar/sketch`` and decorated with ``@family``
(above ``@dataclasses.dataclass(frozen=True)``). Everything radvar does with a
family goes through that class; nothing else in radvar names a family.
The new module needs no import elsewhere: ``radvar/sketch/__init__.py`` imports
every module of the package and exports every registered family by class name.

What a family module defines. Required:

* ``kind`` (ClassVar str): its JSON/CLI name, unique;
* ``compress(x, gen)`` / ``restore(saved, meta, gen)``: the estimator on a
  (rows, features) view, with E[restore] = x;
* ``saved_bytes(shape, dtype)``: bytes kept (random sizes: an upper bound on the mean);
* ``variance(view)``: the closed form of E‖Ĝ − G‖²_F for one call, from the
  layer's :class:`~radvar.sketch.moments.ViewStats` of the view it acts on,
  returned with a method label (:data:`~radvar.sketch.base.CLOSED` or an
  estimate's description).

Optional:

* options as dataclass fields with defaults, validated in ``check()``. The CLI
  derives its ``--sketch KIND:KEEP[:OPTION...]`` options from them:
  ``NAME=VALUE`` for any field, a bare ``NAME`` (``_`` as ``-``) sets a bool
  field to True, and a bare value sets a field that lists it in
  ``field(metadata={"choices": (...)})``;
* ``left_matmul``/``right_matmul``: cheaper contractions than the dense default;
* ``variance_se(view)``: the standard error when the variance is estimated;
* ``reserve_bytes(shape, dtype)``: a per-draw bound for the tuner when the kept
  size is random (default: ``saved_bytes``);
* ``needs_entries = True`` with the classmethod ``entry_stats(x, weight)`` (required
  then, checked here): per-entry statistics built once per captured view from ``x``,
  the (rows, n) view in float64, and ``weight``, the per-entry w_rf = ‖C_rf‖² / x_rf²
  (broadcastable to x); read with ``view.entries(cls)``;
* ``mixes_features = True`` where ``variance`` reads the view's ``mix`` moments (a
  projection); the sketch-averaged propagated scores use the column and row totals
  alone for families with neither flag;
* ``sweep(keeps)``: the tuner's candidates of the family (default: one per keep);
* ``exact``: when the sketch is the identity (default: keep = 1).

Families are named as families, without a placeholder keep:
``Subsample.family(per_example=True)`` is a :class:`Family`.
"""

from __future__ import annotations

import dataclasses
import functools
import warnings
from typing import Any, Callable, Sequence, TypeVar

from .base import Sketch

S = TypeVar("S", bound=type[Sketch])


def family(cls: S) -> S:
    """Class decorator: register a Sketch dataclass as a family under ``cls.kind``.

    Also accepts the deprecated ``axis=`` keyword in its constructor (read as ``view=``).
    """
    if not (isinstance(cls, type) and issubclass(cls, Sketch) and dataclasses.is_dataclass(cls)):
        raise TypeError(f"@family expects a Sketch dataclass, got {cls!r}")
    if cls.needs_entries and not callable(getattr(cls, "entry_stats", None)):
        raise TypeError(f"@family: {cls.__name__} sets needs_entries = True but defines no entry_stats(x, weight)")
    if cls.kind in Sketch.registry and Sketch.registry[cls.kind] is not cls:
        raise ValueError(f"@family: kind {cls.kind!r} is already registered by {Sketch.registry[cls.kind].__name__}")
    cls.__init__ = _axis_alias(cls.__init__)
    Sketch.registry[cls.kind] = cls
    return cls


def _axis_alias(init: Callable[..., None]) -> Callable[..., None]:
    @functools.wraps(init)
    def __init__(self: Sketch, *args: Any, axis: Any = None, **kwargs: Any) -> None:
        if axis is not None:
            warnings.warn(f"{type(self).__name__}(axis=...) is deprecated; use view=...", DeprecationWarning,
                          stacklevel=2)
            if kwargs.get("view") not in (None, axis):
                raise ValueError(f"{type(self).__name__}: got view={kwargs['view']!r} and axis={axis!r}; give view only")
            kwargs["view"] = axis
        init(self, *args, **kwargs)
    return __init__


def families() -> dict[str, type[Sketch]]:
    """Every registered family by kind."""
    return dict(Sketch.registry)


def lookup(kind: str) -> type[Sketch]:
    """The family registered as ``kind``; names the allowed kinds otherwise."""
    if kind not in Sketch.registry:
        raise ValueError(f"unknown sketch kind {kind!r}; allowed: {sorted(Sketch.registry)}")
    return Sketch.registry[kind]


@dataclasses.dataclass(frozen=True)
class Family:
    """A family with its options fixed and keep left open (``template`` holds keep = 1)."""

    template: Sketch

    def at(self, keep: float) -> Sketch:
        """The family's sketch at ``keep``."""
        return self.template.at(keep)

    def sweep(self, keeps: Sequence[float]) -> list[Sketch]:
        """The tuner's candidates: the family's own rule (:meth:`Sketch.sweep`) on the keep grid."""
        return self.template.sweep(keeps)

    @property
    def view(self) -> str | None:
        return self.template.view

    @property
    def per_example(self) -> bool:
        return self.template.per_example

    @property
    def needs_entries(self) -> bool:
        return self.template.needs_entries

    def label(self) -> str:
        """E.g. ``Subsample(shared)``."""
        return f"{type(self.template).__name__}({', '.join(self.template.option_labels())})"

    def __repr__(self) -> str:
        options = {f.name: getattr(self.template, f.name) for f in dataclasses.fields(self.template)
                   if f.name != "keep" and getattr(self.template, f.name) != f.default}
        return f"{type(self.template).__name__}.family({', '.join(f'{k}={v!r}' for k, v in options.items())})"


def as_family(value: Any, owner: str = "families") -> Family:
    """A :class:`Family`, or a Sketch read as its family (its keep ignored); names a bad entry."""
    if isinstance(value, Family):
        return value
    if isinstance(value, Sketch):
        return Family(value.at(1.0))
    raise TypeError(f"{owner}: every entry must be a family such as radvar.sketch.Subsample.family() "
                    f"(or a Sketch, whose keep is ignored), got {value!r} ({type(value).__name__})")
