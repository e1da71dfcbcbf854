"""Knapsack solvers of radvar.tradeoff.solve: exact = brute force, Lagrangian bounds, water-filling, errors."""

from __future__ import annotations

import numpy as np
import pytest

from radvar.tradeoff import solve


def random_instance(rng: np.random.Generator, layers: int, options: int) -> list[tuple[np.ndarray, np.ndarray]]:
    out = []
    for _ in range(layers):
        k = int(rng.integers(1, options + 1))
        out.append((rng.integers(0, 100, k), rng.random(k) * rng.choice([1e-3, 1.0, 1e3])))
    return out


def test_exact_matches_brute_force_under_memory_budget():
    rng = np.random.default_rng(1)
    for _ in range(200):
        opts = random_instance(rng, int(rng.integers(1, 5)), 6)
        fixed = int(rng.integers(0, 50))
        lo = fixed + sum(int(m.min()) for m, _ in opts)
        hi = fixed + sum(int(m.max()) for m, _ in opts)
        budget = int(rng.integers(lo, hi + 1))
        ex = solve.exact(opts, budget=budget, fixed=fixed)
        bf = solve.brute_force(opts, budget=budget, fixed=fixed)
        assert ex.bytes <= budget
        assert ex.variance == pytest.approx(bf.variance, rel=1e-12, abs=1e-15)
        assert ex.bytes == fixed + sum(int(opts[l][0][c]) for l, c in enumerate(ex.choice))
        assert ex.variance == pytest.approx(sum(float(opts[l][1][c]) for l, c in enumerate(ex.choice)), rel=1e-12)
        lg = solve.lagrangian(opts, budget=budget, fixed=fixed)
        assert lg.bytes <= budget
        assert lg.bound <= bf.variance * (1 + 1e-12) + 1e-15  # LP relaxation bounds the optimum from below
        assert lg.variance >= bf.variance * (1 - 1e-12) - 1e-15
        assert lg.gap == pytest.approx(max(0.0, lg.variance - lg.bound))


def test_exact_matches_brute_force_under_variance_budget():
    rng = np.random.default_rng(2)
    for _ in range(200):
        opts = random_instance(rng, int(rng.integers(1, 5)), 6)
        lo = sum(float(v.min()) for _, v in opts)
        hi = sum(float(v.max()) for _, v in opts)
        vb = float(rng.uniform(lo, hi))
        ex = solve.exact(opts, variance_budget=vb)
        bf = solve.brute_force(opts, variance_budget=vb)
        assert ex.variance <= vb * (1 + 1e-12)
        assert ex.bytes == bf.bytes
        lg = solve.lagrangian(opts, variance_budget=vb)
        assert lg.variance <= vb * (1 + 1e-9)
        assert lg.bound <= bf.bytes + 1e-9
        assert lg.bytes >= bf.bytes


def test_pareto_front_is_the_set_of_nondominated_plans():
    rng = np.random.default_rng(3)
    opts = random_instance(rng, 3, 5)
    fm, fv, choice = solve.pareto(opts)
    assert np.all(np.diff(fm) > 0) and np.all(np.diff(fv) < 0)
    # every plan is weakly dominated by a front point, and every front point is a real plan
    for c in np.ndindex(*(m.size for m, _ in opts)):
        m = sum(int(opts[l][0][j]) for l, j in enumerate(c))
        v = sum(float(opts[l][1][j]) for l, j in enumerate(c))
        assert np.any((fm <= m) & (fv <= v * (1 + 1e-12) + 1e-15))
    for i, c in enumerate(choice):
        assert fm[i] == sum(int(opts[l][0][j]) for l, j in enumerate(c))


def test_hull_is_lower_convex_and_decreasing():
    rng = np.random.default_rng(4)
    m, v = rng.integers(0, 1000, 40), rng.random(40)
    h = solve.hull(m, v)
    mh, vh = m[h].astype(float), v[h]
    assert np.all(np.diff(mh) > 0) and np.all(np.diff(vh) < 0)
    slopes = np.diff(vh) / np.diff(mh)
    assert np.all(np.diff(slopes) > 0)
    for i in range(m.size):  # no point lies below the hull's piecewise-linear interpolation
        if mh[0] <= m[i] <= mh[-1]:
            assert v[i] >= np.interp(m[i], mh, vh) - 1e-12


def test_water_filling_matches_the_continuous_optimum():
    """v_l = a_l (1/p − 1), m_l = A_l p: the optimum is p_l = min(1, √(a_l/A_l)/√λ) (docs/design.md §5).

    On a grid of step h the hull solution sits where the marginal efficiency crosses λ,
    within one grid step of p_l. With equal A_l every step costs the same bytes (±1 from
    rounding), so the greedy fill of the leftover (less than one step) adds at most one step.
    """
    rng = np.random.default_rng(5)
    grid = np.linspace(0.01, 1.0, 991)
    h = grid[1] - grid[0]
    a, A = rng.uniform(0.1, 10, 30), np.full(30, 3e4)
    opts = [(np.round(Al * grid * 1000).astype(np.int64), al * (1 / grid - 1)) for al, Al in zip(a, A)]
    budget = int(0.3 * sum(int(m[-1]) for m, _ in opts))

    def alloc(lam: float) -> np.ndarray:
        return np.clip(np.sqrt(a / (A * 1000)) / np.sqrt(lam), grid[0], 1.0)

    lo, hi = 1e-12, 1e6
    for _ in range(200):  # bisection on λ for Σ A_l p_l = budget
        mid = np.sqrt(lo * hi)
        lo, hi = (mid, hi) if (A * 1000 * alloc(mid)).sum() > budget else (lo, mid)
    p_star = alloc(hi)
    sol = solve.lagrangian(opts, budget=budget)
    p = grid[list(sol.choice)]
    assert np.all(np.abs(p - p_star) <= 2 * h + 1e-12)
    # λ is the critical segment's -Δv/Δm = a_c/(p p' A_c), p ≤ p* ≤ p' = p + h: within (1 ± h/p*)² of a_c/(p*² A_c)
    assert sol.multiplier == pytest.approx(hi, rel=3 * h / p_star.min())


@pytest.mark.parametrize("fn", [solve.exact, solve.lagrangian, solve.brute_force])
def test_bad_budgets_name_the_smallest_feasible(fn):
    opts = [(np.array([10, 20]), np.array([1.0, 0.0])), (np.array([5, 50]), np.array([2.0, 0.0]))]
    with pytest.raises(ValueError, match="smallest feasible budget is 115 bytes"):
        fn(opts, budget=114, fixed=100)
    with pytest.raises(ValueError, match="exactly one of budget"):
        fn(opts, budget=200, variance_budget=1.0)
    with pytest.raises(ValueError, match="exactly one of budget"):
        fn(opts)
    for bad in (0, -5):
        with pytest.raises(ValueError, match="budget must be positive"):
            fn(opts, budget=bad)
    with pytest.raises(ValueError, match="variance_budget must be >= 0"):
        fn(opts, variance_budget=-1.0)
    with pytest.raises(TypeError, match="budget must be a number"):
        fn(opts, budget="big")
    floor = [(np.array([10, 20]), np.array([1.0, 0.5])), (np.array([5, 50]), np.array([2.0, 0.25]))]
    with pytest.raises(ValueError, match="smallest feasible variance budget is 0.75"):
        fn(floor, variance_budget=0.5)


def test_zero_variance_budget_means_all_exact():
    opts = [(np.array([10, 20]), np.array([1.0, 0.0])), (np.array([5, 50]), np.array([2.0, 0.0]))]
    assert solve.exact(opts, variance_budget=0.0).choice == (1, 1)
    assert solve.lagrangian(opts, variance_budget=0.0).choice == (1, 1)


def test_bad_options_are_named():
    with pytest.raises(ValueError, match="non-empty sequence"):
        solve.exact([], budget=10)
    with pytest.raises(ValueError, match=r"options\[1\]: bytes and variance must be non-empty and of equal length"):
        solve.exact([([1], [0.0]), ([1, 2], [0.0])], budget=10)
    with pytest.raises(ValueError, match=r"options\[0\]: variance must be finite and non-negative"):
        solve.exact([([1], [-1.0])], budget=10)
    with pytest.raises(ValueError, match=r"options\[0\]: bytes must be finite non-negative integers"):
        solve.exact([([1.5], [1.0])], budget=10)
