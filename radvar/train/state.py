"""The state of one :func:`radvar.train.fit` run: set up fresh or restored from a checkpoint, and saved.

:func:`start` converts the model with the plan, moves it to the device, builds
the optimizer (and GradScaler), joins the process group, and then either
seeds a fresh run (data-order seed, RAD stream, the saved-bytes ledger of one
training forward) or restores everything a checkpoint holds, after checking
that the checkpoint fits this model, optimizer and precision. :meth:`Run.save`
writes the checkpoint that :func:`start` reads back.

With ``plan="auto"`` the run holds an :class:`~radvar.train.retune.AutoPlan`
(and its :class:`~radvar.train.monitor.NoiseMonitor`): a fresh run measures the
first batch and tunes its first plan within the budget before step 1 (logged
as a switch at step 0); the checkpoint keeps the plan in force, the switches
and the monitor's log, and a resumed run converts the model back to that plan.
"""

from __future__ import annotations

import copy
import dataclasses
import os
from typing import Any, Callable

import torch
from torch import nn

from .. import rng
from ..convert import _convert as convert  # no CoverageWarning: radvar reports coverage itself
from ..memory import saved_bytes
from ..plan import Plan
from ..sketch import Sketch
from . import checkpoint as ckpt
from . import distributed
from .arguments import Settings
from .monitor import NoiseMonitor
from .retune import AutoPlan, current_plan

Batch = tuple[torch.Tensor, torch.Tensor]


@dataclasses.dataclass
class Run:
    """A run's mutable state. (epoch, batch) is the position of the next batch to train on;
    ``window`` holds (loss, step time, CUDA peak) of each step since the last history row."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler | None
    settings: Settings
    seed: int
    ledger: int
    rank: int
    world: int
    step: int = 0
    epoch: int = 0
    batch: int = 0
    rows: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    window: list[list[float]] = dataclasses.field(default_factory=list)
    auto: AutoPlan | None = None

    def save(self) -> None:
        """Write the checkpoint: rank 0 writes the shared replica and every rank's RNG states and window."""
        path = self.settings.checkpoint
        if path is None:
            return
        every = distributed.gather({**ckpt.rng_states(self.settings.device), "window": self.window})
        if self.rank != 0:
            return
        meta = {"step": self.step, "epoch": self.epoch, "batch": self.batch, "seed": self.seed,
                "rng": rng.get_state(), "ledger": self.ledger, "rows": self.rows,
                "windows": [r.pop("window") for r in every], "world_size": self.world,
                "model_class": type(self.model).__name__, "optimizer_class": type(self.optimizer).__name__,
                "amp": str(self.settings.precision.dtype), "batch_size": self.settings.batch_size,
                "auto": None if self.auto is None else _auto_state(self.auto)}
        ckpt.save(path, model=self.model.state_dict(), optimizer=self.optimizer.state_dict(),
                  scaler=self.scaler.state_dict() if self.scaler is not None else None, ranks=every, meta=meta)


def _existing(settings: Settings) -> dict[str, Any] | None:
    """The checkpoint at ``settings.checkpoint`` if there is one; a file there that is not
    a radvar checkpoint is an error either way (never resumed from, never overwritten)."""
    path = settings.checkpoint
    if path is None or not os.path.exists(path):
        return None
    try:
        return ckpt.load(path)
    except ValueError as e:
        if settings.resume:
            raise
        raise ValueError(f"fit: {e}; refusing to overwrite it with a new checkpoint, choose another path") from None


def _mismatches(saved: dict[str, Any], model: nn.Module, opt: torch.optim.Optimizer,
                scaler: torch.amp.GradScaler | None, settings: Settings) -> list[str]:
    """What in ``saved`` does not fit this run (empty if it all does)."""
    meta, problems = saved["meta"], []
    want, got = model.state_dict(), saved["model"]
    missing, unexpected = [k for k in want if k not in got], [k for k in got if k not in want]
    shapes = [f"{k} {tuple(got[k].shape)} vs {tuple(want[k].shape)}" for k in want
              if k in got and isinstance(got[k], torch.Tensor) and got[k].shape != want[k].shape]
    for label, items in (("missing model entries", missing), ("unexpected model entries", unexpected),
                         ("model shapes (checkpoint vs model)", shapes)):
        if items:
            problems.append(f"{label}: {', '.join(items[:3])}{' ...' if len(items) > 3 else ''}")
    if problems and meta["model_class"] != type(model).__name__:
        problems.insert(0, f"model {meta['model_class']} in the checkpoint vs {type(model).__name__}")
    if meta["optimizer_class"] != type(opt).__name__:
        problems.append(f"optimizer {meta['optimizer_class']} in the checkpoint vs {type(opt).__name__}")
    else:
        sizes = [len(g["params"]) for g in saved["optimizer"].get("param_groups", [])]
        if sizes != [len(g["params"]) for g in opt.param_groups]:
            problems.append(f"optimizer parameter groups of sizes {sizes} in the checkpoint vs "
                            f"{[len(g['params']) for g in opt.param_groups]}")
        else:
            params = [p for g in opt.param_groups for p in g["params"]]
            for index, entry in saved["optimizer"].get("state", {}).items():
                bad = [k for k, v in entry.items() if isinstance(v, torch.Tensor) and v.dim() > 0
                       and v.shape != params[index].shape]
                if bad:
                    problems.append(f"optimizer state {bad[0]!r} of parameter {index}: shape "
                                    f"{tuple(entry[bad[0]].shape)} vs {tuple(params[index].shape)}")
                    break
    if meta["amp"] != str(settings.precision.dtype) or (saved["scaler"] is None) != (scaler is None):
        problems.append(f"autocast dtype {meta['amp']} in the checkpoint vs {settings.precision.dtype}")
    if meta["world_size"] != distributed.world()[1]:
        problems.append(f"world size {meta['world_size']} in the checkpoint vs {distributed.world()[1]}")
    if meta["batch_size"] != settings.batch_size:
        problems.append(f"batch_size {meta['batch_size']} in the checkpoint vs {settings.batch_size}")
    auto = meta.get("auto")
    if (auto is None) == settings.auto:
        problems.append("an adaptive run (plan='auto') in the checkpoint vs a fixed plan" if auto is not None
                        else "a fixed plan in the checkpoint vs an adaptive run (plan='auto')")
    elif auto is not None and (auto["budget"], auto["every"]) != (settings.budget, settings.retune_every):
        problems.append(f"budget {auto['budget']!r}, retune_every {auto['every']} in the checkpoint vs "
                        f"{settings.budget!r}, {settings.retune_every}")
    return problems


def _auto_state(auto: AutoPlan) -> dict[str, Any]:
    """An adaptive run's state for the checkpoint (JSON-able): settings, plan in force, switches, monitor log."""
    return {"budget": auto.budget, "every": auto.every, "plan": current_plan(auto.monitor.model).to_dict(),
            "switches": auto.switches, "monitor": auto.monitor.state_dict()}


def _new_auto(model: nn.Module, loss_fn: Callable[..., torch.Tensor], settings: Settings,
              pool: Batch | None = None) -> AutoPlan:
    """An AutoPlan (and its monitor, measuring every ``retune_every`` steps on batches the loop hands it);
    with ``settings.co_optimize``, weighing those batch sizes on examples of ``pool``."""
    monitor = NoiseMonitor(model, loss_fn, every=settings.retune_every)
    monitor.close()  # the loop passes each batch to measure(); the batch-recording hook is not needed
    co = settings.co_optimize
    auto = AutoPlan(monitor, settings.budget, every=settings.retune_every, batch_sizes=list(co) if co else None,
                    pool=pool if co else None)
    auto.batch_size = settings.batch_size
    return auto


def retune(auto: AutoPlan, x: torch.Tensor, y: torch.Tensor, step: int, settings: Settings) -> dict[str, Any] | None:
    """Measure the batch (x, y) at the current parameters and re-tune the plan; the switch made, or None.
    Then, with ``settings.log_dir``, rewrite the noise and switch logs there (nothing when tuning failed)."""
    rows = auto.monitor.measure(x, y, step=step)
    switch = auto.retune(step, float(rows[-1]["data_variance"]))
    if settings.log_dir is not None:
        auto.monitor.save(settings.log_dir)
        auto.save(settings.log_dir)
    return switch


def _fresh_seed(settings: Settings) -> int:
    """The data-order seed: the one given, else fresh OS entropy (rank 0's, so shards partition
    the data); torch's global RNG is not drawn from."""
    if settings.seed is not None:
        return settings.seed
    return distributed.broadcast(int.from_bytes(os.urandom(8), "little") >> 2, settings.device)


def ledger_bytes(model: nn.Module, first: Batch, loss_fn: Callable[..., torch.Tensor], settings: Settings) -> int:
    """Saved bytes of one training forward on ``first``, on a copy of the model (a training forward may
    update buffers), leaving radvar's stream and torch's global RNG (e.g. dropout draws) where they were."""
    dev = settings.device
    cuda = [dev.index if dev.index is not None else torch.cuda.current_device()] if dev.type == "cuda" else []
    position = rng.get_state()
    with torch.random.fork_rng(devices=cuda), settings.precision.autocast():
        total = saved_bytes(copy.deepcopy(model), first[0].to(dev), loss_fn, first[1].to(dev)).total
    rng.set_state(position)
    return total


def start(model: nn.Module, optimizer: Any, plan: Plan | Sketch | str | None, loss_fn: Callable[..., torch.Tensor],
          first: Batch, settings: Settings, pool: Batch | None = None) -> Run:
    """A fresh run, or the run in ``settings.checkpoint`` when ``settings.resume`` and the file exists.

    ``first`` (a copy of the first training batch) is where the ledger is measured; ``pool`` (the
    training data) is where a co-optimising run draws batches of other sizes from. On resume,
    torch's global CPU/CUDA generators and radvar's stream are set to where the checkpoint left them.
    """
    saved = _existing(settings)
    dev = settings.device
    if plan is not None and not isinstance(plan, str):  # "auto": the first plan is tuned below
        convert(model, plan, inplace=True)
    model.to(dev)
    opt = optimizer if isinstance(optimizer, torch.optim.Optimizer) else optimizer(model.parameters())
    if not isinstance(opt, torch.optim.Optimizer):
        raise TypeError(f"fit: optimizer must be a torch.optim.Optimizer or a callable returning one, "
                        f"got {optimizer!r}")
    scaler = settings.precision.scaler()
    rank, world = distributed.init(dev)
    if saved is None or not settings.resume:
        seed = _fresh_seed(settings)
        rng.seed(seed)
        auto = _new_auto(model, loss_fn, settings, pool) if settings.auto else None
        if auto is not None:
            retune(auto, first[0].to(dev), first[1].to(dev), 0, settings)
            if auto.batch_size != len(first[0]):  # co-optimised at step 0: the ledger at the chosen batch
                first = (pool[0][:auto.batch_size].clone(), pool[1][:auto.batch_size].clone())
        return Run(model, opt, scaler, settings, seed, ledger_bytes(model, first, loss_fn, settings), rank, world,
                   auto=auto)
    problems = _mismatches(saved, model, opt, scaler, settings)
    if problems:
        raise ValueError(f"fit: checkpoint {str(settings.checkpoint)!r} does not fit this run: {'; '.join(problems)}")
    meta = saved["meta"]
    model.load_state_dict(saved["model"])
    try:
        opt.load_state_dict(saved["optimizer"])
    except (KeyError, ValueError, TypeError) as e:
        raise ValueError(f"fit: checkpoint {str(settings.checkpoint)!r} does not fit the optimizer: {e}") from None
    if scaler is not None:
        scaler.load_state_dict(saved["scaler"])
    auto = None
    if settings.auto:
        auto = _new_auto(model, loss_fn, settings)
        convert(model, Plan.from_dict(meta["auto"]["plan"]), inplace=True)
        auto.switches = list(meta["auto"]["switches"])
        auto.monitor.load_state_dict(meta["auto"]["monitor"])
    rng.set_state(meta["rng"])
    ckpt.set_rng_states(saved["ranks"][rank])
    return Run(model, opt, scaler, settings, meta["seed"], meta["ledger"], rank, world, step=meta["step"],
               epoch=meta["epoch"], batch=meta["batch"], rows=meta["rows"], window=meta["windows"][rank], auto=auto)
