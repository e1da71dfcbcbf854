"""Checks of :func:`radvar.train.fit`'s arguments before any work is done.

Each bad value raises one ``TypeError``/``ValueError`` naming the argument,
the value given and what is allowed. The result is a frozen :class:`Settings`.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from ..plan import Plan
from ..sketch import Sketch
from . import distributed
from .amp import Amp, resolve_amp


@dataclasses.dataclass(frozen=True)
class Settings:
    """fit's run settings after checking (``eval_every`` defaults to ``log_every``)."""

    steps: int | None
    epochs: int | None
    batch_size: int | None
    log_every: int
    eval_every: int
    checkpoint_every: int | None
    seed: int | None
    compile: bool | str
    device: torch.device
    precision: Amp
    checkpoint: Path | None
    resume: bool
    progress: bool
    budget: int | float | None = None
    retune_every: int | None = None
    log_dir: Path | None = None
    co_optimize: bool | tuple[int, ...] = False

    @property
    def auto(self) -> bool:
        """Whether the plan re-tunes itself (``plan="auto"``)."""
        return self.budget is not None


def positive_int(value: Any, name: str, allow_none: bool = True) -> int | None:
    """``value`` if it is a positive int (or None when allowed); ValueError otherwise."""
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"fit: {name} must be a positive int{' or None' if allow_none else ''}, got {value!r}")
    return value


def resolve_device(device: str | torch.device) -> torch.device:
    """'auto' (this rank's GPU under torchrun, else CUDA if available, else CPU) or a usable torch device."""
    if device == "auto":
        return distributed.local_device() if distributed.launched() else torch.device(
            "cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"fit: device must be 'auto' or a torch device, got {device!r}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"fit: device {str(dev)!r} requested but torch.cuda.is_available() is False")
    return dev


def check_budget(budget: Any) -> int | float:
    """``budget`` if it is bytes (an int > 0) or a fraction in (0, 1] of the exact saved bytes; ValueError otherwise."""
    if isinstance(budget, bool) or not isinstance(budget, (int, float)) or not budget > 0 \
            or (isinstance(budget, float) and budget > 1.0):
        raise ValueError(f"fit: budget must be a fraction in (0, 1] of the exact saved bytes (float) or a number of "
                         f"bytes > 0 (int), got {budget!r}")
    return budget


def check_auto(plan: Any, budget: Any, retune_every: Any) -> tuple[int | float | None, int | None]:
    """(budget, retune_every) of an adaptive run (``plan="auto"``; ``retune_every`` defaults to 200),
    or (None, None) when neither is given with another plan."""
    if isinstance(plan, str) and plan != "auto":
        raise TypeError(f"fit: plan must be a radvar.Plan, a radvar.sketch.Sketch, 'auto' or None, got {plan!r}")
    if plan != "auto":
        given = [f"{k}={v!r}" for k, v in (("budget", budget), ("retune_every", retune_every)) if v is not None]
        if given:
            raise ValueError(f"fit: {' and '.join(given)} apply only to plan='auto' (the plan that re-tunes "
                             f"itself); got plan={plan!r}")
        return None, None
    if budget is None:
        raise ValueError("fit: plan='auto' needs budget=, a fraction in (0, 1] of the exact saved bytes (float) or "
                         "a number of bytes > 0 (int)")
    if distributed.size() > 1:
        raise ValueError(f"fit: plan='auto' runs in one process (each rank would re-tune on its own batch); "
                         f"got a world of {distributed.size()} ranks")
    return check_budget(budget), positive_int(200 if retune_every is None else retune_every, "retune_every")


def check_co_optimize(co_optimize: Any, budget: Any, checkpoint: Any) -> bool | tuple[int, ...]:
    """False, True (the default ladder of batch sizes, set by fit from the data) or the batch sizes given."""
    if co_optimize is False:
        return False
    if budget is None:
        raise ValueError(f"fit: co_optimize={co_optimize!r} applies only to plan='auto' (it re-chooses the batch "
                         "size at a re-tune)")
    if checkpoint is not None:
        raise ValueError("fit: co_optimize cannot be combined with checkpoint= (a resumed run finds its place in "
                         "the epoch by counting batches of one size)")
    if co_optimize is True:
        return True
    if isinstance(co_optimize, (str, bytes)) or not isinstance(co_optimize, Sequence) or not co_optimize \
            or any(isinstance(b, bool) or not isinstance(b, int) or b < 2 for b in co_optimize):
        raise ValueError(f"fit: co_optimize must be False, True or a non-empty sequence of batch sizes (ints >= 2), "
                         f"got {co_optimize!r}")
    return tuple(sorted(set(co_optimize)))


def check(model: nn.Module, loss_fn: Any, plan: Any, callbacks: Sequence[Callable[..., Any]], *,
          steps: Any, epochs: Any, batch_size: Any, log_every: Any, eval_every: Any, checkpoint_every: Any,
          seed: Any, compile: Any, device: Any, amp: Any, checkpoint: Any, resume: Any,
          progress: Any, budget: Any = None, retune_every: Any = None, log_dir: Any = None,
          co_optimize: Any = False) -> Settings:
    """Check every argument of fit except the data; return the settings."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"fit: model must be a torch.nn.Module, got {type(model).__name__}")
    if not callable(loss_fn):
        raise TypeError(f"fit: loss_fn must be callable (output, targets) -> loss, got {loss_fn!r}")
    if (steps is None) == (epochs is None):
        raise ValueError(f"fit: give exactly one of steps and epochs, got steps={steps!r}, epochs={epochs!r}")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise TypeError(f"fit: seed must be an int or None, got {seed!r}")
    if not isinstance(compile, (bool, str)):
        raise TypeError(f"fit: compile must be a bool or a torch.compile backend name, got {compile!r}")
    if not all(callable(cb) for cb in callbacks):
        raise TypeError("fit: callbacks must be callables taking one row dict")
    if plan is not None and not isinstance(plan, (Plan, Sketch, str)):
        raise TypeError(f"fit: plan must be a radvar.Plan, a radvar.sketch.Sketch, 'auto' or None, "
                        f"got {type(plan).__name__}")
    budget, retune_every = check_auto(plan, budget, retune_every)
    if budget is not None and amp is not None:
        raise ValueError(f"fit: plan='auto' solves its budget on the full-precision ledger, so it runs without amp; "
                         f"got amp={amp!r} (autocast keeps extra low-precision copies the budget does not count)")
    if log_dir is not None and (budget is None or not isinstance(log_dir, (str, os.PathLike))):
        raise ValueError(f"fit: log_dir is the folder of an adaptive run's logs: a path, with plan='auto'; got "
                         f"log_dir={log_dir!r}, plan={plan!r}")
    co_optimize = check_co_optimize(co_optimize, budget, checkpoint)
    if checkpoint is not None and not isinstance(checkpoint, (str, os.PathLike)):
        raise TypeError(f"fit: checkpoint must be a path or None, got {checkpoint!r}")
    checkpoint_every = positive_int(checkpoint_every, "checkpoint_every")
    if checkpoint is None and (resume or checkpoint_every is not None):
        what = "resume=True" if resume else f"checkpoint_every={checkpoint_every!r}"
        raise ValueError(f"fit: {what} needs checkpoint=PATH")
    log_every = positive_int(log_every, "log_every", allow_none=False)
    dev = resolve_device(device)
    return Settings(
        steps=positive_int(steps, "steps"), epochs=positive_int(epochs, "epochs"),
        batch_size=positive_int(batch_size, "batch_size"), log_every=log_every,
        eval_every=positive_int(eval_every, "eval_every") or log_every,
        checkpoint_every=checkpoint_every, seed=seed, compile=compile,
        device=dev, precision=resolve_amp(amp, dev), checkpoint=None if checkpoint is None else Path(checkpoint),
        resume=bool(resume), progress=bool(progress), budget=budget, retune_every=retune_every,
        log_dir=None if log_dir is None else Path(log_dir), co_optimize=co_optimize)
