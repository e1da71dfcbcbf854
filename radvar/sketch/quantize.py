"""Unbiased stochastic rounding to b bits, with an offset and a step per row or per group of features.

For a group with bounds lo = min, hi = max and L = 2^b − 1 levels above lo,
the step is Δ = (hi − lo)/L. Entry x has position u = (x − lo)/Δ ∈ [0, L],
fractional part f = u − ⌊u⌋, and is kept as the level ⌊u⌋ + [U < f] with
U ~ Uniform[0, 1): it rounds up with probability f. The reconstruction
x̂ = lo + level·Δ then has

    E[x̂] = lo + (⌊u⌋ + f)·Δ = x,        Var(x̂) = Δ² f (1 − f) ≤ Δ²/4,

the variance of a Bernoulli(f) scaled by Δ, independently for every entry
(stochastic rounding: Gupta et al., "Deep Learning with Limited Numerical
Precision", ICML 2015). A constant group (Δ = 0) is kept exactly.

Saved: the levels packed at 8/b per byte (:func:`radvar._bits.pack_codes`),
and (lo, Δ) per group in the input's dtype, so a (rows, n) view in groups of
size g keeps ``ceil(rows·n·b/8) + 2·rows·(n/g)·itemsize`` bytes, whatever
the data. For float32 input, b bits an entry is b/32 of the input, which is
what ``keep`` reports: it is derived from ``bits``, not set. The family's
candidates for the tuner are the four bit widths (:meth:`Quantize.sweep`), and
the family "at keep p" is the widest b with b/32 ≤ p (:meth:`Quantize.at`).

A weight gradient that contracts x̂ with the output gradient,
Ĝ = Σ_rf C_rf(x̂_rf) with C_rf linear in entry (r, f) of the view, has
E‖Ĝ − G‖² = Σ_rf Var(x̂_rf)·‖C_rf‖²/x_rf² because the entries are
independent (Linear: ‖C_rf‖²/x_rf² = ‖g_r‖²): :meth:`Quantize.entry_variance`
gives the first factor with the same arithmetic as :meth:`Quantize.compress`,
and :meth:`Quantize.variance` the sum from the view and weights a capture keeps
(:meth:`radvar.sketch.ViewStats.entries`).

Composition: ``Quantize(b, sample=Subsample(p))`` (or a ``Projection``) first
draws the sampling sketch, then rounds the (rows, k) values it keeps. The
sampler's reconstruction is linear in those values, so conditioning on its
draw, E[restore(v̂)] = restore(v), and the composite stays unbiased; its
variance is the sampler's plus the expected rounding variance passed through
the sampler's scaling, which depends on which entries are kept (the bounds are
taken over the kept ones), so it has no closed form here: measure it with
:func:`radvar.variance.empirical`.

16-bit inputs are rounded in float32; their step is stored rounded up so that
lo + L·Δ still covers hi. The estimate is then unbiased up to the 16-bit
rounding of x̂ itself.
"""

from __future__ import annotations

import dataclasses
import threading
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
import torch

from .. import _bits, _native
from .base import (CLOSED, PCG_INCREMENT, Meta, Saved, Sketch, itemsize, kept_count, pcg_state, uniform,
                   work_dtype)
from .moments import ViewStats
from .registry import family

if TYPE_CHECKING:
    from .registry import Family

BITS = _bits.CODE_BITS
SAMPLERS = ("subsample", "projection")  # families whose kept values are one (rows, k) tensor


_BUFFERS = threading.local()


def _scratch(like: torch.Tensor) -> torch.Tensor:
    """A CPU tensor of ``like``'s shape and dtype whose storage this thread reuses from call to call (grown
    as needed): its contents last only until the next call."""
    key, numel = like.dtype, like.numel()
    buffers = _BUFFERS.__dict__.setdefault("by_dtype", {})
    if key not in buffers or buffers[key].numel() < numel:
        buffers[key] = torch.empty(numel, dtype=key)
    return buffers[key][:numel].view(like.shape)


@dataclasses.dataclass
class QuantizeEntries:
    """A view (rows, n) in float64 and its per-entry weights w_rf = ‖C_rf‖²/x_rf² (broadcastable)."""

    x: torch.Tensor
    weight: torch.Tensor


@family
@dataclasses.dataclass(frozen=True)
class Quantize(Sketch):
    """Stochastic rounding to ``bits`` ∈ {1, 2, 4, 8} per entry; offset and step per row
    (``group=None``) or per ``group`` consecutive features of the view."""

    keep: float = dataclasses.field(init=False, default=1.0, repr=False)
    per_example: bool = dataclasses.field(init=False, default=True, repr=False)
    view: str | None = dataclasses.field(default=None, kw_only=True)
    bits: int = 2
    group: int | None = dataclasses.field(default=None, metadata={"type": int})
    sample: Sketch | None = None
    kind = "quantize"
    leading = "bits"
    needs_entries = True

    def __post_init__(self) -> None:
        if isinstance(self.bits, bool) or not isinstance(self.bits, int) or self.bits not in BITS:
            raise ValueError(f"Quantize: bits must be one of {BITS}, got {self.bits!r}")
        if isinstance(self.sample, dict):
            object.__setattr__(self, "sample", Sketch.from_dict(self.sample))
        if self.sample is not None and (not isinstance(self.sample, Sketch) or self.sample.kind not in SAMPLERS):
            raise ValueError(f"Quantize: sample must be None or a sketch of kind {SAMPLERS} (its kept values are "
                             f"then rounded), got {self.sample!r}")
        object.__setattr__(self, "keep", self.bits / 32 * (1.0 if self.sample is None else self.sample.keep))
        super().__post_init__()

    def check(self) -> None:
        if self.group is not None and (isinstance(self.group, bool) or not isinstance(self.group, int)
                                       or self.group < 1):
            raise ValueError(f"Quantize: group must be a positive int (features per offset/step pair) "
                             f"or None (one pair per row), got {self.group!r}")

    @property
    def levels(self) -> int:
        """L = 2^bits − 1, the number of steps between a group's min and max."""
        return (1 << self.bits) - 1

    def group_size(self, n: int) -> int:
        """Features per group on a view with ``n`` features; raises if ``group`` does not divide n."""
        if self.group is None:
            return n
        if n % self.group:
            raise ValueError(f"Quantize: group={self.group} does not divide the {n} features of the view; "
                             f"allowed: a divisor of {n}, or group=None (one offset/step per row)")
        return self.group

    def _bounds(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(x as (rows, groups, g) in the work dtype, lo, Δ as stored, Δ for arithmetic) of a (rows, n) view."""
        rows, n = x.shape
        g = self.group_size(n)
        xg = x.to(work_dtype(x.dtype)).reshape(rows, n // g, g)
        lo, hi = xg.amin(-1, keepdim=True), xg.amax(-1, keepdim=True)  # two passes beat aminmax(dim) on CPU
        delta = (hi - lo) / self.levels
        step = delta.to(x.dtype)
        if step.dtype != delta.dtype:  # 16-bit storage: round the step up so lo + L·Δ still covers hi
            step = torch.where(step.to(delta.dtype) < delta, step.nextafter(step.new_full((), torch.inf)), step)
            delta = step.to(delta.dtype)
        return xg, lo, step, delta

    def _grid(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(lo, Δ as stored, Δ for arithmetic, u) for a (rows, n) view; u is (rows, groups, g) in [0, L]."""
        xg, lo, step, delta = self._bounds(x)
        u = torch.sub(xg, lo).div_(torch.where(delta > 0, delta, 1.0)).clamp_(0.0, float(self.levels))
        return lo, step, delta, u

    def _round(self, x: torch.Tensor, gens: Sequence[torch.Generator]) -> list[Saved]:
        """(packed levels, stacked (lo, Δ)) of a (rows, n) tensor, one per generator (independent draws
        sharing the grid and the bounds tensor). The level is ⌈u − U⌉, U ~ U[0, 1): for u = ⌊u⌋ + f it is
        ⌊u⌋ + 1 exactly when U < f, and in [0, L] since u is (one pass fewer than a compare and an add)."""
        if _bits.kernel_ok(x):
            return self._round_compiled(x, gens)
        lo, step, _, u = self._grid(x)
        bounds = torch.stack([lo.to(x.dtype), step])
        drawn = []
        for i, gen in enumerate(gens):
            if _bits.numpy_ok(u):  # in place on draws into a reused buffer (no fresh pages per call); numpy's
                draws = uniform(u.shape, gen, u, _scratch(u)).numpy()  # float -> uint8 cast is several
                # times faster than torch's on CPU
                level = torch.from_numpy(np.ceil(np.subtract(u.detach().numpy(), draws, out=draws),
                                                 out=draws).astype(np.uint8))
            else:
                noise = uniform(u.shape, gen, u)
                level = (u.sub_(noise) if i == len(gens) - 1 else u.sub(noise)).ceil_().to(torch.uint8)
            drawn.append((_bits.pack_codes(level, self.bits), bounds))
        return drawn

    def _round_compiled(self, x: torch.Tensor, gens: Sequence[torch.Generator]) -> list[Saved]:
        """:meth:`_round` of float32 CPU input by the compiled kernel (:func:`radvar._native.stochastic_round`):
        bitwise the same codes in one pass with no temporaries (2-bit, 150 x 784: 239 against 397 µs)."""
        _, lo, step, delta = self._bounds(x)
        bounds, flat, g = torch.stack([lo, step]), x.contiguous(), self.group_size(x.shape[1])
        return [(_native.stochastic_round(flat, lo, delta, self.bits, g, pcg_state(gen), PCG_INCREMENT), bounds)
                for gen in gens]

    def _values(self, saved: Saved, meta: Meta) -> torch.Tensor:
        """lo + level·Δ, shaped as the rounded tensor."""
        codes, bounds = saved[:2]
        rows, n = meta["shape"]
        groups = bounds.shape[2]  # bounds: (2, rows, groups, 1)
        work = work_dtype(bounds.dtype)
        levels = _bits.unpack_codes(codes, (rows, groups, n // groups), self.bits, work)
        lo, step = bounds.to(work).unbind(0)  # in place on the fresh levels: beats a broadcast addcmul on CPU
        return levels.mul_(step).add_(lo).view(rows, n).to(bounds.dtype)

    def compress(self, x: torch.Tensor, gen: torch.Generator) -> tuple[Saved, Meta]:
        if self.sample is None:
            return self._round(x, [gen])[0], {"shape": tuple(x.shape)}
        (kept, *rest), inner = self.sample.compress(x, gen)
        return (*self._round(kept, [gen])[0], *rest), {"shape": tuple(kept.shape), "inner": inner}

    def compress_draws(self, x: torch.Tensor, gens: Sequence[torch.Generator]) -> list[tuple[Saved, Meta]]:
        """As :meth:`Sketch.compress_draws`; without a sampler the draws share the grid, and one bounds
        tensor (it depends on x only), so a ledger counts the offsets and steps once."""
        if self.sample is not None:
            return super().compress_draws(x, gens)
        return [(saved, {"shape": tuple(x.shape)}) for saved in self._round(x, gens)]

    def restore(self, saved: Saved, meta: Meta, gen: torch.Generator) -> torch.Tensor:
        if self.sample is None:
            return self._values(saved, meta)
        return self.sample.restore((self._values(saved, meta), *saved[2:]), meta["inner"], gen)

    def left_matmul(self, a: torch.Tensor, saved: Saved, meta: Meta, gen: torch.Generator) -> torch.Tensor:
        if self.sample is None:
            return super().left_matmul(a, saved, meta, gen)
        return self.sample.left_matmul(a, (self._values(saved, meta), *saved[2:]), meta["inner"], gen)

    def right_matmul(self, saved: Saved, meta: Meta, gen: torch.Generator, b: torch.Tensor) -> torch.Tensor:
        if self.sample is None:
            return super().right_matmul(saved, meta, gen, b)
        return self.sample.right_matmul((self._values(saved, meta), *saved[2:]), meta["inner"], gen, b)

    @property
    def independent_entries(self) -> bool:
        """Rounding alone: each entry by its own uniform, on a grid fixed by x (after sampling: no)."""
        return self.sample is None

    def entry_variance(self, x: torch.Tensor) -> torch.Tensor:
        """Var(x̂) = Δ² f (1 − f) for every entry of the (rows, n) view ``x``, as compress would round it."""
        if self.sample is not None:
            return super().entry_variance(x)
        _, _, delta, u = self._grid(x)
        f = u - u.floor()
        return (delta.square() * f * (1.0 - f)).reshape(x.shape)

    def saved_bytes(self, shape: tuple[int, int], dtype: torch.dtype = torch.float32) -> int:
        rows, n = shape
        if self.sample is not None:  # the sampler keeps only its (rows, k) values, rounded here
            n = kept_count(self.sample.keep, n)
        groups = n // self.group_size(n)
        return -(-rows * n * self.bits // 8) + 2 * rows * groups * itemsize(dtype)

    def __repr__(self) -> str:
        after = "" if self.sample is None else f", sample={self.sample!r}"
        return f"Quantize(bits={self.bits}, group={self.group}, view={self.view!r}{after})"

    def variance(self, view: ViewStats) -> tuple[float, str]:
        """Σ_rf Δ_rf² f_rf (1 − f_rf) w_rf on the captured view (independent entries)."""
        if self.sample is not None:
            raise ValueError(f"{self.label()}: rounding after sampling has no closed-form variance (the bounds "
                             f"depend on the kept entries); measure it with radvar.variance.empirical")
        entries = view.entries(Quantize)
        return float((self.entry_variance(entries.x) * entries.weight).sum()), CLOSED

    @classmethod
    def entry_stats(cls, x: torch.Tensor, weight: torch.Tensor) -> QuantizeEntries:
        return QuantizeEntries(x, weight)

    # ---- the family ---------------------------------------------------------
    @classmethod
    def family(cls, **options: Any) -> "Family":
        """The family over bit widths, e.g. ``Quantize.family(group=64)``."""
        from .registry import Family
        return Family(cls(**options))

    def at(self, keep: float) -> "Quantize":
        """The widest bit width b with b/32 ≤ keep (1 bit below 1/32), other options kept."""
        return dataclasses.replace(self, bits=max([b for b in BITS if b / 32 <= keep + 1e-12] or [1]))

    def sweep(self, keeps: Sequence[float]) -> list[Sketch]:
        """The tuner's candidates: every bit width (the keep grid does not apply)."""
        return [dataclasses.replace(self, bits=b) for b in BITS]

    # ---- serialisation and labels -------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "bits": self.bits, "group": self.group, "view": self.view,
                "sample": None if self.sample is None else self.sample.to_dict()}

    def option_labels(self) -> list[str]:
        """``per-row`` or ``group=G``, then the view if set."""
        parts = ["per-row" if self.group is None else f"group={self.group}"]
        parts += [f"view={self.view}"] if self.view is not None else []
        return parts + ([f"after {self.sample.label()}"] if self.sample is not None else [])

    def label(self) -> str:
        """E.g. ``Quantize(2 bits, per-row)``, ``Quantize(1 bit, group=64)``."""
        return f"Quantize({self.bits} bit{'s' if self.bits > 1 else ''}, {', '.join(self.option_labels())})"
