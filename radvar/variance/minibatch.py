"""``minibatch``: data noise from per-example gradients, and the total picture for a RAD plan.

Per-example gradients G_i of the loss on example i alone: Linear and Conv
weights and biases by fast paths (hooks give x_i and g_i = ∂ℓ_i/∂y_i from one
backward of Σ_i ℓ_i; ‖G_i‖² from ``kinds``), the affine weights and biases of
BatchNorm, GroupNorm and LayerNorm too (Σ g_i·x̂_i and Σ g_i over the non-parameter
dims), every other parameter by ``torch.func`` (vmap of grad over examples).
Over the N examples of ``data``:

* tr Σ = (Σ_i ‖G_i‖² − N ‖Ḡ‖²)/(N − 1), the per-example covariance trace;
* data variance of a batch-B mean gradient (i.i.d. examples): tr Σ / B;
* gradient noise scale B_simple = tr Σ / ‖Ḡ‖² (McCandlish et al., "An Empirical
  Model of Large-Batch Training", 2018, eq. 2.8);
* with a plan: E[RAD variance | batch] from :func:`analytic` averaged over up to
  ``rad_batches`` disjoint batches of B; total = tr Σ_all/B + RAD; the
  equivalent batch size B_eq = tr Σ_all / total (the exact batch with the same
  variance); and the largest exact small batch whose measured saved bytes fit in
  the plan's measured bytes at B, with its variance tr Σ_all / b. A propagating
  site of the plan (module or functional site) gets a row of its own: the variance it
  adds over all parameters, a probe estimate averaged over the RAD batches with one estimate's
  probe budget spread over them (``rad_se``, ``method`` "propagated (P probes, on each of k
  batches)"; data columns NaN: its parameters' data noise is in the total); the RAD total sums
  every row, first order in the sites (:mod:`radvar.variance.propagated`).

Examples must not interact in the forward pass: BatchNorm in training mode is measured with the
batch statistics held fixed (:func:`batch_stats_frozen`); active dropout draws one mask per example.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import warnings
from typing import Any, Callable, Iterator

import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, vmap

from .. import rng
from .._data import examples, validate
from .._hooks import run_with_pre_hooks
from ..convert import _convert as convert  # no CoverageWarning: radvar reports coverage itself
from ..memory import saved_bytes
from ..outputs import take
from .capture import capture, layer_variance
from .kinds import kind_for
from .plan_input import as_plan, needs_importance
from .propagated import (DEFAULT_PROBES, Probes, SiteEstimate, as_probes, method_label, plan_sites, propagated,
                         propagating_sites, sum_se)
from .report import COLUMNS, VarianceReport

OTHER = "(other parameters)"
_CHUNK = 256


@contextlib.contextmanager
def untouched(model: nn.Module, device: torch.device) -> Iterator[None]:
    """Measuring leaves ``model``'s buffers (BatchNorm running statistics, ...) and torch's global RNG
    (the model's own dropout draws) as they were."""
    saved = {n: b.detach().clone() for n, b in model.named_buffers()}
    with torch.random.fork_rng(devices=[device.index or 0] if device.type == "cuda" else []):
        try:
            yield
        finally:
            with torch.no_grad():
                for n, b in model.named_buffers():
                    if n in saved:
                        b.copy_(saved[n])


@contextlib.contextmanager
def batch_stats_frozen(model: nn.Module, x: torch.Tensor) -> Iterator[None]:
    """Every BatchNorm in training mode normalizes with the mean and (biased) variance of the batch ``x``
    held fixed, so examples no longer interact and per-example gradients are defined: one no-grad
    forward records each BatchNorm's batch statistics, which then serve as its running statistics in
    eval mode. Restores modes and buffers after (use inside :func:`untouched`)."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training]
    if not norms:
        yield
        return
    stats: dict[nn.Module, tuple[torch.Tensor, torch.Tensor]] = {}

    def record(module: nn.Module, args: tuple) -> None:
        dims = [0, *range(2, args[0].dim())]
        stats[module] = (args[0].mean(dims), args[0].var(dims, unbiased=False))

    run_with_pre_hooks(model, x, [(m, record) for m in norms])
    norms = [m for m in norms if m in stats]  # a BatchNorm the forward did not call stays as it is
    running = [(m.running_mean, m.running_var) for m in norms]
    try:
        for m in norms:
            m.running_mean, m.running_var = stats[m]
            m.eval()
        yield
    finally:
        for m, (mean, var) in zip(norms, running):
            m.running_mean, m.running_var = mean, var
            m.train()


def _example_losses(model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss_fn: Callable) -> torch.Tensor:
    out = model(x)
    n = x.shape[0]
    losses = [loss_fn(take(out, i, i + 1, n), y[i:i + 1]) for i in range(n)]
    for loss in losses[:1]:
        if not isinstance(loss, torch.Tensor) or loss.numel() != 1 or not loss.is_floating_point():
            shape = tuple(loss.shape) if isinstance(loss, torch.Tensor) else type(loss).__name__
            raise ValueError(f"minibatch: loss_fn must return a floating scalar tensor, got {shape}")
    return torch.stack([loss.reshape(()) for loss in losses])


def per_example_sq_norms(model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss_fn: Callable,
                         chunk: int | None = None) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Per example i, ‖∂ℓ_i/∂W‖² per Linear/Conv layer (weight) plus bias and ``(other parameters)``
    entries, and Σ_i ∂ℓ_i/∂θ per group (flattened), for ℓ_i = loss_fn(model(x_i), y_i).

    Training-mode BatchNorm uses the batch statistics of ``x`` held fixed (:func:`batch_stats_frozen`);
    active dropout draws an independent mask per example, as in training (vmap ``randomness="different"``);
    the model's buffers and torch's global RNG are left as they were (:func:`untouched`). A model output
    of any structure is sliced per example (:func:`radvar.outputs.take`), so ``loss_fn`` sees one example.
    ``chunk``: examples per forward and backward (default: all of ``x``); the results do not depend on it
    (BatchNorm's statistics stay those of all of ``x``), only the memory the passes take.
    """
    n = x.shape[0]
    if chunk is not None and (isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1):
        raise ValueError(f"per_example_sq_norms: chunk must be a positive int or None, got {chunk!r}")
    step = n if chunk is None else chunk
    with untouched(model, x.device), batch_stats_frozen(model, x):
        parts = [_sq_norms(model, x[s:s + step], y[s:s + step], loss_fn) for s in range(0, n, step)]
    norms = {k: torch.cat([p[k] for p, _ in parts]) for k in parts[0][0]}
    sums = {k: sum(g[k] for _, g in parts) for k in parts[0][1]}
    return norms, sums


def _affine_norms(model: nn.Module, layers: dict[str, nn.Module]) -> dict[str, nn.Module]:
    """The BatchNorm (eval mode: inside :func:`batch_stats_frozen`), LayerNorm and GroupNorm modules whose
    affine parameters are all trainable and used by no other module: per-example gradients by fast path."""
    owners: dict[int, int] = {}
    for m in model.modules():
        for p in m.parameters(recurse=False):
            owners[id(p)] = owners.get(id(p), 0) + 1
    out = {}
    for name, m in model.named_modules():
        eval_bn = isinstance(m, nn.modules.batchnorm._BatchNorm) and not m.training and m.running_var is not None
        if name in layers or not (eval_bn or isinstance(m, (nn.LayerNorm, nn.GroupNorm))):
            continue
        params = [p for p in (m.weight, m.bias) if p is not None]
        if params and all(p.requires_grad and owners[id(p)] == 1 for p in params):
            out[name] = m
    return out


def _normalized(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """x̂, the input of the affine map of norm ``m`` (float64)."""
    xd = x.double()
    if isinstance(m, nn.LayerNorm):
        return F.layer_norm(xd, m.normalized_shape, None, None, m.eps)
    if isinstance(m, nn.GroupNorm):
        return F.group_norm(xd, m.num_groups, None, None, m.eps)
    shape = (1, -1, *([1] * (x.dim() - 2)))
    return (xd - m.running_mean.double().reshape(shape)) * (m.running_var.double().reshape(shape) + m.eps).rsqrt()


def _affine_grads(m: nn.Module, x: torch.Tensor, g: torch.Tensor) -> list[torch.Tensor]:
    """Per-example gradients (N, numel) of norm ``m``'s weight and bias from one call: Σ g·x̂ and Σ g over
    everything but the example and the parameter's own dims."""
    n = x.shape[0]
    if isinstance(m, nn.LayerNorm):
        dims = len(m.normalized_shape)
        per = lambda t: t.reshape(n, -1, *t.shape[t.dim() - dims:]).sum(1).reshape(n, -1)  # noqa: E731
    else:
        per = lambda t: t.reshape(n, t.shape[1], -1).sum(2)  # noqa: E731
    gd = g.double()
    return [per(gd * _normalized(m, x)) if p is m.weight else per(gd) for p in (m.weight, m.bias) if p is not None]


def _sq_norms(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
              loss_fn: Callable) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    layers = {n: m for n, m in model.named_modules() if kind_for(m) is not None}
    norm_layers = _affine_norms(model, layers)
    fast = {id(m.weight) for m in layers.values()} | {id(m.bias) for m in layers.values() if m.bias is not None}
    norm_ids = {id(p) for m in norm_layers.values() for p in m.parameters(recurse=False)}
    fast |= norm_ids
    others = {n: p for n, p in model.named_parameters() if p.requires_grad and id(p) not in fast}
    norm_params = {n: p for n, p in model.named_parameters() if p.requires_grad and id(p) in norm_ids}
    seen: dict[str, list[tuple[torch.Tensor, torch.Tensor]]] = {n: [] for n in {**layers, **norm_layers}}

    def hook(name: str) -> Callable:
        def on_forward(mod: nn.Module, args: tuple, out: torch.Tensor) -> None:
            x_in = args[0].detach()
            out.register_hook(lambda g: seen[name].append((x_in, g.detach())))
        return on_forward

    handles = [m.register_forward_hook(hook(n)) for n, m in {**layers, **norm_layers}.items()]
    try:
        with rng.exact(), torch.enable_grad():
            losses = _example_losses(model, x, y, loss_fn)
            params = [m.weight for m in layers.values()] + [m.bias for m in layers.values() if m.bias is not None]
            params += list(others.values()) + list(norm_params.values())
            sums = torch.autograd.grad(losses.sum(), params, allow_unused=True)
    finally:
        for h in handles:
            h.remove()
    norms: dict[str, torch.Tensor] = {}
    grads: dict[str, torch.Tensor] = {}
    by_param = dict(zip(map(id, params), sums))
    zero = torch.zeros(x.shape[0], dtype=torch.float64)
    for name, m in layers.items():
        w, b = zero.clone(), zero.clone()
        for x_in, g in seen[name]:
            wn, bn = kind_for(m).per_example_sq_norms(m, x_in, g)
            w += wn
            b += bn if bn is not None else 0.0
        if len(seen[name]) > 1:
            raise ValueError(f"minibatch: layer {name!r} ran {len(seen[name])} times in one forward; "
                             f"per-example fast paths need one call per layer")
        norms[name] = w
        grads[name] = _flat(by_param[id(m.weight)], m.weight)
        if m.bias is not None:
            norms[f"{name}.bias"] = b
            grads[f"{name}.bias"] = _flat(by_param[id(m.bias)], m.bias)
    if others or norm_params:  # norms' affine parameters by fast path, the rest by torch.func
        per = zero.clone()
        for name, m in norm_layers.items():
            calls = [_affine_grads(m, x_in, g) for x_in, g in seen[name]]
            for parts in zip(*calls):  # one parameter's per-example gradient, summed over the module's calls
                per += sum(parts).square().sum(1)
        if others:
            per += _func_sq_norms(model, others, x, y, loss_fn)
        norms[OTHER] = per
        grads[OTHER] = torch.cat([_flat(by_param[id(p)], p) for p in [*others.values(), *norm_params.values()]])
    return norms, grads


def _flat(g: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
    return (torch.zeros_like(like) if g is None else g).detach().double().reshape(-1)


def _func_sq_norms(model: nn.Module, others: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor,
                   loss_fn: Callable) -> torch.Tensor:
    """Σ over ``others`` of ‖∂ℓ_i/∂θ‖² per example, by torch.func (vmap of grad)."""
    fixed = {n: p.detach() for n, p in model.named_parameters() if n not in others}
    buffers = dict(model.named_buffers())

    def loss_one(theta: dict[str, torch.Tensor], xi: torch.Tensor, yi: torch.Tensor) -> torch.Tensor:
        out = functional_call(model, {**fixed, **theta, **buffers}, (xi[None],))
        return loss_fn(out, yi[None])

    theta = {n: p.detach() for n, p in others.items()}
    try:
        with rng.exact(), warnings.catch_warnings():  # ops without a batching rule (CPU flash attention) loop inside
            warnings.filterwarnings("ignore", message="There is a performance drop because we have not yet "
                                                      "implemented the batching rule", category=UserWarning)
            per = vmap(grad(loss_one), in_dims=(None, 0, 0), randomness="different")(theta, x, y)
    except RuntimeError:  # vmap cannot batch the model (data-dependent control flow, .item(), ...)
        return _loop_sq_norms(model, others, x, y, loss_fn)
    return sum(g.double().reshape(x.shape[0], -1).square().sum(1) for g in per.values())


def _loop_sq_norms(model: nn.Module, others: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor,
                   loss_fn: Callable) -> torch.Tensor:
    """What :func:`_func_sq_norms` computes, one example per backward (for models vmap cannot batch)."""
    params = list(others.values())
    norms = torch.zeros(x.shape[0], dtype=torch.float64)
    with rng.exact(), torch.enable_grad():
        for i in range(x.shape[0]):
            grads = torch.autograd.grad(loss_fn(model(x[i:i + 1]), y[i:i + 1]), params, allow_unused=True)
            norms[i] = sum(float(g.double().square().sum()) for g in grads if g is not None)
    return norms


def _largest_batch_within(model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss_fn: Callable,
                          budget: int) -> tuple[int, int]:
    """Largest b ≤ len(x) whose exact saved bytes (measured) are ≤ budget, and those bytes (0, 0 if none).
    A training-mode BatchNorm1d fails on one example of 2-D input, so b starts at 2 for such a model."""
    def measured(b: int) -> int:
        with rng.exact():
            return saved_bytes(model, x[:b].clone(), loss_fn, y[:b].clone()).total

    one_fails = any(isinstance(m, nn.BatchNorm1d) and m.training for m in model.modules())
    lo, hi, best = 2 if one_fails else 1, x.shape[0], (0, 0)
    while lo <= hi:
        mid = (lo + hi) // 2
        m = measured(mid)
        if m <= budget:
            best, lo = (mid, m), mid + 1
        else:
            hi = mid - 1
    return best


def minibatch(model: nn.Module, data: Any, loss_fn: Callable[..., torch.Tensor], batch_size: int,
              plan: Any = None, rad_batches: int = 4, stats: Any = None,
              probes: int | Probes = DEFAULT_PROBES) -> VarianceReport:
    """Data noise per layer and in total at ``batch_size``; with ``plan``, RAD variance, the total,
    the equivalent batch size and the memory-equivalent small batch (see the module docstring).
    ``stats``: a :func:`capture` of the first ``batch_size`` examples (every planned layer, with entries
    when the plan needs them) to reuse for the first RAD batch instead of capturing it again. Its ``memo``'s
    probe estimates are not reused: the tuner chose the plan's sketches on them, and an option picked for a
    low estimate is likely underestimated there (more so the noisier the estimate), so every RAD batch probes
    afresh. ``probes``: the probe budget of one estimate per propagating site of the plan (an int, or a
    :class:`radvar.variance.Probes` policy), spread over the RAD batches (:func:`spread`): their mean is about
    as precise as one batch's estimate with the whole budget.

    All of ``data`` is checked first (:func:`radvar._data.validate`: finite values, consistent shapes);
    the model's buffers and torch's global RNG are left as they were."""
    x, y = examples(data, "minibatch")
    validate((x, y), name="minibatch")
    with untouched(model, x.device):
        return _minibatch(model, x, y, loss_fn, batch_size, plan, rad_batches, stats, probes)


def spread(probes: Probes, batches: int) -> Probes:
    """``probes``, the budget of one estimate, spread over k = ``batches`` RAD batches (the stopping rule as
    given). Probes scored against directions: ⌈P/√k⌉ probes and ⌈Z/√k⌉ directions on each batch (at least 2 of
    each). Such an estimate's variance is mostly the probe-direction interaction, which falls as 1/(P·Z) (its
    probe and direction parts as 1/P and 1/Z), so the mean over the k batches is at least as precise as one
    estimate with the whole budget, at √k times its cost instead of k times. Probes pushed back: ⌈P/k⌉ on each
    batch (their variance falls as 1/P in all)."""
    root = math.sqrt(batches)
    if probes.directions is None:
        return dataclasses.replace(probes, most=max(2, math.ceil(probes.most / batches)))
    return dataclasses.replace(probes, most=max(2, math.ceil(probes.most / root)),
                               directions=max(2, math.ceil(probes.directions / root)))


def _require_finite_norms(norms: dict[str, torch.Tensor], start: int) -> None:
    """Raise naming the first example (numbered from ``start``) whose gradient is not finite."""
    for group, values in norms.items():
        bad = (~torch.isfinite(values)).nonzero()
        if len(bad):
            raise ValueError(f"minibatch: the gradient of example {start + int(bad[0, 0])} is not finite "
                             f"({group!r}: {float(values[bad[0, 0]])}) although every input and target value "
                             f"is finite; check the model's parameters and the loss function")


def _minibatch(model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss_fn: Callable[..., torch.Tensor],
               batch_size: int, plan: Any, rad_batches: int, stats: Any = None,
               probes: int | Probes = DEFAULT_PROBES) -> VarianceReport:
    n = x.shape[0]
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"minibatch: batch_size must be a positive int, got {batch_size!r}")
    if batch_size > n:
        raise ValueError(f"minibatch: batch_size {batch_size} is larger than the data ({n} examples)")
    if n < 2:
        raise ValueError(f"minibatch: need at least two examples for a covariance, got {n}")
    if plan is not None:
        plan = as_plan(model, plan, "minibatch")
    norms: dict[str, torch.Tensor] = {}
    sums: dict[str, torch.Tensor] = {}
    for s in range(0, n, _CHUNK):
        part_norms, part_sums = per_example_sq_norms(model, x[s:s + _CHUNK], y[s:s + _CHUNK], loss_fn,
                                                     chunk=batch_size)  # passes the size of the model's batches
        _require_finite_norms(part_norms, s)
        for k in part_norms:
            norms[k] = torch.cat([norms[k], part_norms[k]]) if k in norms else part_norms[k]
            sums[k] = sums[k] + part_sums[k] if k in sums else part_sums[k]
    trace, mean_sq = {}, {}
    for k in norms:
        mean_sq[k] = float((sums[k] / n).square().sum())
        trace[k] = max(float(norms[k].sum()) - n * mean_sq[k], 0.0) / (n - 1)
    trace_all, mean_all = sum(trace.values()), sum(mean_sq.values())

    rad: dict[str, float] = {}
    sketches: dict[str, Any] = {}
    estimates: dict[str, list[SiteEstimate]] = {}  # per propagating site, its probe estimate on each batch
    modules = dict(model.named_modules())
    bytes_exact_mod: dict[str, int] = {}
    bytes_plan_mod: dict[str, int] = {}
    first = (x[:batch_size].clone(), y[:batch_size].clone())
    with rng.exact():
        exact_ledger = saved_bytes(model, first[0], loss_fn, first[1])
    for _, row in exact_ledger.per_module.iterrows():
        bytes_exact_mod[row["module"]] = int(row["bytes"])
    plan_total = float("nan")
    if plan is not None:
        batches = [(x[s:s + batch_size], y[s:s + batch_size]) for s in range(0, n - batch_size + 1, batch_size)]
        batches = batches[:max(1, rad_batches)]
        sites = propagating_sites(model, list(plan))
        functional = plan_sites(model, plan, (first[0],))
        per_batch = spread(as_probes(probes, "minibatch"), len(batches))
        for i, (bx, by) in enumerate(batches):
            cap = stats if i == 0 and stats is not None else capture(
                model, (bx, by), loss_fn, names=[n for n in plan if n not in sites], importance=needs_importance(plan))
            probed = propagated(model, (bx, by), loss_fn, {**{n: plan[n] for n in sites}, **functional}, per_batch,
                                owner="minibatch")
            for name, sk in {**dict(plan.items()), **functional}.items():
                if name in probed:
                    est = probed[name][0]
                    value, estimates[name] = est.variance, [*estimates.get(name, []), est]
                else:
                    value = layer_variance(cap[name], sk)[0]
                rad[name] = rad.get(name, 0.0) + value / len(batches)
                sketches[name] = sk
        plan_ledger = saved_bytes(convert(model, plan), first[0], loss_fn, first[1])
        plan_total = plan_ledger.total
        for _, row in plan_ledger.per_module.iterrows():
            bytes_plan_mod[row["module"]] = int(row["bytes"])

    layer_names = [k for k in norms if k != OTHER and not k.endswith(".bias")]
    rows = []
    for name in layer_names:
        sk = sketches.get(name)
        rows.append({"layer": name, "type": type(modules[name]).__name__, "sketch": sk.label() if sk else "exact",
                     "keep": sk.keep if sk else 1.0, "bytes_exact": bytes_exact_mod.get(name, 0),
                     "bytes_plan": bytes_plan_mod.get(name, float("nan")) if plan is not None else float("nan"),
                     "rad_variance": rad.get(name, 0.0) if plan is not None else float("nan"), "rad_se": 0.0,
                     "data_variance": trace[name] / batch_size, "grad_norm_sq": mean_sq[name],
                     "ci_low": float("nan"), "ci_high": float("nan"),
                     "method": "per-example gradients (fast path)", "trace_sigma": trace[name],
                     "noise_scale": trace[name] / mean_sq[name] if mean_sq[name] > 0 else float("inf")})
    for name, ests in estimates.items():  # the mean over batches of independent estimates
        sk = sketches[name]
        rows.append({"layer": name, "type": ests[0].type, "sketch": sk.label() if sk else "exact",
                     "keep": sk.keep if sk else 1.0, "bytes_exact": bytes_exact_mod.get(name, 0),
                     "bytes_plan": bytes_plan_mod.get(name, 0), "rad_variance": rad[name],
                     "rad_se": sum_se((e.se, e.shared) for e in ests) / len(ests), "data_variance": float("nan"),
                     "grad_norm_sq": ests[0].grad_norm_sq, "ci_low": float("nan"), "ci_high": float("nan"),
                     "method": method_label([e.probes for e in ests], [e.directions for e in ests], len(ests))
                     if all(e.probes or e.directions for e in ests)
                     else ests[0].method, "trace_sigma": float("nan"), "noise_scale": float("nan")})
    data_var = trace_all / batch_size
    total = {"batch_size": batch_size, "examples": n, "trace_sigma": trace_all, "grad_norm_sq": mean_all,
             "noise_scale": trace_all / mean_all if mean_all > 0 else float("inf"),
             "data_variance": data_var, "bytes_exact": exact_ledger.total}
    if plan is not None:
        rad_total = sum(rad.values())
        small, small_bytes = _largest_batch_within(model, x[:batch_size], y[:batch_size], loss_fn, int(plan_total))
        small_var = trace_all / small if small else float("inf")
        total.update({"rad_variance": rad_total, "total_variance": data_var + rad_total,
                      "rad_se": sum_se((e.se, e.shared) for ests in estimates.values() for e in ests) / len(batches),
                      "equivalent_batch_size": trace_all / (data_var + rad_total), "bytes_plan": plan_total,
                      "small_batch_same_memory": small, "small_batch_bytes": small_bytes,
                      "small_batch_variance": small_var,
                      "rad_beats_small_batch": bool(data_var + rad_total < small_var)})
    meta = {"batch_size": batch_size, "examples": n, "rad_batches": len(rad) and min(rad_batches, n // batch_size),
            "plan": plan.to_dict() if plan is not None else None}
    if estimates:
        meta["propagated"] = {"sites": list(estimates), "first_batch": {n: e[0].variance for n, e in estimates.items()},
                              "total": "first order: the sum of per-site variances (product terms left out)"}
    frame = pd.DataFrame(rows, columns=COLUMNS + ["trace_sigma", "noise_scale"])
    return VarianceReport("minibatch", frame, pd.DataFrame([total]), meta)


as_examples = examples  # the earlier name, kept for callers

__all__ = ["minibatch", "spread", "per_example_sq_norms", "as_examples", "untouched", "batch_stats_frozen", "OTHER"]
