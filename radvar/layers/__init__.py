"""RAD twins of torch.nn modules, one module per layer kind (twin, views, variance statistics), and their registry.

Every module of this package is imported here, so a new layer kind is one new
file: its ``@register`` runs on ``import radvar``.
"""

import importlib
import pkgutil

from .conv import RADConv1d, RADConv2d, RADConv3d
from .linear import RADLinear
from .registry import Statistics, Twin, kind_for, randomizable_types, randomized_twins, register, to_twin, twin_for

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

__all__ = [
    "Twin", "Statistics", "register", "twin_for", "kind_for", "to_twin", "randomizable_types", "randomized_twins",
    "RADLinear", "RADConv1d", "RADConv2d", "RADConv3d",
]
