"""The registry from ``nn.Module`` types to their RAD twins.

A twin is a subclass of the original module type that computes the same
forward and keeps less for backward. Converting a module swaps its class in
place (parameters, buffers, hooks and state_dict keys stay as they are), so a
converted model is still an instance of every class it was before.

Two kinds of twins:

* *randomized* twins (Linear, Conv) take a sketch, or ``None`` for exact;
* *compact* twins (ReLU, pooling, Dropout) are exact and keep compact state.

Adding a layer kind is one small file that defines the twin class and
decorates it with :func:`register`. Matching is on the exact type: a user's
subclass of ``nn.Linear`` with its own ``forward`` is never replaced.
"""

from __future__ import annotations

from typing import Callable, TypeVar

import torch
from torch import nn

from .. import rng
from ..sketch import Sketch


class Twin(nn.Module):
    """Mixin for twins: ``randomized`` twins carry a ``sketch`` attribute."""

    randomized: bool = False
    axes: tuple[str | None, ...] = ()

    def adopt(self, sketch: Sketch | None) -> None:
        """Set per-instance state after the class swap."""
        if self.randomized:
            self.sketch = sketch

    def sketch_label(self) -> str:
        """``sketch=...`` for ``extra_repr``."""
        sketch = getattr(self, "sketch", None)
        return f"sketch={sketch.label() if sketch is not None else 'exact'}"

    def _randomizes(self) -> bool:
        """Draw a sketch only when a weight gradient will be computed and is not exact."""
        sketch = getattr(self, "sketch", None)
        return (sketch is not None and not sketch.exact and not rng.is_exact() and torch.is_grad_enabled()
                and self.weight.requires_grad)


_REGISTRY: dict[type[nn.Module], type[Twin]] = {}

T = TypeVar("T", bound=type[Twin])


def register(*sources: type[nn.Module]) -> Callable[[T], T]:
    """Class decorator: ``twin`` replaces modules whose exact type is in ``sources``."""

    def deco(twin: T) -> T:
        for source in sources:
            _REGISTRY[source] = twin
        _REGISTRY[twin] = twin
        return twin

    return deco


def twin_for(module: nn.Module) -> type[Twin] | None:
    """The twin class for ``module``'s exact type, or None."""
    return _REGISTRY.get(type(module))


def randomizable_types() -> list[str]:
    """Names of the module types that accept a sketch."""
    return sorted({src.__name__ for src, twin in _REGISTRY.items() if twin.randomized and src is not twin})


def to_twin(module: nn.Module, sketch: Sketch | None = None) -> nn.Module:
    """Swap ``module``'s class to its twin in place and return it."""
    twin = twin_for(module)
    if twin is None:
        raise TypeError(f"radvar has no twin for {type(module).__name__}")
    module.__class__ = twin
    module.adopt(sketch)
    return module
