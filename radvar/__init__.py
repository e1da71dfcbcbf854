"""radvar: randomized automatic differentiation (RAD) for PyTorch, with its variance made measurable."""

import sys as _sys

from ._version import __version__
from . import layers, memory, ops, paths, report, rng, sketch, variance  # noqa: E402
from . import train  # noqa: E402
from .convert import CoverageWarning, convert  # noqa: E402
from .layers.functional import functional_sites  # noqa: E402
from .plan import Plan  # noqa: E402
from .rng import exact, seed  # noqa: E402
from . import tradeoff  # noqa: E402
from .tradeoff import tune  # noqa: E402
from . import apps  # noqa: E402
from .apps import pde, rnn, zoo  # noqa: E402

# Short public names of the applications: ``import radvar.zoo`` is ``radvar.apps.zoo``.
for _name in ("pde", "rnn", "zoo"):
    _sys.modules[f"{__name__}.{_name}"] = getattr(apps, _name)

__all__ = ["rng", "sketch", "ops", "layers", "memory", "paths", "pde", "rnn", "variance", "report", "zoo", "train",
           "tradeoff", "tune", "convert", "CoverageWarning", "functional_sites", "Plan", "seed", "exact", "apps", "__version__"]
