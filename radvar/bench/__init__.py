"""Side-by-side measurements: plain PyTorch against RAD conversions, in one process.

For each configuration: bytes autograd keeps for backward (the ledger of
:mod:`radvar.memory`) and the median wall time of a forward+backward step.
Steps of all configurations are interleaved round by round, so slow drifts of
the machine (other processes, clock changes) hit every configuration alike;
ratios are taken against the plain model measured in the same run.
The per-layer step-time cost model the tuner uses is :mod:`radvar.bench.cost`.
"""

from __future__ import annotations

import statistics
import time
from typing import Callable, Sequence

import pandas as pd
import torch
from torch import nn

from .._data import validate
from ..convert import _convert as convert  # no CoverageWarning: radvar reports coverage itself
from ..memory import saved_bytes
from ..plan import Plan
from ..sketch import Sketch

PLAIN = "plain PyTorch"


def _step(model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss_fn: Callable) -> None:
    loss_fn(model(x), y).backward()
    for p in model.parameters():
        p.grad = None


def require_finite_step(model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss_fn: Callable,
                        owner: str = "bench") -> None:
    """One forward+backward of ``model``; raise naming the first non-finite input/target example, else
    a NaN/inf loss or the first parameter (by name) whose gradient is not finite."""
    validate(x, y, name=owner)
    loss = loss_fn(model(x), y)
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    grads = torch.autograd.grad(loss, [p for _, p in params], allow_unused=True)
    loss = loss.detach()
    if not bool(torch.isfinite(loss.detach()).all()):
        raise ValueError(f"{owner}: the loss is {float(loss)} although every input and target value is finite; "
                         f"check the model's parameters and the loss function")
    for (name, _), g in zip(params, grads):
        if g is not None and not bool(torch.isfinite(g).all()):
            raise ValueError(f"{owner}: the gradient of parameter {name!r} is not finite although every input "
                             f"and target value is finite; check the model's parameters and the loss function")


def compare(model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss_fn: Callable,
            sketches: Sequence[Sketch | Plan], reps: int = 20, warmup: int = 3,
            progress: Callable[[str], None] | None = None) -> pd.DataFrame:
    """One row per configuration (plain, then each sketch, or plan: labelled ``plan``, ``plan 2``, ...): saved bytes, median step
    seconds, and both as ratios to plain (``memory_ratio`` = plain / config,
    ``time_ratio`` = config / plain medians; ``pair_ratio`` = median over rounds of config / plain
    in the same round, robust to a machine that other work slows down; ``cpu_ms`` and ``cpu_ratio`` the same
    from the process's CPU time, which other processes on a shared machine do not inflate). Raises first if the data, the loss or a gradient is not
    finite (:func:`require_finite_step`), so no configuration is timed on NaN."""
    require_finite_step(model, x, y, loss_fn)
    configs: dict[str, nn.Module] = {PLAIN: model}
    for i, sk in enumerate(sketches):
        label = sk.label() if isinstance(sk, Sketch) else "plan" if i == 0 else f"plan {i + 1}"
        configs[label] = convert(model, sk)
    bytes_ = {name: saved_bytes(m, x, loss_fn, y).total for name, m in configs.items()}
    times: dict[str, list[float]] = {name: [] for name in configs}
    cpu: dict[str, list[float]] = {name: [] for name in configs}
    for rep in range(warmup + reps):
        for name, m in configs.items():
            if progress:
                progress(name)
            start, start_cpu = time.perf_counter(), time.process_time()
            _step(m, x, y, loss_fn)
            if x.is_cuda:
                torch.cuda.synchronize()
            if rep >= warmup:
                times[name].append(time.perf_counter() - start)
                cpu[name].append(time.process_time() - start_cpu)
    rows = []
    for name in configs:
        med = statistics.median(times[name])
        rows.append({"config": name, "saved_bytes": bytes_[name], "step_ms": med * 1e3,
                     "memory_ratio": bytes_[PLAIN] / bytes_[name],
                     "time_ratio": med / statistics.median(times[PLAIN]),
                     "pair_ratio": statistics.median(t / p for t, p in zip(times[name], times[PLAIN])),
                     "cpu_ms": statistics.median(cpu[name]) * 1e3,
                     "cpu_ratio": statistics.median(cpu[name]) / statistics.median(cpu[PLAIN])})
    return pd.DataFrame(rows)
