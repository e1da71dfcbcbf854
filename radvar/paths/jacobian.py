"""Exact Jacobians of an LCG: forward accumulation, vertex elimination, path sums.

Bauer (1974), "Computational graphs and rounding error", SIAM J. Numer. Anal.
11(1): the Jacobian entry is the sum over all input → output paths of the
product of the edge weights along the path,
``J[o, i] = Σ_{P: i → o} Π_{(a → b) ∈ P} ∂b/∂a``.
"""

from __future__ import annotations

from typing import Mapping, NamedTuple, Sequence

import torch

from .graph import LCG, Edge

MAX_PATHS = 2_000_000


def accumulate(
    lcg: LCG,
    edges: Mapping[Edge, torch.Tensor] | None = None,
    nodes: Mapping[str, torch.Tensor] | None = None,
) -> torch.Tensor:
    """Forward accumulation ``J_v = Q_v Σ_{u→v} M_uv J_u`` with ``J_input = Q_input``; returns ``J_output``.

    ``edges`` overrides edge matrices and ``nodes`` inserts matrices ``Q_v``
    (identity where absent); both may carry leading batch dimensions
    ``(..., rows, cols)``, which broadcast.
    """
    edges = {**lcg.edges, **(edges or {})}
    nodes = nodes or {}
    m, n = lcg.shape
    if not lcg.order:
        return torch.zeros(m, n, dtype=lcg.dtype)
    acc: dict[str, torch.Tensor] = {}
    for v in lcg.order:
        if v == lcg.input:
            total = torch.eye(n, dtype=lcg.dtype)
        else:
            total = sum(edges[e] @ acc[e[0]] for e in lcg.in_edges(v))
        acc[v] = nodes[v] @ total if v in nodes else total
    return acc[lcg.output]


def jacobian(lcg: LCG) -> torch.Tensor:
    """The exact Jacobian ``∂output/∂input`` (forward accumulation)."""
    return accumulate(lcg)


def eliminate(lcg: LCG, order: Sequence[str] | None = None) -> torch.Tensor:
    """The Jacobian by vertex elimination (Griewank & Walther, *Evaluating Derivatives*, 2008, §9.1).

    Eliminating an intermediate vertex ``v`` adds ``M_vw M_uv`` to the edge
    ``u → w`` for every predecessor ``u`` and successor ``w`` and removes ``v``;
    when only the input and output remain, the edge between them is the Jacobian.
    ``order`` (default: topological) lists every intermediate vertex once.
    """
    inner = [v for v in lcg.order if v not in (lcg.input, lcg.output)]
    if order is None:
        order = inner
    elif sorted(order) != sorted(inner):
        raise ValueError(f"eliminate: order must list each intermediate vertex once, i.e. a permutation of {inner}, got {list(order)}")
    kept = set(lcg.order)
    edges = {e: m for e, m in lcg.edges.items() if e[0] in kept and e[1] in kept}
    for v in order:
        into = [(e[0], m) for e, m in edges.items() if e[1] == v]
        out = [(e[1], m) for e, m in edges.items() if e[0] == v]
        for u, m_in in into:
            for w, m_out in out:
                edges[(u, w)] = edges[(u, w)] + m_out @ m_in if (u, w) in edges else m_out @ m_in
        edges = {e: m for e, m in edges.items() if v not in e}
    m, n = lcg.shape
    return edges.get((lcg.input, lcg.output), torch.zeros(m, n, dtype=lcg.dtype))


def path_count(lcg: LCG) -> torch.Tensor:
    """Number of scalar input → output paths per Jacobian entry (edges = nonzero entries)."""
    return accumulate(lcg, {e: (m != 0).to(m.dtype) for e, m in lcg.edges.items()})


class Paths(NamedTuple):
    """All scalar input → output paths: start entry, end entry and product of edge weights."""

    input: torch.Tensor
    output: torch.Tensor
    weight: torch.Tensor


def _node_paths(lcg: LCG) -> list[list[str]]:
    out: list[list[str]] = []
    stack = [[lcg.input]]
    while stack:
        path = stack.pop()
        if path[-1] == lcg.output:
            out.append(path)
            continue
        stack.extend(path + [v] for _, v in lcg.out_edges(path[-1]))
    return out


def _extend(cur: torch.Tensor, weight: torch.Tensor, mat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Extend partial paths ending at entries ``cur`` along every nonzero of ``mat`` (targets × sources)."""
    src, dst = (mat.t() != 0).nonzero(as_tuple=True)  # sorted by source entry
    counts = torch.bincount(src, minlength=mat.shape[1])
    offsets = torch.cumsum(counts, 0) - counts
    c = counts[cur]
    rep = torch.repeat_interleave(torch.arange(cur.numel()), c)
    within = torch.arange(int(c.sum())) - torch.repeat_interleave(torch.cumsum(c, 0) - c, c)
    new = dst[offsets[cur[rep]] + within]
    return rep, new, weight[rep] * mat[new, cur[rep]]


def paths(lcg: LCG, max_paths: int = MAX_PATHS) -> Paths:
    """Enumerate every scalar input → output path (refuses more than ``max_paths``)."""
    total = int(path_count(lcg).sum())
    if total > max_paths:
        raise ValueError(f"paths: the graph has {total} scalar paths, more than max_paths={max_paths}; enumerate smaller graphs")
    starts, ends, weights = [], [], []
    n = lcg.sizes[lcg.input]
    for node_path in _node_paths(lcg):
        start, cur, weight = torch.arange(n), torch.arange(n), torch.ones(n, dtype=lcg.dtype)
        for u, v in zip(node_path, node_path[1:]):
            rep, cur, weight = _extend(cur, weight, lcg.edges[(u, v)])
            start = start[rep]
        starts.append(start)
        ends.append(cur)
        weights.append(weight)
    if not starts:
        empty = torch.zeros(0, dtype=torch.long)
        return Paths(empty, empty, torch.zeros(0, dtype=lcg.dtype))
    return Paths(torch.cat(starts), torch.cat(ends), torch.cat(weights))


def path_sum(lcg: LCG, max_paths: int = MAX_PATHS) -> torch.Tensor:
    """Bauer's formula: ``J[o, i] = Σ_{P: i → o} Π_{e ∈ P} w_e``, by enumerating the scalar paths."""
    p = paths(lcg, max_paths)
    m, n = lcg.shape
    out = torch.zeros(m * n, dtype=lcg.dtype)
    out.index_add_(0, p.output * n + p.input, p.weight)
    return out.view(m, n)
