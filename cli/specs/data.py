"""Data specs: a zoo dataset, ``synthetic:SHAPE:CLASSES[:N]``, a .pt/.npz file, or ``module:fn``.

Files hold inputs and targets (keys ``inputs``/``targets`` or ``x``/``y``, or a
2-tuple in a ``.pt``); ``module:fn``/``file.py:fn`` returns an ``(inputs,
targets)`` pair, a ``Dataset`` or a ``DataLoader``. At most ``limit`` examples
are materialised.
"""

from __future__ import annotations

import re
from typing import Any, Iterable

import numpy as np
import torch

from radvar import _data, zoo

from .errors import SpecError, existing_file, load_object, one_line, read_torch_file

Batch = tuple[torch.Tensor, torch.Tensor]
SYNTHETIC_N = 1024


def _parse_shape(text: str) -> tuple[int, ...]:
    if not re.fullmatch(r"[1-9]\d*(x[1-9]\d*)*", text):
        raise SpecError(f"--data: synthetic shape {text!r} must be positive ints joined by 'x', e.g. 3x32x32")
    return tuple(int(v) for v in text.split("x"))


def _positive_int(text: str, what: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise SpecError(f"--data: {what} {text!r} must be a positive integer")
    return int(text)


def _pair(obj: Any, source: str) -> Batch:
    if isinstance(obj, dict) or isinstance(obj, np.lib.npyio.NpzFile):
        keys = set(obj.keys())
        for a, b in (("inputs", "targets"), ("x", "y")):
            if {a, b} <= keys:
                return _tensor(obj[a], source), _tensor(obj[b], source)
        raise SpecError(f"--data: {source} has keys {sorted(keys)}; expected 'inputs' and 'targets' (or 'x' and 'y')")
    if isinstance(obj, (tuple, list)) and len(obj) == 2:
        return _tensor(obj[0], source), _tensor(obj[1], source)
    raise SpecError(f"--data: {source} holds a {type(obj).__name__}; expected inputs and targets")


def _tensor(v: Any, source: str) -> torch.Tensor:
    if isinstance(v, torch.Tensor):
        return v
    if isinstance(v, np.ndarray):
        return torch.from_numpy(v)
    raise SpecError(f"--data: {source} holds a {type(v).__name__} where a tensor or array was expected")


def _example(item: Any, source: str) -> Batch:
    if not (isinstance(item, (tuple, list)) and len(item) == 2):
        raise SpecError(f"--data: {source} items must be (input, target) pairs, got a {type(item).__name__}")
    return torch.as_tensor(item[0]), torch.as_tensor(item[1])


def _concat(pairs: list[Batch], source: str, limit: int) -> Batch:
    """Batches -> one pair, their shapes checked to agree (the first disagreeing example is named)."""
    try:
        x, y = _data.examples(pairs, f"--data: {source}")
    except (TypeError, ValueError) as e:
        raise SpecError(str(e)) from e
    return x[:limit], y[:limit]


def _collect(obj: Any, source: str, limit: int) -> Batch:
    """Materialise a pair, a Dataset (indexable, sized) or an iterable of batches into two tensors."""
    if isinstance(obj, (tuple, list)) and len(obj) == 2 and all(isinstance(v, (torch.Tensor, np.ndarray)) for v in obj):
        x, y = _pair(obj, source)
        return x[:limit], y[:limit]
    if isinstance(obj, torch.utils.data.Dataset) and hasattr(obj, "__len__"):
        items = [obj[i] for i in range(min(len(obj), limit))]
        if not items:
            raise SpecError(f"--data: {source} returned an empty dataset")
        return _concat([tuple(t[None] for t in _example(item, source)) for item in items], source, limit)
    if isinstance(obj, Iterable):
        pairs, n = [], 0
        for batch in obj:
            pairs.append(_pair(batch, source))
            n += len(pairs[-1][0])
            if n >= limit:
                break
        if not pairs:
            raise SpecError(f"--data: {source} yielded no batches")
        return _concat(pairs, source, limit)
    raise SpecError(f"--data: {source} returned a {type(obj).__name__}; expected an (inputs, targets) pair, "
                    "a Dataset or a DataLoader")


def load_data(spec: str, limit: int = 4096) -> Batch:
    """The examples a data spec names, as (inputs, targets) tensors with matching first dims."""
    if spec in zoo.DATASETS and spec != "synthetic":
        x, y = zoo.DATASETS[spec]()
    elif spec.startswith("synthetic:"):
        parts = spec.split(":")
        if len(parts) not in (3, 4):
            raise SpecError(f"--data: {spec!r} must be synthetic:SHAPE:CLASSES[:N], e.g. synthetic:3x32x32:10")
        shape = _parse_shape(parts[1])
        classes = _positive_int(parts[2], "CLASSES")
        n = _positive_int(parts[3], "N") if len(parts) == 4 else SYNTHETIC_N
        x, y = zoo.synthetic(n, shape, classes)
    elif spec.endswith((".pt", ".pth")):
        x, y = _pair(read_torch_file(spec, "--data"), repr(spec))
    elif spec.endswith(".npz"):
        try:
            with np.load(existing_file(spec, "--data"), allow_pickle=False) as npz:
                x, y = _pair(npz, repr(spec))
        except (OSError, ValueError) as e:
            raise SpecError(f"--data: cannot read {spec!r} as .npz ({one_line(e)})") from e
    elif ":" in spec:
        fn = load_object(spec, "--data")
        if not callable(fn):
            raise SpecError(f"--data: {spec!r} is a {type(fn).__name__}, not a callable")
        try:
            obj = fn()
        except Exception as e:
            raise SpecError(f"--data: {spec!r} raised {one_line(e)}") from e
        x, y = _collect(obj, repr(spec), limit)
    else:
        raise SpecError(f"--data: unknown data {spec!r}; allowed: digits, mnist5k, synthetic:SHAPE:CLASSES[:N], "
                        "a .pt/.npz file, package.module:fn or path/to/file.py:fn")
    if x.dim() == 0 or y.dim() == 0 or len(x) != len(y):
        raise SpecError(f"--data: inputs {tuple(x.shape)} and targets {tuple(y.shape)} must share their first dim")
    if len(x) == 0:
        raise SpecError(f"--data: {spec!r} holds no examples")
    if x.dtype in (torch.float64, torch.float16, torch.bfloat16):
        x = x.float()
    return x[:limit], y[:limit]
