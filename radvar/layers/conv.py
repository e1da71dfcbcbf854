"""RAD twins of ``nn.Conv1d``, ``nn.Conv2d`` and ``nn.Conv3d``."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..ops import conv as conv_op
from ..sketch import Sketch
from .registry import Twin, register


class _RADConv(Twin):
    randomized = True
    axes = conv_op.AXES
    sketch: Sketch | None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self._randomizes():
            return self._conv_forward(x, self.weight, self.bias)
        padding = self.padding
        if self.padding_mode != "zeros" or isinstance(padding, str):
            mode = "constant" if self.padding_mode == "zeros" else self.padding_mode
            x = F.pad(x, self._reversed_padding_repeated_twice, mode=mode)
            padding = (0,) * (x.dim() - 2)
        return conv_op.rad_conv(x, self.weight, self.bias, self.stride, padding, self.dilation, self.groups,
                                self.sketch)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, {self.sketch_label()}"


@register(nn.Conv1d)
class RADConv1d(_RADConv, nn.Conv1d):
    """``nn.Conv1d`` that keeps a sketch of its input."""


@register(nn.Conv2d)
class RADConv2d(_RADConv, nn.Conv2d):
    """``nn.Conv2d`` that keeps a sketch of its input."""


@register(nn.Conv3d)
class RADConv3d(_RADConv, nn.Conv3d):
    """``nn.Conv3d`` that keeps a sketch of its input."""
