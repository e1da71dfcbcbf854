"""``capture``: one exact forward/backward with hooks, reduced to the statistics the closed forms need.

For every module radvar can randomize, a forward hook keeps its input until
the output gradient arrives (a tensor hook), reduces the pair to per-view
:class:`~radvar.variance.forms.ViewStats` and drops both (:func:`hooked_pass`, which
:class:`radvar.train.monitor.NoiseMonitor` also uses with its own reduction). ``g`` is the true
gradient of the batch loss ``loss_fn(model(inputs), targets)`` (so of the
*mean* loss when ``loss_fn`` is mean-reduced), and the weight gradient it implies
is the exact ``∂loss/∂W``. RAD layers of a converted model run exactly during
capture (``radvar.exact()``); parameters' ``.grad`` are left untouched.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Iterator, Mapping, Sequence

import torch
from torch import nn

from .. import rng
from .._data import Batch, split_batch, validate
from ..sketch import Sketch
from .forms import ViewStats
from .kinds import kind_for

def batch_loss(model: nn.Module, inputs: tuple, targets: Any, loss_fn: Callable, owner: str) -> torch.Tensor:
    """``loss_fn(model(*inputs), targets)``, checked to be a real scalar tensor."""
    if not callable(loss_fn):
        raise TypeError(f"{owner}: loss_fn must be callable, got {loss_fn!r}")
    loss = loss_fn(model(*inputs), targets)
    if not isinstance(loss, torch.Tensor) or loss.numel() != 1 or not loss.is_floating_point():
        shape = tuple(loss.shape) if isinstance(loss, torch.Tensor) else type(loss).__name__
        raise ValueError(f"{owner}: loss_fn must return a floating scalar tensor (mean-reduced loss), got {shape}")
    return loss.reshape(())


def require_finite(inputs: tuple[torch.Tensor, ...], targets: Any, owner: str, loss: torch.Tensor,
                   grads: Mapping[str, torch.Tensor | None]) -> None:
    """Raise if the loss or a gradient is NaN/inf, naming the cause: the first non-finite example of
    the batch if there is one, else the loss or the first layer (by name) whose gradient is not finite."""
    bad = [n for n, g in grads.items() if g is not None and not bool(torch.isfinite(g).all())]
    if bool(torch.isfinite(loss).all()) and not bad:
        return
    validate(inputs, targets, name=owner)
    what = f"the loss is {float(loss)}" if not bool(torch.isfinite(loss).all()) else \
        f"the gradient of {bad[0]!r} is not finite"
    raise ValueError(f"{owner}: {what} although every input and target value is finite; check the model's "
                     f"parameters and the loss function")


@dataclasses.dataclass
class LayerStats:
    """One randomizable layer: its kind, views, dtype, ‖∂W‖², and the stats of each call."""

    name: str
    type: str
    kind: str
    axes: tuple[str, ...]
    dtype: torch.dtype
    weight_shape: tuple[int, ...]
    grad_sq: float
    calls: list[dict[str, ViewStats]]

    def axis(self, sketch: Sketch) -> str:
        """The view ``sketch`` acts on (``view=None`` is the layer's default)."""
        if sketch.view is None:
            return self.axes[0]
        if sketch.view not in self.axes:
            raise ValueError(f"layer {self.name!r} ({self.type}): sketch view {sketch.view!r} is not allowed; "
                             f"allowed: {[None, *self.axes]}")
        return sketch.view

    def view_shapes(self, sketch: Sketch) -> list[tuple[int, int]]:
        """(rows, features) of the view ``sketch`` sees, one per call."""
        axis = self.axis(sketch)
        return [(c[axis].rows, c[axis].n) for c in self.calls]

    def saved_bytes(self, sketch: Sketch | None) -> int:
        """What the sketch promises to keep (``Sketch.saved_bytes``), summed over calls; exact: the input."""
        if sketch is None or sketch.exact:
            first = self.axes[0]
            return sum(c[first].rows * c[first].n for c in self.calls) * _itemsize(self.dtype)
        return sum(sketch.saved_bytes(shape, self.dtype) for shape in self.view_shapes(sketch))


def _itemsize(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


@dataclasses.dataclass
class Capture:
    """Statistics of one batch: ``layers`` by qualified name, the ``loss`` value and ``batch_size``; ``memo``:
    results computed on the same model and batch, keyed by what else they depend on, for later callers given
    this capture to reuse (the tuner's candidates, probe estimates of propagating sites)."""

    layers: dict[str, LayerStats]
    loss: float
    batch_size: int
    memo: dict[Any, Any] = dataclasses.field(default_factory=dict, repr=False, compare=False)

    def __getitem__(self, name: str) -> LayerStats:
        return self.layers[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self.layers)

    def __len__(self) -> int:
        return len(self.layers)


def hooked_pass(model: nn.Module, inputs: tuple, targets: Any, loss_fn: Callable[..., torch.Tensor],
                modules: Mapping[str, nn.Module], on_call: Callable[[str, nn.Module, torch.Tensor, torch.Tensor], None],
                params: Sequence[torch.Tensor] | Callable[[Mapping[str, int]], Sequence[torch.Tensor]] = (),
                outputs: bool = False, owner: str = "capture") -> tuple[torch.Tensor, tuple[torch.Tensor | None, ...]]:
    """One exact forward/backward of ``loss = loss_fn(model(*inputs), targets)`` under ``radvar.exact()``.

    For every call of each module in ``modules`` whose output gets a gradient,
    ``on_call(name, module, x, g)`` runs as soon as ``g = ∂loss/∂output`` arrives (``x``: the
    call's input; both detached), so the pair can be reduced and dropped. Returns the
    detached loss and ``∂loss/∂p`` for ``params`` (None: unused); a callable ``params`` is
    given, after the forward, each module's number of calls whose output requires grad. ``outputs=True`` also
    asks autograd for every hooked output, so ``on_call`` runs for each used output even
    when no parameter in ``params`` depends on it. Parameters' ``.grad`` are left untouched.
    """
    outs: list[torch.Tensor] = []
    counts = {n: 0 for n in modules}

    def forward_hook(name: str, module: nn.Module) -> Callable:
        def hook(mod: nn.Module, args: tuple, out: torch.Tensor) -> None:
            if not out.requires_grad:
                return
            counts[name] += 1
            x = args[0].detach()
            out.register_hook(lambda g: on_call(name, module, x, g.detach()))
            if outputs:
                outs.append(out)

        return hook

    handles = [m.register_forward_hook(forward_hook(n, m)) for n, m in modules.items()]
    try:
        with rng.exact(), torch.enable_grad():
            loss = batch_loss(model, inputs, targets, loss_fn, owner)
            wrt = outs + list(params(counts) if callable(params) else params)
            found = torch.autograd.grad(loss, wrt, allow_unused=True) if wrt else ()
    finally:
        for h in handles:
            h.remove()
    return loss.detach(), tuple(found[len(outs):])


def capture(model: nn.Module, batch: Batch, loss_fn: Callable[..., torch.Tensor], *,
            names: Mapping[str, Any] | None = None, projection_pairs: int = 256,
            importance: bool = True) -> Capture:
    """One exact forward/backward on ``batch = (inputs, targets)``; statistics per randomizable layer.

    ``names`` restricts capture to those layers (e.g. a Plan); ``projection_pairs``
    example pairs estimate the conv shared-projection cross term when the exact
    all-pairs sum would cost more than a few backward passes; ``importance=False``
    skips the sorted |x| kept for Importance sketches (rows × features floats).
    """
    if isinstance(projection_pairs, bool) or not isinstance(projection_pairs, int) or projection_pairs < 2:
        raise ValueError(f"capture: projection_pairs must be an int >= 2, got {projection_pairs!r}")
    inputs, targets = split_batch(batch, "capture")
    wanted = None if names is None else set(names)
    modules = {n: m for n, m in model.named_modules()
               if kind_for(m) is not None and (wanted is None or n in wanted)}
    calls: dict[str, list[dict[str, ViewStats]]] = {n: [] for n in modules}
    gen = rng.generator(rng.next_key(), inputs[0].device)

    def on_call(name: str, module: nn.Module, x: torch.Tensor, g: torch.Tensor) -> None:
        calls[name].append(kind_for(module).view_stats(module, x, g, gen, projection_pairs, importance))

    loss, grads = hooked_pass(model, inputs, targets, loss_fn, modules, on_call,
                              params=[m.weight for m in modules.values()])
    require_finite(inputs, targets, "capture", loss, dict(zip(modules, grads)))
    layers = {}
    for (name, module), grad in zip(modules.items(), grads):
        kind = kind_for(module)
        layers[name] = LayerStats(name, type(module).__name__, kind.name, kind.axes, module.weight.dtype,
                                  tuple(module.weight.shape),
                                  0.0 if grad is None else float(grad.double().square().sum()), calls[name])
    return Capture(layers, float(loss), int(inputs[0].shape[0]))


def layer_variance(stats: LayerStats, sketch: Sketch | None) -> tuple[float, str]:
    """E‖Ĝ − G‖²_F of ``stats``' weight gradient under ``sketch`` (summed over calls) and its method.

    Per-call draws are independent, so variances add. Cost: a few scalar operations
    (Importance: O(rows·features) vector operations on the cached sorted |x|).
    """
    if sketch is None:
        return 0.0, "exact"
    if not isinstance(sketch, Sketch):
        raise TypeError(f"layer_variance: sketch must be a radvar.sketch.Sketch or None, got {sketch!r}")
    axis = stats.axis(sketch)
    if not stats.calls:
        return 0.0, "not called"
    total, methods = 0.0, []
    for call in stats.calls:
        value, method = call[axis].variance(sketch)
        total += value
        methods.append(method)
    return total, methods[0] if len(set(methods)) == 1 else "; ".join(dict.fromkeys(methods))


def layer_variance_se(stats: LayerStats, sketch: Sketch | None) -> float:
    """Standard error of :func:`layer_variance` (0 for closed forms; Monte Carlo estimates add up in quadrature)."""
    if sketch is None or not stats.calls:
        return 0.0
    axis = stats.axis(sketch)
    return sum(c[axis].standard_error(sketch) ** 2 for c in stats.calls) ** 0.5


__all__ = ["Capture", "LayerStats", "capture", "hooked_pass", "layer_variance", "layer_variance_se", "split_batch", "batch_loss",
           "require_finite"]
