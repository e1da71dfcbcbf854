"""Loss specs: ``cross_entropy``, ``mse`` or ``module:fn``; and a check that model, data and loss fit."""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from radvar import outputs
from radvar._data import validate

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


def num_classes(out: torch.Tensor, y: torch.Tensor, loss_fn: LossFn) -> int | None:
    """The classes integer targets index for the built-in losses (cross_entropy: dim 1 of the output;
    mse: its last dim, the one-hot width); None when unknown (a user's loss, float targets)."""
    if y.is_floating_point() or out.dim() < 2:
        return None
    if loss_fn is F.cross_entropy:
        return int(out.shape[1])
    if loss_fn is _mse and out.dim() == y.dim() + 1:
        return int(out.shape[-1])
    return None


def check_fit(model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss_fn: LossFn) -> None:
    """Run the model on two examples, check all of the data against its output (every value finite,
    every class label in range: :func:`radvar._data.validate`), then the loss and that a gradient
    flows from it to the model; one line on error."""
    try:
        with torch.enable_grad():
            out = outputs.select(model(x[:2]))
    except outputs.OutputError as e:
        raise SpecError(f"--output: {one_line(e).removeprefix('OutputError: ')}") from e
    except Exception as e:
        raise SpecError(f"--data: inputs of shape {tuple(x.shape)} do not fit the model ({one_line(e)})") from e
    try:
        validate(x, y, num_classes=num_classes(out, y, loss_fn), name="--data")
    except (TypeError, ValueError) as e:
        raise SpecError(str(e)) from e
    try:
        loss = loss_fn(out, y[:2])
    except Exception as e:
        raise SpecError(f"--loss: the loss fails on model outputs {tuple(out.shape)} and targets "
                        f"{tuple(y.shape)} ({one_line(e)})") from e
    if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
        shape = tuple(loss.shape) if isinstance(loss, torch.Tensor) else type(loss).__name__
        raise SpecError(f"--loss: the loss must return a scalar tensor, got {shape}")
    if not loss.requires_grad and any(p.requires_grad for p in model.parameters()):
        raise SpecError(f"--output: the loss does not depend on the model's parameters (no gradient flows from "
                        f"the model output {tuple(out.shape)}); with a tuple/dict model output choose another "
                        f"entry with --output")
