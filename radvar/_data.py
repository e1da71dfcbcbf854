"""The one input layer: batches, splitting, example iteration and validation of data.

``data`` everywhere in radvar is an ``(inputs, targets)`` pair whose first
dimension indexes examples (``inputs`` a tensor or a tuple of tensors), or an
iterable of such batches (a list, a ``DataLoader``). Examples are numbered from
0 across the batches of an iterable, so an error names the same example however
the data is chunked.
"""

from __future__ import annotations

from typing import Any, Iterable, Iterator

import torch

Batch = tuple[Any, torch.Tensor]
CHUNK = 65536  # examples checked at once in a tensor pair (bounds the temporaries of validate)


def split_batch(batch: Any, owner: str) -> tuple[tuple[torch.Tensor, ...], torch.Tensor]:
    """``(inputs, targets)`` -> (positional inputs tuple, targets); names ``owner`` on error."""
    if not isinstance(batch, (tuple, list)) or len(batch) != 2:
        raise TypeError(f"{owner}: batch must be an (inputs, targets) pair, got {type(batch).__name__}"
                        + (f" of length {len(batch)}" if isinstance(batch, (tuple, list)) else ""))
    inputs, targets = batch
    inputs = inputs if isinstance(inputs, tuple) else (inputs,)
    if not inputs or not all(isinstance(t, torch.Tensor) for t in inputs):
        raise TypeError(f"{owner}: batch inputs must be a tensor or a tuple of tensors, got {type(batch[0]).__name__}")
    if inputs[0].dim() == 0 or inputs[0].shape[0] == 0:
        raise ValueError(f"{owner}: batch is empty (inputs of shape {tuple(inputs[0].shape)}); "
                         f"need at least one example")
    return inputs, targets


def take_batch(data: Any, batch_size: int | None, owner: str) -> tuple[tuple[torch.Tensor, ...], torch.Tensor]:
    """The first ``batch_size`` examples of ``data = (inputs, targets)`` (all if None), as contiguous copies
    (the ledger counts whole storages, so a view of a larger tensor would count the whole tensor)."""
    inputs, targets = split_batch(data, owner)
    n = inputs[0].shape[0]
    if batch_size is None:
        batch_size = n
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or not 1 <= batch_size <= n:
        raise ValueError(f"{owner}: batch_size must be an int in [1, {n}] (the examples in data), got {batch_size!r}")
    return tuple(t[:batch_size].clone() for t in inputs), targets[:batch_size].clone()


def is_pair(data: Any) -> bool:
    """Whether ``data`` is one ``(inputs, targets)`` pair of tensors (inputs may be a tuple of tensors)."""
    if not isinstance(data, (tuple, list)) or len(data) != 2 or not isinstance(data[1], torch.Tensor):
        return False
    inputs = data[0] if isinstance(data[0], tuple) else (data[0],)
    return bool(inputs) and all(isinstance(t, torch.Tensor) for t in inputs)


def _tensors(value: Any) -> tuple[torch.Tensor, ...] | None:
    """A tensor or a tuple/list of tensors as a tuple; None for anything else."""
    if isinstance(value, torch.Tensor):
        return (value,)
    if isinstance(value, (tuple, list)) and value and all(isinstance(t, torch.Tensor) for t in value):
        return tuple(value)
    return None


def batches(data: Any, owner: str, *, one_batch: bool = False) -> Iterator[tuple[int, tuple[torch.Tensor, ...], Any]]:
    """``(index of the first example, inputs tuple, targets)`` per batch of ``data``, checked to be
    consistent: the first input and tensor targets share their first dim (the examples), and their
    per-example shapes agree in every batch. ``one_batch``: ``data`` is a single batch whose targets
    may also be a tuple of tensors or any object the loss takes."""
    if one_batch or is_pair(data):
        parts: Iterable[Any] = [data]
    elif isinstance(data, (torch.Tensor, str, bytes, dict)) or not isinstance(data, Iterable):
        raise TypeError(f"{owner}: data must be an (inputs, targets) pair of tensors or an iterable of such "
                        f"batches (e.g. a DataLoader), got {type(data).__name__}")
    else:
        parts = data
    start, first = 0, None
    for b, item in enumerate(parts):
        inputs = _tensors(item[0]) if isinstance(item, (tuple, list)) and len(item) == 2 else None
        if inputs is None or not (one_batch or isinstance(item[1], torch.Tensor)):
            raise TypeError(f"{owner}: data batch {b} must be an (inputs, targets) pair of tensors, "
                            f"got {type(item).__name__}")
        targets = item[1]
        aligned = [inputs[0], *([targets] if isinstance(targets, torch.Tensor) else [])]
        if any(t.dim() == 0 for t in aligned):
            raise ValueError(f"{owner}: data batch {b} holds a 0-dim tensor; the first dim must index examples")
        if len({int(t.shape[0]) for t in aligned}) != 1:
            raise ValueError(f"{owner}: data batch {b} (from example {start}) has inputs {tuple(inputs[0].shape)} "
                             f"and targets {tuple(targets.shape)}; they must share their first dim (the examples)")
        shapes = [tuple(t.shape[1:]) for t in aligned]
        if first is None:
            first = shapes
        elif shapes != first:
            raise ValueError(f"{owner}: example {start} (data batch {b}) has per-example shapes {shapes} "
                             f"(inputs, targets), but example 0 has {first}")
        yield start, inputs, targets
        start += int(inputs[0].shape[0])


def examples(data: Any, owner: str) -> tuple[torch.Tensor, torch.Tensor]:
    """All of ``data`` as one (inputs, targets) pair of tensors (a single input tensor)."""
    xs, ys = [], []
    for _, inputs, targets in batches(data, owner):
        if len(inputs) != 1:
            raise TypeError(f"{owner}: data inputs must be one tensor, got a tuple of {len(inputs)}")
        xs.append(inputs[0])
        ys.append(targets)
    if not xs or sum(x.shape[0] for x in xs) == 0:
        raise ValueError(f"{owner}: data is empty; need at least one example")
    return (xs[0], ys[0]) if len(xs) == 1 else (torch.cat(xs), torch.cat(ys))


def _first_bad(bad: torch.Tensor, values: torch.Tensor) -> tuple[int, Any, tuple[int, ...]] | None:
    """(example, value, position inside the example) of the first True of ``bad`` (shape of ``values``)."""
    rows = bad.reshape(bad.shape[0], -1).any(1)
    if not bool(rows.any()):
        return None
    i = int(rows.nonzero()[0, 0])
    j = int(bad[i].reshape(-1).nonzero()[0, 0])
    pos = tuple(int(v) for v in torch.unravel_index(torch.tensor(j), bad.shape[1:])) if bad.dim() > 1 else ()
    return i, values[i].reshape(-1)[j].item(), pos


def _at(pos: tuple[int, ...]) -> str:
    return f" at position {pos}" if pos else ""


def check_finite(start: int, t: torch.Tensor, what: str, name: str, per_example: bool = True) -> None:
    """Raise naming the first example of ``t`` (numbered from ``start``) with a NaN or infinite value
    (``per_example=False``: ``t[0]`` is a whole tensor that does not index examples)."""
    if not (t.is_floating_point() or t.is_complex()):
        return
    for s in range(0, t.shape[0], CHUNK):
        part = t[s:s + CHUNK]
        found = _first_bad(~torch.isfinite(part), part)
        if found is not None:
            i, value, pos = found
            where = f"example {start + s + i} has a non-finite {what} value" if per_example else \
                f"{what} holds a non-finite value"
            raise ValueError(f"{name}: {where} {value}{_at(pos)}; all values must be finite")


def check_labels(start: int, y: torch.Tensor, num_classes: int, name: str) -> None:
    """Raise naming the first example (numbered from ``start``) with a class label outside [0, num_classes)."""
    if y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
        return
    for s in range(0, y.shape[0], CHUNK):
        part = y[s:s + CHUNK]
        found = _first_bad((part < 0) | (part >= num_classes), part)
        if found is not None:
            i, value, pos = found
            raise ValueError(f"{name}: example {start + s + i} has label {value}{_at(pos)}, outside the "
                             f"{num_classes} classes of the model output; allowed: 0 to {num_classes - 1}")


def validate(data: Any, targets: Any = None, *, num_classes: int | None = None, name: str = "data") -> int:
    """Check all of ``data`` before any expensive work; return the number of examples.

    ``data``: an (inputs, targets) pair, an iterable of such batches (read once,
    batch by batch), or the inputs (a tensor or tuple of tensors) of one batch
    with its ``targets`` (a tensor, a tuple of tensors, or anything the loss takes)
    given separately. Checks: consistent shapes (:func:`batches`), every floating
    input and target value finite, and with ``num_classes`` every integer target
    in ``[0, num_classes)``. The error names the first offending example (counted
    across batches) and its value.
    """
    if num_classes is not None and (isinstance(num_classes, bool) or not isinstance(num_classes, int)
                                    or num_classes < 1):
        raise ValueError(f"validate: num_classes must be a positive int or None, got {num_classes!r}")
    one_batch = targets is not None
    n = 0
    for start, inputs, y in batches((data, targets) if one_batch else data, name, one_batch=one_batch):
        n = start + int(inputs[0].shape[0])
        named = [(t, "input" if len(inputs) == 1 else f"input {k}") for k, t in enumerate(inputs)]
        ys = _tensors(y) or ()
        named += [(t, "target" if len(ys) == 1 else f"target {k}") for k, t in enumerate(ys)]
        for t, what in named:
            aligned = t.dim() > 0 and t.shape[0] == n - start
            check_finite(start, t if aligned else t[None], what, name, per_example=aligned)
        if num_classes is not None and isinstance(y, torch.Tensor):
            check_labels(start, y, num_classes, name)
    if n == 0:
        raise ValueError(f"{name}: data is empty; need at least one example")
    return n


__all__ = ["Batch", "split_batch", "take_batch", "is_pair", "batches", "examples", "validate",
           "check_finite", "check_labels"]
