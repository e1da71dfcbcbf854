"""Exact second moments of randomized LCG Jacobians by a dynamic program over node pairs.

Write ``ā_v`` for one row of the randomized adjoint ``∂̂output/∂v``:
``ā_v = Q_vᵀ Σ_{v→w} M̂_vwᵀ ā_w`` with independent random edge matrices
``M̂`` (``E M̂ = M``) and node matrices ``Q`` (``E Q = I``). Then
``T(v, v') = E[ā_v ā_v'ᵀ]`` obeys, for ``v'`` strictly before ``v`` in
topological order (``M̂_v'w'`` and ``Q_v'`` are independent of ``ā_v``, ``ā_w'``),
``T(v, v') = Σ_{v'→w'} T(v, w') M_v'w'``, and on the diagonal
``T(v, v) = 𝒬_v(Σ_{e≠f} M_eᵀ T(w_e, w_f) M_f + Σ_e ℰ_e(T(w_e, w_e)))`` with

* ``ℰ(A) = Mᵀ A M + (1/p − 1) Diag((M∘M)ᵀ diag A)`` for Bernoulli edge entries
  kept with probability ``p`` and scaled by ``1/p``;
* ``𝒬(A) = E[Q A Q]``: ``A + (1/p − 1) Diag(diag A)`` for ``Q = Diag(b)/p``,
  ``b_i ~ Bernoulli(p)``; ``A + (Aᵀ + tr(A) I − 2 Diag(diag A))/k`` for
  ``Q = R Rᵀ``, ``R`` with i.i.d. ``±1/√k`` entries; ``A + (Aᵀ + tr(A) I)/k``
  for ``N(0, 1/k)`` entries (fourth moments of the entries).

With ``ā_output = e_o``, ``E[Ĵ[o, i]²] = T(input, input)[i, i]`` for row ``o``.
Summing over ``o`` (start from ``I``) gives the column sums at the cost of one row.
"""

from __future__ import annotations

from typing import Callable, Mapping

import torch

from .graph import LCG, Edge

NodeMap = Callable[[torch.Tensor], torch.Tensor]


def _diag(a: torch.Tensor) -> torch.Tensor:
    return torch.diagonal(a, dim1=-2, dim2=-1)


def bernoulli_node_map(p: float) -> NodeMap:
    """``A ↦ E[Q A Q]`` for ``Q = Diag(b)/p``, ``b_i ~ Bernoulli(p)``: ``A + (1/p − 1) Diag(diag A)``."""
    return lambda a: a + (1.0 / p - 1.0) * torch.diag_embed(_diag(a))


def projection_node_map(k: int, dist: str) -> NodeMap:
    """``A ↦ E[R Rᵀ A R Rᵀ]`` for ``R`` (s × k) with i.i.d. Rademacher or Gaussian entries of variance ``1/k``."""
    def fn(a: torch.Tensor) -> torch.Tensor:
        eye = torch.eye(a.shape[-1], dtype=a.dtype)
        extra = a.transpose(-1, -2) + _diag(a).sum(-1)[..., None, None] * eye
        if dist == "rademacher":
            extra = extra - 2 * torch.diag_embed(_diag(a))
        return a + extra / k
    return fn


def second_moment(lcg: LCG, edge_p: float = 1.0, nodes: Mapping[str, NodeMap] | None = None, per_entry: bool = True) -> torch.Tensor:
    """``E[Ĵ[o, i]²]`` per entry (shape ``(m, n)``), or its column sums over ``o`` (shape ``(n,)``) if not ``per_entry``."""
    nodes = nodes or {}
    m, n = lcg.shape
    if not lcg.order:
        return torch.zeros((m, n) if per_entry else (n,), dtype=lcg.dtype)
    pos = {v: i for i, v in enumerate(lcg.order)}
    edges: dict[Edge, torch.Tensor] = lcg.edges
    memo: dict[tuple[str, str], torch.Tensor] = {}
    if per_entry:
        base = torch.zeros(m, m, m, dtype=lcg.dtype)
        base[torch.arange(m), torch.arange(m), torch.arange(m)] = 1.0
    else:
        base = torch.eye(m, dtype=lcg.dtype)[None]

    def pair(v: str, w: str) -> torch.Tensor:
        if pos[v] < pos[w]:
            return pair(w, v).transpose(-1, -2)
        if (v, w) in memo:
            return memo[(v, w)]
        if v != w:
            res = sum(pair(v, x) @ edges[(w, x)] for _, x in lcg.out_edges(w))
        else:
            if v == lcg.output:
                acc = base
            else:
                outs = lcg.out_edges(v)
                acc = sum(edges[e].t() @ pair(e[1], f[1]) @ edges[f] for e in outs for f in outs)
                if edge_p < 1.0:
                    acc = acc + (1.0 / edge_p - 1.0) * torch.diag_embed(
                        sum(_diag(pair(e[1], e[1])) @ edges[e].square() for e in outs)
                    )
            res = nodes[v](acc) if v in nodes else acc
        memo[(v, w)] = res
        return res

    moment = _diag(pair(lcg.input, lcg.input))
    return moment if per_entry else moment[0]
