"""The RAD estimator catalogue: sketches of a (rows, features) activation, one module per family.

Every module of this package is imported here and every registered family is
exported by its class name, so a new family is one new file (see
:mod:`radvar.sketch.registry`).
"""

import importlib
import pkgutil

from .base import Sketch, check_keep, itemsize, kept_count
from .bernoulli import Bernoulli
from .importance import Importance, inclusion_probabilities
from .moments import ViewStats
from .projection import Projection
from .registry import Family, as_family, families, family, lookup
from .subsample import Subsample

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")
globals().update({cls.__name__: cls for cls in families().values()})

__all__ = [
    "Sketch", *sorted(cls.__name__ for cls in families().values()),
    "check_keep", "kept_count", "itemsize", "inclusion_probabilities",
    "Family", "family", "families", "lookup", "as_family", "ViewStats",
]
