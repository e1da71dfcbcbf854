"""Estimators on LCGs: exact unbiasedness and variance by enumeration, and Monte Carlo z-tests.

Every statistical threshold is derived from a variance: the mean of D draws
must lie within z·sqrt(Var/D) of the exact Jacobian for every entry, with z the
Bonferroni-corrected two-sided normal quantile at family level ALPHA; the
exact total variance must lie within z·sd/√D of the mean of the per-draw
squared errors ‖Ĵ − J‖²_F (whose expectation it is). Seeds are fixed.
"""

from __future__ import annotations

import pytest
import scipy.stats
import torch

import radvar
from radvar.paths import (
    EdgeBernoulli, Estimator, Injection, LCG, PathSampling, enumerated_moments, from_jacobians, jacobian, monte_carlo,
    trace,
)

DT = torch.float64
ALPHA = 1e-3
DRAWS = 4000


def _randn(*shape: int, seed: int) -> torch.Tensor:
    return torch.randn(*shape, dtype=DT, generator=torch.Generator().manual_seed(seed))


def small_graph() -> LCG:
    """2 → 2 → 2 → 1 with a skip x0 → x2: 14 scalar edges, 12 paths (small enough to enumerate 2^14 edge masks)."""
    return from_jacobians([_randn(2, 2, seed=1), _randn(2, 2, seed=2), _randn(1, 2, seed=3)], {(0, 2): _randn(2, 2, seed=4)})


def medium_graph() -> LCG:
    """3 → 4 → 4 → 4 → 2 with a skip: dense enough that only the dynamic program gives the variance."""
    js = [_randn(4, 3, seed=5), _randn(4, 4, seed=6) / 2, _randn(4, 4, seed=7) / 2, _randn(2, 4, seed=8)]
    return from_jacobians(js, {(1, 3): _randn(4, 4, seed=9) / 2})


ENUMERABLE = {
    "path_uniform": PathSampling(1),
    "path_uniform_n2": PathSampling(2),
    "path_weight": PathSampling(1, "weight"),
    "edge_bernoulli": EdgeBernoulli(0.6),
    "inject_bernoulli": Injection(["x1", "x2"], 0.5, "bernoulli"),
    "inject_rademacher": Injection(["x1", "x2"], 0.5, "rademacher"),
}
ALL = {
    **ENUMERABLE,
    "path_weight_n8": PathSampling(8, "weight"),
    "inject_gaussian": Injection(["x1", "x2"], 0.5, "gaussian"),
}


def z_value(tests: int) -> float:
    """Two-sided normal quantile with a Bonferroni correction over ``tests`` comparisons."""
    return float(scipy.stats.norm.ppf(1 - ALPHA / (2 * tests)))


def assert_unbiased(samples: torch.Tensor, exact: torch.Tensor, variance: torch.Tensor) -> None:
    draws = samples.shape[0]
    z = z_value(exact.numel())
    bound = z * (variance.clamp_min(0) / draws).sqrt()
    err = (samples.mean(0) - exact).abs()
    floor = 1e-12 * (1 + exact.abs())  # rounding only: entries with zero variance are exact
    assert bool((err <= bound + floor).all()), f"|mean − J| = {err} exceeds {bound} (z={z:.2f}, D={draws})"


def assert_total_variance(samples: torch.Tensor, exact: torch.Tensor, total_variance: float) -> None:
    per_draw = (samples - exact).square().sum((1, 2))
    bound = z_value(1) * per_draw.std() / per_draw.numel() ** 0.5
    assert abs(float(per_draw.mean()) - total_variance) <= float(bound), (
        f"Monte Carlo total variance {float(per_draw.mean()):.6g} vs exact {total_variance:.6g}, bound {float(bound):.3g}"
    )


@pytest.mark.parametrize("name", sorted(ENUMERABLE))
def test_enumeration_is_exactly_unbiased_and_matches_exact_variance(name: str) -> None:
    est, lcg = ENUMERABLE[name], small_graph()
    probs, _ = est.outcomes(lcg)
    torch.testing.assert_close(probs.sum(), torch.tensor(1.0, dtype=DT), rtol=1e-12, atol=1e-12)
    mean, var = enumerated_moments(est, lcg)
    torch.testing.assert_close(mean, jacobian(lcg), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(var, est.variance(lcg), rtol=1e-10, atol=1e-12)
    assert est.total_variance(lcg) == pytest.approx(float(var.sum()), rel=1e-10)


@pytest.mark.parametrize("graph", ["small", "medium"])
@pytest.mark.parametrize("name", sorted(ALL))
def test_monte_carlo_unbiased_and_variance_within_ci(name: str, graph: str) -> None:
    est, lcg = ALL[name], small_graph() if graph == "small" else medium_graph()
    gen = torch.Generator().manual_seed(1234)
    samples = est.sample(lcg, DRAWS, gen)
    exact = jacobian(lcg)
    assert samples.shape == (DRAWS, *lcg.shape)
    assert_unbiased(samples, exact, est.variance(lcg))
    assert_total_variance(samples, exact, est.total_variance(lcg))


def test_edge_pair_formula_matches_dynamic_program() -> None:
    """Var Ĵ[o,i] = Σ_{P,P'} w w' (p^{−|P∩P'|} − 1) over path pairs, on a scalar (size-1) graph with shared edges."""
    one = lambda v: torch.tensor([[v]], dtype=DT)  # noqa: E731
    edges = {("x", "a"): one(0.7), ("x", "b"): one(-1.3), ("a", "b"): one(2.0), ("a", "y"): one(0.5), ("b", "y"): one(1.1)}
    lcg = LCG({"x": 1, "a": 1, "b": 1, "y": 1}, edges, "x", "y")
    path_edges = [[("x", "a"), ("a", "y")], [("x", "a"), ("a", "b"), ("b", "y")], [("x", "b"), ("b", "y")]]
    weights = [float(torch.prod(torch.stack([edges[e][0, 0] for e in path]))) for path in path_edges]
    p = 0.3
    expected = sum(
        w1 * w2 * (p ** -len(set(p1) & set(p2)) - 1) for p1, w1 in zip(path_edges, weights) for p2, w2 in zip(path_edges, weights)
    )
    assert float(EdgeBernoulli(p).variance(lcg)) == pytest.approx(expected, rel=1e-12)


def test_traced_mlp_estimators() -> None:
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.Tanh(), torch.nn.Linear(3, 2)).to(DT)
    lcg = trace(net, _randn(3, seed=10))
    exact = jacobian(lcg)
    hidden = [v for v in lcg.order if v not in (lcg.input, lcg.output)]
    for est in (PathSampling(4, "weight"), EdgeBernoulli(0.5), Injection(hidden, 0.5, "bernoulli")):
        samples = est.sample(lcg, DRAWS, torch.Generator().manual_seed(7))
        assert_unbiased(samples, exact, est.variance(lcg))
        assert_total_variance(samples, exact, est.total_variance(lcg))


def test_keep_one_is_exact() -> None:
    lcg = medium_graph()
    exact = jacobian(lcg)
    for est in (EdgeBernoulli(1.0), Injection(["x1", "x2", "x3"], 1.0, "bernoulli")):
        torch.testing.assert_close(est.sample(lcg, 3, torch.Generator().manual_seed(0)), exact.expand(3, -1, -1), rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(est.variance(lcg), torch.zeros_like(exact), rtol=0, atol=1e-12)


def test_importance_path_sampling_on_positive_graph_beats_uniform() -> None:
    lcg = medium_graph().map(torch.abs)
    assert PathSampling(1, "weight").total_variance(lcg) < PathSampling(1).total_variance(lcg)


@pytest.mark.parametrize("name", ["path_uniform", "edge_bernoulli", "inject_rademacher"])
def test_monte_carlo_helper_matches_exact_moments(name: str) -> None:
    """Sample mean and sample variance per entry, each within a Bonferroni CI: Var(s²) ≈ (μ₄ − σ⁴)/D, μ₄ by enumeration."""
    lcg, est = small_graph(), ENUMERABLE[name]
    mean, var = monte_carlo(est, lcg, DRAWS, torch.Generator().manual_seed(3), chunk=1000)
    probs, values = est.outcomes(lcg)
    exact_mean, exact_var = enumerated_moments(est, lcg)
    mu4 = torch.einsum("k,kij->ij", probs, (values - exact_mean) ** 4)
    z = z_value(2 * mean.numel())
    assert bool(((mean - exact_mean).abs() <= z * (exact_var / DRAWS).sqrt() + 1e-12).all())
    assert bool(((var - exact_var).abs() <= z * ((mu4 - exact_var**2) / DRAWS).sqrt() + 1e-12).all())
    with pytest.raises(ValueError, match="draws must be at least 2"):
        monte_carlo(est, lcg, 1)


def test_randomness_uses_radvar_streams_only() -> None:
    lcg = small_graph()
    before = torch.get_rng_state()
    radvar.seed(11)
    first = [est.sample(lcg, 5) for est in ALL.values()]
    radvar.seed(11)
    second = [est.sample(lcg, 5) for est in ALL.values()]
    assert all(torch.equal(a, b) for a, b in zip(first, second))
    assert torch.equal(torch.get_rng_state(), before)


def test_outcome_enumeration_limits() -> None:
    with pytest.raises(ValueError, match="dist='gaussian' has no finite outcome space"):
        Injection(["x1"], 0.5, "gaussian").outcomes(small_graph())
    with pytest.raises(ValueError, match="outcomes, more than"):
        EdgeBernoulli(0.5).outcomes(medium_graph())


def test_estimator_interface() -> None:
    assert all(isinstance(est, Estimator) for est in ALL.values())
    assert "weighting='weight'" in repr(ALL["path_weight"])
