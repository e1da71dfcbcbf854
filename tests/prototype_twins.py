"""Test-only propagating twins built on the prototype op :func:`radvar.layers.functional.rad_activation`.

``ProtoGELU``/``ProtoSiLU`` are plain modules (F.gelu / F.silu) that only these tests use; registering their
twins here touches no real module type, so the propagated-variance machinery can be tested on module sites
with the prototype op as well as on the layer kinds that radvar registers itself.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from radvar import rng
from radvar.layers.functional import rad_activation
from radvar.layers.registry import Twin, register


class ProtoGELU(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(x)


class ProtoSiLU(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.silu(x)


class _Proto(Twin):
    randomized = True
    propagates = True
    views = ("features",)
    families = ("quantize", "subsample")
    name = ""

    def _randomizes(self) -> bool:
        sketch = getattr(self, "sketch", None)
        return sketch is not None and not sketch.exact and not rng.is_exact() and torch.is_grad_enabled()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._randomizes() and x.requires_grad:
            return rad_activation(self.name, self.sketch)(x)
        return getattr(F, self.name)(x)


@register(ProtoGELU)
class RADProtoGELU(_Proto, ProtoGELU):
    name = "gelu"


@register(ProtoSiLU)
class RADProtoSiLU(_Proto, ProtoSiLU):
    name = "silu"
