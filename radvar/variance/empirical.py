"""``empirical``: Monte Carlo RAD variance over seeds on a fixed batch, streaming, with CIs and a bias test.

Each draw runs the converted model forward and backward (fresh RAD draws from
radvar's stream) and records ``d = ‖Ĝ − G‖²_F`` per layer against the exact
gradient ``G`` (the same model under ``radvar.exact()``). ``mean(d)`` is an
unbiased estimate of the variance; its interval is Student-t at ``confidence``.
Ĝ itself streams through Welford (memory O(parameters)) for the bias test
(:func:`radvar.variance.statistics.bias_pvalue`, Holm across layers).
"""

from __future__ import annotations

import contextlib
import math
from typing import Any, Callable, Iterator

import pandas as pd
import torch
from torch import nn

from .. import rng
from .._data import split_batch
from ..convert import _convert as convert  # no CoverageWarning: radvar reports coverage itself
from ..layers.functional import router_of, split_site
from ..plan import Plan
from .capture import Batch, batch_loss
from .ledger import measure
from .plan_input import as_plan
from .propagated import plan_sites, propagating_sites
from .report import COLUMNS, VarianceReport
from .statistics import Welford, bias_pvalue, holm, mean_ci


def _check(draws: Any, confidence: Any) -> None:
    if isinstance(draws, bool) or not isinstance(draws, int) or draws < 2:
        raise ValueError(f"empirical: draws must be an int >= 2, got {draws!r}")
    if isinstance(confidence, bool) or not isinstance(confidence, (int, float)) or not 0 < confidence < 1:
        raise ValueError(f"empirical: confidence must be a number in (0, 1), got {confidence!r}")


def _draws(model: nn.Module, inputs: tuple, targets: Any, loss_fn: Callable, tensors: list[torch.Tensor],
           exact: list[torch.Tensor], draws: int,
           welfords: list[Welford] | None = None) -> tuple[list[Welford], Welford]:
    """``draws`` RAD steps: per tensor the Welford stream of d = ‖ĝ − g‖² (and of ĝ into ``welfords``),
    and of their sum."""
    dist = [Welford() for _ in tensors]
    total = Welford()
    for _ in range(draws):
        loss = batch_loss(model, inputs, targets, loss_fn, "empirical")
        sample = torch.autograd.grad(loss, tensors, allow_unused=True)
        d_sum = 0.0
        for i, (g, e) in enumerate(zip(sample, exact)):
            g = torch.zeros_like(e) if g is None else g
            d = float((g.double() - e.double()).square().sum())
            if welfords is not None:
                welfords[i].update(g)
            dist[i].update(d)
            d_sum += d
        total.update(d_sum)
    return dist, total


@contextlib.contextmanager
def _only(model: nn.Module, plan: Plan, functional: dict[str, Any], names: set[str]) -> Iterator[None]:
    """Run the converted ``model`` with only the plan entries and functional sites in ``names`` sketched."""
    modules = dict(model.named_modules())
    router = router_of(model)
    saved = None if router is None else (router.entries, router.checked)
    for name, sketch in plan.items():
        modules[name].adopt(sketch if name in names else None)
    if router is not None:
        router.entries, router.checked = {k: v for k, v in functional.items() if k in names}, True
        router.ops.clear()
    try:
        yield
    finally:
        for name, sketch in plan.items():
            modules[name].adopt(sketch)
        if router is not None:
            router.entries, router.checked = saved
            router.ops.clear()


def empirical(model: nn.Module, batch: Batch, loss_fn: Callable[..., torch.Tensor], plan: Any,
              draws: int = 200, confidence: float = 0.99, alpha: float = 0.01) -> VarianceReport:
    """Monte Carlo E‖Ĝ − G‖²_F per planned layer and in total, with ``confidence`` intervals.

    Columns beyond the standard ones: ``bias_p`` (per-layer p-value of E[Ĝ] = G)
    and ``bias_p_holm`` (Holm-adjusted across layers; reject at ``alpha``).

    A plan with propagating sites (:mod:`radvar.variance.propagated`) costs ``draws`` more steps per site
    and ``draws`` for the total: the weight layers' rows are drawn with the propagating sites exact (so each
    is that layer's own variance, as in :func:`analytic`); each site's row with that site alone sketched,
    d summed over every parameter (its ``bias_p`` tests every parameter); the total with the whole plan,
    over every parameter: the true total, product terms of independent sketches included.
    """
    _check(draws, confidence)
    plan = as_plan(model, plan, "empirical")
    inputs, targets = split_batch(batch, "empirical")
    converted = convert(model, plan)
    modules, original = dict(converted.named_modules()), dict(model.named_modules())
    functional = plan_sites(model, plan, inputs)
    sites = propagating_sites(converted, list(plan)) + list(functional)
    names = [n for n in plan if n not in sites]
    weights = [modules[n].weight for n in names]
    params = [p for p in converted.parameters() if p.requires_grad]
    with rng.exact():
        exact = torch.autograd.grad(batch_loss(converted, inputs, targets, loss_fn, "empirical"), weights + params,
                                    allow_unused=True)
    exact = [torch.zeros_like(w) if g is None else g for w, g in zip(weights + params, exact)]
    exact_w, exact_p = exact[:len(weights)], exact[len(weights):]
    grads = [Welford() for _ in names]
    dist, total = [], Welford()
    if names:
        with _only(converted, plan, functional, set(names)):
            dist, total = _draws(converted, inputs, targets, loss_fn, weights, exact_w, draws, grads)
    site_rows = {}
    for name in sites:
        streams = [Welford() for _ in params]
        with _only(converted, plan, functional, {name}):
            _, d = _draws(converted, inputs, targets, loss_fn, params, exact_p, draws, streams)
        site_rows[name] = (d, min(1.0, len(params) * min(bias_pvalue(w, e) for w, e in zip(streams, exact_p))))
    if len(sites) == 1 and not names:  # the site alone is the whole plan
        total = site_rows[sites[0]][0]
    elif sites:
        _, total = _draws(converted, inputs, targets, loss_fn, params, exact_p, draws)
    ledger = measure(model, inputs, targets, loss_fn, plan, [None])
    pvals = [bias_pvalue(w, e) for w, e in zip(grads, exact_w)] + [site_rows[n][1] for n in sites]
    _, p_holm = holm(pvals, alpha)
    rows = []
    for i, name in enumerate(names + sites):
        sk = plan[name] if name in plan else functional[name]
        d = dist[i] if i < len(names) else site_rows[name][0]
        mean, var = float(d.mean), float(d.variance)
        lo, hi = mean_ci(mean, var, draws, confidence)
        own = list(modules[name].parameters()) if name in modules else []
        norm = (float(exact_w[i].double().square().sum()) if i < len(names) else
                sum(float(exact_p[j].double().square().sum()) for j, p in enumerate(params)
                    if any(p is q for q in own)))
        kind = type(original[name]).__name__ if name in original else f"{split_site(name)[1]} (functional)"
        rows.append({"layer": name, "type": kind, "sketch": sk.label() if sk else "exact",
                     "keep": sk.keep if sk else 1.0, "bytes_exact": ledger.bytes_exact(name),
                     "bytes_plan": ledger.bytes_plan(name, None), "rad_variance": mean,
                     "rad_se": math.sqrt(var / draws), "data_variance": float("nan"),
                     "grad_norm_sq": norm, "ci_low": lo, "ci_high": hi,
                     "method": f"Monte Carlo ({draws} draws" + (", this site alone)" if name in site_rows else ")"),
                     "bias_p": pvals[i], "bias_p_holm": float(p_holm[i])})
    rows = [rows[[r["layer"] for r in rows].index(n)] for n in [*plan, *functional]]  # the plan's order
    mean, var = float(total.mean), float(total.variance)
    lo, hi = mean_ci(mean, var, draws, confidence)
    totals = pd.DataFrame([{"rad_variance": mean, "rad_se": math.sqrt(var / draws), "ci_low": lo, "ci_high": hi,
                            "grad_norm_sq": sum(r["grad_norm_sq"] for r in rows),
                            "bytes_exact": ledger.exact.total, "bytes_plan": ledger.plan[None].total,
                            "unbiased": bool(all(p > alpha for p in p_holm))}])
    meta = {"batch_size": int(inputs[0].shape[0]), "draws": draws, "confidence": confidence, "alpha": alpha,
            "plan": plan.to_dict()}
    return VarianceReport("empirical", pd.DataFrame(rows, columns=COLUMNS + ["bias_p", "bias_p_holm"]), totals, meta)
