"""Statistics of ``nn.Conv1d/2d/3d`` for the closed forms (views: ``positions`` and ``examples``).

The twin sketches ``x`` (after any explicit padding it applies) viewed as
(batch·channel, positions) or (batch, channel·positions). With P the im2col
patches (P[b, c, q, κ] = x[b, c, p] for the input position p that kernel
offset κ reads at output position q), the contribution of input entry
(b, c, p) is ``C_bcp[o, κ] = g[b, o, q_κ(p)] x[b, c, p]`` (one weight slice per
channel c, so different channels never share entries). Hence

* ‖C_bcp‖² = x[b,c,p]² h[b,p] with h = (Σ_o g²) correlated with a ones kernel
  (a transposed convolution), so the per-row col = Σ x² h for both views;
* per-row tot = Σ_bc ‖A_bc‖², A_bc = Σ_q g[b,:,q] P[b,c,q,:] (the per-example,
  per-channel weight gradient), equal to Σ_b ‖A_b‖² for the examples view;
* shared col = Σ_p ‖C_p‖² = Σ_κ Σ_q ‖Σ_b g[b,:,q] P[b,:,q,κ]ᵀ‖², tot = ‖G‖².

Projection V needs all pairs of positions (n² contributions), more than a few
backward passes: it is estimated by Monte Carlo with k = 1 (one ±1 vector r;
x̂ = (x r) rᵀ), unbiased for V since Var(k) = V/k exactly (see ``forms``).
"""

from __future__ import annotations

import math
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from ...layers import RADConv1d, RADConv2d, RADConv3d
from ..forms import ImportanceStats, ViewStats
from . import register

_CHUNK = 1 << 22  # elements of per-example gradient blocks built at once


def effective_input(module: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, ...]]:
    """The input and padding the RAD twin convolves (explicit padding for non-zero modes or strings)."""
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
    """(g, P) restricted to each convolution group: (B, O/groups, Q), (B, C/groups, Q, K)."""
    cg, og = p.shape[1] // module.groups, g.shape[1] // module.groups
    for γ in range(module.groups):
        yield g[:, γ * og:(γ + 1) * og], p[:, γ * cg:(γ + 1) * cg]


def _per_example_blocks(gg: torch.Tensor, pg: torch.Tensor) -> Iterator[torch.Tensor]:
    """A[b, c, o, κ] = Σ_q g[b,o,q] P[b,c,q,κ], a few examples at a time."""
    per = max(1, _CHUNK // max(1, pg.shape[1] * gg.shape[1] * pg.shape[3]))
    for s in range(0, gg.shape[0], per):
        yield torch.einsum("boq,bcqk->bcok", gg[s:s + per], pg[s:s + per])


def _prepare(module: nn.Module, x: torch.Tensor, g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, tuple]:
    x, padding = effective_input(module, x.double())
    g = g.double()
    conv = (tuple(module.stride), padding, tuple(module.dilation))
    p = patches(x, tuple(module.kernel_size), *conv)
    return x, g.reshape(g.shape[0], g.shape[1], -1), p, conv


def _weight_grad(module: nn.Module, x: torch.Tensor, g: torch.Tensor, conv: tuple) -> torch.Tensor:
    stride, padding, dilation = conv
    w = module.weight.detach().double()
    return torch.ops.aten.convolution_backward(g, x, w, None, list(stride), list(padding), list(dilation), False,
                                               [0] * len(stride), module.groups, [False, True, False])[1]


@register(RADConv1d, RADConv2d, RADConv3d)
class ConvKind:
    name = "conv"
    axes = ("positions", "examples")

    def view_stats(self, module: nn.Module, x: torch.Tensor, g: torch.Tensor, gen: torch.Generator,
                   projection_draws: int, importance: bool) -> dict[str, ViewStats]:
        gs = g.double()
        x, g, p, conv = _prepare(module, x, g)
        b, c = x.shape[:2]
        tot = shared_col = row_tot = 0.0
        for gg, pg in _groups(module, p, g):
            w = torch.zeros(gg.shape[1], pg.shape[1], pg.shape[3], dtype=torch.float64)
            for a in _per_example_blocks(gg, pg):
                row_tot += float(a.square().sum())
                w += a.sum(0).transpose(0, 1)
            tot += float(w.square().sum())
            for k in range(pg.shape[3]):
                shared_col += float(torch.einsum("boq,bcq->qoc", gg, pg[..., k]).square().sum())
        h = self._h(module, x, gs, conv)
        row_col = float((x.square() * h).sum())
        grad = _weight_grad(module, x, gs, conv)
        views = {"positions": x.reshape(b * c, -1), "examples": x.reshape(b, -1)}
        weights = {"positions": h.reshape(b * c, -1), "examples": h.reshape(b, -1)}
        out = {}
        for axis, v in views.items():
            method = f"estimate ({projection_draws}-draw Monte Carlo of V; Var = V/k exactly)"
            shared, shared_se = self._projection_v(module, v, x.shape, gs, grad, conv, gen, projection_draws, False)
            row, row_se = self._projection_v(module, v, x.shape, gs, grad, conv, gen, projection_draws, True)
            out[axis] = ViewStats(v.shape[0], v.shape[1], shared_col, tot, row_col, row_tot, shared, row, method,
                                  ImportanceStats.build(v, weights[axis]) if importance else None, shared_se, row_se)
        return out

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
    def _projection_v(module: nn.Module, view: torch.Tensor, x_shape: torch.Size, g: torch.Tensor,
                      grad: torch.Tensor, conv: tuple, gen: torch.Generator, draws: int,
                      per_row: bool) -> tuple[float, float]:
        """Monte Carlo mean of ‖L((x r) rᵀ) − G‖² over ±1 vectors r (unbiased for V) and its standard error."""
        values = []
        for _ in range(draws):
            shape = view.shape if per_row else view.shape[1:]
            r = torch.randint(0, 2, shape, generator=gen, device=view.device).double().mul_(2).sub_(1)
            x_hat = ((view * r).sum(1, keepdim=True) * r) if per_row else (view @ r)[:, None] * r[None, :]
            x_hat = x_hat.reshape(x_shape)
            values.append(float((_weight_grad(module, x_hat, g, conv) - grad).square().sum()))
        v = torch.tensor(values, dtype=torch.float64)
        return float(v.mean()), float(v.std() / draws ** 0.5) if draws > 1 else float("inf")

    def per_example_sq_norms(self, module: nn.Module, x: torch.Tensor,
                             g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """‖∂W_b‖², ‖∂b_b‖² per example b."""
        gs = g.double()
        x, g, p, _ = _prepare(module, x, g)
        w = torch.zeros(x.shape[0], dtype=torch.float64)
        for gg, pg in _groups(module, p, g):
            parts = [a.square().sum((1, 2, 3)) for a in _per_example_blocks(gg, pg)]
            w += torch.cat(parts)
        bias = gs.reshape(gs.shape[0], gs.shape[1], -1).sum(2).square().sum(1)
        return w, (bias if module.bias is not None else None)
