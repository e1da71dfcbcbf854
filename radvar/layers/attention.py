"""The attention layer kinds: routed ``F.scaled_dot_product_attention`` and softmax calls, and the
``nn.MultiheadAttention`` twin.

All three use the ops of :mod:`radvar.ops.attention` (sketches of Q, K, V and two independent
sketches of the probabilities; see its docstring for the estimator). Their error reaches every
gradient upstream, so they are propagating kinds with no closed-form weight statistics.

Families: ``quantize`` (stochastic rounding keeps the exact zeros of masked probabilities at
the level 0), ``subsample`` and ``bernoulli`` (sampling scales zeros to zeros). Every one is
unbiased on every tensor the op keeps; feature-mixing families (``projection``) would smear the
masked zeros over the row and ``importance`` would store data-dependent indices per sketch, so
they are not taken.

The ``nn.MultiheadAttention`` twin computes torch's ``multi_head_attention_forward`` with
three changes when randomized: the input projections keep a sketch of their inputs
(:func:`radvar.ops.rad_linear`, the twin's sketch), the attention core is
:func:`radvar.ops.attention.rad_attention`, and the output projection is a call of the
``out_proj`` module, so a randomized ``out_proj`` twin takes effect (torch's forward reads
``out_proj.weight`` directly). ``need_weights=True`` is supported: the returned weights are the
post-dropout probabilities (averaged over heads with ``average_attn_weights``), and a gradient
into them enters the sketched backward exactly. Exact (sketch None or exact, ``radvar.exact()``,
no gradient) with an exact ``out_proj``, it is torch's forward itself, bitwise, except with dropout
inside :func:`radvar.rng.same_dropout`, where the core is exact with the keyed mask a randomized call draws.
"""

from __future__ import annotations

import functools
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .. import rng
from ..ops import linear as linear_op
from ..ops.attention import VIEWS, check_sdpa, rad_attention, rad_sdpa, rad_softmax
from ..sketch import Sketch
from .functional import function_kind
from .registry import Twin, register

FAMILIES = ("quantize", "subsample", "bernoulli")


@function_kind(F.scaled_dot_product_attention, name="sdpa", families=FAMILIES)
def sdpa_op(sketch: Sketch) -> Callable[..., torch.Tensor]:
    """The routed op of an ``F.scaled_dot_product_attention`` site: :func:`rad_sdpa` with ``sketch``."""
    return functools.partial(rad_sdpa, sketch=sketch)


@function_kind(F.softmax, torch.softmax, torch.Tensor.softmax, name="softmax", families=FAMILIES)
def softmax_op(sketch: Sketch) -> Callable[..., torch.Tensor]:
    """The routed op of a softmax site (``F.softmax``, ``torch.softmax``, ``Tensor.softmax``): :func:`rad_softmax`."""
    return functools.partial(rad_softmax, sketch=sketch)


def _exact_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None,
                     dropout_p: float, is_causal: bool, need_weights: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """torch's own attention core of ``multi_head_attention_forward`` (exact), on (N·H, L, E) tensors."""
    if not need_weights:
        return F.scaled_dot_product_attention(q, k, v, mask, dropout_p, is_causal), None
    scores = q * (1.0 / q.shape[-1]) ** 0.5 @ k.transpose(-2, -1)
    weights = torch.softmax(scores if mask is None else scores + mask, dim=-1)
    if dropout_p > 0.0:
        weights = F.dropout(weights, p=dropout_p)
    return weights @ v, weights


def _same(fn: Callable[[torch.Tensor], torch.Tensor], query: torch.Tensor, key: torch.Tensor,
          value: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``fn`` of each input, keeping ``query is key`` and ``key is value`` (self-attention projects once)."""
    k = fn(key)
    v = k if value is key else fn(value)
    return (k if query is key else fn(query)), k, v


@register(nn.MultiheadAttention)
class RADMultiheadAttention(nn.MultiheadAttention, Twin):
    """``nn.MultiheadAttention`` whose projections and attention keep sketches (module docstring)."""

    randomized = True
    propagates = True
    views = VIEWS
    families = FAMILIES
    sketch: Sketch | None

    def _out_proj_randomizes(self) -> bool:
        out = self.out_proj
        return isinstance(out, Twin) and out.randomized and torch.is_grad_enabled() and out._randomizes()

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                key_padding_mask: torch.Tensor | None = None, need_weights: bool = True,
                attn_mask: torch.Tensor | None = None, average_attn_weights: bool = True,
                is_causal: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        keyed = self.training and self.dropout > 0 and rng.replays_dropout()  # exact too: the shared keyed mask
        if not (self._randomizes() or self._out_proj_randomizes() or keyed):
            return super().forward(query, key, value, key_padding_mask, need_weights, attn_mask,
                                   average_attn_weights, is_causal)
        sketch = self.sketch if self._randomizes() else None
        # torch's own checks and mask canonicalisation (private helpers of multi_head_attention_forward),
        # so that inputs and masks mean exactly what they mean to nn.MultiheadAttention
        is_batched = F._mha_shape_check(query, key, value, key_padding_mask, attn_mask, self.num_heads)
        if is_batched and self.batch_first:
            query, key, value = _same(lambda t: t.transpose(1, 0), query, key, value)
        if not is_batched:
            query, key, value = _same(lambda t: t.unsqueeze(1), query, key, value)
            key_padding_mask = None if key_padding_mask is None else key_padding_mask.unsqueeze(0)
        tgt_len, bsz, embed = query.shape
        if embed != self.embed_dim:
            raise ValueError(f"MultiheadAttention: query has {embed} features; allowed: embed_dim={self.embed_dim}")
        key_padding_mask = F._canonical_mask(mask=key_padding_mask, mask_name="key_padding_mask",
                                             other_type=F._none_or_dtype(attn_mask), other_name="attn_mask",
                                             target_type=query.dtype)
        if is_causal and attn_mask is None:
            raise RuntimeError("MultiheadAttention: is_causal=True needs attn_mask (the causal mask itself); "
                               "e.g. nn.Transformer.generate_square_subsequent_mask")
        if is_causal and key_padding_mask is None and not need_weights:
            attn_mask = None  # the is_causal hint stands for the mask
        else:
            attn_mask = F._canonical_mask(mask=attn_mask, mask_name="attn_mask", other_type=None, other_name="",
                                          target_type=query.dtype, check_other=False)
            is_causal = False
        q, k, v = self._in_projection(query, key, value, sketch)
        heads, head_dim = self.num_heads, embed // self.num_heads
        if attn_mask is not None and attn_mask.dim() == 2:
            if attn_mask.shape != (tgt_len, key.shape[0]):
                raise RuntimeError(f"MultiheadAttention: the 2-D attn_mask is {tuple(attn_mask.shape)}; allowed: "
                                   f"{(tgt_len, key.shape[0])}")
            attn_mask = attn_mask.unsqueeze(0)
        elif attn_mask is not None and attn_mask.shape != (bsz * heads, tgt_len, key.shape[0]):
            raise RuntimeError(f"MultiheadAttention: the 3-D attn_mask is {tuple(attn_mask.shape)}; allowed: "
                               f"{(bsz * heads, tgt_len, key.shape[0])}")
        if self.bias_k is not None and self.bias_v is not None:
            k = torch.cat([k, self.bias_k.repeat(1, bsz, 1)])
            v = torch.cat([v, self.bias_v.repeat(1, bsz, 1)])
            attn_mask = None if attn_mask is None else F.pad(attn_mask, (0, 1))
            key_padding_mask = None if key_padding_mask is None else F.pad(key_padding_mask, (0, 1))
        q = q.reshape(tgt_len, bsz * heads, head_dim).transpose(0, 1)
        k = k.reshape(k.shape[0], bsz * heads, head_dim).transpose(0, 1)
        v = v.reshape(v.shape[0], bsz * heads, head_dim).transpose(0, 1)
        if self.add_zero_attn:
            zeros = k.new_zeros(bsz * heads, 1, head_dim)
            k, v = torch.cat([k, zeros], dim=1), torch.cat([v, zeros], dim=1)
            attn_mask = None if attn_mask is None else F.pad(attn_mask, (0, 1))
            key_padding_mask = None if key_padding_mask is None else F.pad(key_padding_mask, (0, 1))
        src_len = k.shape[1]
        if key_padding_mask is not None:
            if key_padding_mask.shape != (bsz, src_len):
                raise RuntimeError(f"MultiheadAttention: key_padding_mask is {tuple(key_padding_mask.shape)}; "
                                   f"allowed: {(bsz, src_len)} (batch, source length)")
            padding = key_padding_mask.view(bsz, 1, 1, src_len).expand(-1, heads, -1, -1).reshape(bsz * heads, 1,
                                                                                                  src_len)
            attn_mask = padding if attn_mask is None else attn_mask + padding
        dropout_p = self.dropout if self.training else 0.0
        if sketch is None and not keyed:
            out, weights = _exact_attention(q, k, v, attn_mask, dropout_p, is_causal, need_weights)
        else:
            check_sdpa(q, k, v, attn_mask, dropout_p, is_causal, None, False)
            out, weights = rad_attention(q, k, v, attn_mask, dropout_p, is_causal, None, 1, sketch)
        out = self.out_proj(out.transpose(0, 1).reshape(tgt_len * bsz, embed)).view(tgt_len, bsz, -1)
        if need_weights:
            weights = weights.view(bsz, heads, tgt_len, src_len)
            weights = weights.mean(dim=1) if average_attn_weights else weights
        else:
            weights = None
        if not is_batched:
            out, weights = out.squeeze(1), None if weights is None else weights.squeeze(0)
        elif self.batch_first:
            out = out.transpose(1, 0)
        return out, weights

    def _in_projection(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                       sketch: Sketch | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """q, k, v from the packed or separate projection weights; a sketched input when ``sketch`` is set."""

        def linear(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
            return F.linear(x, w, b) if sketch is None else linear_op.rad_linear(x, w, b, sketch)

        embed = self.embed_dim
        biases = (None,) * 3 if self.in_proj_bias is None else self.in_proj_bias.chunk(3)
        if not self._qkv_same_embed_dim:
            return tuple(linear(x, w, b) for x, w, b in zip(
                (query, key, value), (self.q_proj_weight, self.k_proj_weight, self.v_proj_weight), biases))
        w = self.in_proj_weight
        if query is key and key is value:
            return linear(query, w, self.in_proj_bias).chunk(3, dim=-1)
        if key is value:
            b_kv = None if self.in_proj_bias is None else self.in_proj_bias[embed:]
            return (linear(query, w[:embed], biases[0]), *linear(key, w[embed:], b_kv).chunk(2, dim=-1))
        return tuple(linear(x, w_i, b) for x, w_i, b in zip((query, key, value), w.chunk(3), biases))

    def extra_repr(self) -> str:
        return self.sketch_label()
