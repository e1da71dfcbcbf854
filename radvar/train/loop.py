"""The step loop of :func:`radvar.train.fit`: forward, backward, optimizer step, history rows, checkpoints.

It continues a :class:`~radvar.train.state.Run` from its (epoch, batch)
position. Each step appends (loss, wall time, CUDA peak) to the run's window;
every ``log_every`` steps (and at the end) the window becomes a history row,
with the evaluation columns every ``eval_every`` steps and at the end; every
``checkpoint_every`` steps and at the end the run is saved. In an adaptive
run, every ``retune_every`` steps (after the row and callbacks, before the
checkpoint) the step's batch is measured and the plan
re-tuned (:func:`~radvar.train.state.retune`; not on a partial last batch): a switch converts the model
between two steps, so each step's forward and backward use one plan.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator, Sequence
from typing import Any, Callable

import torch
from torch import nn
from tqdm.auto import tqdm

from . import distributed
from .state import Batch, Run, ledger_bytes, retune


def _step(run: Run, net: nn.Module, loss_fn: Callable[..., torch.Tensor], x: torch.Tensor,
          y: torch.Tensor) -> Batch:
    """One optimizer step on (x, y); its loss, time and CUDA peak go to the run's window. (x, y) on the device."""
    dev, scaler, opt = run.settings.device, run.scaler, run.optimizer
    x, y = x.to(dev, non_blocking=True), y.to(dev, non_blocking=True)
    cuda = dev.type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats(dev)
    start = time.perf_counter()
    opt.zero_grad(set_to_none=True)
    with run.settings.precision.autocast():
        loss = loss_fn(net(x), y)
    if scaler is not None:
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
    else:
        loss.backward()
        opt.step()
    value = float(loss.detach().float())
    if cuda:
        torch.cuda.synchronize(dev)
    if not math.isfinite(value) and scaler is None:
        raise FloatingPointError(f"fit: loss became {value} at step {run.step + 1}")
    run.window.append([value, time.perf_counter() - start, torch.cuda.max_memory_allocated(dev) if cuda else 0])
    run.step += 1
    return x, y


def _maybe_retune(run: Run, loss_fn: Callable[..., torch.Tensor], x: torch.Tensor, y: torch.Tensor) -> None:
    """Re-tune an adaptive run's plan on the step's batch when due; after a switch, measure the new plan's ledger.
    A partial last batch of an epoch is skipped: a plan within a byte budget there may not be at the full batch."""
    s, auto = run.settings, run.auto
    if auto is None or run.step % s.retune_every or (auto.batch_size is not None and len(x) < auto.batch_size):
        return
    switch = retune(auto, x, y, run.step, run.settings)
    if switch is not None:
        b = switch["batch_after"]  # co-optimised: the ledger at the new batch size, on examples of the data
        sample = (x, y) if b == len(x) else (auto.pool[0][:b], auto.pool[1][:b])
        run.ledger = ledger_bytes(run.model, (sample[0].clone(), sample[1].clone()), loss_fn, run.settings)


def _finished(run: Run, epoch: int) -> bool:
    s = run.settings
    return (s.steps is not None and run.step >= s.steps) or (s.epochs is not None and epoch >= s.epochs)


def _record(run: Run, epoch: int, evaluate: Callable[[], dict[str, float]]) -> dict[str, Any]:
    """Turn the window into a history row (evaluating when due) and empty it."""
    dev, window = run.settings.device, run.window
    row: dict[str, Any] = {
        "step": run.step, "epoch": epoch,
        "loss": distributed.mean(sum(w[0] for w in window) / len(window), dev),
        "lr": float(run.optimizer.param_groups[0]["lr"]),
        "step_time_s": sum(w[1] for w in window) / len(window),
        "saved_bytes": run.ledger,
    }
    if dev.type == "cuda":
        row["cuda_peak_bytes"] = max(w[2] for w in window)
    if run.step % run.settings.eval_every == 0 or _finished(run, epoch):
        row.update(evaluate())
    run.rows.append(row)
    window.clear()
    return row


def train(run: Run, net: nn.Module, epochs: Iterator[tuple[int, Iterator[Batch]]],
          loss_fn: Callable[..., torch.Tensor], evaluate: Callable[[], dict[str, float]],
          callbacks: Sequence[Callable[[dict[str, Any]], Any]]) -> None:
    """Train ``net`` (the run's model, maybe wrapped) from the run's position until the steps or
    epochs are done or a callback returns True; ``epochs`` yields (epoch, batches) from epoch 0."""
    s = run.settings
    bar = tqdm(total=s.steps, initial=run.step, disable=not s.progress or run.rank != 0, desc="fit")
    start, stop = (run.epoch, run.batch), False

    def log(epoch: int) -> None:
        nonlocal stop
        row = _record(run, epoch, evaluate)
        bar.set_postfix(loss=f"{row['loss']:.4g}")
        stop = any(cb(row) is True for cb in callbacks)

    run.model.train()
    for epoch, batches in epochs:
        if epoch < start[0]:
            continue
        if _finished(run, epoch) or stop:
            break
        for b, (x, y) in enumerate(batches):
            if epoch == start[0] and b < start[1]:
                continue
            x, y = _step(run, net, loss_fn, x, y)
            run.epoch, run.batch = epoch, b + 1
            bar.update(1)
            done = s.steps is not None and run.step >= s.steps
            if run.step % s.log_every == 0 or done:
                log(epoch)
            _maybe_retune(run, loss_fn, x, y)  # also after the last step: a run resumed to more steps goes on alike
            if s.checkpoint_every is not None and run.step % s.checkpoint_every == 0:
                run.save()
            if done or stop:
                break
        else:
            run.epoch, run.batch = epoch + 1, 0
            if run.window and s.epochs is not None and epoch + 1 >= s.epochs:
                log(epoch)
    run.save()
    bar.close()
