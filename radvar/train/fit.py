"""``fit``: a training loop for models with RAD layers, and ``evaluate``.

One loop for one process or a torchrun job (DistributedDataParallel; each
rank draws its own RAD stream), full precision or AMP (bf16 autocast, fp16
with a GradScaler), eager or ``torch.compile``; it records a :class:`History`
and can checkpoint and resume bitwise the same run on the same device.
``fit`` runs three phases: check the arguments and data
(:mod:`~radvar.train.arguments`, :func:`_check_data`), set up a fresh run or
resume one from a checkpoint (:mod:`~radvar.train.state`), and the step loop
(:mod:`~radvar.train.loop`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any, Callable

import torch
from torch import nn

from .. import _data, rng
from ..plan import Plan
from ..sketch import Sketch
from . import arguments, distributed, loop, state
from .compiled import compile_model
from .history import History

Batch = tuple[torch.Tensor, torch.Tensor]
Callback = Callable[[dict[str, Any]], Any]


def _is_tensor_pair(data: Any) -> bool:
    return (isinstance(data, (tuple, list)) and len(data) == 2
            and all(isinstance(t, torch.Tensor) for t in data))


def _cut(x: torch.Tensor, y: torch.Tensor, order: torch.Tensor, size: Callable[[], int]) -> Iterator[Batch]:
    """Consecutive batches of ``order``, each as large as ``size()`` says when it is cut (the last may be smaller)."""
    start = 0
    while start < order.numel():
        idx = order[start:start + size()]
        start += idx.numel()
        yield x[idx], y[idx]


def _epochs(data: Any, batch_size: int | Callable[[], int] | None, seed: int) -> Iterator[tuple[int, Iterator[Batch]]]:
    """(epoch, batches) forever. Tensor data: a permutation per epoch from a generator seeded with
    (seed, epoch), sharded over ranks, cut into batches of ``batch_size`` (a callable: read at each
    batch); other iterables are iterated as they are."""
    size = batch_size if callable(batch_size) else lambda: batch_size
    epoch = 0
    while True:
        if _is_tensor_pair(data):
            x, y = data
            gen = torch.Generator().manual_seed(rng.mix(seed ^ rng.mix(epoch + 1)) >> 1)
            order = distributed.shard(torch.randperm(x.shape[0], generator=gen))
            batches = _cut(x, y, order, size)
        else:
            batches = iter(data)
        yield epoch, batches
        epoch += 1


def _batch_ladder(data: Any, settings: arguments.Settings) -> tuple[int, ...]:
    """The batch sizes a co-optimising run weighs: those given, or B/4, B/2, B, 2B, 4B within [2, examples]."""
    if not _is_tensor_pair(data):
        raise ValueError(f"fit: co_optimize needs data as an (inputs, targets) pair of tensors, which fit cuts into "
                         f"batches of any size; the batches of a {type(data).__name__} are its own")
    n, b = int(data[0].shape[0]), settings.batch_size
    sizes = settings.co_optimize if settings.co_optimize is not True else \
        tuple(sorted({min(max(2, s), n) for s in (b // 4, b // 2, b, 2 * b, 4 * b)}))
    if sizes[-1] > n:
        raise ValueError(f"fit: co_optimize batch sizes must be at most the {n} training examples, got {list(sizes)}")
    return sizes


def _check_data(data: Any, batch_size: int | None, name: str = "data") -> None:
    if _is_tensor_pair(data):
        _data.validate(data, name=f"fit: {name}")  # shapes, non-empty, every value finite (names the example)
        if name == "data" and batch_size is None:
            raise ValueError("fit: batch_size is required when data is an (inputs, targets) pair of tensors")
        per_rank = data[0].shape[0] // distributed.size()
        if name == "data" and batch_size > per_rank:
            ranks = f" per rank ({distributed.size()} ranks)" if distributed.size() > 1 else ""
            raise ValueError(f"fit: batch_size {batch_size} is larger than the training data: {per_rank} "
                             f"examples{ranks}; use batch_size <= {per_rank}")
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




def _eval_sets(eval_data: Any) -> dict[str, Any]:
    """``eval_data`` as name -> dataset (one dataset is named "eval"), each checked."""
    evals = {} if eval_data is None else dict(eval_data) if isinstance(eval_data, Mapping) else {"eval": eval_data}
    for name, ev in evals.items():
        if not isinstance(name, str) or not name.isidentifier():
            raise ValueError(f"fit: eval_data names must be identifiers (column prefixes), got {name!r}")
        _check_data(ev, None, f"eval_data[{name!r}]")
    return evals


def fit(model: nn.Module, data: Batch | Iterable[Batch], *, loss_fn: Callable[..., torch.Tensor],
        optimizer: torch.optim.Optimizer | Callable[[Iterator[nn.Parameter]], torch.optim.Optimizer],
        plan: Plan | Sketch | str | None = None, steps: int | None = None, epochs: int | None = None,
        batch_size: int | None = None, eval_data: Batch | Iterable[Batch] | Mapping[str, Any] | None = None,
        eval_every: int | None = None, amp: str | None = None, compile: bool | str = False,
        device: str | torch.device = "auto", seed: int | None = None, log_every: int = 10,
        callbacks: Sequence[Callback] = (), checkpoint: str | os.PathLike | None = None,
        checkpoint_every: int | None = None, resume: bool = False, progress: bool = True,
        budget: int | float | None = None, retune_every: int | None = None,
        log_dir: str | os.PathLike | None = None, co_optimize: bool | Sequence[int] = False) -> History:
    """Train ``model`` in place on ``data`` for ``steps`` optimizer steps or ``epochs`` passes.

    ``data``: an (inputs, targets) tensor pair with ``batch_size`` (shuffled each
    epoch from ``seed``, sharded over ranks; a batch larger than the data is an
    error), or any iterable of batches.
    ``plan`` (a Plan or a Sketch for all layers) converts ``model`` in place
    first; None trains it as it is; ``"auto"`` re-tunes it while training (below).
    ``optimizer``: an optimizer over the model's parameters, or a callable ``params -> optimizer``. ``amp``: None, "bf16"
    (CPU or GPU) or "fp16" (GPU, with a GradScaler). ``compile``: True (inductor)
    or a backend name. ``seed`` seeds radvar's RAD stream (each rank its own).
    Every ``log_every`` steps a row is added (see :mod:`radvar.train.history`),
    evaluated on ``eval_data`` (one dataset, columns ``eval_*``, or a mapping
    name -> dataset, columns ``name_*``) every ``eval_every`` steps (default: every row) and
    passed to each callback; a callback returning True stops training. With
    ``checkpoint``, state is saved every ``checkpoint_every`` steps and at the
    end (:mod:`radvar.train.checkpoint`, a weights-only file); ``resume=True``
    continues from the file if it exists, bitwise the uninterrupted run on the same device.

    ``plan="auto"`` with ``budget`` (bytes autograd may keep, an int > 0, or a fraction in
    (0, 1] of the exact model's ledger bytes): before step 1 and then every ``retune_every``
    steps (default 200) the plan is re-solved on the step's batch within the budget
    (:class:`~radvar.train.retune.AutoPlan` after a :class:`~radvar.train.monitor.NoiseMonitor`
    measurement), switching between steps only. With ``log_dir``, ``noise.csv/json`` and
    ``retune.csv/json`` (each switch with its reason) are rewritten there as training goes.
    One process only. ``co_optimize=True`` (or a sequence of batch sizes) also re-chooses the batch
    size at a re-tune (:class:`~radvar.train.retune.AutoPlan` with ``batch_sizes``): True weighs
    B/4, B/2, B, 2B and 4B (B = ``batch_size``; sizes >= 2 and within the data). It needs ``data`` as a tensor
    pair (fit cuts the batches; an iterable's batches are its own) and no ``checkpoint``; the
    budget in bytes is fixed at the first re-tune and the learning rate is not rescaled.
    """
    settings = arguments.check(model, loss_fn, plan, callbacks, steps=steps, epochs=epochs, batch_size=batch_size,
                               log_every=log_every, eval_every=eval_every, checkpoint_every=checkpoint_every,
                               seed=seed, compile=compile, device=device, amp=amp, checkpoint=checkpoint,
                               resume=resume, progress=progress, budget=budget, retune_every=retune_every,
                               log_dir=log_dir, co_optimize=co_optimize)
    _check_data(data, settings.batch_size)
    if settings.co_optimize is not False:
        settings = dataclasses.replace(settings, co_optimize=_batch_ladder(data, settings))
    evals = _eval_sets(eval_data)

    # a copy: the ledger counts whole storages, and a slice is a view into all of the data
    first = next(iter(data)) if not _is_tensor_pair(data) else (data[0][:batch_size].clone(),
                                                                data[1][:batch_size].clone())
    run = state.start(model, optimizer, plan, loss_fn, first, settings, pool=data if settings.co_optimize else None)
    dev, autocast = settings.device, settings.precision.autocast

    def evaluate_all() -> dict[str, float]:
        return {k: v for name, ev in evals.items() for k, v in evaluate(model, ev, loss_fn, dev, autocast,
                                                                        name=name).items()}

    net = distributed.wrap(model, dev)
    compiler = compile_model(net, backend="inductor" if compile is True else compile) if compile \
        else contextlib.nullcontext(net)
    with compiler as train_net:
        size = (lambda: run.auto.batch_size) if settings.co_optimize else settings.batch_size
        loop.train(run, train_net, _epochs(data, size, run.seed), loss_fn, evaluate_all, callbacks)
    history = History(run.rows)
    label = plan if isinstance(plan, str) else repr(plan) if plan is not None else "as given"
    history.attrs.update({"plan": label, "amp": amp, "compile": compile, "device": str(dev),
                          "world_size": run.world, "seed": run.seed})
    if run.auto is not None:
        history.attrs.update({"budget": budget, "retune_every": settings.retune_every,
                              "switches": len(run.auto.switches), "batch_size": run.auto.batch_size})
    return history
