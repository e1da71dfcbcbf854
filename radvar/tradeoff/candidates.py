"""Per-layer candidate curves: (bytes, RAD variance) for every sketch family × keep, exact included.

Memory of a plan (docs/design.md §5):
``predicted(plan) = fixed + Σ_l reserved_l(sketch_l)`` where

* ``fixed`` is measured by the saved-tensor ledger (:func:`radvar.memory.saved_bytes`)
  on the model converted with every randomizable layer exact (compact twins on):
  every storage except those kept by one randomizable layer alone — activation
  masks, pooling state, loss tensors, whatever the rest keeps, and every storage
  that several modules keep;
* ``reserved_l`` is what the layer's sketch may keep on its 2-D view in one step
  (:meth:`radvar.sketch.Sketch.reserve_bytes`: the kept bytes for fixed-size
  sketches; for random sizes ``Z_MARGIN`` standard deviations of the kept count
  on top, so one step exceeds it with probability below 1e-9); exact: the ledger
  bytes of the storages that layer alone keeps.

A storage is freed only if every module keeping it drops it. A layer whose
input another module also keeps (ViT's ``attn.proj``, whose input the fused
attention keeps as its output) frees nothing by being sketched: its exact
option costs only what it keeps alone (0 bytes for such an input) and each
sketch its sketch bytes on top, so the solver never pays bytes it does not free.
:attr:`Candidates.shared` records these inputs and their other keepers. A storage
kept by several randomizable layers and nothing else is counted as kept (freed
only if all of them sketch it, which the per-layer model does not credit), so
predictions stay upper bounds.

Each family gives its own candidates on the keep grid (:meth:`radvar.sketch.Family.sweep`).
Variance of each candidate is the closed form of
:func:`radvar.variance.layer_variance` on statistics from one exact pass.

Propagating sites (twins with ``propagates = True``: activations, norms, attention) are
candidates too: exact, ``Quantize`` at each bit width and each sampling family the twin
accepts (:meth:`radvar.layers.registry.Twin.accepts`) on :data:`SITE_KEEPS` points of the
keep grid. Their variance is the total gradient variance they add, estimated with probes
(:func:`radvar.variance.propagated.propagated`, every candidate probed from one exact pass,
scored against shared random directions; it has a standard error). Their bytes are measured first: one ledger pass
per candidate sketch with that sketch on every propagating site that takes it, each site
charged the storages it alone keeps there; a candidate keeping at least the site's exact bytes
is dominated by exact and not probed, nor is a Projection too large to draw (:func:`draw_fits`).
Functional sites are offered per module that calls them, as the plan pattern ``"<module>:*"``
(:func:`site_options`).

The solvers rank options by an upper confidence value ``ucb = variance + UCB_Z · se``:
closed forms (se = 0) are ranked by their value; an estimate (conv Projection from sampled
pairs, probe estimates) only by what it may be, so that noise cannot make a bad option look
good. ``variance`` stays the point estimate.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd
import torch
from torch import nn

from .._data import split_batch
from ..convert import _convert as convert  # no CoverageWarning: radvar reports coverage itself
from ..layers import twin_for
from ..layers.functional import FUNCTION_KINDS, functional_sites, split_site
from ..layers.registry import propagating
from ..memory import TOP as LEDGER_TOP
from ..memory import saved_bytes
from ..plan import Plan
from ..sketch import Family, Importance, Projection, Quantize, Sketch, Subsample, as_family, kept_count
from ..sketch.base import Z_MARGIN, itemsize  # noqa: F401  (Z_MARGIN: public here since 0.x)
from ..variance import Capture, LayerStats, capture, layer_variance, layer_variance_se
from ..variance.propagated import Probes, Shared, as_probes, propagated, sum_se
from .solve import _nondominated

PAPER_FAMILIES: tuple[Family, ...] = (Subsample.family(), Subsample.family(per_example=True), Projection.family())
"""The paper's estimators: same sample, different sample, Rademacher projection."""
DEFAULT_FAMILIES: tuple[Family, ...] = PAPER_FAMILIES + (Importance.family(), Quantize.family())
DEFAULT_KEEPS: tuple[float, ...] = (0.01, 0.02, 0.03, 0.05, 0.07, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5,
                                    0.6, 0.7, 0.8, 0.9)
EXACT = "exact"
COLUMNS = ["layer", "type", "family", "keep", "k", "sketch", "bytes", "variance", "se", "ucb", "method", "shared"]
UCB_Z = 2.326
"""One-sided 99% normal quantile: an estimated variance is ranked at ``variance + UCB_Z · se``."""
SITE_KEEPS = 2
"""Keep-grid points (spread over the grid) at which sampling families are probed on propagating sites."""
SITE_PROBES = Probes(8, rtol=0.1, directions=8)
"""Probes per candidate of a propagating site (each candidate is ranked by its upper confidence value): 4 at a
time, stopping once the standard error is within 10% of the estimate, 8 at most, each scored against 8 random
directions shared by all sites (one forward-mode pass each) instead of pushed back by its own backward pass
(:mod:`radvar.variance.propagated`, *Directions*). Their standard errors are about four times those of backward
probes, so most candidates take the 8. The variance is mostly the probes' interaction with the directions
(1/(P·Z)): 4 probes x 12 directions took 20 s instead of 29 s for a ViT-tiny's candidates, but with standard
errors 16% larger it recommended a plan with 8% more RAD variance (150.0 ± 6.0 against 137.9 ± 3.7, same bytes)
in the same analysis time (docs/variance.md)."""
SITE_DRAW_LIMIT = 1 << 24
"""Largest random matrix (elements) a Projection candidate of a propagating site may draw per call: beyond it
one probe would draw gigabytes (Projection(0.9) on ResNet-18's first BatchNorm at 64x64: 65,536 x 58,983)."""


def family_name(template: Family | Sketch) -> str:
    """A family's label, e.g. ``Subsample(shared)`` (a Sketch is read as its family)."""
    return as_family(template).label()


def with_keep(template: Family | Sketch, keep: float) -> Sketch:
    """The family of ``template`` at ``keep``."""
    return as_family(template).at(keep)


def check_families(families: Any) -> tuple[Family, ...]:
    """Families (:meth:`radvar.sketch.Sketch.family`; a Sketch is read as its family, its keep ignored);
    names the bad entry."""
    if isinstance(families, (Sketch, Family)) or not isinstance(families, Sequence) or len(families) == 0:
        raise TypeError(f"families must be a non-empty sequence of families such as "
                        f"radvar.sketch.Subsample.family(), got {families!r}")
    return tuple(as_family(f) for f in families)


def check_keeps(keeps: Any) -> tuple[float, ...]:
    """A grid of keep fractions in (0, 1)."""
    try:
        values = [float(k) for k in keeps]
    except TypeError:
        raise TypeError(f"keeps must be a sequence of numbers in (0, 1), got {keeps!r}") from None
    if not values or any(not (0.0 < k < 1.0) or math.isnan(k) for k in values):
        raise ValueError(f"keeps must be a non-empty sequence of numbers in (0, 1) (exact is always a candidate), "
                         f"got {list(keeps)!r}")
    return tuple(sorted(set(values)))


def reserved_bytes(sketch: Sketch | None, shape: tuple[int, int], dtype: torch.dtype) -> int:
    """Bytes to reserve for one call (the family's :meth:`~radvar.sketch.Sketch.reserve_bytes`; exact: the input)."""
    rows, n = shape
    if sketch is None or sketch.exact:
        return rows * n * itemsize(dtype)
    return sketch.reserve_bytes(shape, dtype)


def layer_reserved(stats: LayerStats, sketch: Sketch | None) -> int:
    """:func:`reserved_bytes` summed over the layer's calls, on the view the sketch uses."""
    if sketch is None or sketch.exact:
        return stats.saved_bytes(None)
    return sum(reserved_bytes(sketch, shape, stats.dtype) for shape in stats.view_shapes(sketch))


@dataclasses.dataclass(frozen=True)
class LedgerModel:
    """The all-exact ledger read as a memory model: ``fixed`` (bytes no sketch can free), ``total``,
    ``alone`` (per randomizable layer: bytes of the storages it alone keeps, what sketching it frees),
    ``shared`` (per randomizable layer: bytes of the storages it keeps with modules that stay exact, and
    those modules) and ``joint`` ((bytes, layers) of each storage that only randomizable layers keep,
    several of them: freed when all of them are sketched)."""

    fixed: int
    total: int
    alone: dict[str, int]
    shared: dict[str, dict[str, Any]]
    joint: list[tuple[int, tuple[str, ...]]]


def ledger_model(model: nn.Module, inputs: Any, loss_fn: Callable, targets: torch.Tensor) -> LedgerModel:
    """One ledger pass of the all-exact compact model, split by keepers (see the module docstring)."""
    exact_model = convert(model, None)
    report = saved_bytes(exact_model, inputs, loss_fn, targets)
    modules = dict(exact_model.named_modules())
    randomizable = {n for n, m in modules.items() if (t := twin_for(m)) is not None and t.randomized}
    fixed, alone, shared, joint = 0, {}, {}, []
    for nbytes, keepers in report.storages:
        if len(keepers) == 1 and keepers[0] in randomizable:
            alone[keepers[0]] = alone.get(keepers[0], 0) + nbytes
            continue
        if all(k in randomizable for k in keepers):
            joint.append((nbytes, keepers))
            continue
        fixed += nbytes
        for k in keepers:
            if k in randomizable:
                entry = shared.setdefault(k, {"bytes": 0, "kept_by": []})
                entry["bytes"] += nbytes
                entry["kept_by"] += [o for o in keepers if o != k and o not in entry["kept_by"]]
    return LedgerModel(fixed, report.total, alone, shared, joint)


def fixed_bytes(model: nn.Module, inputs: Any, loss_fn: Callable, targets: torch.Tensor) -> tuple[int, int]:
    """(fixed, exact total): the ledger total of the all-exact compact model and the part of it
    that no sketch of a closed-form layer can free (:func:`ledger_model`; storages kept jointly by
    randomizable layers count as freeable; what propagating sites alone keep counts as fixed: the
    batch-size co-optimisation, its user, leaves them exact)."""
    ledger = ledger_model(model, inputs, loss_fn, targets)
    sites = {n for n, m in model.named_modules() if propagating(m)}
    return ledger.fixed + sum(b for n, b in ledger.alone.items() if n in sites), ledger.total


@dataclasses.dataclass
class Candidates:
    """Every layer's options. ``table``: one row per (layer, option) with columns
    layer, type, family, keep, k, sketch (a Sketch or None = exact), bytes (reserved),
    variance (E‖Ĝ − G‖²_F), se (its standard error: 0 for closed forms), method. ``fixed``: ledger bytes
    no sketch can free; ``exact_total``: ledger bytes of the all-exact model; ``capture``: the statistics;
    ``shared``: per layer whose input other modules also keep, {"bytes": what they keep with it,
    "kept_by": [their names]} (sketching such a layer does not free those bytes)."""

    table: pd.DataFrame
    fixed: int
    exact_total: int
    batch_size: int
    capture: Capture
    shared: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    joint: list[tuple[int, tuple[str, ...]]] = dataclasses.field(default_factory=list)

    @property
    def layers(self) -> list[str]:
        return list(dict.fromkeys(self.table["layer"]))

    def units(self) -> list[list[str]]:
        """The solver's items: single layers, and groups of layers linked by jointly kept storages."""
        parent = {name: name for name in self.layers}

        def root(name: str) -> str:
            while parent[name] != name:
                name = parent[name]
            return name

        for _, keepers in self.joint:
            for k in keepers[1:]:
                parent[root(k)] = root(keepers[0])
        groups: dict[str, list[str]] = {}
        for name in self.layers:
            groups.setdefault(root(name), []).append(name)
        return list(groups.values())

    def _unit_options(self) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """Per unit: (bytes, variance, choice) with choice (options × members) indexing each member's rows.
        A group's bytes include each joint storage unless all its keepers are sketched."""
        per = {name: (g["bytes"].to_numpy(np.int64), g["ucb"].to_numpy(np.float64),
                      np.flatnonzero(g["sketch"].isna().to_numpy()))
               for name, g in self.table.groupby("layer", sort=False)}
        out = []
        for unit in self.units():
            if len(unit) == 1:
                m, v, _ = per[unit[0]]
                out.append((m, v, np.arange(m.size)[:, None]))
                continue
            storages = [(b, {unit.index(k) for k in keepers}) for b, keepers in self.joint if keepers[0] in unit]
            out.append(_joint_front([per[name] for name in unit], storages))
        return out

    def options(self) -> list[tuple[np.ndarray, np.ndarray]]:
        """Per unit (:meth:`units`, a single layer or a group sharing storages): (bytes, ucb) arrays for
        the solvers (``ucb``: the variance, plus ``UCB_Z`` standard errors where it is an estimate)."""
        return [(m, v) for m, v, _ in self._unit_options()]

    def rows(self, choice: Sequence[int]) -> pd.DataFrame:
        """The chosen option of each layer (``choice`` indexes each unit's options, :meth:`options`)."""
        groups = self.table.groupby("layer", sort=False)
        picked = {}
        for unit, (_, _, combos), c in zip(self.units(), self._unit_options(), choice):
            for name, j in zip(unit, combos[c]):
                picked[name] = groups.get_group(name).iloc[int(j)]
        return self._charge_joint(pd.DataFrame([picked[n] for n in self.layers]).reset_index(drop=True))

    def _charge_joint(self, rows: pd.DataFrame) -> pd.DataFrame:
        """Add each jointly kept storage to its first keeper's bytes when some keeper stays exact."""
        exact = dict(zip(rows["layer"], rows["sketch"].isna()))
        for nbytes, keepers in self.joint:
            if any(exact.get(k, True) for k in keepers):
                rows.loc[rows["layer"] == keepers[0], "bytes"] += nbytes
        return rows

    def uniform(self, template: Family | Sketch | None, keep: float) -> pd.DataFrame:
        """Each layer's row for the uniform plan ``template`` at ``keep`` (None: exact).

        A layer whose view has ``k = kept_count(keep, n) = n`` runs exact (keep = 1 is exact). A propagating
        site takes its candidate row of that sketch, or stays exact if that sketch was not probed there.
        """
        out = []
        for name, (exact, probed) in self._layer_rows.items():
            if template is None:
                out.append(exact)
                continue
            sketch = with_keep(template, keep)
            if name not in self.capture.layers:  # a propagating site: its probed row of this sketch, else exact
                out.append(probed.get(sketch, exact))
                continue
            out.append(_option(self.capture[name], sketch, family_name(template)))
        return self._charge_joint(pd.DataFrame(out, columns=self.table.columns))

    @functools.cached_property
    def _layer_rows(self) -> dict[str, tuple[dict[str, Any], dict[Sketch, dict[str, Any]]]]:
        """Per layer: its exact row and its first row of each sketch (:meth:`uniform` looks rows up here), as
        dicts (a frame from dicts builds several times faster than one from Series)."""
        out = {}
        for name, g in self.table.groupby("layer", sort=False):
            rows = g.to_dict("records")
            probed: dict[Sketch, dict[str, Any]] = {}
            for r in rows:
                if r["sketch"] is not None:
                    probed.setdefault(r["sketch"], r)
            out[name] = next(r for r in rows if r["family"] == EXACT), probed
        return out


def _joint_front(members: list[tuple[np.ndarray, np.ndarray, np.ndarray]],
                 storages: list[tuple[int, set[int]]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pareto front of a group's combined options: Σ member bytes, plus each storage's bytes unless every
    member keeping it is sketched. Members are merged one at a time, keeping per set of charged storages
    only the non-dominated partial sums (each member: its exact rows and its non-dominated sketches)."""
    fronts = {0: (np.zeros(1, np.int64), np.zeros(1), np.zeros((1, 0), np.int64))}
    for i, (m, v, exact) in enumerate(members):
        sketches = np.setdiff1d(np.arange(m.size), exact)
        idx = np.concatenate([exact, sketches[_nondominated(m[sketches], v[sketches])]])
        bits = sum(1 << s for s, (_, keepers) in enumerate(storages) if i in keepers)
        merged: dict[int, list[tuple[np.ndarray, np.ndarray, np.ndarray]]] = {}
        for mask, (fm, fv, fc) in fronts.items():
            for opts, new_mask in ((idx[:exact.size], mask | bits), (idx[exact.size:], mask)):
                if opts.size == 0:
                    continue
                sm = (fm[:, None] + m[None, opts]).reshape(-1)
                sv = (fv[:, None] + v[None, opts]).reshape(-1)
                sc = np.concatenate([np.repeat(fc, opts.size, axis=0), np.tile(opts, fm.size)[:, None]], axis=1)
                merged.setdefault(new_mask, []).append((sm, sv, sc))
        fronts = {}
        for mask, parts in merged.items():
            sm, sv, sc = (np.concatenate(p) for p in zip(*parts))
            keep = _nondominated(sm, sv)
            fronts[mask] = sm[keep], sv[keep], sc[keep]
    charged = [(fm + sum(b for s, (b, _) in enumerate(storages) if mask >> s & 1), fv, fc)
               for mask, (fm, fv, fc) in fronts.items()]
    sm, sv, sc = (np.concatenate(p) for p in zip(*charged))
    keep = _nondominated(sm, sv)
    return sm[keep], sv[keep], sc[keep]


def _option(stats: LayerStats, sketch: Sketch | None, family: str) -> dict[str, Any]:
    value, method = layer_variance(stats, sketch)
    se = layer_variance_se(stats, sketch)
    if sketch is None:
        k = None
    else:
        ns = {n for _, n in stats.view_shapes(sketch)}
        k = kept_count(sketch.keep, max(ns)) if ns else None
    return {"layer": stats.name, "type": stats.type, "family": family,
            "keep": 1.0 if sketch is None else sketch.keep, "k": k, "sketch": sketch,
            "bytes": layer_reserved(stats, sketch), "variance": float(value), "se": se,
            "ucb": float(value) + UCB_Z * se, "method": method, "shared": Shared()}


def layer_options(stats: LayerStats, families: Sequence[Family | Sketch],
                  keeps: Sequence[float]) -> list[dict[str, Any]]:
    """Exact plus every family's candidates (its :meth:`~radvar.sketch.Family.sweep` of ``keeps``) on the
    views the layer allows; duplicate (bytes, variance) dropped."""
    rows = [_option(stats, None, EXACT)]
    allowed = {None, *stats.axes}
    for fam in map(as_family, families):
        if fam.view not in allowed:
            continue
        rows += [_option(stats, sketch, fam.label()) for sketch in fam.sweep(keeps)]
    seen: set[tuple[str, int, float]] = set()
    unique = []
    for r in rows:
        key = (r["family"], r["bytes"], r["variance"])
        if key not in seen:
            seen.add(key)
            unique.append(r)
    return unique


def _spread(keeps: Sequence[float], count: int) -> list[float]:
    """``count`` points of the sorted grid ``keeps``, evenly spread (all of it if it is shorter)."""
    if len(keeps) <= count:
        return list(keeps)
    return [keeps[round(i * (len(keeps) - 1) / (count - 1))] for i in range(count)]


def site_options(model: nn.Module, batch: tuple[Any, torch.Tensor], loss_fn: Callable, families: Sequence[Family],
                 keeps: Sequence[float], alone: dict[str, int], probes: int | Probes = SITE_PROBES,
                 memo: dict[Any, Any] | None = None) -> tuple[list[dict[str, Any]], int]:
    """Candidate rows of every propagating site of ``model`` (see the module docstring), and the bytes of the
    all-exact ledger they account for that ``fixed`` must not count again.

    A propagating module: exact (``alone``: the ledger bytes it alone keeps exact), then each family its twin
    accepts on :data:`SITE_KEEPS` points of ``keeps`` (Quantize: its bit widths). Functional sites are grouped
    by the module whose forward calls them, one unit ``"<module>:*"`` (a plan pattern) per module: the ledger
    attributes their storages to that module, so its rows carry what the module alone keeps (exact, or with
    that sketch on every site of the module whose kind takes it) and the sum of those sites' variances.
    Bytes measured first, one ledger pass per candidate sketch; a candidate keeping at least the site's exact
    bytes is dropped (exact dominates it: fewer bytes, variance 0), so is a Projection whose random matrix
    exceeds :data:`SITE_DRAW_LIMIT` (:func:`draw_fits`); the remaining candidates' variances are probed
    (``memo``: :func:`radvar.variance.propagated.propagated`'s, estimates on the same batch to reuse)."""
    inputs, targets = split_batch(batch, "candidates")
    modules = {n: m for n, m in model.named_modules() if propagating(m)}
    work = convert(model, None, compact=False)
    shapes: dict[str, list[tuple[int, ...]]] = {n: [] for n in modules}  # each call's input shape (draw_fits)

    def record(name: str) -> Callable[..., None]:
        def hook(mod: nn.Module, args: tuple) -> None:
            if args and isinstance(args[0], torch.Tensor):
                shapes[name].append(tuple(args[0].shape))
        return hook

    handles = [m.register_forward_pre_hook(record(n)) for n, m in work.named_modules() if n in modules]
    try:
        calls = functional_sites(work, *inputs)
    finally:
        for h in handles:
            h.remove()
    grouped: dict[str, list[str]] = {}
    for site in calls:
        grouped.setdefault(split_site(site)[0], []).append(site)
    grid = _spread(sorted(keeps), SITE_KEEPS)
    candidates_of = [(fam.label(), sk) for fam in families for sk in fam.sweep(grid) if not sk.exact]
    offered: dict[str, list[tuple[str, Sketch]]] = {}
    for name, module in modules.items():
        twin = twin_for(module)
        offered[name] = list(dict.fromkeys((label, sk) for label, sk in candidates_of
                                           if twin.accepts(sk) and sk.view in (None, *twin.views)))
    takes = {site: [sk for _, sk in candidates_of if FUNCTION_KINDS[calls[site]].accepts(sk)] for site in calls}
    for owner, sites in grouped.items():
        offered[f"{owner}:*"] = list(dict.fromkeys((label, sk) for label, sk in candidates_of
                                                   if any(sk in takes[s] for s in sites)))
    for name in modules:  # a projection whose random matrix would not fit is not offered (see draw_fits)
        offered[name] = [(label, sk) for label, sk in offered[name] if draw_fits(sk, shapes[name])]
    if not offered:
        return [], 0
    keeper = {owner: owner or LEDGER_TOP for owner in grouped}  # the ledger's name for a module
    exact_report = saved_bytes(convert(model, None), inputs, loss_fn, targets)
    base = {owner: _alone(exact_report, keeper[owner]) for owner in grouped}
    measured: dict[tuple[str, Sketch], int] = {}
    for sketch in dict.fromkeys(sk for pairs in offered.values() for _, sk in pairs):
        users = [n for n, pairs in offered.items() if any(sk == sketch for _, sk in pairs)]
        report = saved_bytes(convert(model, Plan({n: sketch for n in users})), inputs, loss_fn, targets)
        for n in users:  # what the site keeps under this sketch: the storages it alone keeps
            measured[(n, sketch)] = _alone(report, keeper[n[:-2]] if n.endswith(":*") else n)
    for name in offered:  # a sketch keeping at least the exact bytes is dominated by exact (variance 0): not probed
        exact_bytes = base[name[:-2]] if name.endswith(":*") else alone.get(name, 0)
        offered[name] = [(label, sk) for label, sk in offered[name] if measured[(name, sk)] < exact_bytes]
    for owner, sites in grouped.items():
        kept = {sk for _, sk in offered[f"{owner}:*"]}
        takes.update({s: [sk for sk in takes[s] if sk in kept] for s in sites})
    wanted = {n: sks for n, sks in {**{n: [sk for _, sk in offered[n]] for n in modules}, **takes}.items() if sks}
    probed = propagated(model, batch, loss_fn, wanted, probes, owner="candidates", memo=memo) if wanted else {}
    rows = []
    for name, pairs in offered.items():
        owner = name[:-2] if name.endswith(":*") else None
        kind = "functional" if owner is not None else type(modules[name]).__name__
        rows.append({"layer": name, "type": kind, "family": EXACT, "keep": 1.0, "k": None, "sketch": None,
                     "bytes": base[owner] if owner is not None else alone.get(name, 0), "variance": 0.0,
                     "se": 0.0, "ucb": 0.0, "method": "exact", "shared": Shared()})
        for label, sketch in pairs:
            if owner is None:
                est = [probed[name][[sk for _, sk in pairs].index(sketch)]]
            else:
                est = [probed[s][takes[s].index(sketch)] for s in grouped[owner] if sketch in takes[s]]
            value, se = sum(e.variance for e in est), sum_se((e.se, e.shared) for e in est)
            rows.append({"layer": name, "type": kind, "family": label, "keep": sketch.keep, "k": None,
                         "sketch": sketch, "bytes": measured[(name, sketch)], "variance": value, "se": se,
                         "ucb": value + UCB_Z * se, "method": est[0].method,
                         "shared": sum((e.shared for e in est), Shared())})
    return rows, sum(base.values())


def draw_fits(sketch: Sketch, shapes: Sequence[tuple[int, ...]]) -> bool:
    """Whether a site whose calls take inputs of ``shapes`` can be probed under ``sketch``: a
    :class:`~radvar.sketch.Projection` draws an n × k matrix per call (per row if per example), and a site's
    2-D view has at least one row per example, so n ≤ numel / batch; it fits when n · k ≤
    :data:`SITE_DRAW_LIMIT` for that n (other sketches always fit)."""
    if sketch.kind != "projection":
        return True
    for shape in shapes:
        n = math.prod(shape[1:]) if shape else 1
        if n * kept_count(sketch.keep, n) > SITE_DRAW_LIMIT:
            return False
    return True


def _alone(report: Any, keeper: str) -> int:
    """Bytes of the storages that ``keeper`` alone keeps in a ledger ``report``."""
    return sum(b for b, keepers in report.storages if keepers == (keeper,))


def candidates(model: nn.Module, batch: tuple[Any, torch.Tensor], loss_fn: Callable[..., torch.Tensor],
               families: Sequence[Family | Sketch] = DEFAULT_FAMILIES, keeps: Sequence[float] = DEFAULT_KEEPS,
               *, stats: Capture | None = None, probes: int | Probes = SITE_PROBES) -> Candidates:
    """Candidate curves of every randomizable layer of ``model`` on ``batch = (inputs, targets)``.

    One exact pass (:func:`radvar.variance.capture`, or ``stats`` if given) and
    one ledger pass (:func:`ledger_model`). Rows per layer: exact (the ledger bytes
    the layer alone keeps), then each family's candidates on the keep grid.
    Propagating sites: :func:`site_options` (``probes`` probe passes per candidate, an int or a
    :class:`radvar.variance.Probes` policy; one
    ledger pass per candidate sketch). With ``stats``, the result is kept in ``stats.memo`` and a later call
    with the same families, keeps and probes returns it (``radvar analyze``: the tuner's candidates serve
    the report), as are the probe estimates.
    """
    families = check_families(families)
    keeps = check_keeps(keeps)
    probes = as_probes(probes, "candidates")
    key = ("candidates", families, keeps, probes)
    if stats is not None and key in stats.memo:
        return stats.memo[key]
    inputs, targets = split_batch(batch, "candidates")
    if stats is None:
        stats = capture(model, batch, loss_fn, importance=any(f.needs_entries for f in families))
    ledger = ledger_model(model, inputs, loss_fn, targets)
    rows = [r for s in stats.layers.values() for r in layer_options(s, families, keeps)]
    for r in rows:
        if r["sketch"] is None:
            r["bytes"] = ledger.alone.get(r["layer"], 0)
    site_rows, counted = site_options(model, (inputs, targets), loss_fn, families, keeps, ledger.alone, probes,
                                      memo=stats.memo)
    rows += site_rows
    if not rows:
        raise ValueError(f"candidates: the model has no module radvar can randomize "
                         f"(types: {sorted({type(m).__name__ for m in model.modules()})})")
    names = {r["layer"] for r in rows}
    joint = [(b, keepers) for b, keepers in ledger.joint if all(k in names for k in keepers)]
    fixed = ledger.fixed - counted + sum(b for b, keepers in ledger.joint if (b, keepers) not in joint)
    out = Candidates(pd.DataFrame(rows, columns=COLUMNS), fixed, ledger.total, stats.batch_size, stats,
                     {n: v for n, v in ledger.shared.items() if n in names}, joint)
    stats.memo[key] = out
    return out
