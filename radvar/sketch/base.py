"""The sketch contract shared by every RAD estimator.

A sketch acts on a 2-D view ``x`` of shape (rows, features) that the op
chooses. In forward, :meth:`Sketch.compress` turns ``x`` into a few small
tensors (what autograd keeps) plus a small dict of Python metadata. In
backward, the op rebuilds the *same* generator from the key it kept and asks
for an unbiased reconstruction ``x̂`` (``E[x̂] = x``), either densely
(:meth:`Sketch.restore`) or already contracted with the output gradient
(:meth:`Sketch.left_matmul` for ``a @ x̂``, :meth:`Sketch.right_matmul` for
``x̂ @ b``). Subclasses override the contractions where the math allows a
cheaper product, so backward work shrinks with ``keep``.

Whatever a seed can regenerate (indices, projection matrices) is drawn again
in backward from the generator, in the same order as in forward.

A concrete sketch is a *family* (one module: this contract plus its variance
form, reservation and tuner candidates) registered with
:func:`radvar.sketch.registry.family`; that module's docstring lists the
whole per-family interface.
"""

from __future__ import annotations

import abc
import dataclasses
import functools
import math
import threading
import warnings
from typing import TYPE_CHECKING, Any, ClassVar, Sequence

import numpy as np
import torch

from .. import _bits, _native, rng

if TYPE_CHECKING:
    from .moments import ViewStats
    from .registry import Family

Saved = tuple[torch.Tensor, ...]
Meta = dict[str, Any]

VIEWS: tuple[str | None, ...] = (None, "features", "rows", "positions", "examples")
"""Every view name a layer kind may offer (``None``: the layer's default view)."""
AXES = VIEWS  # deprecated name
Z_MARGIN = 6.0
"""Standard deviations of a random kept count that a reservation adds (a normal tail beyond
6 sd has probability about 1e-9; see :meth:`Sketch.reserve_bytes`)."""
CLOSED = "closed form"
EXACT = "exact (keep = 1)"


def check_keep(keep: Any, owner: str, name: str = "keep") -> float:
    """Validate a keep fraction (or probability) called ``name``: a real number in (0, 1]."""
    if isinstance(keep, bool) or not isinstance(keep, (int, float)):
        raise TypeError(f"{owner}: {name} must be a number in (0, 1], got {keep!r} ({type(keep).__name__})")
    keep = float(keep)
    if math.isnan(keep) or not 0.0 < keep <= 1.0:
        raise ValueError(f"{owner}: {name} must be in (0, 1], got {keep!r}")
    return keep


@functools.lru_cache(maxsize=4096)
def kept_count(keep: float, n: int) -> int:
    """k = ceil(keep * n), at least 1 and at most n (a float-safe ceiling)."""
    return max(1, min(n, math.ceil(keep * n - 1e-9)))


def check_view(view: Any, owner: str) -> str | None:
    """``view`` if it is a known view name (or None), else a ValueError naming the allowed ones."""
    if view not in VIEWS:
        raise ValueError(f"{owner}: view must be one of {VIEWS}, got {view!r}")
    return view


@dataclasses.dataclass(frozen=True)
class Sketch(abc.ABC):
    """Base class of the catalogue: a frozen, JSON-serialisable estimator spec.

    ``keep`` is the kept fraction in (0, 1]; ``view`` picks the op's 2-D view
    (``None`` = the layer's default; see :mod:`radvar.layers`). ``axis=`` is a
    deprecated alias of ``view=``.
    """

    keep: float
    per_example: bool = False
    view: str | None = None

    kind: ClassVar[str] = "sketch"
    registry: ClassVar[dict[str, type["Sketch"]]] = {}  # filled by radvar.sketch.registry.family
    leading: ClassVar[str] = "keep"  # the field the CLI's KIND:VALUE sets
    needs_entries: ClassVar[bool] = False
    mixes_features: ClassVar[bool] = False  # whether variance() reads ViewStats' mix moments (a projection)

    def __post_init__(self) -> None:
        object.__setattr__(self, "keep", check_keep(self.keep, type(self).__name__))
        if not isinstance(self.per_example, bool):
            raise TypeError(f"{type(self).__name__}: per_example must be a bool, got {self.per_example!r}")
        check_view(self.view, type(self).__name__)
        self.check()

    def check(self) -> None:
        """Validate the family's own fields (raise TypeError/ValueError naming the field)."""

    @property
    def axis(self) -> str | None:
        """Deprecated alias of :attr:`view`."""
        warnings.warn("Sketch.axis is deprecated; use Sketch.view", DeprecationWarning, stacklevel=2)
        return self.view

    @property
    def exact(self) -> bool:
        """Whether this sketch reproduces its input exactly (the layers then skip it): keep = 1."""
        return self.keep >= 1.0

    # ---- what the op calls -------------------------------------------------
    @abc.abstractmethod
    def compress(self, x: torch.Tensor, gen: torch.Generator) -> tuple[Saved, Meta]:
        """Draw the sketch of ``x`` (rows, features): tensors to keep, metadata."""

    def compress_draws(self, x: torch.Tensor, gens: Sequence[torch.Generator]) -> list[tuple[Saved, Meta]]:
        """Independent sketches of one ``x``, one per generator, each the draw :meth:`compress` makes with
        that generator (for ops that need two independent estimates of one tensor); a family may share
        between them what does not depend on the draw."""
        return [self.compress(x, gen) for gen in gens]

    @abc.abstractmethod
    def restore(self, saved: Saved, meta: Meta, gen: torch.Generator) -> torch.Tensor:
        """Dense unbiased reconstruction x̂ with E[x̂] = x."""

    def left_matmul(self, a: torch.Tensor, saved: Saved, meta: Meta, gen: torch.Generator) -> torch.Tensor:
        """``a @ x̂`` for ``a`` of shape (m, rows); override for a cheaper product."""
        return a @ self.restore(saved, meta, gen)

    def right_matmul(self, saved: Saved, meta: Meta, gen: torch.Generator, b: torch.Tensor) -> torch.Tensor:
        """``x̂ @ b`` for ``b`` of shape (features, m); override for a cheaper product."""
        return self.restore(saved, meta, gen) @ b

    @abc.abstractmethod
    def saved_bytes(self, shape: tuple[int, int], dtype: torch.dtype = torch.float32) -> int:
        """Bytes :meth:`compress` keeps for a (rows, features) input: exact for fixed-size
        sketches; for sketches whose kept count is random, an upper bound on the mean over draws
        (single draws may exceed it; :meth:`reserve_bytes` bounds every draw)."""

    # ---- what the variance analysis and the tuner call ---------------------
    @abc.abstractmethod
    def variance(self, view: "ViewStats") -> tuple[float, str]:
        """E‖Ĝ − G‖²_F of one call's weight gradient from the layer's statistics of the view this
        sketch acts on, and how it was obtained (e.g. :data:`CLOSED`); never called when :attr:`exact`."""

    def variance_se(self, view: "ViewStats") -> float:
        """Standard error of :meth:`variance` (non-zero only for Monte Carlo estimates)."""
        return 0.0

    @property
    def independent_entries(self) -> bool:
        """Whether :meth:`compress` draws the entries of x̂ independently of each other (then, for any fixed
        a, Var Σ a_ij x̂_ij = Σ a_ij² Var(x̂_ij), from :meth:`entry_variance`)."""
        return False

    def entry_variance(self, x: torch.Tensor) -> torch.Tensor:
        """Var(x̂_ij) for every entry of the (rows, n) view ``x``, for sketches with
        :attr:`independent_entries`."""
        raise ValueError(f"{self.label()}: its entries are not drawn independently; no per-entry variance")

    def reserve_bytes(self, shape: tuple[int, int], dtype: torch.dtype = torch.float32) -> int:
        """Bytes the tuner reserves for one call: a bound that a draw exceeds with probability below
        1e-9 (fixed-size sketches: :meth:`saved_bytes`; random sizes add :data:`Z_MARGIN` sd)."""
        return self.saved_bytes(shape, dtype)

    @classmethod
    def family(cls, **options: Any) -> "Family":
        """This family with ``options`` fixed and keep left open, e.g. ``Subsample.family(per_example=True)``."""
        from .registry import Family
        return Family(cls(1.0, **options))

    def at(self, keep: float) -> "Sketch":
        """This sketch's family at ``keep`` (a family whose knob is not keep maps keep onto it)."""
        return dataclasses.replace(self, keep=keep)

    def sweep(self, keeps: Sequence[float]) -> list["Sketch"]:
        """The tuner's candidates of this sketch's family on a keep grid (default: one per keep)."""
        return [dataclasses.replace(self, keep=k) for k in keeps]

    # ---- serialisation -----------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, **dataclasses.asdict(self)}

    @staticmethod
    def from_dict(d: dict[str, Any]) -> "Sketch":
        """Inverse of :meth:`to_dict`; names the bad field on error (a plan's old ``axis`` key reads as ``view``)."""
        if not isinstance(d, dict) or "kind" not in d:
            raise ValueError(f"a sketch must be a dict with a 'kind' key, got {d!r}")
        fields = dict(d)
        kind = fields.pop("kind")
        if kind not in Sketch.registry:
            raise ValueError(f"unknown sketch kind {kind!r}; allowed: {sorted(Sketch.registry)}")
        cls = Sketch.registry[kind]
        if "axis" in fields and "view" not in fields:
            fields["view"] = fields.pop("axis")
        allowed = {f.name for f in dataclasses.fields(cls)}
        unknown = set(fields) - allowed
        if unknown:
            raise ValueError(f"{cls.__name__}: unknown field(s) {sorted(unknown)}; allowed: {sorted(allowed)}")
        return cls(**fields)

    def option_labels(self) -> list[str]:
        """The label's parts after keep: shared/per-example, then every field off its default."""
        parts = ["per-example" if self.per_example else "shared"]
        parts += [f"{f.name}={getattr(self, f.name)}" for f in dataclasses.fields(self)
                  if f.name not in ("keep", "per_example") and getattr(self, f.name) != f.default]
        return parts

    def label(self) -> str:
        """A short human-readable name, e.g. ``Subsample(0.1, shared)``."""
        return f"{type(self).__name__}({', '.join([f'{self.keep:g}', *self.option_labels()])})"


class ColumnSketch(Sketch):
    """A sketch that, shared over rows, keeps the columns ``idx`` of x scaled by ``scale``
    (x̂ = scale · x[:, idx] scattered back, repeated indices adding up); per example it falls
    back to :meth:`restore`. Its products touch only the kept columns."""

    @abc.abstractmethod
    def shared_columns(self, n: int, gen: torch.Generator, like: torch.Tensor) -> tuple[torch.Tensor, float]:
        """The kept column indices (the draw of :meth:`compress`) and their scale."""

    @property
    def distinct_columns(self) -> bool:
        """Whether :meth:`shared_columns` never repeats an index (then products write columns, not add)."""
        return False

    def left_matmul(self, a: torch.Tensor, saved: Saved, meta: Meta, gen: torch.Generator) -> torch.Tensor:
        if self.per_example:
            return super().left_matmul(a, saved, meta, gen)
        (kept,) = saved
        idx, scale = self.shared_columns(meta["shape"][1], gen, kept)
        if self.distinct_columns and _bits.kernel_ok(kept):
            # zeros and the scaled columns in one C pass: 25 against 68 µs on 300 x 784, 0.9 against 1.3 ms on
            # 2048 x 2048. The product is taken as (keptᵀ aᵀ)ᵀ, read by the kernel through its strides: aᵀ is a
            # linear layer's contiguous output gradient, and this product took 40 against 54 µs in a step's
            # backward (300 -> 300, batch 150, 2 threads); the same sums, bitwise torch's tensor where tested
            return _native.scatter_columns(torch.mm(kept.t(), a.t()).t(), idx, meta["shape"][1], scale)
        cols = (a @ kept).mul_(scale)
        out = cols.new_zeros(a.shape[0], meta["shape"][1])
        if self.distinct_columns:  # a plain write (index_put_) beat index_add_: 1.35x vs 1.41x plain, paper MLP
            out[:, idx] = cols
            return out
        return out.index_add_(1, idx, cols)

    def right_matmul(self, saved: Saved, meta: Meta, gen: torch.Generator, b: torch.Tensor) -> torch.Tensor:
        if self.per_example:
            return super().right_matmul(saved, meta, gen, b)
        (kept,) = saved
        idx, scale = self.shared_columns(meta["shape"][1], gen, kept)
        return (kept @ b.index_select(0, idx)).mul_(scale)


def itemsize(dtype: torch.dtype) -> int:
    """Bytes per element of ``dtype``."""
    return torch.empty((), dtype=dtype).element_size()


def work_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype a sketch computes probabilities, scales and uniforms in: float64 for
    float64 data (so a float64 path stays float64 throughout), float32 otherwise."""
    return torch.float64 if dtype == torch.float64 else torch.float32


class _ThreadPCG(threading.local):
    def __init__(self) -> None:
        self.bits = np.random.PCG64(0)


_PCG = _ThreadPCG()
PCG_INCREMENT = 0xDA3E39CB94B95BDB6A5F2C36C1E1A8C5 | 1  # any odd 128-bit constant: one fixed PCG stream


def _pcg(gen: torch.Generator) -> np.random.PCG64:
    """This thread's PCG64 bit generator, set to the 128-bit state that one 62-bit draw of ``gen`` maps to
    (two splitmix64 mixes of it). Setting the state costs about 1 µs where a fresh ``PCG64(seed)`` hashes
    its seed for about 10; the generator is shared, so use it before the next call."""
    bits = _PCG.bits
    bits.state = {"bit_generator": "PCG64", "state": {"state": pcg_state(gen), "inc": PCG_INCREMENT},
                  "has_uint32": 0, "uinteger": 0}
    return bits


def pcg_state(gen: torch.Generator) -> int:
    """The 128-bit PCG64 state :func:`_pcg` starts from (increment ``PCG_INCREMENT``): one 62-bit draw of
    ``gen``, two splitmix64 mixes of it. The compiled kernels (:mod:`radvar._native`) start their
    streams here."""
    seed = int(torch.randint(0, 1 << 62, (), generator=gen))
    return (rng.mix(seed) << 64) | rng.mix(seed ^ 0x5851F42D4C957F2D)


def _words(gen: torch.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """Uniform 32-bit words of ``shape`` from :func:`_pcg`: the two halves of each raw 64-bit output."""
    numel = math.prod(shape)
    return _pcg(gen).random_raw((numel + 1) // 2).view(np.uint32)[:numel].reshape(shape)


def uniform(shape: tuple[int, ...], gen: torch.Generator, like: torch.Tensor,
            out: torch.Tensor | None = None) -> torch.Tensor:
    """U[0, 1) draws of ``shape`` on ``like``'s device, in :func:`work_dtype` of ``like``, at that dtype's
    full uniform resolution (2⁻²⁴ for float32, 2⁻⁵³ for float64), a function of ``gen``'s state.

    On CPU (outside ``torch.compile``) ``gen`` gives one 62-bit seed for numpy's PCG64 (two to three times
    as fast as torch's mt19937, at the same resolution; :func:`_pcg`): a float32 draw is k·2⁻²⁴ with k the
    top 24 bits of a uniform 32-bit half of a raw 64-bit output (numpy's own float32 recipe, without its
    per-draw call); float64 draws are numpy's 53-bit ones. Elsewhere torch's ``rand`` draws from ``gen``.
    ``out`` (contiguous, of ``shape`` and that dtype) receives the draws instead of a new tensor."""
    dtype = work_dtype(like.dtype)
    if _bits.numpy_ok(like):
        target = None if out is None else out.numpy()
        if dtype == torch.float64:
            draws = np.random.Generator(_pcg(gen)).random(shape, dtype=np.float64, out=target)
        else:
            words = _words(gen, shape)
            draws = np.multiply(np.right_shift(words, 8, out=words), np.float32(2.0 ** -24), out=target,
                                dtype=np.float32, casting="unsafe")
        return torch.from_numpy(draws) if out is None else out
    return torch.rand(shape, generator=gen, device=like.device, dtype=dtype, out=out)


def coins(shape: tuple[int, ...], p: float, gen: torch.Generator, like: torch.Tensor) -> torch.Tensor:
    """The bool tensor ``uniform(shape, gen, like) < p``, drawn the same. For float32 work on CPU (outside
    ``torch.compile``) it compares the raw 32-bit words with ⌈p·2²⁴⌉·2⁸ instead (k·2⁻²⁴ < p iff
    k < ⌈p·2²⁴⌉ for k the top 24 bits of a word): bitwise the same mask without making the floats."""
    if _bits.numpy_ok(like) and work_dtype(like.dtype) == torch.float32:
        limit = math.ceil(float(np.float32(p)) * 2.0 ** 24)
        if limit >= 1 << 24:
            return torch.ones(shape, dtype=torch.bool)
        return torch.from_numpy(np.less(_words(gen, shape), np.uint32(limit << 8)))
    return less(uniform(shape, gen, like), p)


GAP_KEEP = 0.2
"""Largest success probability at which :func:`bernoulli_positions` draws the gaps between successes (above
it, scanning a mask of all trials is the cheaper: 185 against 270 µs at 0.3 on 117,600 trials)."""


def bernoulli_positions(numel: int, p: float, gen: torch.Generator, like: torch.Tensor) -> torch.Tensor:
    """The sorted flat int64 positions of the successes among ``numel`` i.i.d. Bernoulli(``p``) trials, on
    ``like``'s device, a function of ``gen``'s state.

    On CPU outside ``torch.compile`` with ``p`` <= :data:`GAP_KEEP`: the gaps between successes are i.i.d.
    geometric, drawn by inversion, G = ⌊log(1−U)/log(1−p)⌋ with 53-bit uniforms U (P(G ≥ j) = (1−p)^j),
    and summed; work in proportion to the p·numel successes instead of numel (92 against 242 µs at p = 0.1
    on 150 x 784, 894 against 2,626 µs on 150 x 32 x 16 x 16). Elsewhere the true entries of
    :func:`coins`."""
    if not (_bits.numpy_ok(like) and 0.0 < p <= GAP_KEEP):
        return flat_nonzero(coins((numel,), p, gen, like))
    draws = np.random.Generator(_pcg(gen))
    log_q = math.log1p(-p)
    expected = numel * p
    chunk = int(expected + 6.0 * math.sqrt(expected) + 16)  # gaps that reach past numel but ~1e-9 of the time
    parts, last = [], -1
    while last < numel:
        gaps = np.floor(np.log1p(-draws.random(chunk)) / log_q).astype(np.int64)
        parts.append(np.cumsum(gaps + 1) + last)
        last = int(parts[-1][-1])
    positions = parts[0] if len(parts) == 1 else np.concatenate(parts)
    return torch.from_numpy(positions[:np.searchsorted(positions, numel)])


def signs(shape: tuple[int, ...], gen: torch.Generator, like: torch.Tensor, scale: float) -> torch.Tensor:
    """I.i.d. ±``scale`` (probability 1/2 each) of ``shape`` in ``like``'s dtype and device, a function of
    ``gen``'s state. On CPU (outside ``torch.compile``, not bfloat16) one raw 64-bit PCG64 word
    (:func:`_pcg`, seeded by one draw of ``gen``) gives 64 signs, decoded a byte at a time by table
    lookup (:func:`radvar._bits.select`): about a fifth of the time of ``torch.randint(0, 2, ...)``
    and the arithmetic that maps it to ±scale. Elsewhere ``torch.randint``."""
    if _bits.numpy_ok(like) and like.dtype != torch.bfloat16:
        numel = math.prod(shape)
        bits = _pcg(gen).random_raw((numel + 63) // 64)
        return _bits.select(torch.from_numpy(bits.view(np.uint8)), shape, scale, -scale, like.dtype)
    r = torch.randint(0, 2, shape, generator=gen, device=like.device).to(like.dtype)
    return r.mul_(2).sub_(1).mul_(scale)


def less(a: torch.Tensor | float, b: torch.Tensor | float) -> torch.Tensor:
    """The bool tensor ``a < b`` (broadcast; at least one of them a tensor): numpy's comparison on CPU
    outside ``torch.compile`` (13x as fast as torch's at one thread on 150 x 784 float32: 4.5 µs, not
    60), else torch's (and for bfloat16, which numpy lacks). Python floats compare in the tensor's dtype."""
    tensors = [v for v in (a, b) if isinstance(v, torch.Tensor)]
    if _bits.numpy_ok(tensors[0]) and all(v.dtype != torch.bfloat16 for v in tensors):
        return torch.from_numpy(np.less(_as_numpy(a), _as_numpy(b)))
    return torch.as_tensor(a) < b if not isinstance(a, torch.Tensor) else a < b


def _as_numpy(v: torch.Tensor | float) -> np.ndarray | float:
    return v.detach().numpy() if isinstance(v, torch.Tensor) else v


def k_subsets(rows: int, n: int, k: int, gen: torch.Generator, like: torch.Tensor) -> torch.Tensor:
    """(rows, k) int64 column indices, each row an independent uniformly random k-subset of range(n)
    (unordered), a function of ``gen``'s state. On CPU outside ``torch.compile``, with radvar's compiled
    kernels (:mod:`radvar._native`), Floyd's algorithm: O(k) uniform integers per row, exactly uniform
    (150 x 784, k = 79: 40 against 419 µs). Else the positions of the k smallest of n i.i.d. random keys:
    on CPU raw 32-bit words (:func:`_words`) picked by numpy's introselect ``argpartition`` (30% faster than
    on the float uniforms those words make, 3x faster than ``topk``), where ties among a row's keys
    (probability below n²/2³³, 7e-5 at n = 784) are the only departure from exact uniformity; elsewhere
    ``topk`` of :func:`uniform` draws. The three draw different subsets for the same key."""
    if _bits.numpy_ok(like) and _native.available() and 1 <= k <= n < 1 << 32:
        return _native.k_subsets(rows, n, k, pcg_state(gen), PCG_INCREMENT)
    if _bits.numpy_ok(like):
        keys = _words(gen, (rows, n))
        return torch.from_numpy(np.ascontiguousarray(np.argpartition(keys, k - 1, axis=1)[:, :k]))
    return uniform((rows, n), gen, like).topk(k, dim=1, largest=False, sorted=False).indices


def flat_nonzero(mask: torch.Tensor) -> torch.Tensor:
    """The flat (C-order) int64 positions of the true entries of the bool tensor ``mask``: numpy's
    ``flatnonzero`` on CPU outside ``torch.compile`` (about four times as fast as ``nonzero`` there),
    else ``torch.nonzero``."""
    if _bits.numpy_ok(mask):
        return torch.from_numpy(np.flatnonzero(mask.numpy()))
    return mask.reshape(-1).nonzero().squeeze(1)


def scatter_flat(values: torch.Tensor, positions: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    """A zero tensor of ``shape`` with ``values`` at the flat ``positions`` (:func:`flat_nonzero`)."""
    return values.new_zeros(math.prod(shape)).index_copy_(0, positions, values).view(shape)


def count_margin(var: float) -> int:
    """:data:`Z_MARGIN` standard deviations of a random count of variance ``var``, rounded up."""
    return math.ceil(Z_MARGIN * math.sqrt(max(var, 0.0)))
