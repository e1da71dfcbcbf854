"""``fit``: a training loop for models with RAD layers.

One loop for one process or a torchrun job (DistributedDataParallel; each
rank draws its own RAD stream), full precision or AMP (bf16 autocast, fp16
with a GradScaler), eager or ``torch.compile``; it records a :class:`History`
and can checkpoint and resume bitwise the same run on the same device.
"""

from __future__ import annotations

import contextlib
import copy
import math
import os
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any, Callable

import torch
from torch import nn
from tqdm.auto import tqdm

from .. import rng
from ..convert import convert
from ..memory import saved_bytes
from ..plan import Plan
from ..sketch import Sketch
from . import checkpoint as ckpt
from . import distributed
from .amp import resolve_amp
from .compiled import compile_model
from .history import History

Batch = tuple[torch.Tensor, torch.Tensor]
Callback = Callable[[dict[str, Any]], Any]


def _positive_int(value: Any, name: str, allow_none: bool = True) -> int | None:
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"fit: {name} must be a positive int{' or None' if allow_none else ''}, got {value!r}")
    return value


def _resolve_device(device: str | torch.device) -> torch.device:
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


def _is_tensor_pair(data: Any) -> bool:
    return (isinstance(data, (tuple, list)) and len(data) == 2
            and all(isinstance(t, torch.Tensor) for t in data))


def _epochs(data: Any, batch_size: int | None, seed: int) -> Iterator[tuple[int, Iterator[Batch]]]:
    """(epoch, batches) forever. Tensor data: a permutation per epoch from a generator seeded with
    (seed, epoch), sharded over ranks; other iterables are iterated as they are."""
    epoch = 0
    while True:
        if _is_tensor_pair(data):
            x, y = data
            gen = torch.Generator().manual_seed(rng.mix(seed ^ rng.mix(epoch + 1)) >> 1)
            order = distributed.shard(torch.randperm(x.shape[0], generator=gen))
            batches = ((x[idx], y[idx]) for idx in order.split(batch_size))
        else:
            batches = iter(data)
        yield epoch, batches
        epoch += 1


def _check_data(data: Any, batch_size: int | None, name: str = "data") -> None:
    if _is_tensor_pair(data):
        if data[0].shape[0] != data[1].shape[0] or data[0].shape[0] == 0:
            raise ValueError(f"fit: {name} inputs and targets need equal, non-zero first dims, "
                             f"got {tuple(data[0].shape)} and {tuple(data[1].shape)}")
        if name == "data" and batch_size is None:
            raise ValueError("fit: batch_size is required when data is an (inputs, targets) pair of tensors")
    elif not isinstance(data, Iterable) or isinstance(data, (str, bytes, torch.Tensor)):
        raise TypeError(f"fit: {name} must be an (inputs, targets) pair of tensors or an iterable of such "
                        f"batches (e.g. a DataLoader), got {type(data).__name__}")


def evaluate(model: nn.Module, data: Batch | Iterable[Batch], loss_fn: Callable[..., torch.Tensor],
             device: torch.device, autocast: Callable[[], Any] = contextlib.nullcontext,
             chunk: int = 4096, name: str = "eval") -> dict[str, float]:
    """``{name}_loss`` (example-weighted mean) and, for class logits with integer targets,
    ``{name}_accuracy``; no gradients, eval mode."""
    batches = ((x[i:i + chunk], y[i:i + chunk]) for x, y in [data] for i in range(0, x.shape[0], chunk)) \
        if _is_tensor_pair(data) else data
    was_training = model.training
    model.eval()
    total = correct = n = 0.0
    classify = True
    with torch.no_grad(), autocast():
        for x, y in batches:
            x, y = x.to(device), y.to(device)
            out = model(x)
            total += float(loss_fn(out, y).float()) * x.shape[0]
            classify = classify and out.dim() == 2 and not y.is_floating_point()
            if classify:
                correct += float((out.argmax(1) == y).sum())
            n += x.shape[0]
    model.train(was_training)
    metrics = {f"{name}_loss": total / n}
    if classify:
        metrics[f"{name}_accuracy"] = correct / n
    return metrics


def fit(model: nn.Module, data: Batch | Iterable[Batch], *, loss_fn: Callable[..., torch.Tensor],
        optimizer: torch.optim.Optimizer | Callable[[Iterator[nn.Parameter]], torch.optim.Optimizer],
        plan: Plan | Sketch | None = None, steps: int | None = None, epochs: int | None = None,
        batch_size: int | None = None, eval_data: Batch | Iterable[Batch] | Mapping[str, Any] | None = None,
        eval_every: int | None = None, amp: str | None = None, compile: bool | str = False,
        device: str | torch.device = "auto", seed: int | None = None, log_every: int = 10,
        callbacks: Sequence[Callback] = (), checkpoint: str | os.PathLike | None = None,
        checkpoint_every: int | None = None, resume: bool = False, progress: bool = True) -> History:
    """Train ``model`` in place on ``data`` for ``steps`` optimizer steps or ``epochs`` passes.

    ``data``: an (inputs, targets) tensor pair with ``batch_size`` (shuffled each
    epoch from ``seed``, sharded over ranks), or any iterable of batches.
    ``plan`` (a Plan or a Sketch for all layers) converts ``model`` in place
    first; None trains it as it is. ``optimizer``: an optimizer over the model's
    parameters, or a callable ``params -> optimizer``. ``amp``: None, "bf16"
    (CPU or GPU) or "fp16" (GPU, with a GradScaler). ``compile``: True (inductor)
    or a backend name. ``seed`` seeds radvar's RAD stream (each rank its own).
    Every ``log_every`` steps a row is added (see :mod:`radvar.train.history`),
    evaluated on ``eval_data`` (one dataset, columns ``eval_*``, or a mapping
    name -> dataset, columns ``name_*``) every ``eval_every`` steps (default: every row) and
    passed to each callback; a callback returning True stops training. With
    ``checkpoint``, state is saved every ``checkpoint_every`` steps and at the
    end; ``resume=True`` continues from the file if it exists.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"fit: model must be a torch.nn.Module, got {type(model).__name__}")
    if not callable(loss_fn):
        raise TypeError(f"fit: loss_fn must be callable (output, targets) -> loss, got {loss_fn!r}")
    if (steps is None) == (epochs is None):
        raise ValueError(f"fit: give exactly one of steps and epochs, got steps={steps!r}, epochs={epochs!r}")
    steps, epochs = _positive_int(steps, "steps"), _positive_int(epochs, "epochs")
    batch_size = _positive_int(batch_size, "batch_size")
    log_every = _positive_int(log_every, "log_every", allow_none=False)
    eval_every = _positive_int(eval_every, "eval_every") or log_every
    checkpoint_every = _positive_int(checkpoint_every, "checkpoint_every")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise TypeError(f"fit: seed must be an int or None, got {seed!r}")
    if not isinstance(compile, (bool, str)):
        raise TypeError(f"fit: compile must be a bool or a torch.compile backend name, got {compile!r}")
    if not all(callable(cb) for cb in callbacks):
        raise TypeError("fit: callbacks must be callables taking one row dict")
    _check_data(data, batch_size)
    evals = {} if eval_data is None else dict(eval_data) if isinstance(eval_data, Mapping) else {"eval": eval_data}
    for name, ev in evals.items():
        if not isinstance(name, str) or not name.isidentifier():
            raise ValueError(f"fit: eval_data names must be identifiers (column prefixes), got {name!r}")
        _check_data(ev, None, f"eval_data[{name!r}]")
    if plan is not None and not isinstance(plan, (Plan, Sketch)):
        raise TypeError(f"fit: plan must be a radvar.Plan, a radvar.sketch.Sketch or None, got {type(plan).__name__}")

    dev = _resolve_device(device)
    precision = resolve_amp(amp, dev)
    if plan is not None:
        convert(model, plan, inplace=True)
    model.to(dev)
    opt = optimizer if isinstance(optimizer, torch.optim.Optimizer) else optimizer(model.parameters())
    if not isinstance(opt, torch.optim.Optimizer):
        raise TypeError(f"fit: optimizer must be a torch.optim.Optimizer or a callable returning one, got {optimizer!r}")
    scaler = precision.scaler()
    rank, world = distributed.init(dev)
    if seed is None:  # data order only (RAD draws use radvar.rng); rank 0's, so the shards partition the data
        seed = distributed.broadcast(int(torch.randint(0, 2**62, (1,)).item()), dev)
    rng.seed(seed)

    state = {"step": 0, "epoch": 0, "batch": 0, "rows": []}
    if checkpoint is not None and resume and os.path.exists(checkpoint):
        saved = ckpt.load(checkpoint)
        model.load_state_dict(saved["model"])
        opt.load_state_dict(saved["optimizer"])
        if scaler is not None and saved.get("scaler") is not None:
            scaler.load_state_dict(saved["scaler"])
        rng.set_state(saved["rng"])
        seed = saved["seed"]
        state = {k: saved[k] for k in state}

    # a copy: the ledger counts whole storages, and a slice is a view into all of the data
    first = next(iter(data)) if not _is_tensor_pair(data) else (data[0][:batch_size].clone(), data[1][:batch_size].clone())
    with precision.autocast():
        position = rng.get_state()
        # on a copy: a training-mode forward may update buffers (e.g. BatchNorm statistics)
        ledger = saved_bytes(copy.deepcopy(model), first[0].to(dev), loss_fn, first[1].to(dev)).total
        rng.set_state(position)  # the ledger's forward must not shift the RAD stream

    net = distributed.wrap(model, dev)
    compiler = compile_model(net, backend="inductor" if compile is True else compile) if compile \
        else contextlib.nullcontext(net)
    bar = tqdm(total=steps, initial=state["step"], disable=not progress or rank != 0, desc="fit")
    rows: list[dict[str, Any]] = state["rows"]
    window: list[tuple[float, float, int]] = []
    cuda = dev.type == "cuda"
    stop = False

    def record(step: int, epoch: int) -> None:
        nonlocal stop
        row: dict[str, Any] = {
            "step": step, "epoch": epoch,
            "loss": distributed.mean(sum(w[0] for w in window) / len(window), dev),
            "lr": opt.param_groups[0]["lr"],
            "step_time_s": sum(w[1] for w in window) / len(window),
            "saved_bytes": ledger,
        }
        if cuda:
            row["cuda_peak_bytes"] = max(w[2] for w in window)
        if step % eval_every == 0 or finished(step, epoch):
            for name, ev in evals.items():
                row.update(evaluate(model, ev, loss_fn, dev, precision.autocast, name=name))
        rows.append(row)
        window.clear()
        bar.set_postfix(loss=f"{row['loss']:.4g}")
        if any(cb(row) is True for cb in callbacks):
            stop = True

    def finished(step: int, epoch: int) -> bool:
        return (steps is not None and step >= steps) or (epochs is not None and epoch >= epochs)

    def save(epoch: int, batch: int) -> None:
        if checkpoint is not None and rank == 0:
            ckpt.save(checkpoint, {"model": model.state_dict(), "optimizer": opt.state_dict(),
                                   "scaler": scaler.state_dict() if scaler is not None else None,
                                   "rng": rng.get_state(), "seed": seed, "step": step_, "epoch": epoch,
                                   "batch": batch, "rows": rows})

    step_, position = state["step"], (state["epoch"], state["batch"])
    model.train()
    with compiler as train_net:
        for epoch, batches in _epochs(data, batch_size, seed):
            if epoch < state["epoch"]:
                continue
            if finished(step_, epoch) or stop:
                break
            for b, (x, y) in enumerate(batches):
                if epoch == state["epoch"] and b < state["batch"]:
                    continue
                x, y = x.to(dev, non_blocking=True), y.to(dev, non_blocking=True)
                if cuda:
                    torch.cuda.reset_peak_memory_stats(dev)
                start = time.perf_counter()
                opt.zero_grad(set_to_none=True)
                with precision.autocast():
                    loss = loss_fn(train_net(x), y)
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
                    raise FloatingPointError(f"fit: loss became {value} at step {step_ + 1}")
                window.append((value, time.perf_counter() - start,
                               torch.cuda.max_memory_allocated(dev) if cuda else 0))
                step_ += 1
                position = (epoch, b + 1)
                bar.update(1)
                done = steps is not None and step_ >= steps
                if step_ % log_every == 0 or done:
                    record(step_, epoch)
                if checkpoint_every is not None and step_ % checkpoint_every == 0:
                    save(*position)
                if done or stop:
                    break
            else:
                position = (epoch + 1, 0)
                if window and epochs is not None and epoch + 1 >= epochs:
                    record(step_, epoch)
    save(*position)
    bar.close()
    history = History(rows)
    history.attrs.update({"plan": repr(plan) if plan is not None else "as given", "amp": amp,
                          "compile": compile, "device": str(dev), "world_size": world, "seed": seed})
    return history
