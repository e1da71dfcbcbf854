"""RAD attention and softmax: exact forward, backward from independent unbiased sketches.

Attention (the semantics of ``F.scaled_dot_product_attention``): with scores
``S = Q Kᵀ·scale + B`` (``B`` the additive form of the mask: 0 or −inf for a
boolean mask, the mask itself for a float one, −inf above the diagonal for
``is_causal``), probabilities ``P = softmax(S)`` (a row that is masked
everywhere gives zeros), dropout ``P_d = P ⊙ M/(1 − p)`` with ``M`` a Bernoulli(1 − p)
keep mask, and output ``O = P_d V``, the exact backward is

    ∂V = P_dᵀ ∂O,   ∂P = (∂O Vᵀ) ⊙ M/(1 − p),   ∂S = P ⊙ (∂P − rowsum(∂P ⊙ P)),
    ∂Q = ∂S K·scale,   ∂K = ∂Sᵀ Q·scale,   ∂B = ∂S.

This op keeps a sketch of each of Q, K, V and two independent sketches P̂_a,
P̂_b of P (never P, Q, K, V or O themselves), regenerates M from its key, and
computes

    ∂V = (P̂_a ⊙ M/(1 − p))ᵀ ∂O,   ∂P = (∂O V̂ᵀ) ⊙ M/(1 − p),
    ∂S = P̂_a ⊙ (∂P − rowsum(∂P ⊙ P̂_b)),   ∂Q = ∂S K̂·scale,   ∂K = ∂Sᵀ Q̂·scale.

Every gradient is a sum of products in which each sketch appears at most once
and no two factors are sketches of the same draw (P̂_a and P̂_b are drawn
independently), so by independence each product's expectation is the product
of the expectations: every gradient is unbiased. ∂V and ∂S share P̂_a: they
are different outputs, and a gradient upstream of the op is a *sum* of a term
through ∂V and terms through ∂Q/∂K, never a product of the two, so the sum
stays unbiased; sharing only correlates the two terms' errors (it saves a
third sketch of P). Grouped-query attention (``enable_gqa``) sketches K and
V with their own, smaller number of heads and repeats the reconstruction.

Masked entries: P is exactly 0 where the mask excludes a key, and the sketch
families attention takes keep exact zeros exact (stochastic rounding of a row
whose minimum is 0 puts them on the level 0; sampling scales them), so no
mask is stored. Dropout draws M from a :mod:`radvar.rng` key (never torch's
global generator) and draws it again in backward.

Softmax ``y = softmax(x)`` along ``dim``: ``∂x = y ⊙ (g − Σ g ⊙ y)`` uses y
twice in one product, so it keeps two independent sketches: ``ŷ_a ⊙ (g −
Σ g ⊙ ŷ_b)``, unbiased by the same argument.

Every sketch acts on the (rows, features) view with the last dim as features
(head dim for Q, K, V; keys for P; ``dim`` for softmax). When the sketch is
None or exact, inside :func:`radvar.exact`, or when no gradient is needed, the
ops call ``F.scaled_dot_product_attention`` and ``F.softmax`` themselves.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from .. import rng
from ..sketch import Sketch
from ..sketch.base import coins, work_dtype
from ._autocast import autocast_dtype, autocast_off, cast
from ._kept import keep, restore, sketching

VIEWS = ("features",)


def check_sketch(sketch: Any, owner: str) -> None:
    """``sketch`` must be None or a :class:`Sketch` on the ``features`` view (or view=None)."""
    if sketch is not None and not isinstance(sketch, Sketch):
        raise TypeError(f"{owner}: sketch must be a radvar.sketch.Sketch or None (exact), got {sketch!r}")
    if sketch is not None and sketch.view not in (None, *VIEWS):
        raise ValueError(f"{owner}: view {sketch.view!r} is not allowed; allowed: {[None, *VIEWS]}")


def _randomizes(sketch: Sketch | None, *tensors: torch.Tensor | None) -> bool:
    return sketching(sketch) and any(t is not None and t.requires_grad for t in tensors)


# ---- attention ---------------------------------------------------------------------------------------------

def check_sdpa(query: Any, key: Any, value: Any, attn_mask: Any, dropout_p: Any, is_causal: Any, scale: Any,
               enable_gqa: Any) -> int:
    """Validate ``rad_sdpa``'s arguments as ``F.scaled_dot_product_attention`` would take them; return the
    grouped-query repeat count (Hq / Hkv, 1 without GQA)."""
    owner = "rad_sdpa"
    for name, t in (("query", query), ("key", key), ("value", value)):
        if not isinstance(t, torch.Tensor) or not t.is_floating_point() or t.dim() < 2:
            raise TypeError(f"{owner}: {name} must be a floating tensor of shape (..., seq, dim), got "
                            f"{type(t).__name__ if not isinstance(t, torch.Tensor) else (t.dtype, tuple(t.shape))}")
    if not query.dtype == key.dtype == value.dtype:
        raise TypeError(f"{owner}: query, key and value must have one dtype, got {query.dtype}, {key.dtype}, "
                        f"{value.dtype}")
    if key.shape[-1] != query.shape[-1] or key.shape[-2] != value.shape[-2]:
        raise ValueError(f"{owner}: key must be (..., S, E) for query (..., L, E) and value (..., S, Ev); got "
                         f"query {tuple(query.shape)}, key {tuple(key.shape)}, value {tuple(value.shape)}")
    if attn_mask is not None:
        if not isinstance(attn_mask, torch.Tensor) or attn_mask.dtype not in (torch.bool, query.dtype):
            raise TypeError(f"{owner}: attn_mask must be None, a bool tensor or a tensor of the query's dtype "
                            f"{query.dtype}, got {getattr(attn_mask, 'dtype', type(attn_mask).__name__)}")
        if is_causal:
            raise ValueError(f"{owner}: attn_mask and is_causal=True are exclusive (is_causal is the causal mask); "
                             f"allowed: one of them")
    if (isinstance(dropout_p, bool) or not isinstance(dropout_p, (int, float)) or math.isnan(dropout_p)
            or not 0.0 <= dropout_p <= 1.0):
        raise ValueError(f"{owner}: dropout_p must be a drop probability in [0, 1], got {dropout_p!r}")
    if not isinstance(is_causal, bool):
        raise TypeError(f"{owner}: is_causal must be a bool, got {is_causal!r}")
    if scale is not None and (isinstance(scale, bool) or not isinstance(scale, (int, float))):
        raise TypeError(f"{owner}: scale must be None (1/√E) or a number, got {scale!r}")
    if not enable_gqa:
        return 1
    if query.dim() < 3 or key.shape[-3] != value.shape[-3] or query.shape[-3] % key.shape[-3]:
        raise ValueError(f"{owner}: enable_gqa needs (..., heads, seq, dim) tensors whose key/value heads divide "
                         f"the query heads; got query {tuple(query.shape)}, key {tuple(key.shape)}, "
                         f"value {tuple(value.shape)}")
    return query.shape[-3] // key.shape[-3]


def _repeat(x: torch.Tensor, rep: int) -> torch.Tensor:
    """Each head of (..., H, S, E) repeated ``rep`` times in place: (..., H·rep, S, E) (grouped-query attention)."""
    return x if rep == 1 else x.repeat_interleave(rep, dim=-3)


def _fold(g: torch.Tensor, rep: int, shape: torch.Size) -> torch.Tensor:
    """Adjoint of :func:`_repeat` and of broadcasting: sum the repeated heads, then down to ``shape``."""
    if rep > 1:
        g = g.unflatten(-3, (g.shape[-3] // rep, rep)).sum(-3)
    return g.sum_to_size(shape)


def _probabilities(q: torch.Tensor, k: torch.Tensor, mask: torch.Tensor | None, is_causal: bool,
                   scale: float) -> torch.Tensor:
    """P = softmax(Q Kᵀ·scale + B) along the keys; rows masked everywhere are 0."""
    s = (q @ k.transpose(-2, -1)) * scale
    if is_causal:
        s = s.masked_fill(~torch.ones(s.shape[-2:], dtype=torch.bool, device=s.device).tril(), -math.inf)
    if mask is not None:
        s = s.masked_fill(~mask, -math.inf) if mask.dtype == torch.bool else s + mask.to(s.dtype)
    dead = (s == -math.inf).all(-1, keepdim=True)
    if s.requires_grad:  # autograd (keyed exact attention): finite softmax of dead rows, no in-place fill
        return torch.softmax(s.masked_fill(dead, 0.0), dim=-1).masked_fill(dead, 0.0)
    return torch.softmax(s, dim=-1).masked_fill_(dead, 0.0)


def _dropout_scale(shape: torch.Size, p: float, key: int, like: torch.Tensor) -> torch.Tensor:
    """M/(1 − p): the keep mask drawn from ``key`` (U ≥ p keeps), scaled; all zeros for p = 1."""
    keep = ~coins(tuple(shape), p, rng.generator(key, like.device), like)  # U ≥ p keeps
    return keep.to(like.dtype) * (0.0 if p >= 1.0 else 1.0 / (1.0 - p))


class _Keys(NamedTuple):
    q: int
    k: int
    v: int
    p_a: int
    p_b: int
    drop: int


class RADAttentionFunction(torch.autograd.Function):
    """(O, P_d) of scaled dot-product attention; keeps sketches of Q, K, V and two of P (module docstring)."""

    @staticmethod
    def forward(ctx, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None,
                dropout_p: float, is_causal: bool, scale: float, rep: int, sketch: Sketch,
                keys: _Keys) -> tuple[torch.Tensor, torch.Tensor]:
        ctx.set_materialize_grads(False)
        work = work_dtype(q.dtype)
        p = _probabilities(q.to(work), _repeat(k, rep).to(work), mask, is_causal, scale)
        pd = p * _dropout_scale(p.shape, dropout_p, keys.drop, p) if dropout_p > 0 else p
        out = (pd @ _repeat(v, rep).to(work)).to(q.dtype)
        saved: list[torch.Tensor] = []
        ctx.kept = [kept for t, draws in ((q, (keys.q,)), (k, (keys.k,)), (v, (keys.v,)),
                                          (p.to(q.dtype), (keys.p_a, keys.p_b)))
                    for kept in keep(sketch, t, draws, saved)]
        ctx.save_for_backward(*saved)
        ctx.sketch, ctx.keys, ctx.dropout_p, ctx.scale, ctx.rep = sketch, keys, dropout_p, scale, rep
        ctx.shapes = (q.shape, k.shape, v.shape, None if mask is None else mask.shape)
        return out, pd.to(q.dtype)

    @staticmethod
    @once_differentiable
    def backward(ctx, g_out: torch.Tensor | None, g_probs: torch.Tensor | None):
        q_shape, k_shape, v_shape, mask_shape = ctx.shapes
        sketch, rep, scale = ctx.sketch, ctx.rep, ctx.scale
        like = g_out if g_out is not None else g_probs
        work = work_dtype(like.dtype)
        saved = list(ctx.saved_tensors)
        kq, kk, kv, ka, kb = ctx.kept
        q_hat, k_hat, v_hat = (restore(sketch, kept, saved, work) for kept in (kq, kk, kv))
        p_a, p_b = (restore(sketch, kept, saved, work) for kept in (ka, kb))
        drop = _dropout_scale(p_a.shape, ctx.dropout_p, ctx.keys.drop, p_a) if ctx.dropout_p > 0 else None
        g_pd = torch.zeros_like(p_a) if g_probs is None else g_probs.to(work).expand_as(p_a).contiguous()
        gv = None
        if g_out is not None:
            g_out = g_out.to(work).contiguous()  # an expanded gradient (of a sum) sends bmm to a slow path
            if ctx.needs_input_grad[2]:
                pd_a = p_a if drop is None else p_a * drop
                gv = _fold(pd_a.transpose(-2, -1) @ g_out, rep, v_shape)
            g_pd = g_pd + g_out @ _repeat(v_hat, rep).transpose(-2, -1)
        gp = g_pd if drop is None else g_pd * drop
        gs = p_a * (gp - (gp * p_b).sum(-1, keepdim=True))
        gq = (gs @ _repeat(k_hat, rep)).mul_(scale).sum_to_size(q_shape) if ctx.needs_input_grad[0] else None
        gk = _fold((gs.transpose(-2, -1) @ q_hat).mul_(scale), rep, k_shape) if ctx.needs_input_grad[1] else None
        gm = gs.sum_to_size(mask_shape) if ctx.needs_input_grad[3] else None
        return gq, gk, gv, gm, None, None, None, None, None, None


def _keyed_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None, dropout_p: float,
                     is_causal: bool, scale: float, rep: int, drop: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact (O, P_d) by autograd, computed as :class:`RADAttentionFunction`'s forward is (mask M from key ``drop``)."""
    work = work_dtype(q.dtype)
    p = _probabilities(q.to(work), _repeat(k, rep).to(work), mask, is_causal, scale)
    pd = p * _dropout_scale(p.shape, dropout_p, drop, p.detach()) if dropout_p > 0 else p
    return (pd @ _repeat(v, rep).to(work)).to(q.dtype), pd.to(q.dtype)


@torch.compiler.disable
def rad_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, attn_mask: torch.Tensor | None,
                  dropout_p: float, is_causal: bool, scale: float | None, rep: int,
                  sketch: Sketch | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(O, P_d) with RAD backward, for checked arguments (see :func:`rad_sdpa`); one fresh draw per call.

    P_d, the post-dropout probabilities, is returned for callers that hand out attention weights
    (``nn.MultiheadAttention(need_weights=True)``); a gradient flowing into it is exact in ∂P.
    The dropout mask's key is :func:`radvar.rng.dropout_key`. ``sketch`` None: the exact (O, P_d) by
    plain autograd with the mask a RAD call given that key draws (inside :func:`radvar.rng.same_dropout`,
    the exact pass shares the sketched passes' masks).
    """
    dtype = autocast_dtype(query)
    query, key, value = cast(dtype, query, key, value)
    if attn_mask is not None and attn_mask.is_floating_point():
        attn_mask, = cast(dtype, attn_mask)
    scale = 1.0 / math.sqrt(query.shape[-1]) if scale is None else float(scale)
    if sketch is None:
        with autocast_off(query, dtype):
            return _keyed_attention(query, key, value, attn_mask, float(dropout_p), is_causal, scale, rep,
                                    rng.dropout_key() if dropout_p > 0 else 0)
    keys = _Keys(*(rng.next_key() for _ in _Keys._fields[:-1]), rng.dropout_key())
    with autocast_off(query, dtype):
        return RADAttentionFunction.apply(query, key, value, attn_mask, float(dropout_p), is_causal, scale, rep,
                                          sketch, keys)


def rad_sdpa(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, attn_mask: torch.Tensor | None = None,
             dropout_p: float = 0.0, is_causal: bool = False, scale: float | None = None, enable_gqa: bool = False,
             *, sketch: Sketch | None) -> torch.Tensor:
    """``F.scaled_dot_product_attention`` with a RAD backward that keeps sketches of Q, K, V and P.

    Same arguments and output: leading dims broadcast, ``attn_mask`` boolean (True takes part) or
    additive float, ``is_causal`` (upper-left aligned), ``enable_gqa`` for fewer key/value heads.
    ``dropout_p`` draws its mask from :mod:`radvar.rng`, not torch's global generator. With an exact
    ``sketch`` (None, or keep = 1), inside :func:`radvar.exact` or without a gradient to compute,
    it is ``F.scaled_dot_product_attention`` itself (and drops out with torch's generator), except
    with dropout inside :func:`radvar.rng.same_dropout`: then the exact result with the keyed mask.
    """
    check_sketch(sketch, "rad_sdpa")
    randomizes = _randomizes(sketch, query, key, value, attn_mask)
    if not randomizes and not (rng.replays_dropout() and dropout_p != 0):
        return F.scaled_dot_product_attention(query, key, value, attn_mask=attn_mask, dropout_p=dropout_p,
                                              is_causal=is_causal, scale=scale, enable_gqa=enable_gqa)
    rep = check_sdpa(query, key, value, attn_mask, dropout_p, is_causal, scale, enable_gqa)
    return rad_attention(query, key, value, attn_mask, dropout_p, is_causal, scale, rep,
                         sketch if randomizes else None)[0]


# ---- softmax -----------------------------------------------------------------------------------------------

class RADSoftmaxFunction(torch.autograd.Function):
    """y = softmax(x) along the last dim of ``x`` as given; keeps two sketches of y; ∂x = ŷ_a ⊙ (g − Σ g ⊙ ŷ_b)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, sketch: Sketch, key_a: int, key_b: int) -> torch.Tensor:
        y = torch.softmax(x, dim=-1)
        saved: list[torch.Tensor] = []
        ctx.kept = keep(sketch, y, (key_a, key_b), saved)
        ctx.save_for_backward(*saved)
        ctx.sketch = sketch
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx, g: torch.Tensor):
        saved = list(ctx.saved_tensors)
        work = work_dtype(g.dtype)
        y_a, y_b = (restore(ctx.sketch, kept, saved, work) for kept in ctx.kept)
        g = g.to(work)
        return y_a * (g - (g * y_b).sum(-1, keepdim=True)), None, None, None


def rad_softmax(input: torch.Tensor, dim: int | None = None, _stacklevel: int | torch.dtype = 3,
                dtype: torch.dtype | None = None, *, sketch: Sketch | None) -> torch.Tensor:
    """``F.softmax(input, dim, dtype=dtype)`` that keeps two independent sketches of its output.

    Also takes ``torch.softmax``'s and ``Tensor.softmax``'s argument order (``input, dim, dtype``).
    Exact (``F.softmax`` itself) for an exact ``sketch``, inside :func:`radvar.exact` or without a
    gradient to compute.
    """
    check_sketch(sketch, "rad_softmax")
    if isinstance(_stacklevel, torch.dtype) or _stacklevel is None:  # torch.softmax(input, dim, dtype)
        dtype, _stacklevel = _stacklevel if dtype is None else dtype, 3
    if not _randomizes(sketch, input):
        return F.softmax(input, dim, _stacklevel + 1, dtype)
    if not isinstance(input, torch.Tensor) or not (input.is_floating_point() or dtype is not None):
        raise TypeError(f"rad_softmax: input must be a floating tensor, got {input!r}")
    if dim is None:
        dim = F._get_softmax_dim("softmax", input.dim(), _stacklevel + 1)
    if not isinstance(dim, int) or not -max(input.dim(), 1) <= dim < max(input.dim(), 1):
        raise ValueError(f"rad_softmax: dim must be an int in [{-input.dim()}, {input.dim() - 1}] for a "
                         f"{input.dim()}-D input, got {dim!r}")
    x = input if dtype is None else input.to(dtype)
    if x.dim() == 0:
        return F.softmax(x, dim)
    y = _sketched_softmax(x.movedim(dim, -1), sketch)
    return y.movedim(-1, dim)


@torch.compiler.disable
def _sketched_softmax(x: torch.Tensor, sketch: Sketch) -> torch.Tensor:
    return RADSoftmaxFunction.apply(x, sketch, rng.next_key(), rng.next_key())
