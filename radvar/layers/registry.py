"""The layer-kind registry: from ``nn.Module`` types to their RAD twins and variance statistics.

A twin is a subclass of the original module type that computes the same
forward and keeps less for backward. Converting a module swaps its class in
place (parameters, buffers, hooks and state_dict keys stay as they are), so a
converted model is still an instance of every class it was before. Matching is
on the exact type: a user's subclass of ``nn.Linear`` with its own ``forward``
is never replaced.

Two kinds of twins:

* *compact* twins (ReLU, pooling, Dropout) are exact and keep compact state;
  ``@register(nn.ReLU)`` is all they need;
* *randomized* twins (Linear, Conv, ConvTranspose) take a sketch, or ``None``
  for exact. A randomized layer kind is one module in ``radvar/layers`` that
  defines, registered together by ``@register(Source, stats=Statistics)`` (as
  opacus registers one grad sampler per module type):

  - the twin: ``randomized = True``, ``views`` (the 2-D views a sketch may act
    on, declared here only; the first is the default for ``view=None``), and a
    ``forward`` that calls its op in :mod:`radvar.ops` (its own, or a shared one
    such as :func:`radvar.ops.rad_convolution`) when :meth:`Twin._randomizes`;
  - its variance statistics: a class with ``name`` and two methods,
    ``view_stats(module, x, g, gen, projection_pairs, entries)`` returning a
    :class:`~radvar.sketch.moments.ViewStats` per view for one call (input x,
    output gradient g), and ``per_example_sq_norms(module, x, g)`` returning
    ‖∂W_b‖² and ‖∂b_b‖² (or None without bias) per example b.

  Registering a randomized twin without statistics, or with a view name that
  :data:`radvar.sketch.base.VIEWS` does not know, is an error.

* *propagating* twins (``randomized = True, propagates = True``: activations,
  norms, attention) keep a sketch of a tensor whose error reaches every
  gradient upstream of them, not one weight gradient, so they have no
  closed-form weight statistics (``stats`` stays None and :func:`kind_for`
  returns None); their variance is estimated by pushing their local noise back
  through the exact backward (:mod:`radvar.variance`).

A randomized twin may restrict the sketch families it takes with ``families``
(a tuple of family kinds such as ``("quantize", "subsample")``; None takes
every family); :meth:`Twin.accepts` checks it, ``Plan.uniform`` skips modules
that do not take the sketch and ``Plan.validate`` rejects them.
"""

from __future__ import annotations

from typing import Any, Callable, ClassVar, Protocol, TypeVar

import torch
from torch import nn

from ..sketch import Sketch
from ..sketch.base import VIEWS
from ..sketch.moments import ViewStats
from ..ops._kept import sketching


class Statistics(Protocol):
    """What a randomized layer kind measures for the closed forms (see the module docstring)."""

    name: str
    views: tuple[str, ...]

    def view_stats(self, module: nn.Module, x: torch.Tensor, g: torch.Tensor, gen: torch.Generator,
                   projection_pairs: int, entries: bool) -> dict[str, ViewStats]: ...

    def per_example_sq_norms(self, module: nn.Module, x: torch.Tensor,
                             g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]: ...


class Twin(nn.Module):
    """Mixin for twins: ``randomized`` twins carry a ``sketch`` attribute and a ``kind`` (their statistics)."""

    randomized: ClassVar[bool] = False
    propagates: ClassVar[bool] = False
    families: ClassVar[tuple[str, ...] | None] = None
    views: ClassVar[tuple[str, ...]] = ()
    kind: ClassVar[Any] = None
    axes: ClassVar[tuple[str | None, ...]] = ()  # deprecated: (None, *views)

    def adopt(self, sketch: Sketch | None) -> None:
        """Set per-instance state after the class swap."""
        if self.randomized:
            self.sketch = sketch

    @classmethod
    def accepts(cls, sketch: Sketch | None) -> bool:
        """Whether this twin takes ``sketch`` (None, exact, is always taken)."""
        return sketch is None or cls.families is None or sketch.kind in cls.families

    def sketch_label(self) -> str:
        """``sketch=...`` for ``extra_repr``."""
        sketch = getattr(self, "sketch", None)
        return f"sketch={sketch.label() if sketch is not None else 'exact'}"

    def _randomizes(self) -> bool:
        """Draw a sketch only with grad enabled, outside ``radvar.exact()``, under a non-exact sketch, and
        for a weight-gradient twin only when its weight trains (a propagating twin's op itself skips
        inputs that need no gradient)."""
        return sketching(getattr(self, "sketch", None)) and (self.propagates or self.weight.requires_grad)


_REGISTRY: dict[type[nn.Module], type[Twin]] = {}

T = TypeVar("T", bound=type[Twin])


def register(*sources: type[nn.Module], stats: type | None = None) -> Callable[[T], T]:
    """Class decorator: ``twin`` replaces modules whose exact type is in ``sources``; a randomized twin
    also registers its variance ``stats`` class (required)."""

    def deco(twin: T) -> T:
        if twin.randomized and twin.propagates:
            if stats is not None:
                raise TypeError(f"register: propagating twin {twin.__name__} takes no closed-form stats")
            unknown = [v for v in twin.views if v not in VIEWS or v is None]
            if not twin.views or unknown:
                raise ValueError(f"register: {twin.__name__}.views must be a non-empty tuple of view names from "
                                 f"{[v for v in VIEWS if v]}, got {twin.views!r}")
            twin.axes = (None, *twin.views)
        elif twin.randomized:
            if stats is None:
                raise TypeError(f"register: randomized twin {twin.__name__} has no variance statistics; "
                                f"pass stats=... (see radvar.layers.registry)")
            unknown = [v for v in twin.views if v not in VIEWS or v is None]
            if not twin.views or unknown:
                raise ValueError(f"register: {twin.__name__}.views must be a non-empty tuple of view names from "
                                 f"{[v for v in VIEWS if v]}, got {twin.views!r}")
            kind = stats()
            kind.views = twin.views
            kind.axes = twin.views  # the name radvar.variance.capture reads
            twin.kind, twin.axes = kind, (None, *twin.views)
        for source in sources:
            _REGISTRY[source] = twin
        _REGISTRY[twin] = twin
        return twin

    return deco


_MATCHERS: list[Callable[[type[nn.Module]], type[Twin] | None]] = []


def register_matcher(matcher: Callable[[type[nn.Module]], type[Twin] | None]) -> Callable:
    """Decorator: ``matcher(cls)`` returns a twin class for a module type known by what it computes rather
    than by name (the many copies of one transformers class), or None; :func:`twin_for` registers it for
    ``cls`` on first sight. A matcher is called for every unregistered type: it answers fast and caches."""
    _MATCHERS.append(matcher)
    return matcher


def twin_for(module: nn.Module) -> type[Twin] | None:
    """The twin class for ``module``'s exact type (registered, or found by a matcher), or None."""
    cls = type(module)
    if cls not in _REGISTRY:
        twin = next((t for t in (m(cls) for m in _MATCHERS) if t is not None), None)
        if twin is not None:
            register(cls)(twin)
    return _REGISTRY.get(cls)


def kind_for(module: nn.Module) -> Statistics | None:
    """The variance statistics of ``module``'s randomized layer kind (plain or converted), or None."""
    twin = twin_for(module)
    return twin.kind if twin is not None and twin.randomized else None


def randomized_twins() -> list[type[Twin]]:
    """Every registered randomized twin class."""
    return sorted({t for t in _REGISTRY.values() if t.randomized}, key=lambda t: t.__name__)


def type_name(cls: type) -> str:
    """``torch.nn.Conv1d`` for torch.nn's classes, else the full path (``transformers.pytorch_utils.Conv1D``)."""
    if getattr(nn, cls.__name__, None) is cls:
        return f"torch.nn.{cls.__name__}"
    return f"{cls.__module__}.{cls.__qualname__}"


def propagating(module: nn.Module) -> bool:
    """Whether ``module`` (plain or converted) has a propagating twin (see the module docstring)."""
    twin = twin_for(module)
    return twin is not None and twin.randomized and twin.propagates


def randomizable_types() -> list[str]:
    """Full names (:func:`type_name`) of the module types that accept a sketch."""
    return sorted({type_name(src) for src, twin in _REGISTRY.items() if twin.randomized and src is not twin})


def to_twin(module: nn.Module, sketch: Sketch | None = None) -> nn.Module:
    """Swap ``module``'s class to its twin in place and return it."""
    twin = twin_for(module)
    if twin is None:
        raise TypeError(f"radvar has no twin for {type(module).__name__}")
    module.__class__ = twin
    module.adopt(sketch)
    return module
