"""Training with RAD: :func:`fit` (AMP, torch.compile, DDP, checkpoints), :func:`max_batch_size`,
and the noise monitor / adaptive re-tuner used as fit callbacks."""

from .amp import Amp, resolve_amp
from .capacity import Capacity, max_batch_size
from .compiled import compile_model
from .fit import evaluate, fit
from .history import History, save_figure
from .monitor import NoiseMonitor, plot_noise
from .retune import AutoPlan

__all__ = ["fit", "evaluate", "History", "save_figure", "max_batch_size", "Capacity", "compile_model", "Amp", "resolve_amp",
           "NoiseMonitor", "plot_noise", "AutoPlan"]
