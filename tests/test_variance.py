"""radvar.variance: closed forms against Monte Carlo (every sketch x layer kind x view)."""

from __future__ import annotations


import pandas as pd
import pytest

from radvar import variance
from radvar.variance.statistics import agreement, holm

from .variance_cases import SKETCHES, four_kinds, linear_loss, plan_for

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("other_views", [False, pytest.param(True, marks=pytest.mark.slow)],
                         ids=["default-views", "rows-examples-views"])
def test_analytic_agrees_with_empirical(other_views):
    """Every sketch x layer kind: 500 Monte Carlo draws. Family-wise level 0.01 over all rows (Holm):
    E[Ĝ] = G (bias test) and analytic = empirical (z from both standard errors)."""
    model, inputs, targets = four_kinds()
    tables, bias_p = [], []
    for sk in SKETCHES:
        plan = plan_for(sk, other_views)
        a = variance.analytic(model, (inputs, targets), linear_loss, plan)
        e = variance.empirical(model, (inputs, targets), linear_loss, plan, draws=500, confidence=0.99)
        tables.append(agreement(a, e))
        bias_p += e.per_layer["bias_p"].tolist()
    table = pd.concat(tables, ignore_index=True)
    reject, _ = holm(table["p"].to_numpy(), 0.01)
    assert not reject.any(), table.loc[reject, ["layer", "sketch", "rad_variance_analytic", "rad_variance_empirical", "z"]]
    biased, _ = holm(bias_p, 0.01)
    assert not biased.any(), [p for p, r in zip(bias_p, biased) if r]
    # how many analytic values fall inside their own 99% interval (expected ≈ 99%; a 1% miss rate per row)
    inside = table["inside_ci"].mean()
    assert inside >= 0.9, table.loc[~table["inside_ci"], ["layer", "sketch", "rad_variance_analytic", "ci_low", "ci_high"]]
