"""LCG construction, tracing and exact Jacobians (float64): path sums and vertex elimination equal jacrev."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from radvar.paths import (
    LCG, EdgeBernoulli, Injection, PathSampling, eliminate, from_jacobians, jacobian, path_count, path_sum, paths, trace,
)

DT = torch.float64


def _randn(*shape: int, seed: int) -> torch.Tensor:
    return torch.randn(*shape, dtype=DT, generator=torch.Generator().manual_seed(seed))


def chain_with_skip() -> tuple[LCG, torch.Tensor]:
    j0, j1, j2, skip = _randn(4, 3, seed=1), _randn(5, 4, seed=2), _randn(2, 5, seed=3), _randn(5, 3, seed=4)
    return from_jacobians([j0, j1, j2], {(0, 2): skip}), j2 @ (j1 @ j0 + skip)


class MLP(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = torch.nn.Sequential(
            torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 4), torch.nn.Tanh(), torch.nn.Linear(4, 2)
        ).to(DT)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


KERNEL = _randn(2, 1, 3, 3, seed=5)


def conv(x: torch.Tensor) -> torch.Tensor:
    return torch.tanh(F.conv2d(x, KERNEL, padding=1)).sum(1)


def stencil(u: torch.Tensor) -> torch.Tensor:
    """One explicit Euler step of u_t = D Δu + r u (1 − u) on a periodic grid (5-point Laplacian)."""
    lap = torch.roll(u, 1, 0) + torch.roll(u, -1, 0) + torch.roll(u, 1, 1) + torch.roll(u, -1, 1) - 4 * u
    return u + 0.1 * (0.8 * lap + 0.5 * u * (1 - u))


FUNCTIONS = {
    "mlp_tanh": (MLP(), _randn(3, seed=6)),
    "conv": (conv, _randn(1, 1, 4, 4, seed=7)),
    "stencil": (stencil, torch.rand(4, 4, dtype=DT, generator=torch.Generator().manual_seed(8))),
}


def test_chain_with_skip_matches_product() -> None:
    lcg, expected = chain_with_skip()
    torch.testing.assert_close(jacobian(lcg), expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(path_sum(lcg), expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(eliminate(lcg), expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(eliminate(lcg, ["x2", "x1"]), expected, rtol=1e-12, atol=1e-12)


def test_path_enumeration_counts() -> None:
    lcg, _ = chain_with_skip()
    # dense blocks: 3·4·5·2 through x1 plus 3·5·2 on the skip
    assert int(path_count(lcg).sum()) == 3 * 4 * 5 * 2 + 3 * 5 * 2
    assert paths(lcg).weight.numel() == 150
    with pytest.raises(ValueError, match="150 scalar paths.*max_paths=10"):
        paths(lcg, max_paths=10)


@pytest.mark.parametrize("name", sorted(FUNCTIONS))
def test_traced_jacobian_equals_jacrev(name: str) -> None:
    fn, x = FUNCTIONS[name]
    lcg = trace(fn, x)
    with torch.no_grad():
        out = fn(x)
    expected = torch.func.jacrev(fn)(x).detach().reshape(out.numel(), x.numel())
    assert lcg.shape == expected.shape and len(lcg.order) > 2
    torch.testing.assert_close(jacobian(lcg), expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(eliminate(lcg), expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(eliminate(lcg, list(reversed(lcg.order[1:-1]))), expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(path_sum(lcg), expected, rtol=1e-12, atol=1e-12)


def test_elementwise_nodes_give_diagonal_edges() -> None:
    lcg = trace(torch.tanh, _randn(5, seed=9))
    (mat,) = lcg.edges.values()
    torch.testing.assert_close(mat, torch.diag(torch.diagonal(mat)))


def test_cycle_is_rejected() -> None:
    eye = torch.eye(2, dtype=DT)
    edges = {("x", "a"): eye, ("a", "b"): eye, ("b", "a"): eye, ("b", "y"): eye}
    with pytest.raises(ValueError, match=r"cycle (a -> b -> a|b -> a -> b); an LCG must be acyclic"):
        LCG({"x": 2, "a": 2, "b": 2, "y": 2}, edges, "x", "y")


def test_mismatched_shapes_are_rejected() -> None:
    with pytest.raises(ValueError, match=r"edge \('x', 'y'\) has shape \(3, 2\), expected .* = \(2, 2\)"):
        LCG({"x": 2, "y": 2}, {("x", "y"): torch.zeros(3, 2, dtype=DT)}, "x", "y")
    with pytest.raises(ValueError, match=r"jacobians\[1\] has shape \(2, 5\).*expected 4 columns"):
        from_jacobians([torch.zeros(4, 3), torch.zeros(2, 5)])
    with pytest.raises(ValueError, match=r"edge \('x0', 'x2'\) has shape \(1, 1\)"):
        from_jacobians([torch.zeros(4, 3), torch.zeros(2, 4)], {(0, 2): torch.zeros(1, 1)})
    with pytest.raises(ValueError, match=r"skip \(0, 1\) must be a layer pair"):
        from_jacobians([torch.zeros(4, 3), torch.zeros(2, 4)], {(0, 1): torch.zeros(4, 3)})


def test_other_bad_graphs_are_rejected() -> None:
    with pytest.raises(TypeError, match=r"edge \('x', 'y'\) must be a torch.Tensor, got list"):
        LCG({"x": 1, "y": 1}, {("x", "y"): [[1.0]]}, "x", "y")
    with pytest.raises(ValueError, match="names node 'z'"):
        LCG({"x": 1, "y": 1}, {("x", "z"): torch.ones(1, 1)}, "x", "y")
    with pytest.raises(ValueError, match="input node 'x' must have no in-edges"):
        LCG({"x": 1, "y": 1}, {("x", "y"): torch.ones(1, 1), ("y", "x"): torch.ones(1, 1)}, "x", "y")
    with pytest.raises(ValueError, match=r"sizes\['x'\] must be a positive int, got 0"):
        LCG({"x": 0, "y": 1}, {}, "x", "y")
    lcg, _ = chain_with_skip()
    with pytest.raises(ValueError, match=r"permutation of \['x1', 'x2'\], got \['x1'\]"):
        eliminate(lcg, ["x1"])
    with pytest.raises(ValueError, match="exactly one tensor argument, got 2"):
        trace(lambda a, b: a + b, torch.zeros(2))
    with pytest.raises(TypeError, match="floating torch.Tensor"):
        trace(torch.tanh, [1.0])


@pytest.mark.parametrize("p", [0, 0.0, -0.5, 1.5, math.nan])
def test_probability_outside_unit_interval_is_rejected(p: float) -> None:
    with pytest.raises(ValueError, match=r"EdgeBernoulli: keep must be in \(0, 1\], got"):
        EdgeBernoulli(p)
    with pytest.raises(ValueError, match=r"Injection: keep must be in \(0, 1\], got"):
        Injection(["x1"], p)


def test_bad_estimator_arguments_are_rejected() -> None:
    with pytest.raises(TypeError, match=r"keep must be a number in \(0, 1\], got True"):
        EdgeBernoulli(True)
    with pytest.raises(TypeError, match="keep must be a number.*got '0.5'"):
        EdgeBernoulli("0.5")
    with pytest.raises(ValueError, match="n must be a positive int.*got 0"):
        PathSampling(0)
    with pytest.warns(DeprecationWarning, match="use keep="):
        assert EdgeBernoulli(p=0.5).keep == 0.5
    with pytest.raises(ValueError, match=r"weighting must be one of \('uniform', 'weight'\), got 'abs'"):
        PathSampling(1, "abs")
    with pytest.raises(ValueError, match="dist must be one of .*got 'sparse'"):
        Injection(["x1"], 0.5, "sparse")
    with pytest.raises(TypeError, match="nodes must be a sequence of node names"):
        Injection("x1", 0.5)
    lcg, _ = chain_with_skip()
    with pytest.raises(ValueError, match=r"nodes \['h'\] are not in the graph"):
        Injection(["h"], 0.5).variance(lcg)
    with pytest.raises(ValueError, match="draws must be a positive int, got 0"):
        EdgeBernoulli(0.5).sample(lcg, 0)
