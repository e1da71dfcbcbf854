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
"""

from __future__ import annotations

import abc
import dataclasses
import math
from typing import Any, ClassVar

import torch

Saved = tuple[torch.Tensor, ...]
Meta = dict[str, Any]

AXES: tuple[str | None, ...] = (None, "features", "rows", "positions", "examples")


def check_keep(keep: Any, owner: str, name: str = "keep") -> float:
    """Validate a keep fraction (or probability) called ``name``: a real number in (0, 1]."""
    if isinstance(keep, bool) or not isinstance(keep, (int, float)):
        raise TypeError(f"{owner}: {name} must be a number in (0, 1], got {keep!r} ({type(keep).__name__})")
    keep = float(keep)
    if math.isnan(keep) or not 0.0 < keep <= 1.0:
        raise ValueError(f"{owner}: {name} must be in (0, 1], got {keep!r}")
    return keep


def kept_count(keep: float, n: int) -> int:
    """k = ceil(keep * n), at least 1 and at most n (a float-safe ceiling)."""
    return max(1, min(n, math.ceil(keep * n - 1e-9)))


@dataclasses.dataclass(frozen=True)
class Sketch(abc.ABC):
    """Base class of the catalogue: a frozen, JSON-serialisable estimator spec.

    ``keep`` is the kept fraction in (0, 1]; ``axis`` picks the op's 2-D view
    (``None`` = the op's default; see :mod:`radvar.ops`).
    """

    keep: float
    per_example: bool = False
    axis: str | None = None

    kind: ClassVar[str] = "sketch"
    registry: ClassVar[dict[str, type["Sketch"]]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        Sketch.registry[cls.kind] = cls

    def __post_init__(self) -> None:
        object.__setattr__(self, "keep", check_keep(self.keep, type(self).__name__))
        if not isinstance(self.per_example, bool):
            raise TypeError(f"{type(self).__name__}: per_example must be a bool, got {self.per_example!r}")
        if self.axis not in AXES:
            raise ValueError(f"{type(self).__name__}: axis must be one of {AXES}, got {self.axis!r}")

    # ---- what the op calls -------------------------------------------------
    @abc.abstractmethod
    def compress(self, x: torch.Tensor, gen: torch.Generator) -> tuple[Saved, Meta]:
        """Draw the sketch of ``x`` (rows, features): tensors to keep, metadata."""

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
        (single draws may exceed it; the tuner reserves a per-draw bound on top)."""

    # ---- serialisation -----------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, **dataclasses.asdict(self)}

    @staticmethod
    def from_dict(d: dict[str, Any]) -> "Sketch":
        """Inverse of :meth:`to_dict`; names the bad field on error."""
        if not isinstance(d, dict) or "kind" not in d:
            raise ValueError(f"a sketch must be a dict with a 'kind' key, got {d!r}")
        fields = dict(d)
        kind = fields.pop("kind")
        if kind not in Sketch.registry:
            raise ValueError(f"unknown sketch kind {kind!r}; allowed: {sorted(Sketch.registry)}")
        cls = Sketch.registry[kind]
        allowed = {f.name for f in dataclasses.fields(cls)}
        unknown = set(fields) - allowed
        if unknown:
            raise ValueError(f"{cls.__name__}: unknown field(s) {sorted(unknown)}; allowed: {sorted(allowed)}")
        return cls(**fields)

    def label(self) -> str:
        """A short human-readable name, e.g. ``Subsample(0.1, shared)``."""
        parts = [f"{self.keep:g}", "per-example" if self.per_example else "shared"]
        parts += [f"{f.name}={getattr(self, f.name)}" for f in dataclasses.fields(self)
                  if f.name not in ("keep", "per_example") and getattr(self, f.name) != f.default]
        return f"{type(self).__name__}({', '.join(parts)})"


def itemsize(dtype: torch.dtype) -> int:
    """Bytes per element of ``dtype``."""
    return torch.empty((), dtype=dtype).element_size()


def work_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype a sketch computes probabilities, scales and uniforms in: float64 for
    float64 data (so a float64 path stays float64 throughout), float32 otherwise."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def uniform(shape: tuple[int, ...], gen: torch.Generator, like: torch.Tensor) -> torch.Tensor:
    """U[0, 1) draws of ``shape`` on ``like``'s device, in :func:`work_dtype` of ``like``."""
    return torch.rand(shape, generator=gen, device=like.device, dtype=work_dtype(like.dtype))
