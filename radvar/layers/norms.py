"""The normalization layer kinds: LayerNorm, RMSNorm, BatchNorm1d/2d/3d, GroupNorm, the transformers
RMSNorm classes, and the functional routes of ``F.layer_norm``, ``F.rms_norm``, ``F.batch_norm`` and
``F.group_norm``.

Each twin keeps 1/σ per reduction set and two independent sketches of the
normalized input z (:mod:`radvar.ops.norm`); the sketch error reaches the input
gradient and so every gradient upstream (``propagates = True``: no closed-form
weight statistics). Any sketch with E[ẑ] = z keeps the backward unbiased, so
every family is accepted. Views: LayerNorm and RMSNorm offer ``features``
(rows: every leading index, features: the normalized ones); BatchNorm and
GroupNorm offer ``examples`` (rows: examples, features: channels × positions,
the default) and ``positions`` (rows: (example, channel) pairs, features:
positions).

BatchNorm twins reproduce torch's own bookkeeping: ``num_batches_tracked``,
momentum None (a cumulative average with factor 1/num_batches_tracked),
``track_running_stats=False`` (batch statistics in eval too); torch's forward
updates the running statistics. In eval mode with running statistics, BatchNorm
is a per-channel affine map and its backward is exact.

transformers defines one RMSNorm per model, most of them copies of a few
formulas. A transformers class is given a twin when its ``forward`` (and Gemma's
``_norm``) is, as source, one of :data:`HF_RMS_FORMULAS`: y = γ·z with z computed
in float32 (Llama, Mistral, Qwen and their copies: ``γ * z.to(dtype)``; OLMo-2:
``(γ * z).to(dtype)``; T5: ``γ * (x * rsqrt(...))``), or Gemma's
y = (1 + γ)·z. The twin runs the class's own forward for y (bitwise the plain
output), so only the backward changes. Other transformers norms (gated RMSNorms,
channels-first LayerNorms) stay exact.
"""

from __future__ import annotations

import ast
import functools
import inspect
import textwrap
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from .. import rng
from ..ops import norm as norm_op
from ..sketch import Sketch
from .functional import function_kind
from .registry import Twin, register, register_matcher

FAMILIES = ("quantize", "subsample", "bernoulli", "importance", "projection")


class _NormTwin(Twin):
    """What every norm twin shares: propagating, every family, draws whenever a gradient is computed."""

    randomized = True
    propagates = True
    families = FAMILIES
    sketch: Sketch | None

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, {self.sketch_label()}"


@register(nn.LayerNorm)
class RADLayerNorm(_NormTwin, nn.LayerNorm):
    """``nn.LayerNorm`` keeping 1/σ per row and two sketches of z on the (rows, normalized features) view."""

    views = norm_op.TOKEN_VIEWS

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self._randomizes():
            return super().forward(x)
        return norm_op.rad_layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps, self.sketch)


@register(nn.RMSNorm)
class RADRMSNorm(_NormTwin, nn.RMSNorm):
    """``nn.RMSNorm`` keeping 1/σ per row and two sketches of z = x/σ."""

    views = norm_op.TOKEN_VIEWS

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self._randomizes():
            return super().forward(x)
        return norm_op.rad_rms_norm(x, self.normalized_shape, self.weight, self.eps, self.sketch)


@register(nn.GroupNorm)
class RADGroupNorm(_NormTwin, nn.GroupNorm):
    """``nn.GroupNorm`` keeping 1/σ per (example, group) and two sketches of z."""

    views = norm_op.CHANNEL_VIEWS

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self._randomizes():
            return super().forward(x)
        return norm_op.rad_group_norm(x, self.num_groups, self.weight, self.bias, self.eps, self.sketch)


class _RADBatchNorm(_NormTwin):
    """BatchNorm twin: torch's ``_BatchNorm.forward`` bookkeeping, then :func:`radvar.ops.norm.rad_batch_norm`."""

    views = norm_op.CHANNEL_VIEWS

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self._randomizes():
            return super().forward(x)
        self._check_input_dim(x)
        factor = 0.0 if self.momentum is None else self.momentum
        if self.training and self.track_running_stats and self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
            factor = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
        use_batch = self.training or (self.running_mean is None and self.running_var is None)
        tracked = not self.training or self.track_running_stats
        return norm_op.rad_batch_norm(x, self.running_mean if tracked else None,
                                      self.running_var if tracked else None, self.weight, self.bias, use_batch,
                                      factor, self.eps, self.sketch)


@register(nn.BatchNorm1d)
class RADBatchNorm1d(_RADBatchNorm, nn.BatchNorm1d):
    """``nn.BatchNorm1d`` keeping 1/σ per channel and two sketches of z in training mode."""


@register(nn.BatchNorm2d)
class RADBatchNorm2d(_RADBatchNorm, nn.BatchNorm2d):
    """``nn.BatchNorm2d`` keeping 1/σ per channel and two sketches of z in training mode."""


@register(nn.BatchNorm3d)
class RADBatchNorm3d(_RADBatchNorm, nn.BatchNorm3d):
    """``nn.BatchNorm3d`` keeping 1/σ per channel and two sketches of z in training mode."""


# ---- transformers RMSNorm classes, recognised by their source -------------------------------------------------

def _normalized(source: str) -> str:
    """A function's source without its name, decorators, annotations, docstring and comments."""
    fn = ast.parse(textwrap.dedent(source)).body[0]
    if not isinstance(fn, ast.FunctionDef):
        raise ValueError("not a function definition")
    fn.name, fn.returns, fn.decorator_list = "f", None, []
    for arg in fn.args.posonlyargs + fn.args.args + fn.args.kwonlyargs:
        arg.annotation = None
    if fn.body and isinstance(fn.body[0], ast.Expr) and isinstance(fn.body[0].value, ast.Constant):
        fn.body = fn.body[1:]
    return ast.unparse(fn)


_SCALED = 0.0, "variance_epsilon"  # (γ's offset, ε's attribute) of the y = γ·z formulas
HF_RMS_FORMULAS: dict[str, tuple[float, str]] = {
    _normalized(src): pair for src, pair in [
        ("""def forward(self, hidden_states):
                input_dtype = hidden_states.dtype
                hidden_states = hidden_states.to(torch.float32)
                variance = hidden_states.pow(2).mean(-1, keepdim=True)
                hidden_states = hidden_states * torch.rsqrt(variance + self.variance_epsilon)
                return self.weight * hidden_states.to(input_dtype)""", _SCALED),
        ("""def forward(self, hidden_states):
                input_dtype = hidden_states.dtype
                hidden_states = hidden_states.to(torch.float32)
                variance = hidden_states.pow(2).mean(-1, keepdim=True)
                hidden_states = hidden_states * torch.rsqrt(variance + self.variance_epsilon)
                return (self.weight * hidden_states).to(input_dtype)""", _SCALED),
        ("""def forward(self, hidden_states):
                variance = hidden_states.to(torch.float32).pow(2).mean(-1, keepdim=True)
                hidden_states = hidden_states * torch.rsqrt(variance + self.variance_epsilon)
                if self.weight.dtype in [torch.float16, torch.bfloat16]:
                    hidden_states = hidden_states.to(self.weight.dtype)
                return self.weight * hidden_states""", _SCALED),
        ("""def forward(self, x):
                output = self._norm(x.float())
                output = output * (1.0 + self.weight.float())
                return output.type_as(x)""", (1.0, "eps")),
    ]}
"""Normalized ``forward`` source -> (offset, the attribute holding ε): γ = offset + weight (Gemma: 1 + weight in
float32), or the weight itself for offset 0."""
GEMMA_NORM = _normalized("""def _norm(self, x):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)""")


class _RADHFRMSNorm(_NormTwin):
    """A transformers RMSNorm y = γ·z (z = x/√(mean(x²) + ε) in float32): the class's own forward for y,
    1/σ per row and two sketches of z kept (the twin class is made per source class by the matcher)."""

    views = norm_op.TOKEN_VIEWS
    formula: tuple[float, str]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self._randomizes() or x.dim() == 0:
            return super().forward(x)
        offset, eps_name = self.formula
        weight = self.weight if offset == 0.0 else offset + self.weight.float()
        own = super().forward
        return norm_op.rad_rms_norm_with(x, weight, lambda x_, w, b: own(x_), float(getattr(self, eps_name)),
                                         torch.float32, self.sketch)

    def __reduce_ex__(self, protocol: Any) -> tuple:
        """Pickled as its transformers class and state; loading rebuilds the twin class (made at run time)."""
        return _hf_twin_instance, (type(self).__bases__[1],), self.__dict__


def _source(fn: Any) -> str | None:
    try:
        return _normalized(inspect.getsource(fn))
    except (OSError, TypeError, ValueError, SyntaxError):
        return None


@register_matcher
@functools.cache
def hf_rms_norm_twin(cls: type[nn.Module]) -> type[Twin] | None:
    """A twin for a transformers class whose forward is one of :data:`HF_RMS_FORMULAS`, else None."""
    if not cls.__module__.startswith("transformers."):
        return None
    formula = HF_RMS_FORMULAS.get(_source(getattr(cls, "forward", None)) or "")
    if formula is None or formula[0] != 0.0 and _source(getattr(cls, "_norm", None)) != GEMMA_NORM:
        return None
    return type(f"RAD{cls.__name__}", (_RADHFRMSNorm, cls),
                {"formula": formula, "__module__": __name__, "__doc__": f"{cls.__name__} with a RAD backward."})


def _hf_twin_instance(source: type[nn.Module]) -> nn.Module:
    """An empty instance of the twin of ``source`` (registered), for unpickling."""
    twin = hf_rms_norm_twin(source)
    if twin is None:
        raise TypeError(f"radvar: {source.__module__}.{source.__qualname__} no longer has the RMSNorm formula of "
                        f"its pickled RAD twin")
    register(source)(twin)
    return twin.__new__(twin)


# ---- functional routes ----------------------------------------------------------------------------------------

def _route(op: Callable[..., torch.Tensor], fn: Callable[..., Any]) -> Callable[[Sketch], Callable[..., torch.Tensor]]:
    """A factory ``sketch -> routed``: ``routed`` takes ``fn``'s own arguments (positional or by name,
    defaults filled in) and calls ``op(*arguments, sketch)``."""
    signature = inspect.signature(fn)

    def factory(sketch: Sketch) -> Callable[..., torch.Tensor]:
        def routed(*args: Any, **kwargs: Any) -> torch.Tensor:
            bound = signature.bind(*args, **kwargs)
            bound.apply_defaults()
            return op(*bound.arguments.values(), sketch)

        return routed

    return factory


layer_norm_route = function_kind(F.layer_norm, name="layer_norm", families=FAMILIES)(
    _route(norm_op.rad_layer_norm, F.layer_norm))
rms_norm_route = function_kind(F.rms_norm, name="rms_norm", families=FAMILIES)(
    _route(norm_op.rad_rms_norm, F.rms_norm))
batch_norm_route = function_kind(F.batch_norm, name="batch_norm", families=FAMILIES)(
    _route(norm_op.rad_batch_norm, F.batch_norm))
group_norm_route = function_kind(F.group_norm, name="group_norm", families=FAMILIES)(
    _route(norm_op.rad_group_norm, F.group_norm))
