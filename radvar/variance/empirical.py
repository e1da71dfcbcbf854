"""``empirical``: Monte Carlo RAD variance over seeds on a fixed batch, streaming, with CIs and a bias test.

Each draw runs the converted model forward and backward (fresh RAD draws from
radvar's stream) and records ``d = ‖Ĝ − G‖²_F`` per layer against the exact
gradient ``G`` (the same model under ``radvar.exact()``). ``mean(d)`` is an
unbiased estimate of the variance; its interval is Student-t at ``confidence``.
Ĝ itself streams through Welford (memory O(parameters)) for the bias test
(:func:`radvar.variance.statistics.bias_pvalue`, Holm across layers).
"""

from __future__ import annotations

import math
from typing import Any, Callable

import pandas as pd
import torch
from torch import nn

from .. import rng
from .._data import split_batch
from ..convert import _convert as convert  # no CoverageWarning: radvar reports coverage itself
from .capture import Batch, batch_loss
from .ledger import measure
from .plan_input import as_plan
from .report import COLUMNS, VarianceReport
from .statistics import Welford, bias_pvalue, holm, mean_ci


def _check(draws: Any, confidence: Any) -> None:
    if isinstance(draws, bool) or not isinstance(draws, int) or draws < 2:
        raise ValueError(f"empirical: draws must be an int >= 2, got {draws!r}")
    if isinstance(confidence, bool) or not isinstance(confidence, (int, float)) or not 0 < confidence < 1:
        raise ValueError(f"empirical: confidence must be a number in (0, 1), got {confidence!r}")


def empirical(model: nn.Module, batch: Batch, loss_fn: Callable[..., torch.Tensor], plan: Any,
              draws: int = 200, confidence: float = 0.99, alpha: float = 0.01) -> VarianceReport:
    """Monte Carlo E‖Ĝ − G‖²_F per planned layer and in total, with ``confidence`` intervals.

    Columns beyond the standard ones: ``bias_p`` (per-layer p-value of E[Ĝ] = G)
    and ``bias_p_holm`` (Holm-adjusted across layers; reject at ``alpha``).
    """
    _check(draws, confidence)
    plan = as_plan(model, plan, "empirical")
    inputs, targets = split_batch(batch, "empirical")
    converted = convert(model, plan)
    modules, original = dict(converted.named_modules()), dict(model.named_modules())
    names = list(plan)
    weights = [modules[n].weight for n in names]
    with rng.exact():
        exact = torch.autograd.grad(batch_loss(converted, inputs, targets, loss_fn, "empirical"), weights,
                                    allow_unused=True)
    exact = [torch.zeros_like(w) if g is None else g for w, g in zip(weights, exact)]
    grads = [Welford() for _ in names]
    dist = [Welford() for _ in names]
    total = Welford()
    for _ in range(draws):
        loss = batch_loss(converted, inputs, targets, loss_fn, "empirical")
        sample = torch.autograd.grad(loss, weights, allow_unused=True)
        d_sum = 0.0
        for i, (g, e) in enumerate(zip(sample, exact)):
            g = torch.zeros_like(e) if g is None else g
            d = float((g.double() - e.double()).square().sum())
            grads[i].update(g)
            dist[i].update(d)
            d_sum += d
        total.update(d_sum)
    ledger = measure(model, inputs, targets, loss_fn, plan, [None])
    pvals = [bias_pvalue(w, e) for w, e in zip(grads, exact)]
    _, p_holm = holm(pvals, alpha)
    rows = []
    for i, name in enumerate(names):
        sk = plan[name]
        mean, var = float(dist[i].mean), float(dist[i].variance)
        lo, hi = mean_ci(mean, var, draws, confidence)
        rows.append({"layer": name, "type": type(original[name]).__name__, "sketch": sk.label() if sk else "exact",
                     "keep": sk.keep if sk else 1.0, "bytes_exact": ledger.bytes_exact(name),
                     "bytes_plan": ledger.bytes_plan(name, None), "rad_variance": mean,
                     "rad_se": math.sqrt(var / draws), "data_variance": float("nan"),
                     "grad_norm_sq": float(exact[i].double().square().sum()), "ci_low": lo, "ci_high": hi,
                     "method": f"Monte Carlo ({draws} draws)", "bias_p": pvals[i], "bias_p_holm": float(p_holm[i])})
    mean, var = float(total.mean), float(total.variance)
    lo, hi = mean_ci(mean, var, draws, confidence)
    totals = pd.DataFrame([{"rad_variance": mean, "rad_se": math.sqrt(var / draws), "ci_low": lo, "ci_high": hi,
                            "grad_norm_sq": sum(r["grad_norm_sq"] for r in rows),
                            "bytes_exact": ledger.exact.total, "bytes_plan": ledger.plan[None].total,
                            "unbiased": bool(all(p > alpha for p in p_holm))}])
    meta = {"batch_size": int(inputs[0].shape[0]), "draws": draws, "confidence": confidence, "alpha": alpha,
            "plan": plan.to_dict()}
    return VarianceReport("empirical", pd.DataFrame(rows, columns=COLUMNS + ["bias_p", "bias_p_holm"]), totals, meta)
