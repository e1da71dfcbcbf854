"""``analyze``: one model, its data and a plan -> an :class:`~radvar.report.result.Analysis`.

Nothing here estimates anything new; it gathers, per layer:

* bytes kept for backward by plain PyTorch and with the plan — the saved-tensor
  ledger (:func:`radvar.memory.saved_bytes`) on the model and on
  ``convert(model, plan)``, measured on the first ``batch_size`` examples;
* data noise tr Σ_l / B, and the plan's RAD variance E‖Ĝ − G‖²_F averaged
  over batches, per weight gradient, with the totals built on them (data noise
  of all parameters + RAD; the equivalent batch size B_eq = tr Σ / total; the
  largest exact batch whose measured bytes fit in the plan's) —
  :func:`radvar.variance.minibatch` (docs/design.md §4); a propagating site (activation,
  norm, attention, functional site) has no closed form: its row carries the variance it adds
  over all parameters, a probe estimate with its standard error ``rad_se``
  (:mod:`radvar.variance.propagated`), and the RAD total (first order in the sites) sums all rows;
* RAD variance against keep for each sketch family and the memory–variance
  frontier — closed forms on one exact pass
  (:func:`radvar.tradeoff.candidates.candidates`, :func:`radvar.tradeoff.frontier.frontier`),
  with the plan's measured point added.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import pandas as pd
import torch
from torch import nn

from .. import bench, memory, variance
from ..bench.cost import CostModel
from .._data import take_batch
from .._hooks import run_with_pre_hooks
from ..convert import _convert as convert  # no CoverageWarning: radvar reports coverage itself
from ..layers import twin_for
from ..layers.functional import site_entry
from ..plan import Plan
from ..sketch import Sketch
from ..tradeoff import candidates as cand_lib
from ..tradeoff import frontier as frontier_lib
from ..tradeoff.timebudget import plan_extra_seconds
from ..variance.propagated import Probes
from .result import Analysis

FAMILIES: tuple[Sketch, ...] = cand_lib.DEFAULT_FAMILIES
KEEPS: tuple[float, ...] = (0.02, 0.05, 0.1, 0.2, 0.5)


def _input_shapes(model: nn.Module, x: torch.Tensor) -> dict[str, str]:
    """The input shape of each module's first call (the model itself aside), as ``150x300``."""
    shapes: dict[str, str] = {}

    def hook(name: str) -> Callable:
        def record(mod: nn.Module, args: tuple) -> None:
            if name not in shapes and args and isinstance(args[0], torch.Tensor):
                shapes[name] = "x".join(map(str, args[0].shape))
        return record

    run_with_pre_hooks(model, x, [(m, hook(n)) for n, m in model.named_modules() if n])
    return shapes


def analyze(model: nn.Module, data: tuple[torch.Tensor, torch.Tensor], loss_fn: Callable[..., torch.Tensor], *,
            batch_size: int, plan: Plan, families: Sequence[Sketch] | None = None, draws: int = 0,
            progress: Callable[[str], None] | None = None, stats: variance.Capture | None = None,
            timing: bool = True, keeps: Sequence[float] | None = None,
            probes: int | Probes = cand_lib.SITE_PROBES) -> Analysis:
    """Per-layer memory (plain -> plan), RAD variance, data noise, variance-vs-keep curves and frontier.

    ``data = (inputs, targets)``: data noise is measured over all of it; the first
    ``batch_size`` examples are the step whose memory and RAD variance are shown.
    ``families``: sketch templates scanned over ``keeps`` (default :data:`FAMILIES` and :data:`KEEPS`; with
    ``stats``, candidates the tuner computed from it for the same families, keeps and ``probes`` are reused).
    ``probes``: probe passes per propagating site and sketch, for the candidates, and for the plan's variance
    spread over its RAD batches (:func:`radvar.variance.minibatch.spread`; every batch probed afresh).
    ``draws`` > 0 adds a Monte Carlo check, on the first batch, of the closed form
    ``batch_rad_variance`` of that batch (:func:`radvar.variance.empirical`:
    ``mc_variance`` with its 99% ``ci_low``/``ci_high``). ``stats``: a
    :func:`radvar.variance.capture` of ``model`` on that first batch (entries kept) to
    reuse, e.g. the one the plan was tuned on. ``timing``: measure the plan's step time against
    plain PyTorch on that batch (:func:`radvar.bench.compare`, interleaved) and predict it
    (:func:`step_time`).
    """
    if not isinstance(plan, Plan):
        raise TypeError(f"analyze: plan must be a radvar.Plan, got {type(plan).__name__}")
    plan.validate(model)
    (xb,), yb = take_batch(data, batch_size, "analyze")  # copies: a view would count all data in the ledger
    if isinstance(draws, bool) or not isinstance(draws, int) or draws < 0 or draws == 1:
        raise ValueError(f"analyze: draws must be 0 (no Monte Carlo check) or an int >= 2, got {draws!r}")
    families = tuple(families or FAMILIES)
    keeps = tuple(keeps or KEEPS)
    tick = progress or (lambda stage: None)

    shapes = _input_shapes(model, xb)
    tick("memory")
    plain = memory.saved_bytes(model, xb, loss_fn, yb)
    planned = memory.saved_bytes(convert(model, plan), xb, loss_fn, yb)
    tick("data noise and RAD variance")
    mb = variance.minibatch(model, data, loss_fn, batch_size, plan=plan, stats=stats, probes=probes)
    total = mb.total.iloc[0].to_dict()
    per_layer = mb.per_layer.set_index("layer")
    probed = mb.meta.get("propagated", {})  # propagating sites: probe estimates (rad_se, method) per row
    mc: dict[str, dict] = {}
    if draws:
        tick(f"Monte Carlo ({draws} draws)")
        mc = {r["layer"]: r for r in variance.empirical(model, (xb, yb), loss_fn, plan, draws=draws)
              .per_layer.to_dict(orient="records")}
    tick("variance vs keep")
    cands = cand_lib.candidates(model, (xb, yb), loss_fn, families, keeps, stats=stats, probes=probes)

    modules = dict(model.named_modules())
    bytes_plain, bytes_plan = plain.by_module, planned.by_module
    rows = []
    order = {name: i for i, name in enumerate(modules)}  # containers before their children; "(loss)" last
    leaves = [n for n in shapes if next(modules[n].children(), None) is None]
    names = [*leaves, *bytes_plain, *bytes_plan, *probed.get("sites", [])]
    for name in sorted(dict.fromkeys(names), key=lambda n: order.get(n.split(":")[0], len(order))):
        module = modules.get(name)
        twin = twin_for(module) if module is not None else None
        sketch = plan.get(name) if module is not None else site_entry(plan.sites, name)
        rad_se = 0.0
        if name in probed.get("first_batch", {}):
            batch_value, method = probed["first_batch"][name], per_layer.at[name, "method"]
            rad_se = float(per_layer.at[name, "rad_se"])
        elif sketch is None:
            batch_value, method = 0.0, "exact"
        elif name in cands.capture:
            batch_value, method = variance.layer_variance(cands.capture[name], sketch)
        else:
            batch_value, method = math.nan, f"no variance statistics for {type(module).__name__}"
        kind = type(module).__name__ if module is not None else per_layer["type"].get(name, name)
        rows.append({
            "layer": name, "type": kind,
            "shape": shapes.get(name, ""), "randomized": bool(twin is not None and twin.randomized) or name in probed.get("sites", []),
            "bytes_exact": int(bytes_plain.get(name, 0)), "bytes_plan": int(bytes_plan.get(name, 0)),
            "sketch": sketch.label() if sketch is not None else "exact",
            "keep": sketch.keep if sketch is not None else None,
            "rad_variance": float(per_layer["rad_variance"].get(name, 0.0 if sketch is None else math.nan)),
            "rad_se": rad_se,
            "data_variance": float(per_layer["data_variance"].get(name, math.nan)), "method": method,
            "batch_rad_variance": float(batch_value),
            **{f"{col}": mc.get(name, {}).get(src, math.nan)
               for col, src in (("mc_variance", "rad_variance"), ("ci_low", "ci_low"), ("ci_high", "ci_high"))},
        })
    layers = pd.DataFrame(rows)
    curves = cands.table[cands.table["family"] != cand_lib.EXACT]
    curves = curves[["layer", "family", "keep", "variance"]].rename(columns={"variance": "rad_variance"})

    step = step_time(model, xb, yb, loss_fn, plan) if timing else {}
    tick("frontier")
    front = frontier_lib.frontier(model, data, loss_fn, cands, total["trace_sigma"],
                                  sorted({max(1, batch_size // d) for d in (16, 8, 4, 2)}), families).table
    frontier = pd.DataFrame({"config": front["curve"], "kind": front["curve"].map(_kind), "label": front["plan"],
                             "bytes": front["bytes"], "variance": front["total_variance"]})
    frontier.loc[len(frontier)] = {"config": "plan", "kind": "plan", "label": "the analysed plan (measured)",
                                   "bytes": planned.total, "variance": total["total_variance"]}

    totals = {
        "batch_size": batch_size, "bytes_exact": plain.total, "bytes_plan": planned.total,
        "memory_saved": plain.total - planned.total,
        "memory_ratio": plain.total / planned.total if planned.total else math.inf,
        "data_variance": total["data_variance"], "rad_variance": total["rad_variance"],
        "rad_se": total.get("rad_se", 0.0),  # the probe estimates' (closed forms: 0), correlations counted
        "rad_total": probed.get("total", "exact: the sum of closed-form per-layer variances"),
        "variance_added": total["rad_variance"] / total["data_variance"] if total["data_variance"] > 0 else math.inf,
        "equivalent_batch_size": total["equivalent_batch_size"],
        "small_batch_same_memory": int(total["small_batch_same_memory"]),
        "trace_sigma": total["trace_sigma"], "noise_scale": total["noise_scale"],
        **step,
    }
    meta = {"families": [cand_lib.family_name(f) for f in families], "keeps": list(keeps), "draws": draws}
    return Analysis(meta=meta, per_layer=layers, total=totals, curves=curves.reset_index(drop=True),
                    frontier=frontier, plan=plan.to_dict(),
                    modules={name: type(m).__name__ for name, m in modules.items() if name})


def step_time(model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss_fn: Callable, plan: Plan,
              cost: CostModel | None = None, reps: int = 5) -> dict[str, float]:
    """Measured and predicted step time of ``plan`` on one batch: ``step_plain_ms``/``step_plan_ms``
    (medians of ``reps`` interleaved steps) and ``slowdown_measured`` (their ratio); ``slowdown_predicted``
    from the tuner's figure in the plan's provenance when it has one, else 1 + the plan's extra seconds
    (:func:`radvar.tradeoff.timebudget.plan_extra_seconds`: each sketched layer and the ReLU masks they
    bring) / the plain step, from the timings :class:`radvar.bench.cost.CostModel` has cached on this
    machine (NaN when one is missing: analysing does not time layers; tuning with a step-time budget
    does)."""
    frame = bench.compare(model, x, y, loss_fn, [plan], reps=reps, warmup=1)
    plain_s, plan_s = frame["step_ms"].iloc[0] / 1e3, frame["step_ms"].iloc[1] / 1e3
    tuned = (plan.provenance or {}).get("step_time")
    if tuned:
        predicted = float(tuned["predicted_slowdown"])
    else:
        predicted = 1.0 + plan_extra_seconds(model, x, plan, cost or CostModel(measure=False)) / plain_s
    return {"step_plain_ms": plain_s * 1e3, "step_plan_ms": plan_s * 1e3, "slowdown_measured": plan_s / plain_s,
            "slowdown_predicted": predicted}


def _kind(curve: str) -> str:
    if curve == frontier_lib.SMALL_BATCH:
        return "exact small batch"
    if curve == frontier_lib.TUNED:
        return "tuned"
    return "exact" if curve == "exact" else "uniform RAD"
