"""Variance-derived checks shared by the statistical tests."""

from __future__ import annotations

import torch
from scipy import stats


def assert_unbiased(draws: torch.Tensor, exact: torch.Tensor, alpha: float = 1e-4, rtol: float = 1e-6) -> None:
    """z-test of every entry of E[draws] = exact, Bonferroni-corrected over entries.

    ``draws`` is (D, ...) of independent estimates. An entry fails when
    |mean − exact| > z · sd / √D with z = Φ⁻¹(1 − alpha / (2P)); the family-wise
    false-alarm rate is at most ``alpha`` (asymptotically in D). Entries with
    zero sample variance must equal ``exact`` up to ``rtol`` of the largest entry
    (float rounding; pass ~1e-12 for float64 paths).
    """
    d = draws.shape[0]
    draws = draws.reshape(d, -1).double()
    exact = exact.reshape(-1).double()
    mean, sd = draws.mean(0), draws.std(0)
    z = stats.norm.ppf(1 - alpha / (2 * exact.numel()))
    scale = exact.abs().max().clamp_min(1e-12)
    bound = z * sd / d ** 0.5 + rtol * scale
    bad = (mean - exact).abs() > bound
    assert not bad.any(), (
        f"{int(bad.sum())} of {exact.numel()} entries biased beyond z={z:.2f}: "
        f"max |mean-exact|/bound = {float(((mean - exact).abs() / bound).max()):.2f}")


def assert_unbiased_projected(draws: torch.Tensor, exact: torch.Tensor, directions: int = 32, alpha: float = 1e-4,
                              rtol: float = 1e-6) -> None:
    """:func:`assert_unbiased` on ``directions`` fixed Gaussian projections of the entries.

    For estimators whose entries take two values, one of them rarely (stochastic rounding of a value
    just above a grid point), an entry can show zero sample variance in D draws although its mean is
    exact; a projection mixes every entry, so its sample variance is positive and the z-test applies.
    A bias b shows in ⟨b, v⟩ for Gaussian v almost surely."""
    d = draws.shape[0]
    v = torch.randn(exact.numel(), directions, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert_unbiased(draws.reshape(d, -1).double() @ v, exact.reshape(-1).double() @ v, alpha, rtol)
