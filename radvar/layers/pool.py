"""Compact twins of pooling layers: average pools keep nothing, max pools a window offset."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.modules.utils import _pair

from ..ops import pool
from .registry import Twin, register


@register(nn.AvgPool1d)
class CompactAvgPool1d(nn.AvgPool1d, Twin):
    """``nn.AvgPool1d`` that saves nothing for backward."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return pool.avg_pool1d(x, self.kernel_size[0], self.stride[0], self.padding[0], self.ceil_mode,
                               self.count_include_pad)


@register(nn.AvgPool2d)
class CompactAvgPool2d(nn.AvgPool2d, Twin):
    """``nn.AvgPool2d`` that saves nothing for backward."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        stride = self.stride if self.stride is not None else self.kernel_size
        return pool.avg_pool2d(x, _pair(self.kernel_size), _pair(stride), _pair(self.padding), self.ceil_mode,
                               self.count_include_pad, self.divisor_override)


@register(nn.AdaptiveAvgPool2d)
class CompactAdaptiveAvgPool2d(nn.AdaptiveAvgPool2d, Twin):
    """``nn.AdaptiveAvgPool2d`` that saves nothing for backward."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return pool.adaptive_avg_pool2d(x, self.output_size)


@register(nn.MaxPool2d)
class CompactMaxPool2d(nn.MaxPool2d, Twin):
    """``nn.MaxPool2d`` keeping one uint8 window offset per output."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.return_indices:
            return super().forward(x)
        stride = self.stride if self.stride is not None else self.kernel_size
        return pool.max_pool2d(x, _pair(self.kernel_size), _pair(stride), _pair(self.padding),
                               _pair(self.dilation), self.ceil_mode)
