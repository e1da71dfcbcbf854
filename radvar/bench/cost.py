"""Step-time cost model: each layer's forward+backward time with a sketch, relative to plain PyTorch.

:meth:`CostModel.layer` times one layer alone — a copy of the module, on a random
input of the shape it sees in the model — plain and converted with a sketch, steps
interleaved pair by pair (``reps`` pairs after ``warmup``), and keeps the fastest of
each (:class:`LayerTime`): load from other work only ever adds time, so minima taken at
different moments stay comparable where medians drift with the load. A measurement is taken once per (module type and
hyper-parameters, input shape, dtype, device, sketch) and cached per machine in a
JSON file under :func:`cache_dir` (``RADVAR_CACHE_DIR``, else ``$XDG_CACHE_HOME/radvar``,
else ``~/.cache/radvar``), named by :func:`machine_id` (host, CPU, torch version,
threads, device, radvar's version and compiled kernels). Writes are atomic and respect
the umask; a file there that radvar did not write (no ``"format": "radvar-cost-cache"``) is never overwritten: the model
then measures without caching and says so once.

A plan's predicted step time is ``T_plain + Σ_l Σ_calls (r − 1) t_plain``: the
fastest plain step plus each sketched layer's extra seconds (``r`` the ratio of the
layer's fastest times, ``t_plain`` its fastest plain time); its slowdown is that
over ``T_plain``. Between timed keeps (:data:`TIMED_KEEPS`) a family's extra time is
interpolated linearly in keep, so a tuner's keep grid costs a few timings per family.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import itertools
import json
import math
import os
import platform
import time
import warnings
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from .._atomic import write_text
from .._version import __version__
from .. import _native, rng
from .._hooks import run_with_pre_hooks
from ..convert import convert
from ..layers import twin_for
from ..plan import Plan
from ..sketch import Sketch
from . import _step

FORMAT = "radvar-cost-cache"
VERSION = 1
TIMED_KEEPS: tuple[float, ...] = (0.01, 0.1, 0.3, 0.6, 0.9)
"""Keeps at which a family's layer time is measured; other keeps interpolate linearly (clamped at the ends)."""


def cache_dir() -> Path:
    """Where radvar keeps its per-machine caches: ``RADVAR_CACHE_DIR``, else ``$XDG_CACHE_HOME/radvar``,
    else ``~/.cache/radvar``."""
    if os.environ.get("RADVAR_CACHE_DIR"):
        return Path(os.environ["RADVAR_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "radvar"


def cpu_name() -> str:
    """The CPU model (from /proc/cpuinfo, else platform)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_id(device: torch.device) -> str:
    """A short hash of what step times depend on: host, CPU model, torch version, threads, device (GPU name),
    radvar's version and its compiled kernels (:func:`radvar._native.build_id`)."""
    parts = [platform.node(), cpu_name(), torch.__version__, str(torch.get_num_threads()), device.type,
             __version__, _native.build_id()]
    if device.type == "cuda":
        parts.append(torch.cuda.get_device_name(device))
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]


@dataclasses.dataclass(frozen=True)
class LayerTime:
    """Fastest seconds of one forward+backward of a layer, plain and with a sketch, and their ratio."""

    plain: float
    sketched: float
    ratio: float

    @property
    def extra(self) -> float:
        """Seconds the sketch adds to one call (negative when it is faster): (ratio − 1) · plain."""
        return (self.ratio - 1.0) * self.plain


class CostCache:
    """A JSON file of :class:`LayerTime` by key. ``path=None``: in memory only."""

    def __init__(self, path: str | os.PathLike | None):
        self.path = None if path is None else Path(path)
        self.entries: dict[str, dict[str, float]] = {}
        self.foreign = False
        if self.path is not None and self.path.exists():
            try:
                doc = json.loads(self.path.read_text())
            except (OSError, ValueError):
                doc = None
            if isinstance(doc, dict) and doc.get("format") == FORMAT and doc.get("version") == VERSION \
                    and isinstance(doc.get("entries"), dict):
                self.entries = doc["entries"]
            else:
                self.foreign = True
                warnings.warn(f"radvar cost model: {str(self.path)!r} exists but radvar did not write it; "
                              f"timings are measured but not cached there", RuntimeWarning, stacklevel=2)

    def get(self, key: str) -> LayerTime | None:
        e = self.entries.get(key)
        return None if e is None else LayerTime(float(e["plain"]), float(e["sketched"]), float(e["ratio"]))

    def put(self, key: str, value: LayerTime) -> None:
        self.entries[key] = dataclasses.asdict(value)

    def save(self) -> None:
        """Write the cache atomically (re-reading the file first, so entries other processes added stay)."""
        if self.path is None or self.foreign:
            return
        if self.path.exists():
            other = CostCache.__new__(CostCache)
            try:
                doc = json.loads(self.path.read_text())
            except (OSError, ValueError):
                return  # changed under us into something radvar cannot read: leave it alone
            if not (isinstance(doc, dict) and doc.get("format") == FORMAT and isinstance(doc.get("entries"), dict)):
                return
            other.entries = doc["entries"]
            self.entries = {**other.entries, **self.entries}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        write_text(self.path, json.dumps({"format": FORMAT, "version": VERSION, "machine": self.path.stem,
                                          "entries": self.entries}, indent=1, sort_keys=True) + "\n")


def layer_key(module: nn.Module, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device,
              sketch: Sketch | None) -> str:
    """The cache key: module type and hyper-parameters, input shape, dtype, device type, sketch label."""
    return "|".join([type(module).__name__, module.extra_repr(), "x".join(map(str, shape)), str(dtype).split(".")[-1],
                     device.type, "exact" if sketch is None else sketch.label()])


def _pair_step(model: nn.Module, x: torch.Tensor, grad: torch.Tensor) -> float:
    start = time.perf_counter()
    model(x).backward(grad)
    if x.is_cuda:
        torch.cuda.synchronize(x.device)
    elapsed = time.perf_counter() - start
    for p in model.parameters():
        p.grad = None
    x.grad = None
    return elapsed


def module_device(module: nn.Module) -> torch.device:
    """Where ``module``'s parameters or buffers live (the CPU for one with neither, e.g. a GELU)."""
    state = next(itertools.chain(module.parameters(), module.buffers()), None)
    return state.device if state is not None else torch.device("cpu")


def time_layer(module: nn.Module, shape: tuple[int, ...], dtype: torch.dtype, sketch: Sketch | None,
               reps: int = 5, warmup: int = 1) -> LayerTime:
    """Fastest forward+backward seconds (other work on the machine only ever adds time) of a copy of
    ``module`` plain and converted with ``sketch`` (None: exact, its compact twin) on a random
    ``shape`` input that requires grad (a fixed private generator), steps interleaved pair by pair.
    radvar's stream is put back where it was, so whether a timing was cached never changes later draws."""
    device = module_device(module)
    gen = torch.Generator(device=device).manual_seed(0)
    x = torch.randn(shape, generator=gen, device=device, dtype=dtype).requires_grad_()
    plain = nn.Sequential(copy.deepcopy(module))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        twin = convert(plain, None if sketch is None else Plan({"0": sketch}))
    with torch.no_grad():
        grad = torch.randn(plain(x).shape, generator=gen, device=device, dtype=dtype)
    a, b = [], []
    state = rng.get_state()
    try:
        for rep in range(warmup + reps):
            ta, tb = _pair_step(plain, x, grad), _pair_step(twin, x, grad)
            if rep >= warmup:
                a.append(ta)
                b.append(tb)
    finally:
        rng.set_state(state)
    return LayerTime(min(a), min(b), min(b) / max(min(a), 1e-12))


def input_shapes(model: nn.Module, inputs: Any) -> dict[str, list[tuple[tuple[int, ...], torch.dtype]]]:
    """(shape, dtype) of the first positional input of every call of each randomizable module (weight
    layers and propagating twins: activations, norms, attention)."""
    seen: dict[str, list[tuple[tuple[int, ...], torch.dtype]]] = {}

    def hook(name: str) -> Callable:
        def record(mod: nn.Module, args: tuple) -> None:
            if args and isinstance(args[0], torch.Tensor):
                seen.setdefault(name, []).append((tuple(args[0].shape), args[0].dtype))
        return record

    layers = [(m, hook(n)) for n, m in model.named_modules()
              if (t := twin_for(m)) is not None and t.randomized]
    run_with_pre_hooks(model, inputs, layers)
    return seen


class CostModel:
    """Cached layer timings: ``cache`` (default: this machine's file under :func:`cache_dir`;
    ``CostCache(None)`` keeps them in memory only); ``reps``/``warmup``: timed pairs per measurement;
    ``measure=False``: read the cache only (a missing timing makes :meth:`extra_seconds` NaN)."""

    def __init__(self, cache: CostCache | None = None, reps: int = 5, warmup: int = 1, measure: bool = True):
        self.cache = cache
        self.reps, self.warmup, self.measure = reps, warmup, measure
        self._measured = 0
        self._warm = False

    def _cache_for(self, device: torch.device) -> CostCache:
        if self.cache is None:
            self.cache = CostCache(cache_dir() / f"cost-{machine_id(device)}.json")
        return self.cache

    def layer(self, module: nn.Module, shape: tuple[int, ...], dtype: torch.dtype,
              sketch: Sketch | None) -> LayerTime | None:
        """The cached timing of ``module`` on a ``shape`` input under ``sketch`` (None: its exact compact
        twin, e.g. a ReLU keeping a mask), measured on a miss
        (None on a miss when the model does not measure)."""
        device = module_device(module)
        cache = self._cache_for(device)
        key = layer_key(module, shape, dtype, device, sketch)
        found = cache.get(key)
        if found is None and self.measure:
            if not self._warm:  # the first timing in a process pays one-time set-up costs: discard it
                time_layer(module, shape, dtype, sketch, 1, 1)
                self._warm = True
            found = time_layer(module, shape, dtype, sketch, self.reps, self.warmup)
            cache.put(key, found)
            self._measured += 1
        return found

    def compact_seconds(self, module: nn.Module, calls: list[tuple[tuple[int, ...], torch.dtype]]) -> float:
        """Seconds the compact twin of an exact ``module`` (e.g. a ReLU keeping a 1-bit mask) adds to one step
        over ``calls``, against the module itself (0 for a module without one)."""
        if twin_for(module) is None:
            return 0.0
        total = 0.0
        for shape, dtype in calls:
            t = self.layer(module, shape, dtype, None)
            total += float("nan") if t is None else t.sketched - t.plain
        return total

    def extra_seconds(self, module: nn.Module, calls: list[tuple[tuple[int, ...], torch.dtype]],
                      sketch: Sketch | None) -> float:
        """Seconds ``sketch`` adds to one step of ``module`` over its ``calls``: measured at
        :data:`TIMED_KEEPS` (and keep itself when it is one of them), interpolated linearly in keep."""
        if sketch is None or sketch.exact:
            return 0.0
        keeps = TIMED_KEEPS
        if sketch.keep in keeps:
            points = [sketch.keep]
        else:
            below = [k for k in keeps if k < sketch.keep]
            above = [k for k in keeps if k > sketch.keep]
            points = ([below[-1]] if below else []) + ([above[0]] if above else [])
        total = 0.0
        for shape, dtype in calls:
            times = [self.layer(module, shape, dtype, sketch.at(k)) for k in points]
            if any(t is None for t in times):
                return math.nan
            total += float(np.interp(sketch.keep, points, [t.extra for t in times]))
        return total

    def save(self) -> None:
        """Write new measurements to the cache file."""
        if self.cache is not None and self._measured:
            self.cache.save()
            self._measured = 0

    def step_seconds(self, model: nn.Module, x: torch.Tensor, y: Any, loss_fn: Callable, reps: int = 5,
                     warmup: int = 1) -> float:
        """Fastest seconds of a plain forward+backward step of ``model`` (not cached: it is the reference);
        the parameters' ``.grad`` and radvar's stream are left as they were."""
        params = list(model.parameters())
        grads, state = [p.grad for p in params], rng.get_state()
        times = []
        try:
            for rep in range(warmup + reps):
                start = time.perf_counter()
                _step(model, x, y, loss_fn)
                if x.is_cuda:
                    torch.cuda.synchronize(x.device)
                if rep >= warmup:
                    times.append(time.perf_counter() - start)
        finally:
            for p, g in zip(params, grads):
                p.grad = g
            rng.set_state(state)
        return min(times)


__all__ = ["CostModel", "CostCache", "LayerTime", "TIMED_KEEPS", "cache_dir", "machine_id", "layer_key",
           "time_layer", "input_shapes"]
