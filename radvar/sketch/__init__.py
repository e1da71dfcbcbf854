"""The RAD estimator catalogue: sketches of a (rows, features) activation."""

from .base import Sketch, check_keep, kept_count
from .bernoulli import Bernoulli
from .importance import Importance, inclusion_probabilities
from .projection import Projection
from .quantize import Quantize
from .subsample import Subsample

__all__ = [
    "Sketch", "Bernoulli", "Subsample", "Projection", "Importance", "Quantize",
    "check_keep", "kept_count", "inclusion_probabilities",
]
