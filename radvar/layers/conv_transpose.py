"""The ``nn.ConvTranspose2d`` layer kind: its RAD twin and its variance statistics.

The twin runs the shared op :func:`radvar.ops.rad_convolution` with
``transposed=True``: W and a sketch of x are kept, ∂x and ∂b are exact and ∂W
is unbiased. Views as for convolutions (:func:`radvar.ops.conv.conv_view`):
``positions`` (rows (batch, channel), features the spatial positions) and
``examples`` (rows examples, features (channel, position)).

Statistics. A transposed convolution writes ``x[b,c,p] W[c,o,κ]`` to output
position ``s·p + d·κ − pad``, so with ``P_g[b,o,p,κ] = g[b,o,s·p + d·κ − pad]``
(the im2col patches of the output gradient g under the same stride, padding and
dilation, :func:`radvar.layers.conv.patches`) the contribution of input entry
(b, c, p) is ``C_bcp = x[b,c,p] · P_g[b,:,p,:]`` in weight slice c, restricted
to the output channels of c's group. Hence, per group:

* ‖C_bcp‖² = x[b,c,p]² h[b,p] with h[b,p] = Σ_{o,κ} P_g[b,o,p,κ]² (the per-entry weight);
* A[b,c] = Σ_p x[b,c,p] P_g[b,:,p,:] is example b's gradient of slice c: per-row
  tot = Σ_bc ‖A[b,c]‖² in both views, shared tot = ‖Σ_b A[b]‖² = ‖G‖²;
* shared col = Σ_cp ‖Σ_b x[b,c,p] P_g[b,:,p,:]‖² = Σ_p Σ_{b,b'} (Σ_c x[b,c,p] x[b',c,p]) H_p[b,b']
  with H_p[b,b'] = Σ_{o,κ} P_g[b,o,p,κ] P_g[b',o,p,κ];
* mixing moment V = Σ_{f,f'} ‖D_ff'‖² + Σ_{f,f'} ⟨D_ff', D_f'f⟩ − 2·col, where the first sum is
  Σ_{b,b'} X[b,b'] Γ[b,b'] over the example Gram matrices X_c = Σ_p x[·,c,p] x[·,c,p] and
  Γ_c = Σ_{o,p,κ} P_g[·,o,p,κ] P_g[·,o,p,κ] (per channel for positions, summed over channels
  for examples, where a feature may move to another channel; per row only b = b'), and the
  second is Σ_c Σ_{b,b'} ⟨A_bb'c, A_b'bc⟩ with A_bb'c = Σ_p x[b,c,p] P_g[b',:,p,:] (per row: the
  row tot). It is computed exactly, a few examples at a time.
"""

from __future__ import annotations

from typing import Iterator

import torch
from torch import nn

from ..ops.conv import VIEWS, rad_convolution
from ..sketch import Sketch
from ..sketch.base import CLOSED
from ..sketch.moments import ViewStats
from .conv import channel_view_stats, patches
from .registry import Twin, register

_CHUNK = 1 << 22  # elements of the pairwise gradient blocks built at once


def _grouped(module: nn.Module, x: torch.Tensor,
             g: torch.Tensor) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Per group, x (B, C/groups, P) and the output-gradient patches P_g (B, O/groups, P, K), float64."""
    x = x.double().flatten(2)
    pg = patches(g.double(), tuple(module.kernel_size), tuple(module.stride), tuple(module.padding),
                 tuple(module.dilation))[:, :, :x.shape[2]]
    cg, og = x.shape[1] // module.groups, pg.shape[1] // module.groups
    for γ in range(module.groups):
        yield x[:, γ * cg:(γ + 1) * cg], pg[:, γ * og:(γ + 1) * og]


def _per_example(xg: torch.Tensor, pg: torch.Tensor) -> torch.Tensor:
    """A[b, c, o, κ] = Σ_p x[b,c,p] P_g[b,o,p,κ]."""
    return torch.einsum("bcp,bopk->bcok", xg, pg)


def _cross(xg: torch.Tensor, pg: torch.Tensor) -> float:
    """Σ_c Σ_{b,b'} ⟨A_bb'c, A_b'bc⟩, a few examples b at a time."""
    b = xg.shape[0]
    step = max(1, _CHUNK // max(1, b * xg.shape[1] * pg.shape[1] * pg.shape[3]))
    total = 0.0
    for s in range(0, b, step):
        mine = torch.einsum("bcp,dopk->bdcok", xg[s:s + step], pg)  # x of b in chunk, patches of every b'
        theirs = torch.einsum("dcp,bopk->bdcok", xg, pg[s:s + step])  # x of every b', patches of b
        total += float((mine * theirs).sum())
    return total


class ConvTransposeStats:
    name = "conv_transpose"

    def view_stats(self, module: nn.Module, x: torch.Tensor, g: torch.Tensor, gen: torch.Generator,
                   projection_pairs: int, entries: bool) -> dict[str, ViewStats]:
        shared_col = tot = row_col = row_tot = cross = 0.0
        grams_x, grams_g, weights = [], [], []
        for xg, pg in _grouped(module, x, g):
            a = _per_example(xg, pg)
            row_tot += float(a.square().sum())
            tot += float(a.sum(0).square().sum())
            h = pg.square().sum((1, 3))  # (B, P)
            row_col += float((xg.square() * h[:, None]).sum())
            shared_col += float((torch.einsum("bcp,dcp->bdp", xg, xg) *
                                 torch.einsum("bopk,dopk->bdp", pg, pg)).sum())
            cross += _cross(xg, pg)
            grams_x.append(torch.einsum("bcp,dcp->cbd", xg, xg))
            grams_g.append(torch.einsum("bopk,dopk->bd", pg, pg).expand(xg.shape[1], -1, -1))
            weights.append(h[:, None].expand_as(xg))
        return channel_view_stats(x.double(), torch.cat(weights, 1).reshape(x.shape), torch.cat(grams_x),
                                  torch.cat(grams_g), (shared_col, tot, row_col, row_tot), cross, CLOSED, 0.0, entries)

    def per_example_sq_norms(self, module: nn.Module, x: torch.Tensor,
                             g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """‖∂W_b‖², ‖∂b_b‖² per example b."""
        w = sum(_per_example(xg, pg).square().sum((1, 2, 3)) for xg, pg in _grouped(module, x, g))
        bias = g.double().flatten(2).sum(2).square().sum(1)
        return w, (bias if module.bias is not None else None)


@register(nn.ConvTranspose2d, stats=ConvTransposeStats)
class RADConvTranspose2d(nn.ConvTranspose2d, Twin):
    """``nn.ConvTranspose2d`` that keeps a sketch of its input."""

    randomized = True
    views = VIEWS
    sketch: Sketch | None

    def forward(self, x: torch.Tensor, output_size: list[int] | None = None) -> torch.Tensor:
        if not self._randomizes():
            return super().forward(x, output_size)
        output_padding = self._output_padding(x, output_size, self.stride, self.padding, self.kernel_size, 2,
                                              self.dilation)
        return rad_convolution(x, self.weight, self.bias, self.stride, self.padding, self.dilation, True,
                               output_padding, self.groups, self.sketch)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, {self.sketch_label()}"
