"""The elementwise-activation layer kind: twins that keep a sketch of f'(x) instead of x, and the routes
of the functional calls.

For ``y = f(x)`` applied entry by entry, backward is ``∂x = g ⊙ f'(x)``, linear in d = f'(x): the twin
computes y exactly and keeps an unbiased sketch d̂ of d (E[d̂] = d) on the (rows, features) view
(leading dims as rows, the last dim as features), so E[∂x] = g ⊙ f'(x) and
Var(∂x_i) = g_i²·Var(d̂_i) per entry (:mod:`radvar.ops.activation`). That error enters the backward
signal and reaches every gradient upstream, so these twins are *propagating*: no closed-form weight
statistics; :mod:`radvar.variance` pushes their local noise back through the exact backward.

Twins: torch's ``nn.GELU`` (both approximations), ``nn.SiLU``, ``nn.Tanh``, ``nn.Sigmoid``,
``nn.Softplus``, ``nn.Mish``, ``nn.Hardswish``, ``nn.ReLU6``; and, when transformers imports, the
parameter-free elementwise classes of ``transformers.activations`` (:data:`HF_DERIVATIVES`), each with
the derivative of its own formula. ``inplace=True`` modules write y into x, as the plain module does.

Families (:data:`FAMILIES`): ``quantize`` (every bit width, alone or after sampling), and the sampling
families whose kept entries are scaled so that E[d̂] = d entry by entry: ``subsample`` (shared or per
row), ``bernoulli`` and ``importance``. ``projection`` is refused: its d̂ = d R Rᵀ mixes every feature
of a row into each entry (per-entry variance ‖d_row‖²/k instead of d_i²·(n/k − 1)) and rebuilding it
costs a rows × n × k product, the work of a linear layer.

Functional routes (:func:`radvar.layers.functional.function_kind`): ``F.gelu``, ``F.silu``,
``torch.tanh``/``Tensor.tanh`` (``F.tanh`` is ``Tensor.tanh``), ``torch.sigmoid``/``Tensor.sigmoid``
(also ``F.sigmoid``), ``F.softplus``; each factory returns an op with the torch function's signature.
"""

from __future__ import annotations

import inspect
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from .. import rng
from ..ops import activation as act
from ..sketch import Sketch
from .functional import Op, function_kind
from .registry import Twin, register

FAMILIES = ("quantize", "subsample", "bernoulli", "importance")
VIEWS = ("features",)
FAST_GELU_C = 0.7978845608  # the rounded √(2/π) in transformers' FastGELUActivation


class SketchedActivation(Twin):
    """Mixin of the elementwise twins: a propagating randomized twin with no weight."""

    randomized = True
    propagates = True
    views = VIEWS
    families = FAMILIES
    sketch: Sketch | None

    def extra_repr(self) -> str:
        return ", ".join(s for s in (super().extra_repr(), self.sketch_label()) if s)


@register(nn.GELU)
class RADGELU(SketchedActivation, nn.GELU):
    """``nn.GELU`` keeping a sketch of GELU'(x)."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return act.rad_gelu(input, self.approximate, self.sketch)


@register(nn.SiLU)
class RADSiLU(SketchedActivation, nn.SiLU):
    """``nn.SiLU`` keeping a sketch of SiLU'(x)."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return act.rad_silu(input, self.inplace, self.sketch)


@register(nn.Tanh)
class RADTanh(SketchedActivation, nn.Tanh):
    """``nn.Tanh`` keeping a sketch of 1 − tanh²(x) (plain torch keeps the output)."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return act.rad_tanh(input, self.sketch)


@register(nn.Sigmoid)
class RADSigmoid(SketchedActivation, nn.Sigmoid):
    """``nn.Sigmoid`` keeping a sketch of σ(x)(1 − σ(x)) (plain torch keeps the output)."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return act.rad_sigmoid(input, self.sketch)


@register(nn.Softplus)
class RADSoftplus(SketchedActivation, nn.Softplus):
    """``nn.Softplus`` keeping a sketch of its derivative (σ(βx), 1 above the threshold)."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return act.rad_softplus(input, self.beta, self.threshold, self.sketch)


@register(nn.Mish)
class RADMish(SketchedActivation, nn.Mish):
    """``nn.Mish`` keeping a sketch of Mish'(x)."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return act.rad_mish(input, self.inplace, self.sketch)


@register(nn.Hardswish)
class RADHardswish(SketchedActivation, nn.Hardswish):
    """``nn.Hardswish`` keeping a sketch of its piecewise-linear derivative."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return act.rad_hardswish(input, self.inplace, self.sketch)


@register(nn.ReLU6)
class RADReLU6(SketchedActivation, nn.ReLU6):
    """``nn.ReLU6`` keeping a sketch of its 0/1 derivative (``Quantize`` keeps it exactly)."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return act.rad_hardtanh(input, self.min_val, self.max_val, self.inplace, self.sketch)


# ---- transformers' activation classes ----------------------------------------------------------------------------

HF_DERIVATIVES: dict[str, Callable[..., act.Derivative]] = {
    "GELUActivation": lambda m: lambda x, y: act.gelu_derivative(x),
    "GELUTanh": lambda m: lambda x, y: act.gelu_derivative(x, "tanh"),
    "NewGELUActivation": lambda m: lambda x, y: act.gelu_derivative(x, "tanh"),
    "AccurateGELUActivation": lambda m: lambda x, y: act.gelu_derivative(x, "tanh"),
    "FastGELUActivation": lambda m: lambda x, y: act.tanh_gelu_derivative(x, FAST_GELU_C),
    "QuickGELUActivation": lambda m: lambda x, y: act.quick_gelu_derivative(x),
    "SiLUActivation": lambda m: lambda x, y: act.silu_derivative(x),
    "ClippedGELUActivation": lambda m: lambda x, y: act.clipped_gelu_derivative(x, m.min, m.max),
    "MishActivation": lambda m: lambda x, y: act.mish_derivative(x),
    "LaplaceActivation": lambda m, mu, sigma: lambda x, y: act.laplace_derivative(x, mu, sigma),
    "ReLUSquaredActivation": lambda m: lambda x, y: act.relu_squared_derivative(x),
    "SqrtSoftplusActivation": lambda m: act.sqrt_softplus_derivative,
}
"""Class name in ``transformers.activations`` -> ``factory(module, **forward options)`` giving the
derivative of that class's own formula (``PytorchGELUTanh`` is ``GELUTanh``). Left out: ``LinearActivation``
(keeps nothing), ``XIELUActivation`` (has parameters), and torch classes, which have their own twins."""


class HFSketchedActivation(SketchedActivation):
    """Mixin of the transformers twins: the source's own forward, keeping a sketch of
    ``derivative_of(module, **forward options)``."""

    derivative_of: Callable[..., act.Derivative]
    signature: inspect.Signature

    def forward(self, input: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        if not act.randomizes(input, self.sketch):
            return super().forward(input, *args, **kwargs)
        bound = self.signature.bind(self, input, *args, **kwargs)
        bound.apply_defaults()
        options = dict(list(bound.arguments.items())[2:])  # after self and input
        plain = super().forward
        return act.sketch_derivative(input, lambda x: plain(x, *args, **kwargs),
                                     type(self).derivative_of(self, **options), self.sketch)


def _register_hf() -> dict[str, type[Twin]]:
    """A registered twin ``RAD<Name>`` for every class of :data:`HF_DERIVATIVES` that the installed
    transformers has (none without transformers)."""
    try:
        from transformers import activations as hf
    except ImportError:  # transformers is optional
        return {}
    twins = {}
    for name, derivative_of in HF_DERIVATIVES.items():
        source = getattr(hf, name, None)
        if source is None:
            continue
        twin = type(f"RAD{name}", (HFSketchedActivation, source), {
            "__module__": __name__, "__doc__": f"transformers ``{name}`` keeping a sketch of its derivative.",
            "derivative_of": staticmethod(derivative_of), "signature": inspect.signature(source.forward)})
        twins[twin.__name__] = register(source)(twin)
    return twins


globals().update(_register_hf())


# ---- functional routes -------------------------------------------------------------------------------------------

def _checked(name: str, sketch: Sketch | None) -> Sketch | None:
    """``sketch`` if a route of ``name`` takes it (None: exact), else an error naming it and the allowed families."""
    if sketch is not None and not isinstance(sketch, Sketch):
        raise TypeError(f"{name} route: sketch must be a radvar.sketch.Sketch or None (exact), got {sketch!r}")
    if sketch is not None and sketch.kind not in FAMILIES:
        raise ValueError(f"{name} route: sketch family {sketch.kind!r} is not allowed; allowed: {list(FAMILIES)} "
                         f"or None (exact)")
    if sketch is not None and sketch.view not in (None, *VIEWS):
        raise ValueError(f"{name} route: view {sketch.view!r} is not allowed; allowed: {[None, *VIEWS]}")
    return sketch


@function_kind(F.gelu, name="gelu", families=FAMILIES)
def gelu_route(sketch: Sketch | None) -> Op:
    """``F.gelu(input, approximate="none")`` keeping ``sketch`` of GELU'(x)."""
    sketch = _checked("gelu", sketch)
    return lambda input, approximate="none": act.rad_gelu(input, approximate, sketch)


@function_kind(F.silu, name="silu", families=FAMILIES)
def silu_route(sketch: Sketch | None) -> Op:
    """``F.silu(input, inplace=False)`` keeping ``sketch`` of SiLU'(x)."""
    sketch = _checked("silu", sketch)
    return lambda input, inplace=False: act.rad_silu(input, inplace, sketch)


def _plain_with_out(plain: Callable[..., torch.Tensor], op: Callable[[torch.Tensor], torch.Tensor]) -> Op:
    """An op for ``torch.f(input, *, out=None)``: a call with ``out=`` (never differentiable) runs plain."""
    return lambda input, *, out=None: op(input) if out is None else plain(input, out=out)


@function_kind(torch.tanh, torch.Tensor.tanh, name="tanh", families=FAMILIES)
def tanh_route(sketch: Sketch | None) -> Op:
    """``torch.tanh(input, *, out=None)`` and ``Tensor.tanh`` keeping ``sketch`` of 1 − tanh²(x)."""
    sketch = _checked("tanh", sketch)
    return _plain_with_out(torch.tanh, lambda input: act.rad_tanh(input, sketch))


@function_kind(torch.sigmoid, torch.Tensor.sigmoid, name="sigmoid", families=FAMILIES)
def sigmoid_route(sketch: Sketch | None) -> Op:
    """``torch.sigmoid(input, *, out=None)`` and ``Tensor.sigmoid`` keeping ``sketch`` of σ'(x)."""
    sketch = _checked("sigmoid", sketch)
    return _plain_with_out(torch.sigmoid, lambda input: act.rad_sigmoid(input, sketch))


@function_kind(F.softplus, name="softplus", families=FAMILIES)
def softplus_route(sketch: Sketch | None) -> Op:
    """``F.softplus(input, beta=1, threshold=20)`` keeping ``sketch`` of its derivative."""
    sketch = _checked("softplus", sketch)
    return lambda input, beta=1.0, threshold=20.0: act.rad_softplus(input, beta, threshold, sketch)
