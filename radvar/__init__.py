"""radvar: randomized automatic differentiation (RAD) for PyTorch, with its variance made measurable."""

__version__ = "0.1.0"

from . import layers, memory, ops, paths, pde, report, rng, rnn, sketch, variance, zoo  # noqa: E402
from . import train  # noqa: E402
from .convert import convert  # noqa: E402
from .plan import Plan  # noqa: E402
from .rng import exact, seed  # noqa: E402
from . import tradeoff  # noqa: E402
from .tradeoff import tune  # noqa: E402

__all__ = ["rng", "sketch", "ops", "layers", "memory", "paths", "pde", "rnn", "variance", "report", "zoo", "train", "tradeoff", "tune", "convert", "Plan", "seed", "exact", "__version__"]
