"""radvar: randomized automatic differentiation (RAD) for PyTorch, with its variance made measurable."""

from . import rng, sketch
from .rng import exact, seed

__version__ = "0.1.0"

__all__ = ["rng", "sketch", "seed", "exact", "__version__"]
