"""Command-line specs -> objects: models, data, losses, budgets, sketches, devices.

Every bad spec raises :class:`SpecError` (a ``ValueError``) whose message is one
line naming the spec, the value and what is allowed; ``cli.main`` prints it and
exits with status 2. One module per kind of spec: :mod:`.models`, :mod:`.data`,
:mod:`.losses`, :mod:`.values` (budgets, sketches, devices).
"""

from .data import SYNTHETIC_N, Batch, load_data
from .errors import SpecError, load_object
from .losses import LOSSES, LossFn, check_fit, load_loss
from .models import ZOO_DEFAULT_DATA, default_data, load_model, load_weights, parse_model_args
from .values import Budget, parse_budget, parse_max_slowdown, parse_sketch, resolve_device

__all__ = ["parse_max_slowdown", "SpecError", "load_object", "Batch", "SYNTHETIC_N", "load_data", "LOSSES", "LossFn", "load_loss",
           "check_fit", "ZOO_DEFAULT_DATA", "default_data", "load_model", "load_weights", "parse_model_args",
           "Budget", "parse_budget", "parse_sketch", "resolve_device"]
