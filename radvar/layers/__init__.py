"""RAD twins of torch.nn modules, one file per layer kind, and their registry."""

from . import activation, conv, dropout, linear, pool  # noqa: F401  (registers the twins)
from .conv import RADConv1d, RADConv2d, RADConv3d
from .linear import RADLinear
from .registry import Twin, randomizable_types, register, to_twin, twin_for

__all__ = [
    "Twin", "register", "twin_for", "to_twin", "randomizable_types",
    "RADLinear", "RADConv1d", "RADConv2d", "RADConv3d",
]
