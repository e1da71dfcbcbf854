"""Unbiased randomized estimators of an LCG's Jacobian, with exact and Monte Carlo moments.

Oktay, McGreivy, Aduol, Beatson, Adams, "Randomized Automatic
Differentiation", ICLR 2021 (§3: path sampling, §4: random matrix injection):

* :class:`PathSampling` — draw ``n`` i.i.d. scalar paths ``P`` from all
  input → output paths with probability ``q(P)`` and return
  ``Ĵ = (1/n) Σ w(P)/q(P) · e_{o(P)} e_{i(P)}ᵀ``; ``q`` is uniform, or
  proportional to ``|w(P)|``. One-path variance per entry:
  ``Σ_{P: i→o} w(P)²/q(P) − J[o, i]²`` (importance sampling).
* :class:`EdgeBernoulli` — keep each scalar edge independently with
  probability ``p`` and scale it by ``1/p``; the path sum of the sparsified
  graph is unbiased because a path never repeats an edge.
* :class:`Injection` — replace chosen node values ``v`` by ``Q v`` with
  ``E Q = I``: ``Q = R Rᵀ`` (Rademacher or Gaussian ``R``, ``k`` columns) or
  ``Q = Diag(b)/p`` (keep a random subset of entries).

``sample`` draws Jacobian estimates; ``variance`` is the exact per-entry
variance of one estimate (closed form, or the dynamic program of
:mod:`radvar.paths.moments`); ``outcomes`` lists every outcome with its
probability on small graphs, so :func:`enumerated_moments` checks both exactly.
"""

from __future__ import annotations

import warnings

import abc
from typing import Any, Sequence

import torch

from .. import rng
from ..sketch import check_keep, kept_count
from .graph import LCG
from .jacobian import accumulate, jacobian, paths
from .moments import bernoulli_node_map, projection_node_map, second_moment

MAX_OUTCOMES = 1 << 20
DISTS = ("rademacher", "gaussian", "bernoulli")
WEIGHTINGS = ("uniform", "weight")


def _generator(generator: torch.Generator | None) -> torch.Generator:
    return generator if generator is not None else rng.generator(rng.next_key(), "cpu")


def _check_draws(draws: Any, owner: str) -> int:
    if isinstance(draws, bool) or not isinstance(draws, int) or draws < 1:
        raise ValueError(f"{owner}: draws must be a positive int, got {draws!r}")
    return draws


def _bits(count: int, dtype: torch.dtype) -> torch.Tensor:
    """All ``2**count`` 0/1 vectors of length ``count``, one per row."""
    return ((torch.arange(1 << count)[:, None] >> torch.arange(count)) & 1).to(dtype)


def _check_outcomes(count: float, owner: str) -> None:
    if count > MAX_OUTCOMES:
        raise ValueError(f"{owner}.outcomes: {count:.3g} outcomes, more than {MAX_OUTCOMES}; enumerate a smaller graph")


class Estimator(abc.ABC):
    """An unbiased random estimate ``Ĵ`` of ``∂output/∂input`` for an LCG."""

    @abc.abstractmethod
    def sample(self, lcg: LCG, draws: int = 1, generator: torch.Generator | None = None) -> torch.Tensor:
        """``draws`` independent estimates, shape ``(draws, m, n)``."""

    @abc.abstractmethod
    def variance(self, lcg: LCG) -> torch.Tensor:
        """Exact per-entry variance ``Var Ĵ[o, i]`` of one estimate, shape ``(m, n)``."""

    @abc.abstractmethod
    def outcomes(self, lcg: LCG) -> tuple[torch.Tensor, torch.Tensor]:
        """Every outcome of one estimate: probabilities ``(K,)`` and values ``(K, m, n)``."""

    def total_variance(self, lcg: LCG) -> float:
        """``E‖Ĵ − J‖²_F``, the sum of the per-entry variances."""
        return float(self.variance(lcg).sum())


class PathSampling(Estimator):
    """Monte Carlo path sampling: ``n`` i.i.d. scalar paths, weight over probability (Oktay et al. 2021, §3)."""

    def __init__(self, n: int = 1, weighting: str = "uniform") -> None:
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"PathSampling: n must be a positive int (paths per estimate), got {n!r}")
        if weighting not in WEIGHTINGS:
            raise ValueError(f"PathSampling: weighting must be one of {WEIGHTINGS}, got {weighting!r}")
        self.n, self.weighting = n, weighting

    def __repr__(self) -> str:
        return f"PathSampling(n={self.n}, weighting={self.weighting!r})"

    def _omega(self, lcg: LCG) -> LCG:
        """Edge factors ``ω`` of the proposal: ``q(P) = Π_{e∈P} ω_e / Σ_P' Π ω``."""
        if self.weighting == "uniform":
            return lcg.map(lambda m: (m != 0).to(m.dtype))
        return lcg.map(torch.abs)

    def _total(self, omega: LCG) -> float:
        total = float(accumulate(omega).sum())
        if total == 0.0:
            raise ValueError("PathSampling: the graph has no input → output path of nonzero weight to sample")
        return total

    def variance(self, lcg: LCG) -> torch.Tensor:
        """``(C Σ_{P: i→o} w(P)²/ω(P) − J[o, i]²)/n`` with ``C = Σ_P ω(P)`` (a path sum of ``w²/ω`` edges)."""
        omega = self._omega(lcg)
        total = self._total(omega)
        ratio = {e: torch.where(om != 0, lcg.edges[e].square() / om.where(om != 0, 1.0), 0.0) for e, om in omega.edges.items()}
        return (total * accumulate(lcg, ratio) - jacobian(lcg).square()) / self.n

    def outcomes(self, lcg: LCG) -> tuple[torch.Tensor, torch.Tensor]:
        omega = self._omega(lcg)
        total = self._total(omega)
        p = paths(lcg)
        q = paths(omega).weight / total
        m, n = lcg.shape
        _check_outcomes(float(q.numel()) ** self.n, "PathSampling")
        tuples = torch.cartesian_prod(*[torch.arange(q.numel())] * self.n).reshape(-1, self.n)
        values = torch.zeros(tuples.shape[0], m * n, dtype=lcg.dtype)
        for j in range(self.n):
            idx = tuples[:, j]
            values[torch.arange(tuples.shape[0]), p.output[idx] * n + p.input[idx]] += p.weight[idx] / q[idx] / self.n
        return q[tuples].prod(1), values.view(-1, m, n)

    def sample(self, lcg: LCG, draws: int = 1, generator: torch.Generator | None = None) -> torch.Tensor:
        """Walk ``draws · n`` particles from the input: start entry ``a`` with probability ``c_input[a]/C``,
        step along scalar edge ``a → b`` (node ``u → v``) with probability ``ω_e c_v[b] / c_u[a]``,
        where ``c_v = Σ_{v→w} Ω_vwᵀ c_w`` counts ω-weighted paths to the output (``c_output = 1``)."""
        draws = _check_draws(draws, "PathSampling.sample")
        gen = _generator(generator)
        omega = self._omega(lcg)
        self._total(omega)
        m, n = lcg.shape
        count: dict[str, torch.Tensor] = {lcg.output: torch.ones(m, dtype=lcg.dtype)}
        for v in reversed(lcg.order[:-1]):
            count[v] = sum(omega.edges[e].t() @ count[e[1]] for e in lcg.out_edges(v))
        particles = draws * self.n
        start = torch.multinomial(count[lcg.input], particles, replacement=True, generator=gen)
        value = count[lcg.input].sum() / count[lcg.input][start]
        at: dict[str, list[tuple[torch.Tensor, torch.Tensor]]] = {v: [] for v in lcg.order}
        at[lcg.input].append((torch.arange(particles), start))
        for v in lcg.order[:-1]:
            if not at[v]:
                continue
            pid = torch.cat([a for a, _ in at[v]])
            cur = torch.cat([b for _, b in at[v]])
            outs = lcg.out_edges(v)
            weights = torch.cat([omega.edges[e][:, cur].t() * count[e[1]] for e in outs], 1)
            choice = torch.multinomial(weights, 1, generator=gen).squeeze(1)
            prob = weights[torch.arange(cur.numel()), choice] / count[v][cur]
            offset = 0
            for e in outs:
                width = lcg.sizes[e[1]]
                mask = (choice >= offset) & (choice < offset + width)
                nxt = choice[mask] - offset
                value[pid[mask]] *= lcg.edges[e][nxt, cur[mask]] / prob[mask]
                at[e[1]].append((pid[mask], nxt))
                offset += width
        pid = torch.cat([a for a, _ in at[lcg.output]])
        end = torch.cat([b for _, b in at[lcg.output]])
        out = torch.zeros(draws * m * n, dtype=lcg.dtype)
        out.index_add_(0, (pid // self.n) * (m * n) + end * n + start[pid], value[pid] / self.n)
        return out.view(draws, m, n)


class EdgeBernoulli(Estimator):
    """Edge sparsification: keep each scalar edge with probability ``keep``, scale it by ``1/keep``
    (Oktay et al. 2021, §3). ``p=`` is a deprecated alias of ``keep``.

    Variance (two paths share ``|P ∩ P'|`` edges, p = keep):
    ``Var Ĵ[o, i] = Σ_{P, P': i→o} w(P) w(P') (p^{−|P ∩ P'|} − 1)``.
    """

    def __init__(self, keep: float | None = None, *, p: float | None = None) -> None:
        if p is not None:
            if keep is not None:
                raise TypeError("EdgeBernoulli: give keep only (p is its deprecated alias)")
            warnings.warn("EdgeBernoulli(p=...) is deprecated; use keep=", DeprecationWarning, stacklevel=2)
            keep = p
        self.keep = check_keep(keep, "EdgeBernoulli")

    @property
    def p(self) -> float:
        """Deprecated alias of :attr:`keep`."""
        warnings.warn("EdgeBernoulli.p is deprecated; use .keep", DeprecationWarning, stacklevel=2)
        return self.keep

    def __repr__(self) -> str:
        return f"EdgeBernoulli(keep={self.keep})"

    def sample(self, lcg: LCG, draws: int = 1, generator: torch.Generator | None = None) -> torch.Tensor:
        draws = _check_draws(draws, "EdgeBernoulli.sample")
        gen = _generator(generator)
        kept = set(lcg.order)
        edges = {
            e: m * (torch.rand((draws, *m.shape), generator=gen, dtype=m.dtype) < self.keep).to(m.dtype) / self.keep
            for e, m in lcg.edges.items() if e[0] in kept and e[1] in kept
        }
        return accumulate(lcg, edges).expand(draws, *lcg.shape)

    def variance(self, lcg: LCG) -> torch.Tensor:
        return second_moment(lcg, edge_p=self.keep) - jacobian(lcg).square()

    def total_variance(self, lcg: LCG) -> float:
        return float(second_moment(lcg, edge_p=self.keep, per_entry=False).sum() - jacobian(lcg).square().sum())

    def outcomes(self, lcg: LCG) -> tuple[torch.Tensor, torch.Tensor]:
        kept = set(lcg.order)
        live = [(e, (m != 0).nonzero(as_tuple=True)) for e, m in lcg.edges.items() if e[0] in kept and e[1] in kept]
        count = sum(int(idx[0].numel()) for _, idx in live)
        _check_outcomes(2.0 ** count, "EdgeBernoulli")
        bits = _bits(count, lcg.dtype)
        probs = (self.keep ** bits.sum(1)) * ((1 - self.keep) ** (count - bits.sum(1)))
        edges, col = {}, 0
        for e, (rows, cols) in live:
            mat = lcg.edges[e]
            scaled = torch.zeros(bits.shape[0], *mat.shape, dtype=mat.dtype)
            scaled[:, rows, cols] = bits[:, col:col + rows.numel()] * mat[rows, cols] / self.keep
            edges[e] = scaled
            col += rows.numel()
        return probs, accumulate(lcg, edges).expand(bits.shape[0], *lcg.shape)


class Injection(Estimator):
    """Random matrix injection ``v ↦ Q v`` with ``E Q = I`` at the chosen nodes (Oktay et al. 2021, §4).

    ``dist="rademacher"``/``"gaussian"``: ``Q = R Rᵀ``, ``R`` of size
    ``s × k``, ``k = ceil(keep · s)``, i.i.d. entries ``±1/√k`` or ``N(0, 1/k)``
    (as in :class:`radvar.sketch.Projection`); ``dist="bernoulli"``:
    ``Q = Diag(b)/keep``, ``b_i ~ Bernoulli(keep)`` (keep a random subset of the
    node's entries). Matrices at different nodes are independent.
    """

    def __init__(self, nodes: Sequence[str], keep: float, dist: str = "rademacher") -> None:
        if isinstance(nodes, str) or not all(isinstance(v, str) for v in nodes):
            raise TypeError(f"Injection: nodes must be a sequence of node names (str), got {nodes!r}")
        if dist not in DISTS:
            raise ValueError(f"Injection: dist must be one of {DISTS}, got {dist!r}")
        self.nodes = tuple(dict.fromkeys(nodes))
        self.keep = check_keep(keep, "Injection")
        self.dist = dist

    def __repr__(self) -> str:
        return f"Injection(nodes={list(self.nodes)}, keep={self.keep}, dist={self.dist!r})"

    def _check(self, lcg: LCG) -> tuple[str, ...]:
        unknown = [v for v in self.nodes if v not in lcg.sizes]
        if unknown:
            raise ValueError(f"Injection: nodes {unknown} are not in the graph; its nodes are {sorted(lcg.sizes)}")
        return tuple(v for v in self.nodes if v in lcg.order)

    def _k(self, size: int) -> int:
        return kept_count(self.keep, size)

    def _node_maps(self, lcg: LCG) -> dict:
        if self.dist == "bernoulli":
            return {v: bernoulli_node_map(self.keep) for v in self._check(lcg)}
        return {v: projection_node_map(self._k(lcg.sizes[v]), self.dist) for v in self._check(lcg)}

    def _matrices(self, signs: torch.Tensor) -> torch.Tensor:
        """``Q`` from raw draws: ``(…, s)`` 0/1 masks or ``(…, s, k)`` unit-variance entries."""
        if self.dist == "bernoulli":
            return torch.diag_embed(signs / self.keep)
        return signs @ signs.transpose(-1, -2) / signs.shape[-1]

    def sample(self, lcg: LCG, draws: int = 1, generator: torch.Generator | None = None) -> torch.Tensor:
        draws = _check_draws(draws, "Injection.sample")
        gen = _generator(generator)
        nodes = {}
        for v in self._check(lcg):
            s = lcg.sizes[v]
            if self.dist == "bernoulli":
                raw = (torch.rand((draws, s), generator=gen, dtype=lcg.dtype) < self.keep).to(lcg.dtype)
            elif self.dist == "rademacher":
                raw = torch.randint(0, 2, (draws, s, self._k(s)), generator=gen).to(lcg.dtype) * 2 - 1
            else:
                raw = torch.randn((draws, s, self._k(s)), generator=gen, dtype=lcg.dtype)
            nodes[v] = self._matrices(raw)
        return accumulate(lcg, nodes=nodes).expand(draws, *lcg.shape)

    def variance(self, lcg: LCG) -> torch.Tensor:
        return second_moment(lcg, nodes=self._node_maps(lcg)) - jacobian(lcg).square()

    def total_variance(self, lcg: LCG) -> float:
        return float(second_moment(lcg, nodes=self._node_maps(lcg), per_entry=False).sum() - jacobian(lcg).square().sum())

    def outcomes(self, lcg: LCG) -> tuple[torch.Tensor, torch.Tensor]:
        if self.dist == "gaussian":
            raise ValueError("Injection.outcomes: dist='gaussian' has no finite outcome space; use 'rademacher' or 'bernoulli'")
        nodes = self._check(lcg)
        widths = [lcg.sizes[v] if self.dist == "bernoulli" else lcg.sizes[v] * self._k(lcg.sizes[v]) for v in nodes]
        _check_outcomes(2.0 ** sum(widths), "Injection")
        bits = _bits(sum(widths), lcg.dtype)
        if self.dist == "bernoulli":
            probs = (self.keep ** bits.sum(1)) * ((1 - self.keep) ** (bits.shape[1] - bits.sum(1)))
        else:
            probs = torch.full((bits.shape[0],), 0.5 ** bits.shape[1], dtype=lcg.dtype)
        mats, col = {}, 0
        for v, width in zip(nodes, widths):
            raw = bits[:, col:col + width]
            s = lcg.sizes[v]
            raw = raw if self.dist == "bernoulli" else (2 * raw - 1).view(-1, s, self._k(s))
            mats[v] = self._matrices(raw)
            col += width
        return probs, accumulate(lcg, nodes=mats).expand(bits.shape[0], *lcg.shape)


def enumerated_moments(estimator: Estimator, lcg: LCG) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact mean ``Σ_k π_k Ĵ_k`` and per-entry variance ``Σ_k π_k (Ĵ_k − mean)²`` over all outcomes."""
    probs, values = estimator.outcomes(lcg)
    mean = torch.einsum("k,kij->ij", probs, values)
    return mean, torch.einsum("k,kij->ij", probs, (values - mean).square())


def monte_carlo(
    estimator: Estimator, lcg: LCG, draws: int, generator: torch.Generator | None = None, chunk: int = 512
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample mean and unbiased sample variance (per entry) of ``draws`` independent estimates."""
    draws = _check_draws(draws, "monte_carlo")
    if draws < 2:
        raise ValueError(f"monte_carlo: draws must be at least 2 to estimate a variance, got {draws}")
    gen = _generator(generator)
    total = torch.zeros(lcg.shape, dtype=lcg.dtype)
    square = torch.zeros(lcg.shape, dtype=lcg.dtype)
    reference = jacobian(lcg)  # centre the sums for numerical stability
    for start in range(0, draws, chunk):
        batch = estimator.sample(lcg, min(chunk, draws - start), gen) - reference
        total += batch.sum(0)
        square += batch.square().sum(0)
    mean = total / draws
    return mean + reference, (square - draws * mean.square()) / (draws - 1)
