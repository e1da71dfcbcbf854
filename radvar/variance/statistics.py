"""Streaming moments and the tests on them: unbiasedness with a controlled false-alarm rate, agreement.

* :class:`Welford` — running mean and sum of squared deviations (Welford 1962),
  O(size of one draw) memory.
* :func:`mean_ci` — Student-t interval for a mean from i.i.d. draws.
* :func:`bias_pvalue` — H0: E[Ĝ] = G for one layer. Per entry a two-sided
  one-sample t-test of the draws against the exact entry; the layer's p-value
  is the Bonferroni minimum (P · min p, capped at 1), so its false-alarm rate is
  at most the level whatever the dependence between entries.
* :func:`holm` — Holm's step-down correction across layers (statsmodels),
  controlling the family-wise error rate.
* :func:`agreement` — analytic vs empirical per row: z = (empirical − analytic) /
  √(se_emp² + se_an²), two-sided normal p-values, Holm-corrected, and whether the
  analytic value lies inside the empirical confidence interval.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import torch
from scipy import stats
from statsmodels.stats.multitest import multipletests

from .report import VarianceReport


class Welford:
    """Running mean and M2 of a stream of equally shaped tensors (float64)."""

    def __init__(self) -> None:
        self.count = 0
        self.mean: torch.Tensor | None = None
        self.m2: torch.Tensor | None = None

    def update(self, value: torch.Tensor | float) -> None:
        v = torch.as_tensor(value, dtype=torch.float64).detach()
        self.count += 1
        if self.mean is None:
            self.mean, self.m2 = v.clone(), torch.zeros_like(v)
            return
        delta = v - self.mean
        self.mean += delta / self.count
        self.m2 += delta * (v - self.mean)

    @property
    def variance(self) -> torch.Tensor:
        """Unbiased sample variance (per entry)."""
        if self.count < 2:
            raise ValueError(f"Welford: need at least 2 draws for a variance, got {self.count}")
        return self.m2 / (self.count - 1)


def mean_ci(mean: float, variance: float, count: int, confidence: float) -> tuple[float, float]:
    """mean ± t_{(1+c)/2, count−1} · √(variance / count)."""
    half = stats.t.ppf(0.5 + confidence / 2, count - 1) * math.sqrt(max(variance, 0.0) / count)
    return mean - half, mean + half


def bias_pvalue(draws: Welford, exact: torch.Tensor) -> float:
    """Bonferroni-combined per-entry t-test p-value of H0: E[draw] = exact."""
    mean, var = draws.mean.reshape(-1), draws.variance.reshape(-1)
    exact = exact.detach().double().reshape(-1)
    diff = (mean - exact).abs()
    scale = float(exact.abs().max().clamp_min(1e-300))
    moving = var > 0
    p = torch.ones_like(mean)
    t = diff[moving] / (var[moving] / draws.count).sqrt()
    p[moving] = torch.as_tensor(2 * stats.t.sf(t.numpy(), draws.count - 1), dtype=torch.float64)
    p[~moving] = torch.where(diff[~moving] > 1e-6 * scale, 0.0, 1.0).double()  # constant entries must be exact
    return float(min(1.0, mean.numel() * float(p.min())))


def holm(pvalues: list[float] | np.ndarray, alpha: float) -> tuple[np.ndarray, np.ndarray]:
    """(reject, adjusted p-values) by Holm's method; the family-wise false-alarm rate is at most ``alpha``."""
    p = np.asarray(pvalues, dtype=float)
    if p.size == 0:
        return np.zeros(0, dtype=bool), p
    reject, adjusted, _, _ = multipletests(p, alpha=alpha, method="holm")
    return reject, adjusted


def agreement(analytic: VarianceReport, empirical: VarianceReport, alpha: float = 0.01) -> pd.DataFrame:
    """Per (layer, sketch): analytic and empirical variance, z, Holm-adjusted p, inside the empirical CI."""
    for name, rep, kind in (("analytic", analytic, "analytic"), ("empirical", empirical, "empirical")):
        if not isinstance(rep, VarianceReport) or rep.kind != kind:
            raise TypeError(f"agreement: {name} must be a VarianceReport from {kind}(), got "
                            f"{getattr(rep, 'kind', type(rep).__name__)!r}")
    a = analytic.per_layer[["layer", "sketch", "rad_variance", "rad_se"]]
    e = empirical.per_layer[["layer", "sketch", "rad_variance", "rad_se", "ci_low", "ci_high"]]
    m = a.merge(e, on=["layer", "sketch"], suffixes=("_analytic", "_empirical"))
    if m.empty:
        raise ValueError("agreement: the reports share no (layer, sketch) rows")
    se = np.sqrt(m["rad_se_analytic"] ** 2 + m["rad_se_empirical"] ** 2)
    diff = m["rad_variance_empirical"] - m["rad_variance_analytic"]
    z = np.where(se > 0, diff / se.where(se > 0, 1.0), np.where(diff.abs() > 0, np.inf, 0.0))
    m["z"] = z
    m["p"] = 2 * stats.norm.sf(np.abs(z))
    m["reject"], m["p_holm"] = holm(m["p"].to_numpy(), alpha)
    m["inside_ci"] = (m["ci_low"] <= m["rad_variance_analytic"]) & (m["rad_variance_analytic"] <= m["ci_high"])
    return m
