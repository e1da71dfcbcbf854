"""Loss specs: ``cross_entropy``, ``mse`` or ``module:fn``; and a check that model, data and loss fit."""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .errors import SpecError, load_object, one_line

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
LOSSES = ("cross_entropy", "mse")


def _mse(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared error; integer class targets are one-hot encoded to the output width."""
    if not target.is_floating_point() and out.dim() == target.dim() + 1:
        target = F.one_hot(target, out.shape[-1])
    return F.mse_loss(out, target.to(out.dtype))


def load_loss(spec: str) -> LossFn:
    """``cross_entropy``, ``mse`` or a callable named by ``module:fn``/``file.py:fn``."""
    if spec == "cross_entropy":
        return F.cross_entropy
    if spec == "mse":
        return _mse
    if ":" in spec:
        fn = load_object(spec, "--loss")
        if not callable(fn):
            raise SpecError(f"--loss: {spec!r} is a {type(fn).__name__}, not a callable")
        return fn
    raise SpecError(f"--loss: unknown loss {spec!r}; allowed: {', '.join(LOSSES)}, package.module:fn or file.py:fn")


def check_fit(model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss_fn: LossFn) -> None:
    """Run the model and the loss on two examples; explain a mismatch in one line."""
    try:
        with torch.no_grad():
            out = model(x[:2])
    except Exception as e:
        raise SpecError(f"--data: inputs of shape {tuple(x.shape)} do not fit the model ({one_line(e)})") from e
    try:
        loss = loss_fn(out, y[:2])
    except Exception as e:
        raise SpecError(f"--loss: the loss fails on model outputs {tuple(out.shape)} and targets "
                        f"{tuple(y.shape)} ({one_line(e)})") from e
    if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
        shape = tuple(loss.shape) if isinstance(loss, torch.Tensor) else type(loss).__name__
        raise SpecError(f"--loss: the loss must return a scalar tensor, got {shape}")
