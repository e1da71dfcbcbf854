"""The RAD estimator catalogue: sketches of a (rows, features) activation, one module per family."""

from .base import Sketch, check_keep, kept_count
from .bernoulli import Bernoulli
from .importance import Importance, inclusion_probabilities
from .moments import ViewStats
from .projection import Projection
from .quantize import Quantize
from .registry import Family, as_family, families, family, lookup
from .subsample import Subsample

__all__ = [
    "Sketch", "Bernoulli", "Subsample", "Projection", "Importance", "Quantize",
    "check_keep", "kept_count", "inclusion_probabilities",
    "Family", "family", "families", "lookup", "as_family", "ViewStats",
]
