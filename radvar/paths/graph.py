"""Linearized computational graphs (LCGs): DAGs whose edges carry local partial derivatives.

Nodes are tensors flattened to vectors (``sizes[v]`` entries); the edge
``(u, v)`` carries the local Jacobian ``∂v/∂u`` as a dense ``(sizes[v], sizes[u])``
matrix. At the scalar level (Bauer 1974) every nonzero entry ``M[b, a]`` of an
edge matrix is an edge from entry ``a`` of ``u`` to entry ``b`` of ``v``;
a node of size 1 everywhere gives the classic scalar LCG. One node is the
input (no in-edges) and one the output (no out-edges); the graph describes the
Jacobian ``∂output/∂input`` of shape ``(sizes[output], sizes[input])``.
"""

from __future__ import annotations

from typing import Callable, Mapping, Sequence

import torch

Edge = tuple[str, str]


class LCG:
    """A linearized computational graph with one input node and one output node."""

    def __init__(self, sizes: Mapping[str, int], edges: Mapping[Edge, torch.Tensor], input: str, output: str) -> None:
        self.sizes = dict(sizes)
        for name, size in self.sizes.items():
            if isinstance(size, bool) or not isinstance(size, int) or size < 1:
                raise ValueError(f"LCG: sizes[{name!r}] must be a positive int, got {size!r}")
        for role, name in (("input", input), ("output", output)):
            if name not in self.sizes:
                raise ValueError(f"LCG: {role} node {name!r} is not one of the nodes {sorted(self.sizes)}")
        self.input, self.output = input, output
        self.edges: dict[Edge, torch.Tensor] = {}
        for key, mat in edges.items():
            if not (isinstance(key, tuple) and len(key) == 2):
                raise TypeError(f"LCG: edge keys must be (source, target) pairs, got {key!r}")
            u, v = key
            for name in key:
                if name not in self.sizes:
                    raise ValueError(f"LCG: edge {key!r} names node {name!r}, which is not one of {sorted(self.sizes)}")
            if not isinstance(mat, torch.Tensor):
                raise TypeError(f"LCG: edge {key!r} must be a torch.Tensor, got {type(mat).__name__}")
            expected = (self.sizes[v], self.sizes[u])
            if tuple(mat.shape) != expected:
                raise ValueError(
                    f"LCG: edge {key!r} has shape {tuple(mat.shape)}, expected (sizes[{v!r}], sizes[{u!r}]) = {expected}"
                )
            if not mat.is_floating_point():
                raise TypeError(f"LCG: edge {key!r} must be a floating tensor, got dtype {mat.dtype}")
            self.edges[key] = mat
        dtypes = {m.dtype for m in self.edges.values()}
        if len(dtypes) > 1:
            raise TypeError(f"LCG: all edges must share one dtype, got {sorted(map(str, dtypes))}")
        self.dtype = dtypes.pop() if dtypes else torch.get_default_dtype()
        self.succ: dict[str, list[str]] = {v: [] for v in self.sizes}
        self.pred: dict[str, list[str]] = {v: [] for v in self.sizes}
        for u, v in self.edges:
            self.succ[u].append(v)
            self.pred[v].append(u)
        if self.pred[input]:
            raise ValueError(f"LCG: the input node {input!r} must have no in-edges, got edges from {self.pred[input]}")
        if self.succ[output]:
            raise ValueError(f"LCG: the output node {output!r} must have no out-edges, got edges to {self.succ[output]}")
        self.order = self._relevant(self._toposort())
        self._kept = frozenset(self.order)

    def _toposort(self) -> list[str]:
        indeg = {v: len(p) for v, p in self.pred.items()}
        ready = [v for v in self.sizes if indeg[v] == 0]
        order: list[str] = []
        while ready:
            u = ready.pop()
            order.append(u)
            for v in self.succ[u]:
                indeg[v] -= 1
                if indeg[v] == 0:
                    ready.append(v)
        if len(order) < len(self.sizes):
            raise ValueError(f"LCG: the edges form a cycle {' -> '.join(self._cycle(indeg))}; an LCG must be acyclic")
        return order

    def _cycle(self, indeg: dict[str, int]) -> list[str]:
        """One cycle among the nodes a topological sort could not place (each has such a predecessor)."""
        v = next(v for v in self.sizes if indeg[v] > 0)
        seen: list[str] = []
        while v not in seen:
            seen.append(v)
            v = next(u for u in self.pred[v] if indeg[u] > 0)
        cycle = seen[seen.index(v):][::-1]
        return cycle + [cycle[0]]

    def _relevant(self, order: list[str]) -> list[str]:
        """Topological order of the nodes on some input → output path."""
        forward, backward = {self.input}, {self.output}
        for u in order:
            if u in forward:
                forward.update(self.succ[u])
        for v in reversed(order):
            if v in backward:
                backward.update(self.pred[v])
        return [v for v in order if v in forward and v in backward]

    @property
    def shape(self) -> tuple[int, int]:
        """Shape of the Jacobian ``∂output/∂input``."""
        return self.sizes[self.output], self.sizes[self.input]

    def out_edges(self, u: str) -> list[Edge]:
        """Edges from ``u`` to nodes on an input → output path."""
        return [(u, v) for v in self.succ[u] if v in self._kept]

    def in_edges(self, v: str) -> list[Edge]:
        """Edges into ``v`` from nodes on an input → output path."""
        return [(u, v) for u in self.pred[v] if u in self._kept]

    def map(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> "LCG":
        """The same graph with every edge matrix ``M`` replaced by ``fn(M)``."""
        return LCG(self.sizes, {e: fn(m) for e, m in self.edges.items()}, self.input, self.output)

    def scalar_edge_count(self) -> int:
        """Number of scalar edges (nonzero entries) on input → output paths."""
        return sum(int((m != 0).sum()) for (u, v), m in self.edges.items() if u in self._kept and v in self._kept)

    def __repr__(self) -> str:
        return f"LCG(nodes={len(self.sizes)}, edges={len(self.edges)}, input={self.input!r}, output={self.output!r}, shape={self.shape})"


def from_jacobians(jacobians: Sequence[torch.Tensor], skips: Mapping[Edge | tuple[int, int], torch.Tensor] | None = None) -> LCG:
    """A chain LCG ``x0 → x1 → … → xL`` with edge ``(x{l}, x{l+1})`` = ``jacobians[l]``.

    ``skips`` maps a layer pair ``(i, j)`` with ``j ≥ i + 2`` to the extra edge
    matrix ``∂x_j/∂x_i`` (shape ``(size_j, size_i)``), e.g. a residual connection.
    """
    if len(jacobians) == 0:
        raise ValueError("from_jacobians: jacobians must hold at least one matrix, got an empty sequence")
    for l, mat in enumerate(jacobians):
        if not isinstance(mat, torch.Tensor) or mat.dim() != 2:
            got = tuple(mat.shape) if isinstance(mat, torch.Tensor) else type(mat).__name__
            raise TypeError(f"from_jacobians: jacobians[{l}] must be a 2-D torch.Tensor, got {got}")
        if l and mat.shape[1] != jacobians[l - 1].shape[0]:
            raise ValueError(
                f"from_jacobians: jacobians[{l}] has shape {tuple(mat.shape)}, but jacobians[{l - 1}] has "
                f"{jacobians[l - 1].shape[0]} rows; expected {jacobians[l - 1].shape[0]} columns"
            )
    sizes = {f"x{0}": jacobians[0].shape[1]}
    sizes.update({f"x{l + 1}": mat.shape[0] for l, mat in enumerate(jacobians)})
    edges = {(f"x{l}", f"x{l + 1}"): mat for l, mat in enumerate(jacobians)}
    depth = len(jacobians)
    for key, mat in (skips or {}).items():
        i, j = key
        if not (isinstance(i, int) and isinstance(j, int) and 0 <= i and i + 2 <= j <= depth):
            raise ValueError(f"from_jacobians: skip {key!r} must be a layer pair (i, j) with 0 <= i, i + 2 <= j <= {depth}")
        edges[(f"x{i}", f"x{j}")] = mat
    return LCG(sizes, edges, "x0", f"x{depth}")
