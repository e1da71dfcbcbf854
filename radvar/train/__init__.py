"""Training with RAD: :func:`fit` (AMP, torch.compile, DDP, checkpoints) and :func:`max_batch_size`."""

from .amp import Amp, resolve_amp
from .capacity import Capacity, max_batch_size
from .compiled import compile_model
from .fit import evaluate, fit
from .history import History, save_figure

__all__ = ["fit", "evaluate", "History", "save_figure", "max_batch_size", "Capacity", "compile_model", "Amp", "resolve_amp"]
