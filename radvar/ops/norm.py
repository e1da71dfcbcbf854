"""RAD normalization: LayerNorm, RMSNorm, BatchNorm (training and eval) and GroupNorm.

Every norm here standardizes x over a *reduction set* and applies a per-feature
(or per-channel) affine map: with σ = √(var + ε) (RMSNorm: σ = √(mean(x²) + ε),
no centering) and z = (x − μ)/σ (RMSNorm: z = x/σ),

    y = γ ⊙ z + β,
    ∂x = (1/σ)(ĝ − mean(ĝ) − z · mean(ĝ ⊙ z)),  ĝ = γ ⊙ g   (RMSNorm: no mean(ĝ) term),
    ∂γ = Σ g ⊙ z,   ∂β = Σ g,

means over the reduction set, sums over everything else. ∂x uses z twice in
one product, so the op keeps two sketches ẑ₁, ẑ₂ of z drawn with independent
keys and uses

    ∂x̂ = (1/σ)(ĝ − mean(ĝ) − ½[ẑ₁ · mean(ĝ ⊙ ẑ₂) + ẑ₂ · mean(ĝ ⊙ ẑ₁)]),
    ∂γ̂ = Σ g ⊙ ½(ẑ₁ + ẑ₂):

each product multiplies independent unbiased factors, so E[∂x̂] = ∂x and
E[∂γ̂] = ∂γ (averaging the two orders only lowers the variance). When x needs
no gradient one sketch is kept, for ∂γ. σ (one number per reduction set) is
kept exactly; μ is not needed. The draws come from :meth:`Sketch.compress_draws`
(Quantize shares its grid and its offsets and steps, which depend on z only,
between them, so they are kept once).

Every norm is laid out as x viewed (N, G, K, S) with γ over (G, K):

========== ================= ============== =========================
norm       (N, G, K, S)      reduction dims views (rows of the sketch)
========== ================= ============== =========================
layer/rms  (rows, 1, n, 1)   1, 2, 3        features: rows
batch      (N, 1, C, S)      0, 1, 3        examples: N; positions: N·C
group      (N, G, C/G, S)    2, 3           examples: N; positions: N·C
========== ================= ============== =========================

(n: the normalized features, S: the spatial positions.) The sketch sees z as
(rows, features) in x's own memory order, so its per-row offsets cost two
numbers per row.

y, μ and 1/σ come from the kernel that torch's functional forward runs
(``native_layer_norm``, ``native_group_norm``; ``native_batch_norm`` on CPU),
so y is bitwise the plain output and BatchNorm's running statistics are updated
by torch itself; z = (x − μ)/σ is one more pass. RMSNorm, BatchNorm off CPU
and 16-bit input (whose kernels keep a 16-bit σ) compute z and 1/σ with
:func:`standardize` in float32 (float64 for float64 input) beside torch's
forward. BatchNorm in
eval mode is the per-channel affine map y = x·s + t with exact backward; it
keeps x only when γ needs a gradient.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from .. import rng
from ..sketch import Sketch
from ._kept import recorder, sketching

TOKEN_VIEWS = ("features",)
CHANNEL_VIEWS = ("examples", "positions")
PARAM_DIMS = (0, 3)  # the (N, S) dims γ and β are summed over


@dataclasses.dataclass(frozen=True)
class Layout:
    """x viewed as ``shape`` = (N, G, K, S), standardized over ``reduce`` (with its mean
    subtracted if ``centered``), and the number of ``rows`` of the sketch's 2-D view of z."""

    shape: tuple[int, int, int, int]
    reduce: tuple[int, ...]
    centered: bool
    rows: int


def standardize(x4: torch.Tensor, layout: Layout, eps: float,
                acc: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """(z, 1/σ) of a (N, G, K, S) tensor in dtype ``acc``: σ = √(var + ε) and z = (x − μ)/σ if
    centered, else σ = √(mean(x²) + ε) and z = x/σ; 1/σ keeps the reduced dims as size 1."""
    xa = x4.to(acc)
    if layout.centered:
        var, mean = torch.var_mean(xa, dim=layout.reduce, correction=0, keepdim=True)
        rstd = (var + eps).rsqrt()
        return (xa - mean) * rstd, rstd
    rstd = (xa.square().mean(layout.reduce, keepdim=True) + eps).rsqrt()
    return xa * rstd, rstd


def accumulate_dtype(dtype: torch.dtype) -> torch.dtype:
    """float64 for float64 input, else float32: the dtype σ and z are computed in."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def check_view(sketch: Sketch, views: tuple[str, ...], owner: str) -> str:
    """The sketch's view (None: the first of ``views``), or a ValueError naming the allowed ones."""
    if sketch.view is not None and sketch.view not in views:
        raise ValueError(f"{owner}: view {sketch.view!r} is not offered; allowed: {[None, *views]}")
    return sketch.view or views[0]


def randomizes(sketch: Sketch | None, *tensors: torch.Tensor | None) -> bool:
    """Whether a norm call draws a sketch: a non-exact sketch, outside ``radvar.exact()``, with
    grad enabled, a non-empty input (the first tensor) and some tensor requiring grad."""
    if sketch is not None and not isinstance(sketch, Sketch):
        raise TypeError(f"norm op: sketch must be a radvar.sketch.Sketch or None, got {sketch!r}")
    if not sketching(sketch):
        return False
    return tensors[0].numel() > 0 and any(t is not None and t.requires_grad for t in tensors)


@dataclasses.dataclass
class NormCall:
    """One row-layout call (LayerNorm, RMSNorm) of :class:`RADNormFunction` as
    :func:`radvar.ops._kept.recording` records it: its input x, z as the sketch saw it (rows, n), 1/σ per
    row, γ as passed (None without one) and, after backward, the output gradient (rows, n)."""

    x: torch.Tensor
    z: torch.Tensor
    rstd: torch.Tensor
    weight: torch.Tensor | None
    grad: torch.Tensor | None = None


class RADNormFunction(torch.autograd.Function):
    """(y, z, 1/σ) = run(x, γ, β), y by torch's forward; keeps 1/σ and one or two sketches of z (see the
    module docstring)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None, run: "Run",
                layout: Layout, sketch: Sketch, keys: tuple[int, int]) -> torch.Tensor:
        y, z, rstd = run(x, weight, bias)
        view = z.to(x.dtype).reshape(layout.rows, -1)
        used = keys if ctx.needs_input_grad[0] else keys[:1]
        draws = sketch.compress_draws(view, [rng.generator(key, x.device) for key in used])
        ctx.save_for_backward(weight, rstd, *(t for saved, _ in draws for t in saved))
        ctx.sketch, ctx.metas, ctx.keys, ctx.layout = sketch, [meta for _, meta in draws], used, layout
        ctx.x_shape, ctx.split = x.shape, len(draws[0][0])
        ctx.bias_shape = None if bias is None else bias.shape
        if (calls := recorder()) is not None and layout.reduce == (1, 2, 3):
            ctx.record = NormCall(x.detach(), view.detach(), rstd.detach().reshape(-1), weight)
            calls.append(ctx.record)
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx, gy: torch.Tensor):
        weight, rstd, *saved = ctx.saved_tensors
        layout, sketch = ctx.layout, ctx.sketch
        if (record := getattr(ctx, "record", None)) is not None:
            record.grad = gy.detach().reshape(layout.rows, -1)
        shape, red = layout.shape, layout.reduce
        zs = [sketch.restore(tuple(saved[i * ctx.split:(i + 1) * ctx.split]), meta,
                             rng.generator(key, gy.device)).to(rstd.dtype).view(shape)
              for i, (meta, key) in enumerate(zip(ctx.metas, ctx.keys))]
        g = gy.reshape(shape).to(rstd.dtype)
        if set(PARAM_DIMS) <= set(red) and shape[1] == 1:
            return _per_channel_backward(ctx, g, zs, weight, rstd)
        gx = gw = gb = None
        if ctx.needs_input_grad[0]:
            z1, z2 = zs
            gh = g * weight.to(rstd.dtype).view(1, shape[1], shape[2], 1) if weight is not None else g
            m1, m2 = (gh * z1).mean(red, keepdim=True), (gh * z2).mean(red, keepdim=True)
            if layout.centered:
                gx = gh - gh.mean(red, keepdim=True)
            else:
                gx = gh.clone() if gh is g else gh
            gx = gx.addcmul_(z1, m2, value=-0.5).addcmul_(z2, m1, value=-0.5).mul_(rstd).view(ctx.x_shape)
        if weight is not None and ctx.needs_input_grad[1]:
            zsum = zs[0] if len(zs) == 1 else zs[0].add_(zs[1]).mul_(0.5)
            gw = (g * zsum).sum(PARAM_DIMS).view(weight.shape)
        if ctx.bias_shape is not None and ctx.needs_input_grad[2]:
            gb = g.sum(PARAM_DIMS).view(ctx.bias_shape)
        return gx, gw, gb, None, None, None, None


def _per_channel_backward(ctx: Any, g: torch.Tensor, zs: list[torch.Tensor], weight: torch.Tensor | None,
                          rstd: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
    """The backward when the reduction set is everything but the channel (BatchNorm): with the sums
    s = Σ g, s_k = Σ g ⊙ ẑ_k over it (n entries), ∂x̂ = (γ/σ)(g − s/n − ½[ẑ₁ s₂ + ẑ₂ s₁]/n),
    ∂γ̂ = ½(s₁ + s₂), ∂β = s: three reductions, and no ĝ = γ ⊙ g tensor."""
    n = g.numel() // g.shape[2]
    sums = [g.sum(PARAM_DIMS, keepdim=True), *((g * z).sum(PARAM_DIMS, keepdim=True) for z in zs)]
    gx = gw = gb = None
    if ctx.needs_input_grad[0]:
        scale = rstd if weight is None else rstd * weight.to(rstd.dtype).view(rstd.shape)
        gx = (g - sums[0] / n).addcmul_(zs[0], sums[2], value=-0.5 / n).addcmul_(zs[1], sums[1], value=-0.5 / n)
        gx = gx.mul_(scale).view(ctx.x_shape)
    if weight is not None and ctx.needs_input_grad[1]:
        gw = (sums[1] if len(zs) == 1 else 0.5 * (sums[1] + sums[2])).view(weight.shape)
    if ctx.bias_shape is not None and ctx.needs_input_grad[2]:
        gb = sums[0].view(ctx.bias_shape)
    return gx, gw, gb, None, None, None, None


Run = Callable[[torch.Tensor, "torch.Tensor | None", "torch.Tensor | None"],
               tuple[torch.Tensor, torch.Tensor, torch.Tensor]]


def _apply(x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None, run: Run, layout: Layout,
           sketch: Sketch) -> torch.Tensor:
    return RADNormFunction.apply(x, weight, bias, run, layout, sketch, (rng.next_key(), rng.next_key()))


def _kernel(native: Callable[..., tuple[torch.Tensor, torch.Tensor, torch.Tensor]], layout: Layout, eps: float) -> Run:
    """(y, z, 1/σ) from torch's kernel ``native(x, γ, β) -> (y, μ, 1/σ)`` (the kernel torch's functional
    forward runs, so y is bitwise the plain output) and one pass z = (x − μ)/σ; 16-bit input (whose
    kernels keep a 16-bit σ) takes z and 1/σ from :func:`standardize` in float32."""

    def run(x: torch.Tensor, weight: torch.Tensor | None,
            bias: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        y, mean, rstd = native(x, weight, bias)
        if x.dtype not in (torch.float32, torch.float64):
            return y, *standardize(x.reshape(layout.shape), layout, eps, torch.float32)
        keep = [1 if d in layout.reduce else size for d, size in enumerate(layout.shape)]
        mean, rstd = mean.reshape(keep), rstd.reshape(keep)
        return y, (x.reshape(layout.shape) - mean).mul_(rstd), rstd

    return run


def _beside(forward: Callable[..., torch.Tensor], layout: Layout, eps: float,
            acc: torch.dtype | None = None) -> Run:
    """(y, z, 1/σ) with y = ``forward(x, γ, β)`` and z, 1/σ from :func:`standardize` in ``acc`` (default:
    :func:`accumulate_dtype` of x)."""
    return lambda x, w, b: (forward(x, w, b),
                            *standardize(x.reshape(layout.shape), layout, eps, acc or accumulate_dtype(x.dtype)))


def _rows_layout(x: torch.Tensor, normalized_shape: Sequence[int], centered: bool) -> Layout:
    n = math.prod(normalized_shape)
    rows = x.numel() // n
    return Layout((rows, 1, n, 1), (1, 2, 3), centered, rows)


def _channel_layout(x: torch.Tensor, groups: int, reduce: tuple[int, ...], view: str) -> Layout:
    n, c = x.shape[0], x.shape[1]
    return Layout((n, groups, c // groups, x.numel() // (n * c)), reduce, True, n if view == "examples" else n * c)


def _shape(normalized_shape: int | Sequence[int]) -> tuple[int, ...]:
    return (normalized_shape,) if isinstance(normalized_shape, int) else tuple(normalized_shape)


def _fits(x: torch.Tensor, normalized_shape: tuple[int, ...]) -> bool:
    """Whether x ends in ``normalized_shape`` (else torch's own forward raises its error)."""
    return 0 < len(normalized_shape) <= x.dim() and tuple(x.shape[x.dim() - len(normalized_shape):]) == normalized_shape


@torch.compiler.disable
def rad_layer_norm(input: torch.Tensor, normalized_shape: int | Sequence[int], weight: torch.Tensor | None,
                   bias: torch.Tensor | None, eps: float, sketch: Sketch | None) -> torch.Tensor:
    """``F.layer_norm`` keeping 1/σ per row and two sketches of z on the (rows, n) view."""
    shape = _shape(normalized_shape)
    if not randomizes(sketch, input, weight, bias) or not _fits(input, shape):
        return F.layer_norm(input, normalized_shape, weight, bias, eps)
    check_view(sketch, TOKEN_VIEWS, "layer_norm")
    layout = _rows_layout(input, shape, True)
    return _apply(input, weight, bias, _kernel(lambda x, w, b: torch.native_layer_norm(x, shape, w, b, eps), layout,
                                               eps), layout, sketch)


@torch.compiler.disable
def rad_rms_norm(input: torch.Tensor, normalized_shape: int | Sequence[int], weight: torch.Tensor | None,
                 eps: float | None, sketch: Sketch | None) -> torch.Tensor:
    """``F.rms_norm`` keeping 1/σ per row and two sketches of z = x/σ on the (rows, n) view
    (ε = None: the machine epsilon of the float32 accumulation, float64's for float64 input, as torch)."""
    shape = _shape(normalized_shape)
    if not randomizes(sketch, input, weight) or not _fits(input, shape):
        return F.rms_norm(input, normalized_shape, weight, eps)
    check_view(sketch, TOKEN_VIEWS, "rms_norm")
    eps_value = torch.finfo(accumulate_dtype(input.dtype)).eps if eps is None else eps
    layout = _rows_layout(input, shape, False)
    return _apply(input, weight, None, _beside(lambda x, w, b: F.rms_norm(x, normalized_shape, w, eps), layout,
                                               eps_value), layout, sketch)


@torch.compiler.disable
def rad_rms_norm_with(input: torch.Tensor, weight: torch.Tensor | None, run: Callable[..., torch.Tensor],
                      eps: float, acc: torch.dtype, sketch: Sketch) -> torch.Tensor:
    """RMSNorm over the last dim whose forward is ``run(x, γ, None)`` and whose σ and z are computed in
    ``acc`` (for modules that compute y = γ·(x/σ) their own way, e.g. in float32 whatever x's dtype)."""
    check_view(sketch, TOKEN_VIEWS, "rms_norm")
    layout = _rows_layout(input, input.shape[-1:], False)
    return _apply(input, weight, None, _beside(run, layout, eps, acc), layout, sketch)


@torch.compiler.disable
def rad_group_norm(input: torch.Tensor, num_groups: int, weight: torch.Tensor | None, bias: torch.Tensor | None,
                   eps: float, sketch: Sketch | None) -> torch.Tensor:
    """``F.group_norm`` keeping 1/σ per (sample, group) and two sketches of z."""
    if (not randomizes(sketch, input, weight, bias) or input.dim() < 2 or not isinstance(num_groups, int)
            or num_groups < 1 or input.shape[1] % num_groups):
        return F.group_norm(input, num_groups, weight, bias, eps)
    view = check_view(sketch, CHANNEL_VIEWS, "group_norm")
    layout = _channel_layout(input, num_groups, (2, 3), view)
    n, c, s = input.shape[0], input.shape[1], layout.shape[3]
    return _apply(input, weight, bias,
                  _kernel(lambda x, w, b: torch.native_group_norm(x, w, b, n, c, s, num_groups, eps), layout, eps),
                  layout, sketch)


class BatchNormEvalFunction(torch.autograd.Function):
    """Eval-mode BatchNorm y = x·s + t per channel, s = γ/√(running var + ε): ∂x = g·s, ∂β = Σ g and
    ∂γ = Σ g·(x − running mean)/√(running var + ε), exact; x is kept only when γ needs a gradient."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None,
                running_mean: torch.Tensor, running_var: torch.Tensor, eps: float) -> torch.Tensor:
        y = F.batch_norm(x, running_mean, running_var, weight, bias, False, 0.0, eps)
        acc = accumulate_dtype(x.dtype)
        rstd = (running_var.to(acc) + eps).rsqrt()
        keep_x = weight is not None and ctx.needs_input_grad[1]
        ctx.save_for_backward(x if keep_x else None, weight, rstd,
                              running_mean.to(acc, copy=True) if keep_x else None)
        ctx.shape, ctx.has_bias = (x.shape[0], 1, x.shape[1], -1), bias is not None
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx, gy: torch.Tensor):
        x, weight, rstd, mean = ctx.saved_tensors
        g = gy.reshape(ctx.shape).to(rstd.dtype)
        per_channel = (1, 1, -1, 1)
        gx = gw = gb = None
        if ctx.needs_input_grad[0]:
            scale = rstd if weight is None else rstd * weight.to(rstd.dtype)
            gx = (g * scale.view(per_channel)).view(gy.shape)
        if x is not None:
            z = (x.reshape(ctx.shape).to(rstd.dtype) - mean.view(per_channel)) * rstd.view(per_channel)
            gw = (g * z).sum(PARAM_DIMS).view(-1)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            gb = g.sum(PARAM_DIMS).view(-1)
        return gx, gw, gb, None, None, None


@torch.compiler.disable
def rad_batch_norm(input: torch.Tensor, running_mean: torch.Tensor | None, running_var: torch.Tensor | None,
                   weight: torch.Tensor | None, bias: torch.Tensor | None, training: bool, momentum: float,
                   eps: float, sketch: Sketch | None) -> torch.Tensor:
    """``F.batch_norm``. Training: torch's forward (which updates the running statistics), keeping
    1/σ per channel and two sketches of z. Eval: :class:`BatchNormEvalFunction` (exact)."""
    plain = (not randomizes(sketch, input, weight, bias) or input.dim() < 2
             or not training and (running_mean is None or running_var is None))
    if plain:  # also where torch raises its own error
        return F.batch_norm(input, running_mean, running_var, weight, bias, training, momentum, eps)
    view = check_view(sketch, CHANNEL_VIEWS, "batch_norm")
    if not training:
        return BatchNormEvalFunction.apply(input, weight, bias, running_mean, running_var, eps)
    layout = _channel_layout(input, 1, (0, 1, 3), view)
    if input.device.type == "cpu":  # F.batch_norm runs native_batch_norm on CPU (elsewhere it may take cuDNN)
        F._verify_batch_size(input.size())  # F.batch_norm's own check (the kernel has none)
        run = _kernel(lambda x, w, b: torch.native_batch_norm(x, w, b, running_mean, running_var, True, momentum,
                                                              eps), layout, eps)
    else:
        run = _beside(lambda x, w, b: F.batch_norm(x, running_mean, running_var, w, b, True, momentum, eps),
                      layout, eps)
    return _apply(input, weight, bias, run, layout, sketch)
