"""``analytic``: closed-form RAD variance per layer from one capture, over a whole keep grid."""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Sequence

import pandas as pd
import torch
from torch import nn

from .._data import split_batch, validate
from ..sketch import check_keep
from .capture import Batch, capture, layer_variance, layer_variance_se
from .dropout import held
from .ledger import measure
from .plan_input import as_plan, needs_importance
from .propagated import DEFAULT_PROBES, Probes, Shared, as_probes, plan_sites, propagated, propagating_sites, sum_se
from .report import COLUMNS, VarianceReport


def check_keeps(keeps: Any, owner: str) -> list[float]:
    """A non-empty sequence of keep fractions in (0, 1]."""
    if isinstance(keeps, (str, bytes)) or not hasattr(keeps, "__iter__"):
        raise TypeError(f"{owner}: keeps must be a sequence of numbers in (0, 1], got {keeps!r}")
    out = [check_keep(k, f"{owner}: keeps") for k in keeps]
    if not out:
        raise ValueError(f"{owner}: keeps is empty; give at least one keep fraction in (0, 1]")
    return out


def analytic(model: nn.Module, batch: Batch, loss_fn: Callable[..., torch.Tensor], plan: Any,
             keeps: Sequence[float] | None = None, probes: int | Probes = DEFAULT_PROBES) -> VarianceReport:
    """Closed-form E‖Ĝ − G‖²_F per planned layer on ``batch`` (see :mod:`radvar.variance.forms`), and for
    each propagating site (activations, norms, attention, functional sites) the total gradient variance it
    adds over all parameters, estimated with ``probes`` probes (:mod:`radvar.variance.propagated`; default 64,
    each pushed back by a backward pass: ``method`` "propagated (P probes)", ``rad_se`` its standard error).
    The total is their sum: first order in the propagating sites (product terms of independent sketches,
    all non-negative, are left out).

    With ``keeps``, one row per (layer, keep): the plan's sketch family at each
    keep. One exact capture serves the whole grid. Bytes are measured by the
    ledger once for the exact model and once for the plan as given; a row at
    another keep predicts its layer's bytes as the measured plan bytes plus
    ``Sketch.saved_bytes`` at that keep minus ``Sketch.saved_bytes`` of the planned
    sketch (so the planned keep reads its measured bytes), and the total adds the
    same differences; with propagating sites in the plan the ledger measures the
    plan at every keep instead (their sketched tensors are known only to their ops). Non-finite data, loss or gradients raise a ValueError naming
    the example or layer, never a NaN result.
    """
    plan = as_plan(model, plan, "analytic")
    grid: list[float | None] = [None] if keeps is None else check_keeps(keeps, "analytic")
    inputs, targets = split_batch(batch, "analytic")
    validate(inputs, targets, name="analytic")
    functional = plan_sites(model, plan, inputs)
    sites = propagating_sites(model, list(plan)) + list(functional)
    entries = {**plan, **functional}
    at = {n: [s if s is None or k is None else s.at(k) for k in grid] for n, s in entries.items()}
    with held([*model.parameters(), *inputs]) as same:  # the capture and the probes: one set of dropout masks
        with same():
            cap = capture(model, batch, loss_fn, names=[n for n in plan if n not in sites],
                          importance=needs_importance(plan))
        probed = propagated(model, batch, loss_fn, {n: at[n] for n in sites}, probes, owner="analytic") if sites else {}
    # Closed-form rows predict bytes at other keeps from Sketch.saved_bytes; a propagating site's sketched
    # tensors are known only to its op, so with sites the ledger measures every keep of the grid.
    measured = grid if sites else [None]
    ledger = measure(model, inputs, targets, loss_fn, plan, measured)
    rows, totals = [], []
    for i, keep in enumerate(grid):
        at_keep, shift, parts = (keep if sites else None), 0, []  # parts: (se, shared) of each row
        for name in entries:
            sk = at[name][i]
            if name in probed:
                est = probed[name][i]
                parts.append((est.se, est.shared))
                rows.append({"layer": name, "type": est.type, "sketch": sk.label() if sk else "exact",
                             "keep": sk.keep if sk else 1.0, "bytes_exact": ledger.bytes_exact(name),
                             "bytes_plan": ledger.bytes_plan(name, at_keep) if name in plan else 0,
                             "rad_variance": est.variance,
                             "rad_se": est.se, "data_variance": float("nan"), "grad_norm_sq": est.grad_norm_sq,
                             "ci_low": float("nan"), "ci_high": float("nan"), "method": est.method})
                continue
            stats = cap[name]
            delta = 0 if sites else stats.saved_bytes(sk) - stats.saved_bytes(plan[name])
            shift += delta
            value, method = layer_variance(stats, sk)
            parts.append((layer_variance_se(stats, sk), Shared()))
            if not math.isfinite(value):
                raise ValueError(f"analytic: the RAD variance of layer {name!r} under {sk.label()} is {value} "
                                 f"although its inputs and gradient are finite; this is a bug, please report it")
            rows.append({"layer": name, "type": stats.type, "sketch": sk.label() if sk else "exact",
                         "keep": sk.keep if sk else 1.0, "bytes_exact": ledger.bytes_exact(name),
                         "bytes_plan": ledger.bytes_plan(name, at_keep) + delta, "rad_variance": value,
                         "rad_se": parts[-1][0], "data_variance": float("nan"),
                         "grad_norm_sq": stats.grad_sq, "ci_low": float("nan"), "ci_high": float("nan"),
                         "method": method})
        mine = rows[-len(entries):] if entries else []
        totals.append({"keep": float("nan") if keep is None else keep,
                       "rad_variance": sum(r["rad_variance"] for r in mine),
                       "rad_se": sum_se(parts),
                       "grad_norm_sq": sum(r["grad_norm_sq"] for r in mine),
                       "bytes_exact": ledger.exact.total, "bytes_plan": ledger.plan[at_keep].total + shift})
    meta = {"batch_size": cap.batch_size, "loss": cap.loss, "plan": plan.to_dict()}
    if sites:
        meta["propagated"] = {"sites": sites, "probes": dataclasses.asdict(as_probes(probes, "analytic")),
                              "total": "first order: the sum of per-site variances (product terms left out)"}
    return VarianceReport("analytic", pd.DataFrame(rows, columns=COLUMNS), pd.DataFrame(totals), meta)
