"""Sketched tensors kept by an autograd Function: compress in forward, restore in backward.

:func:`keep` compresses a tensor on its ``(rows, features)`` view (the last
dimension as features; a 0-d tensor is one row) with one independent draw per
rng key (:meth:`~radvar.sketch.Sketch.compress_draws`) and appends what each
draw keeps to a list the Function then saves; :func:`restore` rebuilds one
draw in the tensor's shape with the generator of the same key, popping its
tensors off the front of that list (restore in the order they were kept).
"""

from __future__ import annotations

import contextlib
import contextvars
from typing import Any, Iterator, NamedTuple

import torch

from .. import rng
from ..sketch import Sketch
from ..sketch.base import Meta


def sketching(sketch: Sketch | None) -> bool:
    """Whether a call under ``sketch`` keeps a sketch: a non-exact sketch, outside ``radvar.exact()``,
    with grad enabled (each op adds its own check that some input needs a gradient)."""
    return sketch is not None and not sketch.exact and not rng.is_exact() and torch.is_grad_enabled()


_RECORDING: contextvars.ContextVar[list[Any] | None] = contextvars.ContextVar("radvar_sketched_calls", default=None)


@contextlib.contextmanager
def recording() -> Iterator[list[Any]]:
    """Within the block, the sketching ops that can describe their error append a record of each call to the
    list yielded (:class:`radvar.ops.activation.SketchedCall`, :class:`radvar.ops.norm.NormCall`: detached
    tensors, the output gradient filled in when the call's backward runs). The variance analysis reads each
    call's error in closed form off them."""
    token = _RECORDING.set([])
    try:
        yield _RECORDING.get()
    finally:
        _RECORDING.reset(token)


def recorder() -> list[Any] | None:
    """The list :func:`recording` appends to, or None outside it."""
    return _RECORDING.get()


class Kept(NamedTuple):
    """One sketched tensor: how many saved tensors are its, the sketch's metadata, its key and its shape."""

    count: int
    meta: Meta
    key: int
    shape: torch.Size


def rows_view(t: torch.Tensor) -> torch.Tensor:
    """The (rows, features) view a sketch sees: the last dimension as features."""
    return t.reshape(-1, t.shape[-1]) if t.dim() else t.reshape(1, 1)


def keep(sketch: Sketch, x: torch.Tensor, keys: tuple[int, ...], saved: list[torch.Tensor]) -> list[Kept]:
    """Compress ``x`` with one independent draw per key (the sketch may share between draws what does not
    depend on them); append what each keeps to ``saved``."""
    draws = sketch.compress_draws(rows_view(x), [rng.generator(key, x.device) for key in keys])
    kept = []
    for (parts, meta), key in zip(draws, keys):
        saved.extend(parts)
        kept.append(Kept(len(parts), meta, key, x.shape))
    return kept


def restore(sketch: Sketch, kept: Kept, saved: list[torch.Tensor], dtype: torch.dtype | None = None) -> torch.Tensor:
    """The reconstruction of a :func:`keep`'d tensor in its shape (cast to ``dtype`` if given); pops its
    tensors off the front of ``saved``."""
    parts = tuple(saved[:kept.count])
    del saved[:kept.count]
    x = sketch.restore(parts, kept.meta, rng.generator(kept.key, parts[0].device)).view(kept.shape)
    return x if dtype is None else x.to(dtype)
