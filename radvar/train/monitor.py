"""``NoiseMonitor``: per-layer RAD variance, data noise and gradient noise scale during training.

Every ``every`` steps (as a :func:`radvar.train.fit` callback, or by calling
:meth:`NoiseMonitor.measure`) one exact forward and backward of the current
training batch at the current parameters, hooked at every Linear/Conv layer l,
gives for the batch of B examples (x_i, g_i: the layer's input and output
gradient for example i; G_il: example i's gradient of the layer's weight and
bias; Ḡ_l: the batch's mean-loss gradient):

* ``rad_variance`` — E‖Ĝ_l − Ḡ_l‖²_F of the layer's current sketch on this batch,
  the closed form of :mod:`radvar.variance.forms` (the statistics of
  :func:`radvar.variance.analytic`); 0 for exact layers.
* ``trace_sigma`` — tr Σ_l = (Σ_i ‖G_il‖² − B‖Ḡ_l‖²)/(B − 1), unbiased for the trace
  of one example's gradient covariance. ‖G_il‖² comes from x_i and B·g_i without
  forming G_il (Linear: ‖x_i‖²‖B g_i‖²; BackPACK's trick, Dangel, Kunstner &
  Hennig, ICLR 2020), by the per-example paths of :mod:`radvar.variance.kinds`.
* ``data_variance`` — tr Σ_l / B, the variance of the batch-B mean gradient.
* ``grad_sq`` — |G_l|² = ‖Ḡ_l‖² − tr Σ_l / B, unbiased for the true gradient's squared
  norm (McCandlish et al., "An Empirical Model of Large-Batch Training", 2018,
  App. A, with B_small = 1 and B_big = B; then their S estimate is tr Σ_l).
* ``noise_scale`` — B_simple = tr Σ_l / |G_l|² from this batch alone (inf when the |G|²
  estimate is ≤ 0: the batch cannot resolve the gradient from the noise); ``noise_scale_ema``
  — the ratio of exponential moving averages of tr Σ and |G|² (App. A: a ratio
  of unbiased estimates is biased, so numerator and denominator are smoothed
  separately), decay ``ema`` with Adam's bias correction (``trace_sigma_ema``, ``grad_sq_ema``).
* ``equivalent_batch_size`` — tr Σ_l / (tr Σ_l/B + rad_variance): the exact batch size
  whose data variance equals this step's total (data + RAD) variance.
* ``bytes_kept`` / ``bytes_exact`` — what autograd keeps for the layer under the
  current plan and exactly (the ledger, :func:`radvar.memory.saved_bytes`, on a copy of
  the model; measured once per plan and batch shape).

The ``(total)`` row sums the layers and holds the whole model's ledger bytes. Per-example norms need a loss
that is the mean of per-example losses (checked at the first measurement) and examples that do not interact
(no BatchNorm in training mode); a layer called more than once per forward gets
NaN data noise. Parameters outside Linear/Conv layers are not monitored.

The measurement never changes training: it runs under ``radvar.exact()`` with
radvar's stream position and torch's global RNG state restored, restores the
model's buffers, and leaves ``.grad`` untouched; randomness it needs (the conv
projection cross term) comes from its own generator seeded from ``seed`` and the step.
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import os
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import pandas as pd
import torch
from torch import nn

from .. import rng
from .._atomic import atomic_path, write_text
from ..memory import saved_bytes
from ..variance.capture import LayerStats, hooked_pass, layer_variance, layer_variance_se
from ..variance.kinds import kind_for
from .history import save_figure

TOTAL = "(total)"
COLUMNS = ["step", "layer", "type", "sketch", "keep", "batch_size", "loss", "rad_variance", "rad_se",
           "trace_sigma", "data_variance", "grad_sq_batch", "grad_sq", "noise_scale", "trace_sigma_ema",
           "grad_sq_ema", "noise_scale_ema", "equivalent_batch_size", "bytes_kept", "bytes_exact", "seconds",
           "cpu_seconds"]


def _ratio(num: float, den: float) -> float:
    return num / den if den > 0 else float("inf") if num > 0 else float("nan")


def _sq_norm(g: torch.Tensor | None) -> float:
    """‖g‖² (0 for an unused parameter)."""
    return 0.0 if g is None else float(torch.dot(g.reshape(-1), g.reshape(-1)))


def _finite_or_none(row: dict[str, Any]) -> dict[str, Any]:
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in row.items()}


class NoiseMonitor:
    """Logs per-layer noise statistics every ``every`` steps (see the module docstring).

    Use as ``fit(model, data, loss_fn=monitor.loss_fn, callbacks=[monitor], ...)``:
    ``monitor.loss_fn`` is ``loss_fn`` (kept as ``raw_loss_fn``) that also records the training batch
    (with a forward pre-hook on ``model``). fit calls callbacks on logged rows, so a
    measurement runs at the first logged row at or after each multiple of ``every``
    (choose ``log_every`` dividing ``every``). With ``out``, ``noise.csv`` and
    ``noise.json`` there are rewritten atomically after every measurement.
    """

    def __init__(self, model: nn.Module, loss_fn: Callable[..., torch.Tensor], every: int = 50,
                 out: str | os.PathLike | None = None, ema: float = 0.9, seed: int = 0,
                 projection_pairs: int = 256) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"NoiseMonitor: model must be a torch.nn.Module, got {type(model).__name__}")
        if not callable(loss_fn):
            raise TypeError(f"NoiseMonitor: loss_fn must be callable (output, targets) -> loss, got {loss_fn!r}")
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise ValueError(f"NoiseMonitor: every must be a positive int (steps), got {every!r}")
        if isinstance(ema, bool) or not isinstance(ema, (int, float)) or not 0 <= ema < 1:
            raise ValueError(f"NoiseMonitor: ema must be a decay in [0, 1), got {ema!r}")
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise TypeError(f"NoiseMonitor: seed must be an int, got {seed!r}")
        if isinstance(projection_pairs, bool) or not isinstance(projection_pairs, int) or projection_pairs < 2:
            raise ValueError(f"NoiseMonitor: projection_pairs must be an int >= 2, got {projection_pairs!r}")
        self.model, self.every, self.ema, self.seed = model, every, float(ema), seed
        self.projection_pairs = projection_pairs
        self.out = None if out is None else Path(out)
        if self.out is not None and self.out.exists() and not self.out.is_dir():
            raise ValueError(f"NoiseMonitor: out must be a directory, got the file {str(self.out)!r}")
        self.rows: list[dict[str, Any]] = []
        self.raw_loss_fn = loss_fn
        self._due = every
        self._busy = False
        self._inputs: torch.Tensor | None = None
        self._batch: tuple[torch.Tensor, torch.Tensor] | None = None
        self._ema: dict[str, tuple[float, float]] = {}
        self._measurements = 0
        self._ledgers: dict[tuple, tuple[dict[str, int], int, dict[str, int], int]] = {}

        def see_inputs(module: nn.Module, args: tuple) -> None:
            if not self._busy and module.training and torch.is_grad_enabled() and args \
                    and isinstance(args[0], torch.Tensor):
                self._inputs = args[0]

        def loss(output: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
            if not self._busy and isinstance(output, torch.Tensor) and output.requires_grad \
                    and self._inputs is not None:
                self._batch = (self._inputs, targets)
            return loss_fn(output, targets)

        self.loss_fn = loss
        self._hook = model.register_forward_pre_hook(see_inputs)

    @property
    def batch(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The latest batch (inputs, targets) seen through :attr:`loss_fn` or measured, or None."""
        return self._batch

    def close(self) -> None:
        """Remove the forward pre-hook from the model."""
        self._hook.remove()

    def __call__(self, row: dict[str, Any]) -> None:
        """fit callback: measure on the latest training batch when a multiple of ``every`` is reached."""
        step = int(row["step"])
        if step < self._due:
            return None
        if self._batch is None:
            raise RuntimeError("NoiseMonitor: no training batch seen; pass loss_fn=monitor.loss_fn to fit "
                               "(the monitor records the batch through it)")
        self.measure(*self._batch, step=step)
        self._due = (step // self.every + 1) * self.every
        return None

    @property
    def frame(self) -> pd.DataFrame:
        """All measurements so far: one row per (step, layer), plus a ``(total)`` row per step."""
        return pd.DataFrame(self.rows, columns=COLUMNS)

    def measure(self, inputs: torch.Tensor, targets: torch.Tensor, step: int) -> list[dict[str, Any]]:
        """Measure on the batch (``inputs``, ``targets``) at the model's current parameters; the new rows."""
        start, cpu = time.perf_counter(), time.process_time()
        self._batch = (inputs, targets)
        self._busy = True
        try:
            with isolated(self.model, inputs.device):
                layers, loss, count = self._pass(inputs, targets, step)
                bytes_plan, total_plan, bytes_exact, total_exact = self._ledger(inputs, targets)
        finally:
            self._busy = False
        self._measurements += 1
        rows = []
        for name, s in layers.items():
            s.update(bytes_kept=bytes_plan.get(name, 0), bytes_exact=bytes_exact.get(name, 0))
            rows.append(self._row(step, name, s, count, loss))
        total = {k: sum(s[k] for s in layers.values()) for k in ("rad_variance", "trace_sigma", "grad_sq_batch")}
        total.update(type="", sketch="", keep=float("nan"), bytes_kept=total_plan, bytes_exact=total_exact,
                     rad_se=math.sqrt(sum(s["rad_se"] ** 2 for s in layers.values())))
        rows.append(self._row(step, TOTAL, total, count, loss))
        seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
        for r in rows:
            r.update(seconds=seconds, cpu_seconds=cpu)
        self.rows += rows
        if self.out is not None:
            self.save(self.out)
        return rows

    def _row(self, step: int, name: str, s: dict[str, Any], count: int, loss: float) -> dict[str, Any]:
        trace = s["trace_sigma"]
        grad_sq = s["grad_sq_batch"] - trace / count
        t_avg, g_avg = self._ema.get(name, (0.0, 0.0))
        t_avg, g_avg = self.ema * t_avg + (1 - self.ema) * trace, self.ema * g_avg + (1 - self.ema) * grad_sq
        self._ema[name] = (t_avg, g_avg)
        correction = 1.0 - self.ema ** self._measurements
        data_var = trace / count
        return {"step": step, "layer": name, "type": s["type"], "sketch": s["sketch"], "keep": s["keep"],
                "batch_size": count, "loss": loss, "rad_variance": s["rad_variance"], "rad_se": s["rad_se"],
                "trace_sigma": trace, "data_variance": data_var, "grad_sq_batch": s["grad_sq_batch"],
                "grad_sq": grad_sq, "noise_scale": _ratio(trace, grad_sq),
                "trace_sigma_ema": t_avg / correction, "grad_sq_ema": g_avg / correction,
                "noise_scale_ema": _ratio(t_avg, g_avg),
                "equivalent_batch_size": _ratio(trace, data_var + s["rad_variance"]),
                "bytes_kept": s["bytes_kept"], "bytes_exact": s["bytes_exact"]}

    def _pass(self, inputs: torch.Tensor, targets: torch.Tensor, step: int) -> tuple[dict[str, dict], float, int]:
        """One exact forward/backward (:func:`radvar.variance.capture.hooked_pass`); per layer the RAD
        variance and the per-example statistics, each call reduced as its output gradient arrives.

        Autograd returns the output gradient of every layer call, the biases' gradients, and
        the weights' only where the statistics do not already hold ‖Ḡ_W‖² (``shared_tot`` of
        a single call's view), so the backward skips the randomized layers' weight products.
        """
        modules = {n: m for n, m in self.model.named_modules() if kind_for(m) is not None}
        sketches = {n: getattr(m, "sketch", None) for n, m in modules.items()}
        count = int(inputs.shape[0])
        gen = rng.generator(rng.mix(self.seed ^ rng.mix(step)) >> 1, inputs.device)
        views: dict[str, list[dict]] = {n: [] for n in modules}
        per_example: dict[str, list[float]] = {n: [] for n in modules}  # Σ_i ‖G_il‖² of each used call
        randomized: set[str] = set()
        wanted: list[torch.Tensor] = []  # the parameters autograd is asked for (set after the forward)
        output: list[torch.Tensor] = []

        def on_call(name: str, m: nn.Module, x: torch.Tensor, g: torch.Tensor) -> None:
            kind, sketch = kind_for(m), sketches[name]
            if sketch is not None and not sketch.exact:
                views[name].append(kind.view_stats(m, x, g, gen, self.projection_pairs, sketch.needs_entries))
            if count > 1:
                w, b = kind.per_example_sq_norms(m, x, g * count)
                per_example[name].append(float(w.sum()) + (float(b.sum()) if b is not None else 0.0))

        def params(calls: dict[str, int]) -> list[torch.Tensor]:
            randomized.update(n for n, sk in sketches.items() if sk is not None and not sk.exact and calls[n] == 1)
            wanted[:] = [m.bias for m in modules.values() if m.bias is not None] + \
                [m.weight for n, m in modules.items() if n not in randomized and calls[n]]
            return wanted

        def loss_fn(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            output.append(out.detach())
            return self.raw_loss_fn(out, y)

        loss, found = hooked_pass(self.model, (inputs,), targets, loss_fn, modules, on_call, params=params,
                                  outputs=True, owner="NoiseMonitor")
        grads = dict(zip(map(id, wanted), found))
        if not self.rows:
            self._check_mean_loss(output[0], targets, float(loss), count)
        layers = {}
        for name, m in modules.items():
            kind, sketch, calls = kind_for(m), sketches[name], views[name]
            bias_sq = _sq_norm(grads.get(id(m.bias))) if m.bias is not None else 0.0
            rad = se = 0.0
            if calls:
                stats = LayerStats(name, type(m).__name__, kind.name, kind.axes, m.weight.dtype, tuple(m.weight.shape),
                                   float("nan"), calls)
                rad, se = layer_variance(stats, sketch)[0], layer_variance_se(stats, sketch)
            weight_sq = calls[0][kind.axes[0]].shared_tot if name in randomized and calls \
                else _sq_norm(grads.get(id(m.weight)))  # an unused randomized layer: None, 0
            mean_sq = weight_sq + bias_sq
            trace = float("nan")
            if len(per_example[name]) == 1:
                trace = max(per_example[name][0] - count * mean_sq, 0.0) / (count - 1)
            layers[name] = {"type": type(m).__name__, "sketch": sketch.label() if sketch is not None else "exact",
                            "keep": sketch.keep if sketch is not None else 1.0, "rad_variance": rad, "rad_se": se,
                            "trace_sigma": trace, "grad_sq_batch": mean_sq}
        return layers, float(loss), count

    def _check_mean_loss(self, output: torch.Tensor, targets: torch.Tensor, loss: float, count: int) -> None:
        """A mean-reduced loss is the size-weighted mean of its values on the two halves of the batch."""
        half = count // 2
        with torch.no_grad():
            parts = [float(self.raw_loss_fn(output[s], targets[s])) * (s.stop - s.start) / count
                     for s in (slice(0, half), slice(half, count))] if half else [loss]
        if not math.isclose(sum(parts), loss, rel_tol=1e-4, abs_tol=1e-6):
            raise ValueError(f"NoiseMonitor: loss_fn on the batch gave {loss:.6g} but the size-weighted mean of "
                             f"its values on the two halves is {sum(parts):.6g}; per-example gradient norms need "
                             "a mean-reduced loss (e.g. reduction='mean') of examples that do not interact")

    def _ledger(self, inputs: torch.Tensor, targets: torch.Tensor) -> tuple[dict[str, int], int, dict[str, int], int]:
        """Ledger bytes per module and in total, under the current plan and exactly (cached per plan and shape)."""
        plan = tuple((n, repr(getattr(m, "sketch", None))) for n, m in self.model.named_modules()
                     if kind_for(m) is not None)
        key = (plan, tuple(inputs.shape), inputs.dtype, str(inputs.device))
        if key not in self._ledgers:
            twin = copy.deepcopy(self.model)  # a training forward may update buffers
            x, y = inputs.clone(), targets.clone()  # the ledger counts whole storages; a slice views all the data
            kept = saved_bytes(twin, x, self.raw_loss_fn, y)
            with rng.exact():
                exact = saved_bytes(twin, x, self.raw_loss_fn, y)
            self._ledgers[key] = (kept.by_module, kept.total, exact.by_module, exact.total)
        return self._ledgers[key]

    def state_dict(self) -> dict[str, Any]:
        """What a resumed run needs to continue the log (JSON-able): rows, EMA sums, count, next due step."""
        return {"rows": self.rows, "ema": {k: list(v) for k, v in self._ema.items()},
                "measurements": self._measurements, "due": self._due}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from :meth:`state_dict`."""
        self.rows = [dict(r) for r in state["rows"]]
        self._ema = {k: (float(t), float(g)) for k, (t, g) in state["ema"].items()}
        self._measurements, self._due = int(state["measurements"]), int(state["due"])

    def save(self, out: str | os.PathLike) -> None:
        """Write ``noise.csv`` and ``noise.json`` (settings and rows; non-finite numbers as null) into ``out``."""
        settings = {"every": self.every, "ema": self.ema, "seed": self.seed, "projection_pairs": self.projection_pairs}
        save_records(out, "noise", self.frame, settings, "rows", self.rows)


@contextlib.contextmanager
def isolated(model: nn.Module, device: torch.device) -> Iterator[None]:
    """Run extra passes without changing training: radvar's stream position, torch's global RNG
    (``fork_rng``) and ``model``'s buffers are restored on exit."""
    position = rng.get_state()
    buffers = [b.detach().clone() for b in model.buffers()]
    try:
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            yield
    finally:
        rng.set_state(position)
        with torch.no_grad():
            for b, saved in zip(model.buffers(), buffers):
                b.copy_(saved)


def save_records(out: str | os.PathLike, stem: str, frame: pd.DataFrame, settings: dict[str, Any], key: str,
                 records: list[dict[str, Any]]) -> None:
    """``out/stem.csv`` (``frame``) and ``out/stem.json`` ({"settings", key: records}, non-finite
    numbers as null), each written atomically; ``out`` is created if needed."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(out / f"{stem}.csv") as tmp:
        frame.to_csv(tmp, index=False)
    write_text(out / f"{stem}.json", json.dumps({"settings": settings, key: [_finite_or_none(r) for r in records]},
                                                indent=1))

def load(path: str | os.PathLike) -> pd.DataFrame:
    """The rows of a ``noise.csv`` or ``noise.json`` written by :class:`NoiseMonitor`."""
    path = Path(path)
    if path.suffix == ".json":
        return pd.DataFrame(json.loads(path.read_text())["rows"], columns=COLUMNS)
    if path.suffix == ".csv":
        return pd.read_csv(path)
    raise ValueError(f"monitor.load: expected a noise .csv or .json file, got {str(path)!r}")


def plot_noise(frame: pd.DataFrame, path: str | os.PathLike | None = None):
    """Four panels against step, one line per layer: RAD vs data variance, B_simple (EMA),
    equivalent batch size, and bytes kept. With ``path``, saved there as PNG and closed; returns the figure."""
    import matplotlib.pyplot as plt

    missing = {"step", "layer", "rad_variance", "data_variance", "noise_scale_ema", "equivalent_batch_size",
               "bytes_kept"} - set(frame.columns)
    if missing or frame.empty:
        raise ValueError(f"plot_noise: need a non-empty NoiseMonitor frame; missing columns {sorted(missing)}")
    fig, axes = plt.subplots(2, 2, figsize=(11, 7), sharex=True)
    (var_ax, scale_ax), (eq_ax, bytes_ax) = axes
    for i, (layer, part) in enumerate(frame.groupby("layer", sort=False)):
        color = f"C{i % 10}"
        var_ax.plot(part["step"], part["rad_variance"], color=color, label=f"{layer} RAD")
        var_ax.plot(part["step"], part["data_variance"], color=color, linestyle="--")
        scale_ax.plot(part["step"], part["noise_scale_ema"], color=color, label=layer)
        eq_ax.plot(part["step"], part["equivalent_batch_size"], color=color, label=layer)
        bytes_ax.plot(part["step"], part["bytes_kept"], color=color, marker=".", label=layer)
    var_ax.set(yscale="log", ylabel="variance", title="RAD variance (solid) vs data variance tr Σ/B (dashed)")
    scale_ax.set(yscale="log", ylabel="B_simple", title="gradient noise scale tr Σ / |G|² (EMA)")
    eq_ax.set(ylabel="examples", xlabel="step", title="equivalent batch size tr Σ / (tr Σ/B + RAD)")
    bytes_ax.set(yscale="log", ylabel="bytes", xlabel="step", title="bytes kept for backward (ledger)")
    scale_ax.legend(fontsize=7)
    fig.tight_layout()
    if path is not None:
        save_figure(fig, path)
    return fig


__all__ = ["NoiseMonitor", "plot_noise", "load", "isolated", "save_records", "TOTAL", "COLUMNS"]
