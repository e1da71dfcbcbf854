"""Per-layer-kind statistics, registered by RAD twin type (one file per kind, as opacus' grad samplers).

A kind knows, for its module type, the 2-D views RAD may sketch
(``axes``, the first is the default for ``axis=None``), how to reduce one
call's input ``x`` and output gradient ``g`` to :class:`~radvar.variance.forms.ViewStats`
per view, and the per-example squared norms of its weight and bias gradients.
"""

from __future__ import annotations

from typing import Callable, Protocol

import torch
from torch import nn

from ...layers import twin_for
from ...sketch.moments import ViewStats


class Kind(Protocol):
    name: str
    axes: tuple[str, ...]

    def view_stats(self, module: nn.Module, x: torch.Tensor, g: torch.Tensor, gen: torch.Generator,
                   projection_pairs: int, entries: bool) -> dict[str, ViewStats]: ...

    def per_example_sq_norms(self, module: nn.Module, x: torch.Tensor,
                             g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]: ...


_KINDS: dict[type[nn.Module], Kind] = {}


def register(*twins: type[nn.Module]) -> Callable[[type], type]:
    """Class decorator: an instance of the kind serves modules whose twin class
    (see :func:`radvar.layers.twin_for`) is in ``twins``."""

    def deco(kind: type) -> type:
        for t in twins:
            _KINDS[t] = kind()
        return kind

    return deco


def kind_for(module: nn.Module) -> Kind | None:
    """The registered kind of ``module`` (plain or converted), or None."""
    return _KINDS.get(twin_for(module))  # type: ignore[arg-type]


from . import conv, linear  # noqa: E402,F401  (registers the kinds)

__all__ = ["Kind", "register", "kind_for"]
