"""``torch.compile`` for models with RAD layers.

A RAD op draws a fresh key per call from :func:`radvar.rng.next_key`, a
Python side effect. Traced by dynamo, the key is baked into the graph as a
constant, so every compiled step would reuse one draw (a biased gradient).
:func:`compile_model` therefore runs each randomized twin eagerly (one graph
break per RAD layer, via ``torch.compiler.disable``) and compiles the rest;
the gradients equal eager ones at the same seed.
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator

import torch
from torch import nn

from ..layers import twin_for


def _randomized(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if (t := twin_for(m)) is not None and t.randomized]


@contextlib.contextmanager
def compile_model(model: nn.Module, backend: str = "inductor", **options: Any) -> Iterator[nn.Module]:
    """Yield ``torch.compile(model, backend=backend, **options)`` with RAD layers run eagerly.

    The eager override is an instance attribute on each randomized twin, removed
    on exit, so the model itself is left as it was.
    """
    rad = _randomized(model)
    for m in rad:
        m.forward = torch.compiler.disable(m.forward)
    try:
        yield torch.compile(model, backend=backend, **options)
    finally:
        for m in rad:
            m.__dict__.pop("forward", None)
