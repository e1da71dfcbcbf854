"""``torch.compile`` for models with RAD layers.

A RAD op draws a fresh key per call from :func:`radvar.rng.next_key`, a
Python side effect; traced by dynamo, the key would be baked into the graph
and every compiled step would reuse one draw. The RAD ops therefore run
eagerly (``torch.compiler.disable`` on :func:`radvar.ops.rad_linear` and
:func:`radvar.ops.rad_conv`: one graph break per RAD call) and the rest is
compiled; gradients equal eager ones at the same seed.
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator

import torch
from torch import nn


@contextlib.contextmanager
def compile_model(model: nn.Module, backend: str = "inductor", **options: Any) -> Iterator[nn.Module]:
    """Yield ``torch.compile(model, backend=backend, **options)`` (RAD ops run eagerly inside)."""
    yield torch.compile(model, backend=backend, **options)
