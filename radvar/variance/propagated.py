"""``propagated``: the gradient variance a propagating site adds, estimated with probes (fresh sketch draws).

A sketch of a linear layer's input perturbs only that layer's weight gradient.
A *propagating* site (a twin with ``propagates = True``: an activation keeping a
sketch of f'(x), a norm keeping sketches of its normalised input, attention; or
a routed functional call, key ``"<module>:<function>.<index>"``) perturbs the gradient signal
it sends upstream, and so every parameter gradient before it. With every other
op exact, site k's backward turns the exact incoming gradient g into
``ĝ_in = g_in + ε_k`` for each of its inputs (and its own parameter gradients
into ``Ĝ_own + δ_k``), and the whole gradient's error is

    Ĝ^(k) − G = J_k ε_k + δ_k,        added variance  v_k = E‖J_k ε_k + δ_k‖²,

with ``J_k`` the exact backward map from the site's inputs to all parameters.
This is exact for one site (backward is linear in its signal once the saved
tensors are fixed). Estimator, per site: one exact forward and backward of the
whole model with the graph kept, recording each call's inputs and output
gradient; then per probe p = 1..P the site's op is run again alone on those
inputs with fresh sketch draws (a new ``radvar.rng`` key each time) and the
exact output gradient, giving ε and δ against the same op run exactly, and one
backward of ε through the kept graph gives ``d_p = ‖J_k ε_p + δ_p‖²``
(accumulated in float64). ``v̂_k = mean(d_p)`` is unbiased; its standard error is
``sd(d_p)/√P``. A site called several times draws every call independently in
each probe, each against its exact output gradient. With a :class:`Probes` policy
that has ``rtol``, probes are drawn ``ROUND`` at a time and stop once the
standard error is at most ``rtol`` times the estimate (``most`` at the latest):
where most (site, sketch) pairs settle after one round.

*Directions* (``Probes(directions=Z)``: the tuner's and ``radvar analyze``'s
default). Pushing ε back through the kept graph is most of a probe's cost (about
half a backward pass each). ``‖w‖²`` has an unbiased estimate without it: for z
with independent ±1 entries over the trainable parameters, ``E_z ⟨z, w⟩² = ‖w‖²``
(Hutchinson 1990), and ``⟨z, J_k ε⟩ = ⟨J_kᵀ z, ε⟩`` where ``J_kᵀ z`` is the tangent
of the site's argument when the parameters move along z (the backward is the
transpose of the forward's Jacobian), which one forward-mode pass gives for every
call of every site at once. Z directions are drawn per :func:`propagated` call (Z
forward-mode passes, with the exact pass's dropout masks, attention through
``scaled_dot_product_attention``'s math backend, which has forward-mode
derivatives); each probe (one rerun of the site's op) then scores
``x_pz = ⟨z, J_k ε_p⟩² + 2⟨z, J_k ε_p⟩⟨z, δ_p⟩ + ‖δ_p‖²`` along each direction,
whose mean over z is ``‖J_k ε_p + δ_p‖²``. ``v̂_k = mean(x_pz)`` is unbiased;
probes and directions being independent draws, its variance is at most
``Var(probe means)/P + Var(direction means)/Z`` (the standard error given). The
direction part is common to every estimate of the call, so sums of estimates add it
direction by direction (:class:`Shared`, :func:`sum_se`). The tangents take Z times
the bytes of the sites' graph arguments, at most :data:`DIRECTION_BYTES` (fewer
directions where they would not fit); a model with an op that has no forward-mode
derivative, or where two directions do not fit, gets a backward pass per probe.

*Averaged over the sketch* (with directions). An elementwise site keeps a sketch d̂ of
d = f'(t) for its argument t and returns ``g ⊙ d̂``, so ``ε = g ⊙ (d̂ − d)``. Where
the sketch draws the entries of d̂ independently (:attr:`Sketch.independent_entries`:
Quantize, Bernoulli and Importance per example), the expectation of a direction's
score over the sketch is known: ``E⟨J_kᵀz, ε⟩² = Σ_i (J_kᵀz)_i² g_i² Var(d̂_i)``
(:meth:`Sketch.entry_variance`). Where the sketch keeps entries of d̂ and rescales them
(Subsample, Bernoulli with one mask for all rows), ``⟨J_kᵀz, ε⟩`` is its error on the total
of the contributions ``C = J_kᵀz ⊙ g ⊙ d``, whose mean square is the sketch's own closed
form (:meth:`Sketch.variance`) from the column and row totals of C. Each call is run once
with the sketch to read d and g
(:func:`radvar.ops._kept.recording`), and the estimate is the mean of these
Z scores: unbiased, with only the direction noise (no probes; ``propagated
(sketch averaged, Z directions)``). A LayerNorm or RMSNorm keeps two independent sketches
of its normalised input z and its errors are bilinear in them (:mod:`radvar.ops.norm`);
the mean over the sketches of such a score is a sum of per-row quadratic forms in Var(ẑ)
(:func:`_norm_scores`), averaged the same way. Any other site or sketch is probed.

Dropout is held fixed (:func:`radvar.variance.dropout.held`): the exact pass
draws the masks :func:`radvar.variance.empirical` draws, each site call keeps the
keys of the radvar masks it drew (attention's ``dropout_p``), and its exact
reference and probes draw those masks again, so ``v_k`` is the sketch's
variance given the dropout masks, E[‖J_k ε_k + δ_k‖² | M].

With several sites (and sketched linear inputs) randomized together, the error
is a sum of terms multilinear in the independent zero-mean site errors; terms
with different sets of sites are uncorrelated, so the total variance is
``Σ_k v_k`` (first order) plus the variances of the product terms (an error at
k passing through the sketched backward of j, ...), all non-negative:
``Σ_k v_k`` is a lower bound of the total, tight when the sites' relative
errors are small (second order in them). :func:`radvar.variance.empirical`
measures the true total.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import math
import statistics
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

import torch
import torch.autograd.forward_ad as fwAD
from torch import nn
from torch.func import functional_call
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils._pytree import tree_flatten, tree_unflatten

from .. import rng
from .._data import Batch, split_batch
from ..convert import _convert as convert  # no CoverageWarning: radvar reports coverage itself
from ..layers.functional import FUNCTION_KINDS, functional_sites, intercept, is_site, site_entry, split_site
from ..layers.registry import propagating
from ..ops._kept import recording, rows_view
from ..ops.activation import SketchedCall
from ..ops.norm import NormCall
from ..sketch import Sketch
from ..sketch.moments import ViewStats
from .capture import batch_loss, require_finite
from .dropout import held

DEFAULT_PROBES = 64
_SQUARES = 1 << 16  # tangent columns squared at a time by the sketch-averaged scores
CHUNK = 64  # probes pushed back in one batched backward
ROUND = 4  # probes per round when a policy stops early (and the fewest it stops after)
DIRECTION_BYTES = 1 << 30  # the most the tangents of one propagated() call's forward-mode passes may take
_PROGRESS: contextvars.ContextVar[Callable[[str], None] | None] = contextvars.ContextVar("radvar_probe_progress",
                                                                                         default=None)


@contextlib.contextmanager
def reporting(callback: Callable[[str], None]) -> Iterator[None]:
    """Within the block, each (site, sketch) estimate :func:`propagated` finishes calls ``callback`` with a
    short description (``probe <site> <sketch>``): ``radvar analyze`` ticks its progress bar with it."""
    token = _PROGRESS.set(callback)
    try:
        yield
    finally:
        _PROGRESS.reset(token)


@dataclasses.dataclass(frozen=True)
class Probes:
    """How many probe passes estimate one (site, sketch): at most ``most`` (>= 2); with ``rtol`` (> 0) they
    are drawn :data:`ROUND` at a time and stop once the standard error is at most ``rtol`` times the estimate.
    ``directions`` (>= 2): score each probe against that many random directions shared by all sites, one
    forward-mode pass each, instead of one backward pass per probe (module docstring, *Directions*).
    An int ``P`` anywhere a policy is taken means ``Probes(P)``: exactly P probes, each pushed back."""

    most: int
    rtol: float | None = None
    directions: int | None = None

    def __post_init__(self) -> None:
        if isinstance(self.most, bool) or not isinstance(self.most, int) or self.most < 2:
            raise ValueError(f"probes: most must be an int >= 2 (the standard error needs two), got {self.most!r}")
        if self.rtol is not None and (isinstance(self.rtol, bool) or not isinstance(self.rtol, (int, float))
                                      or not self.rtol > 0 or math.isinf(self.rtol)):
            raise ValueError(f"probes: rtol must be a finite number > 0 or None (always `most` probes), "
                             f"got {self.rtol!r}")
        if self.directions is not None and (isinstance(self.directions, bool) or not isinstance(self.directions, int)
                                            or self.directions < 2):
            raise ValueError(f"probes: directions must be an int >= 2 (the standard error needs two) or None "
                             f"(one backward pass per probe), got {self.directions!r}")


def as_probes(probes: int | Probes, owner: str) -> Probes:
    """``probes`` as a :class:`Probes` policy (an int: exactly that many); names the caller in errors."""
    if isinstance(probes, Probes):
        return probes
    try:
        return Probes(probes)
    except ValueError:
        raise ValueError(f"{owner}: probes must be an int >= 2 (the standard error needs two) or a "
                         f"radvar.variance.Probes, got {probes!r}") from None


def method_label(probes: int | Sequence[int], directions: int | Sequence[int] = 0, batches: int = 1) -> str:
    """The ``method`` of a probe estimate, e.g. ``propagated (8 probes)``; of several estimates whose probe
    counts differ (a policy that stops early), the range, e.g. ``propagated (4-12 probes)``; probes scored
    against shared directions add their number, e.g. ``propagated (8 probes, 8 directions)``; scores averaged
    over the sketch in closed form (no probes: 0) read ``propagated (sketch averaged, 8 directions)``; the mean
    of estimates on ``batches`` > 1 batches says so, e.g. ``propagated (4 probes, 4 directions, on each of 4
    batches)``."""
    def span(counts: int | Sequence[int]) -> tuple[int, str]:
        values = [counts] if isinstance(counts, int) else list(counts)
        low, high = min(values), max(values)
        return high, f"{low}" if low == high else f"{low}-{high}"

    along = span(directions)
    each = f", on each of {batches} batches" if batches > 1 else ""
    most, counts = span(probes)
    drawn = f"{counts} probes" if most else "sketch averaged"
    return f"propagated ({drawn}{f', {along[1]} directions' if along[0] else ''}{each})"


@dataclasses.dataclass(frozen=True)
class Shared:
    """The direction noise an estimate shares with every estimate scored against the same directions (one
    :func:`propagated` call): per set of directions (its key), the estimate's mean score along each direction.
    Added per direction when estimates are summed (:func:`sum_se`); empty for estimates that share nothing."""

    means: tuple[tuple[int, tuple[float, ...]], ...] = ()

    def __add__(self, other: Shared) -> Shared:
        merged = dict(self.means)
        for key, values in other.means:
            merged[key] = tuple(a + b for a, b in zip(merged[key], values)) if key in merged else values
        return Shared(tuple(merged.items()))

    def variance(self) -> float:
        """The direction part of the estimate's variance: Σ over sets of Var(means along the directions) / Z."""
        return sum(statistics.variance(values) / len(values) for _, values in self.means)


def sum_se(parts: Iterable[tuple[float, Shared]]) -> float:
    """Standard error of a sum of estimates, each given as (se, shared): the probe parts (se² less the shared
    direction part) add, and the direction parts of estimates scored against the same directions are summed
    along each direction first (they are correlated: one direction draw moves them all)."""
    parts = list(parts)
    own = sum(max(se * se - shared.variance(), 0.0) for se, shared in parts)
    return math.sqrt(own + sum((shared for _, shared in parts), Shared()).variance())


@dataclasses.dataclass(frozen=True)
class SiteEstimate:
    """One (site, sketch): the added variance E‖Ĝ^(k) − G‖² over all parameters, its standard error,
    how it was obtained, the site's calls in the forward, ‖G‖² of the site's own parameters, the probes it
    took (0: none, exact or averaged over the sketch in closed form), the directions they were scored against
    (0: each pushed back) and the direction noise it shares with the other estimates of the same call
    (:class:`Shared`)."""

    site: str
    type: str
    sketch: Sketch | None
    variance: float
    se: float
    method: str
    calls: int
    grad_norm_sq: float
    probes: int = 0
    directions: int = 0
    shared: Shared = Shared()


@dataclasses.dataclass
class _Call:
    """One call of a site: its arguments (flattened, with graph tensors), the distinct differentiable ones
    (an argument passed twice, as q is k is v, once) and their positions among the arguments, the keys of the
    dropout masks it drew (:func:`radvar.rng.dropout_key`) and, after the exact backward, the gradient of each
    output that needs one."""

    leaves: list[Any]
    spec: Any
    grad_inputs: list[torch.Tensor]
    positions: list[int]
    drops: list[int]
    grads: list[torch.Tensor | None]


def propagating_sites(model: nn.Module, names: Sequence[str]) -> list[str]:
    """The names among ``names`` that are propagating sites: a module with a propagating twin, or a
    functional site key (``"<module>:<function>.<index>"``)."""
    modules = dict(model.named_modules())
    return [n for n in names if (n in modules and propagating(modules[n])) or (n not in modules and is_site(n))]


def plan_sites(model: nn.Module, plan: Any, inputs: tuple) -> dict[str, Sketch]:
    """The functional sites of one forward of ``model(*inputs)`` that ``plan.sites`` (keys and patterns such as
    ``"*:*"``) gives a sketch, with that sketch: the concrete sites a report has rows for."""
    entries = getattr(plan, "sites", None) or {}
    if not entries:
        return {}
    found = functional_sites(convert(model, None, compact=False), *inputs)
    picked = {site: site_entry(entries, site) for site in found}
    return {site: sk for site, sk in picked.items() if isinstance(sk, Sketch)}


def _record(calls: list[_Call], hooks: list[Any], args: Any, output: Any, drops: list[int]) -> None:
    """Append the call ``args -> output`` (which drew dropout keys ``drops``) to ``calls``; tensor hooks (kept in
    ``hooks``) store its output gradients."""
    leaves, spec = tree_flatten(args)
    first: dict[int, int] = {}
    for i, t in enumerate(leaves):
        if isinstance(t, torch.Tensor) and t.requires_grad:
            first.setdefault(id(t), i)
    outs = [t for t in tree_flatten(output)[0] if isinstance(t, torch.Tensor) and t.requires_grad]
    call = _Call(leaves, spec, [leaves[i] for i in first.values()], list(first.values()), list(drops),
                 [None] * len(outs))

    def keep(i: int) -> Callable[[torch.Tensor], None]:
        def hook(g: torch.Tensor) -> None:
            call.grads[i] = g.detach()
        return hook

    hooks += [t.register_hook(keep(i)) for i, t in enumerate(outs)]
    calls.append(call)


class _Site:
    """A site's op, callable alone on a recorded call: a propagating module, or a routed functional call."""

    def __init__(self, name: str, module: nn.Module | None, function: str | None):
        self.name, self.module, self.function = name, module, function
        self.calls: list[_Call] = []
        self.reference: list | None = None  # the calls run exactly (the probes' baseline), computed once
        self.start = 0  # the position in the exact pass's dropout keys where the running call began
        self.averaged: type | bool | None = None  # the record type of its calls where its estimates average
        # over the sketch (SketchedCall, NormCall), False where they cannot, None: not known yet

    @property
    def type(self) -> str:
        return type(self.module).__name__ if self.module is not None else f"{self.function} (functional)"

    @property
    def own(self) -> list[nn.Parameter]:
        return [] if self.module is None else [p for p in self.module.parameters() if p.requires_grad]

    def run(self, call: _Call, sketch: Sketch | None) -> tuple[list[torch.Tensor | None], list[torch.Tensor | None]]:
        """The call's gradients (w.r.t. its differentiable arguments, and the module's own parameters)
        under ``sketch`` (None: exact), given the exact output gradient, with the call's dropout masks."""
        fresh = {id(t): t.detach().requires_grad_(True) for t in call.grad_inputs}  # aliasing kept (q is k is v)
        args, kwargs = tree_unflatten([fresh.get(id(t), t) if isinstance(t, torch.Tensor) else t
                                       for t in call.leaves], call.spec)
        with torch.enable_grad(), rng.same_dropout(list(call.drops)):
            if self.module is not None:
                self.module.adopt(sketch)
                try:
                    out = self.module(*args, **kwargs)
                finally:
                    self.module.adopt(None)
            else:
                out = FUNCTION_KINDS[self.function].factory(sketch)(*args, **kwargs)
        outs = [t for t in tree_flatten(out)[0] if isinstance(t, torch.Tensor) and t.requires_grad]
        pairs = [(o, g) for o, g in zip(outs, call.grads) if g is not None]
        wrt = list(fresh.values()) + self.own
        if not pairs or not wrt:
            return [None] * len(call.grad_inputs), [None] * len(self.own)
        grads = torch.autograd.grad([o for o, _ in pairs], wrt, [g for _, g in pairs], allow_unused=True)
        return list(grads[:len(call.grad_inputs)]), list(grads[len(call.grad_inputs):])


def _sub(a: torch.Tensor | None, b: torch.Tensor | None) -> torch.Tensor | None:
    if a is None:
        return None if b is None else -b
    return a if b is None else a - b


def propagated(model: nn.Module, batch: Batch, loss_fn: Callable[..., torch.Tensor],
               sites: Mapping[str, Sketch | None | Sequence[Sketch | None]], probes: int | Probes = DEFAULT_PROBES,
               *, owner: str = "propagated", memo: dict[Any, Any] | None = None) -> dict[str, list[SiteEstimate]]:
    """Per site, per sketch: the added total gradient variance v_k = E‖J_k ε_k + δ_k‖² (module docstring).

    ``sites`` maps a propagating module's name or a functional site key to a sketch, or a list of
    sketches to estimate from the same exact pass. ``probes``: probes per (site, sketch), an int (>= 2: that
    many, each pushed back by a backward pass) or a :class:`Probes` policy (that may stop early, and may score
    the probes against shared directions instead).
    Returns, per site, one :class:`SiteEstimate` per sketch in the order given. ``memo``: estimates made
    earlier on the same model and batch (e.g. :attr:`radvar.variance.Capture.memo`), keyed by (site, sketch,
    probes); those found are returned as they are, the others estimated and added to it.
    """
    probes = as_probes(probes, owner)
    inputs, targets = split_batch(batch, owner)
    wanted = {n: list(s) if isinstance(s, (list, tuple)) else [s] for n, s in sites.items()}
    if not wanted:
        return {}
    for name, sketches in wanted.items():
        for s in sketches:
            if s is not None and not isinstance(s, Sketch):
                raise TypeError(f"{owner}: site {name!r}: sketch must be a radvar.sketch.Sketch or None, got {s!r}")
    if memo is None:
        return _propagated(model, inputs, targets, loss_fn, wanted, probes, owner)
    todo = {n: [s for s in sks if ("propagated", n, s, probes) not in memo] for n, sks in wanted.items()}
    todo = {n: sks for n, sks in todo.items() if sks}
    for name, estimates in (_propagated(model, inputs, targets, loss_fn, todo, probes, owner) if todo else {}).items():
        memo.update({("propagated", name, est.sketch, probes): est for est in estimates})
    return {n: [memo[("propagated", n, s, probes)] for s in sks] for n, sks in wanted.items()}


def _propagated(model: nn.Module, inputs: tuple, targets: Any, loss_fn: Callable[..., torch.Tensor],
                wanted: dict[str, list[Sketch | None]], probes: Probes, owner: str) -> dict[str, list[SiteEstimate]]:
    """:func:`propagated` on checked arguments: one exact pass, then every (site, sketch) probed."""
    work = convert(model, None, compact=False)  # plain ops upstream: the probes' backward can be batched
    modules, given = dict(work.named_modules()), dict(model.named_modules())
    chosen: dict[str, _Site] = {}
    functional = [n for n in wanted if n not in modules]
    for name in wanted:
        if name in modules:
            if not propagating(modules[name]):
                raise ValueError(f"{owner}: {name!r} is a {type(given[name]).__name__}, not a propagating site; "
                                 f"propagating modules of this model: "
                                 f"{[n for n, m in modules.items() if propagating(m)]}")
            chosen[name] = _Site(name, modules[name], None)
    handles: list[Any] = []

    def taken(start: int) -> list[int]:  # the dropout keys drawn since the call started
        return rng.dropout_keys_drawn()[start:]

    for site in chosen.values():
        handles.append(site.module.register_forward_pre_hook(
            lambda mod, args, s=site: setattr(s, "start", len(rng.dropout_keys_drawn()))))
        handles.append(site.module.register_forward_hook(
            lambda mod, args, kwargs, out, s=site: _record(s.calls, handles, (args, kwargs), out, taken(s.start)),
            with_kwargs=True))

    def recorder(site: _Site) -> Callable[..., Any]:
        def op(*args: Any, **kwargs: Any) -> Any:
            start = len(rng.dropout_keys_drawn())
            out = FUNCTION_KINDS[site.function].factory(None)(*args, **kwargs)
            _record(site.calls, handles, (args, kwargs), out, taken(start))
            return out
        return op

    for name in functional:
        if split_site(name)[1] not in FUNCTION_KINDS:
            raise ValueError(f"{owner}: {name!r} names no functional kind {split_site(name)[1]!r}; "
                             f"allowed: {sorted(FUNCTION_KINDS)}")
        chosen[name] = _Site(name, None, split_site(name)[1])
    named = [(n, p) for n, p in work.named_parameters() if p.requires_grad]
    params = [p for _, p in named]
    with held(params + list(inputs)) as same, rng.exact():
        try:
            with same(), torch.enable_grad(), intercept(work, {n: recorder(chosen[n]) for n in functional}):
                loss = batch_loss(work, inputs, targets, loss_fn, owner)
                exact = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
        except ValueError as e:
            if "functional site" in str(e):
                raise ValueError(f"{owner}: {e}") from None
            raise
        finally:
            for h in handles:  # the probes' backward passes must not overwrite the recorded gradients
                h.remove()
        require_finite(inputs, targets, owner, loss.detach(), {})
        probed = any(s is not None and not s.exact for sks in wanted.values() for s in sks)  # else no probe runs
        directions = _directions(work, inputs, chosen, named, probes.directions, same) \
            if probes.directions and probed else None
    index = {id(p): i for i, p in enumerate(params)}
    out: dict[str, list[SiteEstimate]] = {}
    for name, sketches in wanted.items():
        site = chosen[name]
        own = sum(float(g.double().square().sum()) for p in site.own if (g := exact[index[id(p)]]) is not None)
        out[name] = []
        for s in sketches:
            out[name].append(dataclasses.replace(_estimate(site, s, probes, params, index, directions),
                                                 grad_norm_sq=own))
            if (tick := _PROGRESS.get()) is not None:
                tick(f"probe {name or '(model)'} {s.label() if s is not None else 'exact'}")
    return out


@dataclasses.dataclass
class _Directions:
    """The shared random directions z_1..z_Z (Rademacher over the trainable parameters, drawn from ``key``) and,
    per graph argument of the sites' calls (by id), its tangents along them, one flattened row each (Z, numel)."""

    key: int
    count: int
    params: list[torch.Tensor]
    tangents: dict[int, torch.Tensor]
    cache: dict[int, torch.Tensor] = dataclasses.field(default_factory=dict)

    def of(self, j: int, z: int) -> torch.Tensor:
        """Direction ``z``'s part on parameter ``j``: ±1 entries of its shape, dtype and device."""
        p = self.params[j]
        gen = rng.generator(rng.mix(rng.mix(self.key ^ (j + 1)) ^ (z + 1)) >> 1, p.device)
        return torch.randint(0, 2, p.shape, generator=gen, device=p.device, dtype=p.dtype).mul_(2).sub_(1)

    def matrix(self, j: int) -> torch.Tensor:
        """All directions' parts on parameter ``j``, one flattened row each (Z, numel); cached."""
        if j not in self.cache:
            self.cache[j] = torch.stack([self.of(j, z).reshape(-1) for z in range(self.count)])
        return self.cache[j]


def _directions(work: nn.Module, inputs: tuple, chosen: dict[str, _Site], named: list[tuple[str, nn.Parameter]],
                count: int, same: Callable[[], Any]) -> _Directions | None:
    """The sites' argument tangents along ``count`` shared random directions, one forward-mode pass each; fewer
    directions where their tangents would take over :data:`DIRECTION_BYTES`. None (every probe is then pushed
    back) where an op of the model has no forward-mode derivative or two directions do not fit."""
    arguments = {id(t): t for site in chosen.values() for call in site.calls for t in call.grad_inputs
                 if t.grad_fn is not None}  # parameters (leaves) score through their directions directly
    per = sum(t.numel() * t.element_size() for t in arguments.values())
    count = min(count, DIRECTION_BYTES // max(per, 1))
    if count < 2:
        return None
    tangents = {i: torch.zeros(count, t.numel(), dtype=t.dtype, device=t.device) for i, t in arguments.items()}
    position = rng.get_state()
    found = _Directions(rng.next_key(), count, [p for _, p in named], tangents)
    try:
        for z in range(count):
            _tangent_pass(work, inputs, chosen, named, found, z, same)
    except RuntimeError:  # an op without a forward-mode derivative (torch's error subclasses it), calls that differ
        rng.set_state(position)  # the probes draw what they would have drawn without directions
        return None
    return found


def _unsaved() -> Any:
    """Within it, autograd saves nothing for backward: a forward-mode pass records a graph (the parameters
    require grad, as in the exact pass) that is never run backward."""
    return torch.autograd.graph.saved_tensors_hooks(lambda t: None, lambda _: None)


class _AllStarted(Exception):
    """Raised inside a forward-mode pass once every site call has started (the rest of the forward is skipped)."""


def _tangent_pass(work: nn.Module, inputs: tuple, chosen: dict[str, _Site], named: list[tuple[str, nn.Parameter]],
                  directions: _Directions, z: int, same: Callable[[], Any]) -> None:
    """One forward-mode pass, the parameters' tangents direction ``z``, with the exact pass's dropout masks:
    row ``z`` of ``directions.tangents``, copied as each call starts (a graph argument no trainable parameter
    reaches keeps zeros). The pass stops once the last site call has started: what follows (a language model's
    head over its vocabulary) is not needed."""
    started, total = {name: 0 for name in chosen}, sum(len(site.calls) for site in chosen.values())

    def keep(name: str, args: Any) -> None:
        site, c = chosen[name], started[name]
        started[name] += 1
        if c >= len(site.calls):
            return  # more calls than the exact pass had: refused below
        leaves = tree_flatten(args)[0]
        for t, i in zip(site.calls[c].grad_inputs, site.calls[c].positions):
            row, leaf = directions.tangents.get(id(t)), leaves[i] if i < len(leaves) else None
            tangent = fwAD.unpack_dual(leaf).tangent if isinstance(leaf, torch.Tensor) else None
            if row is not None and tangent is not None:
                row[z].copy_(tangent.detach().reshape(-1))
        if sum(started.values()) == total:
            raise _AllStarted

    def recorder(name: str, function: str) -> Callable[..., Any]:
        def op(*args: Any, **kwargs: Any) -> Any:
            keep(name, (args, kwargs))
            return FUNCTION_KINDS[function].factory(None)(*args, **kwargs)
        return op

    handles = [site.module.register_forward_pre_hook(lambda mod, args, kwargs, n=name: keep(n, (args, kwargs)),
                                                     with_kwargs=True)
               for name, site in chosen.items() if site.module is not None]
    try:  # with grad on, as in the exact pass: routing and a product site's condition depend on it
        with fwAD.dual_level(), same(), torch.enable_grad(), sdpa_kernel([SDPBackend.MATH]), _unsaved(), \
                intercept(work, {n: recorder(n, s.function) for n, s in chosen.items() if s.module is None}):
            functional_call(work, {n: fwAD.make_dual(p, directions.of(j, z)) for j, (n, p) in enumerate(named)},
                            inputs)
    except _AllStarted:
        pass
    finally:
        for h in handles:
            h.remove()
    for name, site in chosen.items():
        if started[name] != len(site.calls):
            raise RuntimeError(f"{name}: {started[name]} calls in the forward-mode pass, {len(site.calls)} in the "
                               f"exact one")


def _errors(site: _Site, sketch: Sketch, reference: list, index: dict[int, int]
            ) -> tuple[list[torch.Tensor], list[torch.Tensor], dict[int, torch.Tensor]]:
    """One probe: every call of ``site`` run alone under fresh draws of ``sketch``. Returns the graph tensors
    to push the input errors ε back from, those errors, and the direct errors δ of parameters (the module's
    own, or parameters passed as arguments) by index."""
    direct: dict[int, torch.Tensor] = {}
    outputs, signals = [], []

    def add(j: int, eps: torch.Tensor) -> None:
        direct[j] = direct[j] + eps if j in direct else eps

    for call, (ref_in, ref_own) in zip(site.calls, reference):
        got_in, got_own = site.run(call, sketch)
        for t, a, b in zip(call.grad_inputs, got_in, ref_in):
            eps = _sub(a, b)
            if eps is None:
                continue
            if id(t) in index:
                add(index[id(t)], eps)
            elif t.grad_fn is not None:
                outputs.append(t)
                signals.append(eps)
        for p, a, b in zip(site.own, got_own, ref_own):
            if (eps := _sub(a, b)) is not None:
                add(index[id(p)], eps)
    return outputs, signals, direct


def _push(outputs: list[torch.Tensor], signals: list[list[torch.Tensor]], params: list[torch.Tensor],
          batched: bool | None = None) -> Iterator[Sequence[torch.Tensor | None]]:
    """J_kᵀ-products of a chunk of probes' signals: per probe, one gradient per parameter (None: not reached).
    ``batched`` (default: off the CPU): one batched backward through the kept graph (``is_grads_batched``);
    else, and where an op of the graph cannot be batched, one backward per probe, made as the caller asks for
    it (on the CPU 25% faster than the batched one: ResNet-18 and a ViT, batch 16, 4 or 8 probes, 2 threads;
    and one probe's gradients in memory at a time)."""
    if not outputs:
        yield from ([None] * len(params) for _ in signals)
        return
    if batched or (batched is None and outputs[0].device.type != "cpu"):
        try:
            stacked = torch.autograd.grad(outputs, params, [torch.stack(s) for s in zip(*signals)],
                                          retain_graph=True, allow_unused=True, is_grads_batched=True)
        except RuntimeError:
            pass
        else:
            yield from ([None if g is None else g[p] for g in stacked] for p in range(len(signals)))
            return
    for s in signals:
        yield torch.autograd.grad(outputs, params, s, retain_graph=True, allow_unused=True)


def _sq_norm(g: torch.Tensor) -> torch.Tensor:
    """‖g‖², summed in float32 at least (torch's pairwise sum: relative error about 1e-7 on millions of
    entries, where converting to float64 first took 3.4x as long)."""
    flat = g.reshape(-1)
    if flat.dtype not in (torch.float32, torch.float64):
        flat = flat.float()
    return torch.linalg.vecdot(flat, flat)


def _squared_errors(chunk: list[tuple[list[torch.Tensor], list[torch.Tensor], dict[int, torch.Tensor]]],
                    params: list[torch.Tensor]) -> list[float]:
    """d_p = ‖J_k ε_p + δ_p‖² for each probe p of a chunk of :func:`_errors`, summed over the parameters in
    float64."""
    d = []
    for grads, (_, _, direct) in zip(_push(chunk[0][0], [signals for _, signals, _ in chunk], params), chunk):
        parts = []
        for j, g in enumerate(grads):
            o = direct.get(j)
            if (e := o if g is None else (g if o is None else g + o)) is not None:
                parts.append(_sq_norm(e))
        d.append(float(torch.stack(parts).double().sum()) if parts else 0.0)
    return d


def _scores(errors: tuple[list[torch.Tensor], list[torch.Tensor], dict[int, torch.Tensor]],
            directions: _Directions) -> torch.Tensor:
    """One probe's Z scores ⟨z, J_k ε⟩² + 2⟨z, J_k ε⟩⟨z, δ⟩ + ‖δ‖² (float64): each averages over z to
    ‖J_k ε + δ‖², and ⟨z, J_k ε⟩ = ⟨J_kᵀ z, ε⟩ is the tangent of the site's argument along z dotted with ε."""
    outputs, signals, direct = errors
    a = torch.zeros(directions.count, dtype=torch.float64)
    b = torch.zeros(directions.count, dtype=torch.float64)
    squared = 0.0
    for t, eps in zip(outputs, signals):
        if (tangents := directions.tangents.get(id(t))) is not None:
            a += (tangents @ eps.reshape(-1).to(tangents.dtype)).double().cpu()
    for j, delta in direct.items():
        rows = directions.matrix(j)
        b += (rows @ delta.reshape(-1).to(rows.dtype)).double().cpu()
        squared += float(_sq_norm(delta))
    return a * a + 2 * a * b + squared


def _averaged_scores(site: _Site, sketch: Sketch, directions: _Directions, index: dict[int, int]
                     ) -> torch.Tensor | None:
    """The Z direction scores of a site averaged over the sketch in closed form (module docstring, *Averaged
    over the sketch*), or None where that does not apply: a site whose calls are not each one sketched
    derivative of its argument (:func:`_elementwise_scores`: sketches with independent entries or totals-only
    closed forms, :func:`_reads_totals`) or one row-layout norm of it (:func:`_norm_scores`: independent
    entries). Each call is run once with the sketch, recording what its error is made of; the calls' draws
    are independent, so their scores add."""
    kind = site.averaged  # the record type its calls make, once known
    if kind is False or not (sketch.independent_entries or (_reads_totals(sketch) and kind is not NormCall)):
        return None
    scores = torch.zeros(directions.count, dtype=torch.float64)
    for call in site.calls:
        tangents = directions.tangents.get(id(call.grad_inputs[0])) if len(call.grad_inputs) == 1 else None
        if tangents is None:
            return None
        with recording() as recorded:
            site.run(call, sketch)
        t = call.grad_inputs[0]
        record = recorded[0] if len(recorded) == 1 and recorded[0].x.data_ptr() == t.data_ptr() \
            and recorded[0].x.numel() == t.numel() else None
        if isinstance(record, SketchedCall) and not site.own:
            site.averaged, part = SketchedCall, _elementwise_scores(record, sketch, tangents)
        elif isinstance(record, NormCall):
            site.averaged = NormCall
            part = _norm_scores(record, sketch, tangents, site, directions, index) \
                if sketch.independent_entries else None
            if part is None and sketch.independent_entries:
                site.averaged = False
        else:
            site.averaged, part = False, None
        if part is None:
            return None
        scores += part.cpu()
    return scores


def _reads_totals(sketch: Sketch) -> bool:
    """Whether the sketch's closed-form variance reads only a view's column and row totals (neither per-entry
    statistics nor feature-mixing moments): Subsample, Bernoulli."""
    return not sketch.needs_entries and not sketch.mixes_features


def _elementwise_scores(record: SketchedCall, sketch: Sketch, tangents: torch.Tensor) -> torch.Tensor | None:
    """One call of an elementwise site, ε = g ⊙ (d̂ − d). With independent entries, E⟨J_kᵀz, ε⟩² =
    Σ_i (J_kᵀz)_i² g_i² Var(d̂_i). Otherwise ⟨J_kᵀz, ε⟩ is the sketch's error on the total of the contributions
    C = J_kᵀz ⊙ g ⊙ d of its (rows, n) view's entries (d̂ keeps entries of d, rescaled), so its mean square is
    the sketch's own closed form (:meth:`Sketch.variance`) of one view whose contributions are these scalars:
    Σ_f (Σ_r C_rf)², (Σ C)², Σ C² and Σ_r (Σ_f C_rf)². None where that is not finite."""
    count, wide = tangents.shape[0], torch.float64
    d, g = record.derivative, record.grad
    if g is None:
        return torch.zeros(count, dtype=wide, device=tangents.device)
    if sketch.independent_entries:
        part = torch.zeros(count, dtype=wide, device=tangents.device)
        weight = (g.to(tangents.dtype).square() * sketch.entry_variance(rows_view(d)).reshape(d.shape)).reshape(-1)
        for start in range(0, weight.numel(), _SQUARES):  # squares a slice at a time: no (Z, numel) temporary
            columns = tangents[:, start:start + _SQUARES]
            part += (columns.square() @ weight[start:start + _SQUARES].to(columns.dtype)).double()
        return part
    view = rows_view(d)
    rows, n = view.shape
    c = g.to(tangents.dtype).reshape(rows, n) * view.to(tangents.dtype)
    t = tangents.reshape(count, rows, n)
    columns = torch.zeros(count, n, dtype=wide, device=tangents.device)
    row_col = torch.zeros(count, dtype=wide, device=tangents.device)
    row_tot = torch.zeros(count, dtype=wide, device=tangents.device)
    step = max(1, _SQUARES // n)
    for start in range(0, rows, step):  # a slice of rows at a time: no (Z, rows, n) temporary
        w = t[:, start:start + step] * c[start:start + step]
        columns += w.sum(1, dtype=wide)
        row_tot += w.sum(2, dtype=wide).square().sum(1)
        row_col += w.square_().sum((1, 2), dtype=wide)
    totals = zip(columns.square().sum(1).tolist(), columns.sum(1).square().tolist(), row_col.tolist(),
                 row_tot.tolist())
    scores = torch.tensor([sketch.variance(ViewStats(rows, n, shared_col, shared_tot, rc, rt, math.nan, math.nan,
                                                     "not measured"))[0]
                           for shared_col, shared_tot, rc, rt in totals], dtype=wide)
    return scores if bool(torch.isfinite(scores).all()) else None


def _norm_scores(record: NormCall, sketch: Sketch, tangents: torch.Tensor, site: _Site, directions: _Directions,
                 index: dict[int, int]) -> torch.Tensor | None:
    """One call of a LayerNorm or RMSNorm site (:mod:`radvar.ops.norm`: two independent sketches ẑ_k = z + e_k
    of z per row of n features, ĝ = γ ⊙ g, m = mean(ĝ ⊙ z)). Along a tangent t a row's input error is
    ⟨t, ε⟩ = −(1/2σ)[m t·(e₁ + e₂) + (t·z) ĝ·(e₁ + e₂)/n + (t·e₁)(ĝ·e₂)/n + (t·e₂)(ĝ·e₁)/n], and
    δ_γ = Σ_rows g ⊙ (e₁ + e₂)/2. With u the direction's part on γ and v = Var(ẑ) per entry,
    the score's mean over the sketch is E(a + b)² − E b² + E‖δ_γ‖² (a = ⟨t, ε⟩, b = ⟨u, δ_γ⟩), where
    E(a + b)² = Σ_rows [2 Σ_i c_i² v_i + (1/σ²)(2 A B + 2 C²)/(4n²)] for c = −(1/2σ)(m t + (t·z/n) ĝ) + u ⊙ g/2,
    A = Σ t² v, B = Σ ĝ² v, C = Σ t ĝ v; E b² = ½ Σ u² g² v and E‖δ_γ‖² = ½ Σ g² v. None where the site has
    parameters other than the call's γ and β (their errors are not these)."""
    gamma = None if record.weight is None else next(
        (p for p in site.own if p.data_ptr() == record.weight.data_ptr() and p.numel() == record.weight.numel()), None)
    bias = getattr(site.module, "bias", None) if site.module is not None else None
    if any(p is not gamma and p is not bias for p in site.own) or (gamma is None and record.weight is not None
                                                                    and record.weight.requires_grad):
        return None
    count, wide = tangents.shape[0], torch.float64
    if record.grad is None:
        return torch.zeros(count, dtype=wide, device=tangents.device)
    rows, n = record.z.shape
    work = tangents.dtype  # the (Z, rows, n) products in the tangents' dtype, their sums in float64
    t = tangents.reshape(count, rows, n)
    z, g, rstd = record.z.to(work), record.grad.to(work), record.rstd.to(wide)
    v = sketch.entry_variance(record.z).to(work)
    gh = g if record.weight is None else g * record.weight.detach().reshape(-1).to(work)
    m = (gh * z).sum(1, dtype=wide) / n
    tz = (t * z).sum(2, dtype=wide)
    c = t * (-0.5 * rstd * m).to(work)[None, :, None]
    c.addcmul_((-0.5 / n * rstd * tz).to(work)[:, :, None], gh)
    along = directions.matrix(index[id(gamma)]).to(work) if gamma is not None else None
    if along is not None:
        c.addcmul_(along[:, None, :], g, value=0.5)
    linear = 2 * c.square_().mul_(v).sum((1, 2), dtype=wide)
    tv = t * v
    bilinear = (rstd.square() / (4 * n * n) * (2 * (tv * t).sum(2, dtype=wide) * (gh.square() * v).sum(1, dtype=wide)
                                                + 2 * (tv * gh).sum(2, dtype=wide).square())).sum(1)
    if along is None:
        return linear + bilinear
    gv = (g.square() * v).to(wide)
    return linear + bilinear - 0.5 * (along.to(wide).square() @ gv.sum(0)) + 0.5 * gv.sum()


def _estimate(site: _Site, sketch: Sketch | None, probes: Probes, params: list[torch.Tensor],
              index: dict[int, int], directions: _Directions | None = None) -> SiteEstimate:
    if sketch is None or sketch.exact or not site.calls:
        return SiteEstimate(site.name, site.type, sketch, 0.0, 0.0, "exact" if site.calls else "not called",
                            len(site.calls), 0.0)
    if directions is not None and (scores := _averaged_scores(site, sketch, directions, index)) is not None:
        shared = Shared(((directions.key, tuple(scores.tolist())),))
        return SiteEstimate(site.name, site.type, sketch, float(scores.mean()), math.sqrt(shared.variance()),
                            method_label(0, directions.count), len(site.calls), 0.0, 0, directions.count, shared)
    if site.reference is None:
        site.reference = [site.run(c, None) for c in site.calls]
    reference = site.reference
    # per probe: its squared error d_p, or its Z direction scores. Probes and directions are independent draws:
    # Var(mean) ≈ Var(probe means)/P + Var(direction means)/Z, an upper bound by the interaction's variance / PZ
    rows: list[torch.Tensor] = []
    step = CHUNK if probes.rtol is None else ROUND
    while True:  # the first chunk has at least two probes (most >= 2), so the spread is defined
        chunk = [_errors(site, sketch, reference, index) for _ in range(min(step, probes.most - len(rows)))]
        if directions is None:
            rows += [torch.tensor([d], dtype=torch.float64) for d in _squared_errors(chunk, params)]
        else:
            rows += [_scores(errors, directions) for errors in chunk]
        table = torch.stack(rows)
        shared = Shared() if directions is None else \
            Shared(((directions.key, tuple(table.mean(0).tolist())),))
        mean = float(table.mean())
        se = math.sqrt(float(table.mean(1).var()) / len(rows) + shared.variance())
        if len(rows) >= probes.most or (probes.rtol is not None and se <= probes.rtol * mean):
            break
    count = directions.count if directions is not None else 0
    return SiteEstimate(site.name, site.type, sketch, mean, se, method_label(len(rows), count), len(site.calls),
                        0.0, len(rows), count, shared)


__all__ = ["propagated", "propagating_sites", "plan_sites", "SiteEstimate", "Shared", "sum_se", "DEFAULT_PROBES",
           "Probes", "as_probes", "ROUND", "method_label", "reporting"]
