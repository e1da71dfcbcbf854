"""The ``nn.Conv1d/2d/3d`` layer kind: its RAD twins and their variance statistics.

The twin sketches ``x`` (after any explicit padding it applies, :func:`effective_input`)
viewed as (batch·channel, positions) or (batch, channel·positions)
(:func:`radvar.ops.conv.conv_view`). With P the im2col
patches (P[b, c, q, κ] = x[b, c, p] for the input position p that kernel
offset κ reads at output position q), the contribution of input entry
(b, c, p) is ``C_bcp[o, κ] = g[b, o, q_κ(p)] x[b, c, p]`` (one weight slice per
channel c, so different channels never share entries). Hence

* ‖C_bcp‖² = x[b,c,p]² h[b,c,p] with h = (Σ_{o in c's group} g²) correlated with
  a ones kernel (a transposed convolution), so the per-row col = Σ x² h in both views;
* per-row tot = Σ_bc ‖A_bc‖², A_bc = Σ_q g[b,:,q] P[b,c,q,:] (the per-example,
  per-channel weight gradient), equal to Σ_b ‖A_b‖² for the examples view;
* shared col = Σ_p ‖C_p‖² = Σ_κ Σ_q ‖Σ_b g[b,:,q] P[b,:,q,κ]ᵀ‖², tot = ‖G‖².

Mixing moment (Projection's Var = V/k; see :mod:`radvar.sketch.moments`): with D_pq the contribution of
feature p's values placed at feature q, V = Σ_{p≠q} ‖D_pq‖² + ⟨D_pq, D_qp⟩, where

* Σ_{p,q} ‖D_pq‖² = Σ_c Σ_{b,b'} X_c[b,b'] Γ_c[b,b'] with the example Gram matrices
  X_c = Σ_p x[·,c,p] x[·,c,p] and Γ_c = Σ_{o in c's group, q} ν_q g[·,o,q] g[·,o,q]
  (ν_q: how many kernel offsets at output q read a real input position); per row
  only b = b' enters; the examples view sums X and Γ over channels first (a
  feature may move to another channel);
* Σ_{p,q} ⟨D_pq, D_qp⟩ = Σ_{b,b'} ⟨A_bb', A_b'b⟩ with A_bb' the weight gradient of
  x_b against g_b' (A_bb = A_b): per row it is the row tot; shared it needs all
  pairs of examples, computed exactly through (B·Q)² Gram matrices when those are
  cheaper than per-pair gradients, or over the unordered pairs when that is cheap
  (≤ ``_EXACT_FLOPS``, or no more pairs than ``pairs``), and otherwise estimated
  from ``pairs`` uniformly drawn ordered pairs b ≠ b' (unbiased; its standard
  error is kept);
* the p = q terms are the view's col, removed twice.
"""

from __future__ import annotations

import math
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from ..ops.conv import VIEWS, conv_view, rad_conv
from ..sketch import Sketch
from ..sketch.base import CLOSED
from ..sketch.moments import ViewStats
from .registry import Twin, register

_CHUNK = 1 << 22  # elements of per-example gradient blocks built at once
_EXACT_FLOPS = 2e9  # budget for the exact all-pairs cross term of a shared projection
_GRAM_ENTRIES = 1 << 22  # largest (B·Q)² Gram matrix the exact cross term builds


def effective_input(module: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, ...]]:
    """The input and padding a RAD conv twin convolves: non-zero padding modes and string paddings
    become explicit padding of x (so the sketch sees what the convolution reads)."""
    padding = module.padding
    if module.padding_mode != "zeros" or isinstance(padding, str):
        mode = "constant" if module.padding_mode == "zeros" else module.padding_mode
        x = F.pad(x, module._reversed_padding_repeated_twice, mode=mode)
        padding = (0,) * (x.dim() - 2)
    return x, tuple(padding)


def patches(x: torch.Tensor, kernel: tuple[int, ...], stride: tuple[int, ...], padding: tuple[int, ...],
            dilation: tuple[int, ...]) -> torch.Tensor:
    """im2col for any number of spatial dims: (B, C, *S) -> (B, C, Q, K)."""
    nd = len(kernel)
    u = F.pad(x, [p for pd in reversed(padding) for p in (pd, pd)])
    for d in range(nd):
        u = u.unfold(2 + d, dilation[d] * (kernel[d] - 1) + 1, stride[d])
    u = u[(slice(None),) * (2 + nd) + tuple(slice(None, None, dl) for dl in dilation)]
    return u.reshape(x.shape[0], x.shape[1], -1, math.prod(kernel))


def _groups(module: nn.Module, p: torch.Tensor, g: torch.Tensor) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(g, P) of each convolution group as contiguous matrices: g (B, O/groups, Q) and the patches
    (B, Q, C/groups · K). Every product below is a plain (batched) matmul on these: einsum on the
    strided im2col view is orders of magnitude slower."""
    cg, og = p.shape[1] // module.groups, g.shape[1] // module.groups
    for γ in range(module.groups):
        pg = p[:, γ * cg:(γ + 1) * cg]
        yield (g[:, γ * og:(γ + 1) * og].contiguous(),
               pg.permute(0, 2, 1, 3).reshape(pg.shape[0], pg.shape[2], -1).contiguous())


def _per_example_blocks(gg: torch.Tensor, pf: torch.Tensor) -> Iterator[torch.Tensor]:
    """A_b = g_b P_b (O × C·K) = Σ_q g[b,:,q] ⊗ P[b,q,:], a few examples at a time."""
    per = max(1, _CHUNK // max(1, gg.shape[1] * pf.shape[2]))
    for s in range(0, gg.shape[0], per):
        yield torch.bmm(gg[s:s + per], pf[s:s + per])


def _prepare(module: nn.Module, x: torch.Tensor, g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, tuple]:
    x, padding = effective_input(module, x.double())
    g = g.double()
    conv = (tuple(module.stride), padding, tuple(module.dilation))
    p = patches(x, tuple(module.kernel_size), *conv)
    return x, g.reshape(g.shape[0], g.shape[1], -1), p, conv


def channel_view_stats(x: torch.Tensor, h: torch.Tensor, gram_x: torch.Tensor, gram_g: torch.Tensor,
                       sums: tuple[float, float, float, float], cross: float, method: str, cross_se: float,
                       entries: bool) -> dict[str, ViewStats]:
    """:class:`ViewStats` of both views of a (batch, channel, positions) input whose entries contribute to
    per-channel weight slices (conv and transposed conv alike).

    ``h`` is the per-entry weight (shaped like x); ``gram_x``/``gram_g`` the per-channel example Gram
    matrices (C, B, B) of the inputs and of the gradient side; ``sums`` = (shared col, ‖G‖², row col,
    row tot); ``cross`` = Σ_{b,b'} ⟨A_bb', A_b'b⟩. The mixing moment is Σ‖D‖² + cross − 2·col, with Σ‖D‖²
    = Σ X·Γ per channel (positions) or over channels summed first (examples); per row b = b' only and
    the cross term is the row tot.
    """
    shared_col, tot, row_col, row_tot = sums
    x_sq, g_sq = gram_x.diagonal(dim1=1, dim2=2), gram_g.diagonal(dim1=1, dim2=2)  # (C, B)
    moved = {"positions": (float((gram_x * gram_g).sum()), float((x_sq * g_sq).sum())),
             "examples": (float((gram_x.sum(0) * gram_g.sum(0)).sum()), float((x_sq.sum(0) * g_sq.sum(0)).sum()))}
    out = {}
    for name in VIEWS:
        v = conv_view(x, name)
        shared_all, row_all = moved[name]
        out[name] = ViewStats(v.shape[0], v.shape[1], shared_col, tot, row_col, row_tot,
                              shared_all - 2 * shared_col + cross, row_all - 2 * row_col + row_tot, method,
                              *((v, conv_view(h, name)) if entries else (None, None)), cross_se, 0.0)
    return out


class ConvStats:
    name = "conv"

    def view_stats(self, module: nn.Module, x: torch.Tensor, g: torch.Tensor, gen: torch.Generator,
                   projection_pairs: int, entries: bool) -> dict[str, ViewStats]:
        gs = g.double()
        x, g, p, conv = _prepare(module, x, g)
        b, c = x.shape[:2]
        tot = shared_col = 0.0
        groups = list(_groups(module, p, g))
        for gg, pf in groups:
            tot += float((gg.transpose(1, 2).reshape(-1, gg.shape[1]).T @ pf.reshape(-1, pf.shape[2])).square().sum())
            shared_col += _shared_col(gg, pf)
        row_tot = float(self.per_example_sq_norms(module, x, g, prepared=(p, groups))[0].sum())
        h = self._h(module, x, gs, conv)
        row_col = float((x.square() * h).sum())
        xc = x.flatten(2).transpose(0, 1).contiguous()  # (C, B, positions)
        gram_x = torch.bmm(xc, xc.transpose(1, 2))
        gram_g = self._gram_g(module, x, g, conv)[torch.arange(c) // (c // module.groups)]
        cross, cross_se = self._cross(module, p, g, groups, row_tot, gen, projection_pairs)
        method = CLOSED if cross_se == 0 else f"estimate (shared projection: {projection_pairs} example pairs)"
        return channel_view_stats(x, h, gram_x, gram_g, (shared_col, tot, row_col, row_tot), cross, method, cross_se,
                                  entries)

    @staticmethod
    def _h(module: nn.Module, x: torch.Tensor, g: torch.Tensor, conv: tuple) -> torch.Tensor:
        """h[b, c, p] = Σ_κ Σ_{o in c's group} g[b, o, q_κ(p)]², shaped like x."""
        stride, padding, dilation = conv
        b, o = g.shape[:2]
        gsq = g.square().reshape(b, module.groups, o // module.groups, *g.shape[2:]).sum(2)
        ones = gsq.new_ones(module.groups, 1, *module.kernel_size)
        shape = (b, module.groups, *x.shape[2:])
        h = torch.ops.aten.convolution_backward(gsq, gsq.new_zeros(()).expand(shape), ones, None, list(stride),
                                                list(padding), list(dilation), False, [0] * len(stride),
                                                module.groups, [True, False, False])[0]
        return h[:, torch.arange(x.shape[1]) // (x.shape[1] // module.groups)]

    @staticmethod
    def _gram_g(module: nn.Module, x: torch.Tensor, g: torch.Tensor, conv: tuple) -> torch.Tensor:
        """Γ_γ[b, b'] = Σ_{o in group γ, q} ν_q g[b,o,q] g[b',o,q]: (groups, B, B)."""
        stride, padding, dilation = conv
        ones = x.new_ones(1, 1, *x.shape[2:])
        nu = torch.ops.aten.convolution(ones, x.new_ones(1, 1, *module.kernel_size), None, list(stride),
                                        list(padding), list(dilation), False, [0] * len(stride), 1)
        b, o = g.shape[:2]
        gw = (g * nu.reshape(1, 1, -1)).reshape(b, module.groups, o // module.groups, -1)
        gg = g.reshape(b, module.groups, o // module.groups, -1)
        gw = gw.transpose(0, 1).reshape(module.groups, b, -1).contiguous()
        gg = gg.transpose(0, 1).reshape(module.groups, b, -1).contiguous()
        return torch.bmm(gw, gg.transpose(1, 2))

    @staticmethod
    def _cross(module: nn.Module, p: torch.Tensor, g: torch.Tensor, groups: list[tuple[torch.Tensor, torch.Tensor]],
               row_tot: float, gen: torch.Generator, pairs: int) -> tuple[float, float]:
        """Σ_{b,b'} ⟨A_bb', A_b'b⟩ and its standard error: exact (by :func:`_gram_cross` or over the
        unordered pairs b < b', the term being symmetric) when that costs at most ``_EXACT_FLOPS`` or no
        more than ``pairs`` sampled pairs would, else from ``pairs`` uniformly drawn ordered pairs b ≠ b'."""
        b = g.shape[0]
        if b == 1:
            return row_tot, 0.0
        o, (c, q, k) = g.shape[1] // module.groups, p.shape[1:]
        per_pair = 2 * c * o * k * q
        gram = _gram_cheaper(q, o, c * k // module.groups) and (b * q) ** 2 <= _GRAM_ENTRIES
        if gram:
            return sum(_gram_cross(gg, pf) for gg, pf in groups), 0.0
        unordered = b * (b - 1) // 2
        if unordered <= pairs or unordered * per_pair <= _EXACT_FLOPS:
            left, right = torch.triu_indices(b, b, 1)
        else:
            left = torch.randint(0, b, (pairs,), generator=gen)
            right = (left + torch.randint(1, b, (pairs,), generator=gen)) % b
        dots = torch.zeros(left.numel(), dtype=torch.float64)
        for gg, pf in groups:
            for s in range(0, left.numel(), 64):
                lo, hi = left[s:s + 64], right[s:s + 64]
                dots[s:s + 64] += (torch.bmm(gg[hi], pf[lo]) * torch.bmm(gg[lo], pf[hi])).sum((1, 2))
        v = dots
        if left.numel() == unordered and right.numel() == unordered and bool((left < right).all()):
            return row_tot + 2 * float(v.sum()), 0.0
        return row_tot + b * (b - 1) * float(v.mean()), b * (b - 1) * float(v.std()) / pairs ** 0.5

    def per_example_sq_norms(self, module: nn.Module, x: torch.Tensor, g: torch.Tensor,
                             prepared: tuple[torch.Tensor, list] | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """‖∂W_b‖², ‖∂b_b‖² per example b (``prepared``: the float64 patches of ``x`` and their
        :func:`_groups` when the caller has them, ``x``/``g`` then being :func:`_prepare`'s float64 input
        and flattened gradient).

        ‖A_b‖² = Σ_{q,q'} (g_bq · g_bq')(P_bq · P_bq') when the two Q×Q Gram matrices cost less than
        the per-example gradient A_b (:func:`_gram_cheaper`), else ‖A_b‖² from A_b itself."""
        gs = g.double()
        if prepared is None:
            x, g, p, _ = _prepare(module, x, g)
            groups = list(_groups(module, p, g))
        else:
            p, groups = prepared
        w = torch.zeros(x.shape[0], dtype=torch.float64)
        o, (c, q, k) = g.shape[1] // module.groups, p.shape[1:]
        for gg, pf in groups:
            if _gram_cheaper(q, o, c * k // module.groups):
                w += _per_example_gram(gg, pf)
            else:
                w += torch.cat([a.square().sum((1, 2)) for a in _per_example_blocks(gg, pf)])
        bias = gs.reshape(gs.shape[0], gs.shape[1], -1).sum(2).square().sum(1)
        return w, (bias if module.bias is not None else None)


def _gram_cheaper(q: int, o: int, ck: int) -> bool:
    """Whether Q×Q Gram matrices of the gradient (O deep) and patches (C·K deep), Q²·(O + C·K) flops,
    cost less than the weight gradient they replace, Q·O·C·K flops."""
    return q * (o + ck) < o * ck


def _per_example_gram(gg: torch.Tensor, pf: torch.Tensor) -> torch.Tensor:
    """‖A_b‖² = Σ_{q,q'} (g_bq · g_bq')(P_bq · P_bq') for each example b of one group."""
    return (gg.transpose(1, 2) @ gg).mul_(pf @ pf.transpose(1, 2)).sum((1, 2))


def _shared_col(gg: torch.Tensor, pf: torch.Tensor) -> float:
    """Σ_κ Σ_q ‖Σ_b g[b,:,q] P[b,:,q,κ]ᵀ‖² of one group = Σ_q ‖Σ_b g_bq ⊗ P_bq‖²: per position q either
    Σ_{b,b'} (g_bq · g_b'q)(P_bq · P_b'q) (B×B Gram matrices, when B·(O + C·K) < O·C·K) or the
    O × C·K matrix itself, a few positions at a time."""
    b, o, q = gg.shape
    ck = pf.shape[2]
    gq = gg.permute(2, 0, 1).contiguous()  # (Q, B, O)
    pq = pf.transpose(0, 1).contiguous()  # (Q, B, C·K)
    if b * (o + ck) < o * ck:
        return float((torch.bmm(gq, gq.transpose(1, 2)) * torch.bmm(pq, pq.transpose(1, 2))).sum())
    per = max(1, _CHUNK // max(1, o * ck))
    return sum(float(torch.bmm(gq[s:s + per].transpose(1, 2), pq[s:s + per]).square().sum())
               for s in range(0, q, per))


def _gram_cross(gg: torch.Tensor, pf: torch.Tensor) -> float:
    """Σ_{b,b'} ⟨A_bb', A_b'b⟩ of one group through (B·Q)×(B·Q) Gram matrices: with A_bb' = Σ_q g_b'q ⊗ P_bq,
    ⟨A_bb', A_b'b⟩ = Σ_{q,q'} (g_b'q · g_bq')(P_bq · P_b'q'), i.e. ⟨H, K⟩ with H[(b,q),(b',q')] =
    g_b'q · g_bq' and K[(b,q),(b',q')] = P_bq · P_b'q'."""
    b, o, q = gg.shape
    flat_g = gg.transpose(1, 2).reshape(b * q, o)
    flat_p = pf.reshape(b * q, -1)
    kp = (flat_p @ flat_p.T).reshape(b, q, b, q)
    hg = (flat_g @ flat_g.T).reshape(b, q, b, q)  # hg[b', q, b, q'] = g_b'q · g_bq'
    return float((hg.permute(2, 1, 0, 3) * kp).sum())


class _RADConv(Twin):
    randomized = True
    views = VIEWS
    sketch: Sketch | None

    @torch.compiler.disable
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Eager under ``torch.compile`` as a whole (one graph break per call): compiled, this frame would
        be specialised per layer configuration and recompile once per conv shape (dynamo's recompile
        limit on a ResNet); the RAD op runs eagerly anyway and the plain conv is one kernel."""
        if not self._randomizes():
            return self._conv_forward(x, self.weight, self.bias)
        x, padding = effective_input(self, x)
        return rad_conv(x, self.weight, self.bias, self.stride, padding, self.dilation, self.groups, self.sketch)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, {self.sketch_label()}"


@register(nn.Conv1d, stats=ConvStats)
class RADConv1d(_RADConv, nn.Conv1d):
    """``nn.Conv1d`` that keeps a sketch of its input."""


@register(nn.Conv2d, stats=ConvStats)
class RADConv2d(_RADConv, nn.Conv2d):
    """``nn.Conv2d`` that keeps a sketch of its input."""


@register(nn.Conv3d, stats=ConvStats)
class RADConv3d(_RADConv, nn.Conv3d):
    """``nn.Conv3d`` that keeps a sketch of its input."""
