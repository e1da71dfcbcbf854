"""Model outputs: the tensor a loss sees, from whatever a model's forward returns.

A tensor passes through. From a tuple/list, a dict or a transformers
``ModelOutput`` (a dict whose non-None values also index as a tuple) one entry is
selected by ``key``: a name (``"logits"``) or an index (``0``). The default
(``key=None``) is ``logits`` when present, else the first tensor. The command
line's ``--output KEY|INDEX`` is this key.
"""

from __future__ import annotations

from typing import Any, Mapping

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

Key = str | int | None
DEFAULT = "logits"


class OutputError(ValueError):
    """A model output that no tensor can be selected from; the message names what is available."""


def parse_key(text: str | None) -> Key:
    """``--output`` text -> key: digits are an index, anything else a name; None/empty: the default."""
    if text is None or text == "":
        return None
    return int(text) if text.lstrip("-").isdigit() else text


def _shape(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        return "tensor " + ("x".join(map(str, value.shape)) or "scalar")
    return "None" if value is None else type(value).__name__


def describe(out: Any) -> str:
    """One line: the output's type and, for containers, each entry's name or index and shape."""
    if isinstance(out, Mapping):
        return f"{type(out).__name__} with keys " + ", ".join(f"{k!r} ({_shape(v)})" for k, v in out.items())
    if isinstance(out, (tuple, list)):
        return f"{type(out).__name__} of {len(out)}: " + ", ".join(f"{i} ({_shape(v)})" for i, v in enumerate(out))
    return _shape(out)


def _entries(out: Any) -> list[tuple[Any, Any]]:
    """(key, value) pairs; a mapping also answers to the index of its non-None values."""
    if isinstance(out, Mapping):
        return [(k, v) for k, v in out.items() if v is not None]
    return list(enumerate(out))


def select(out: Any, key: Key = None) -> torch.Tensor:
    """The tensor of ``out`` a loss sees (see the module docstring)."""
    if isinstance(out, torch.Tensor):
        return out
    if not isinstance(out, (Mapping, tuple, list)):
        raise OutputError(f"model output is a {type(out).__name__}; expected a tensor, a tuple/list, a dict "
                          f"or a ModelOutput")
    entries = _entries(out)
    if key is None:
        if isinstance(out, Mapping) and isinstance(out.get(DEFAULT), torch.Tensor):
            return out[DEFAULT]
        found = [v for _, v in entries if isinstance(v, torch.Tensor)]
        if not found:
            raise OutputError(f"model output holds no tensor: {describe(out)}")
        return found[0]
    if isinstance(key, int) and not isinstance(key, bool):
        if not -len(entries) <= key < len(entries):
            raise OutputError(f"output index {key} is out of range for the model output, {describe(out)}; "
                              f"allowed indices: 0 to {len(entries) - 1}")
        value = entries[key][1]
    elif isinstance(key, str) and isinstance(out, Mapping):
        if key not in out:
            raise OutputError(f"output key {key!r} is not in the model output, {describe(out)}")
        value = out[key]
    else:
        raise OutputError(f"output key {key!r} cannot select from the model output, {describe(out)}; "
                          f"give an index 0 to {len(entries) - 1}")
    if not isinstance(value, torch.Tensor):
        raise OutputError(f"output {key!r} of the model is {_shape(value)}, not a tensor; the model output is "
                          f"{describe(out)}")
    return value


def take(out: Any, start: int, stop: int, n: int) -> Any:
    """Examples ``start:stop`` of a batch-``n`` model output of any structure: every tensor whose first
    dim is ``n`` is sliced, containers keep their type (a ModelOutput stays one), anything else is kept."""
    if isinstance(out, torch.Tensor):
        return out[start:stop] if out.dim() and out.shape[0] == n else out
    if isinstance(out, Mapping):
        sliced = {k: take(v, start, stop, n) for k, v in out.items()}
        return type(out)(**sliced) if type(out) is not dict else sliced
    if isinstance(out, (tuple, list)):
        sliced_items = [take(v, start, stop, n) for v in out]
        return type(out)(*sliced_items) if hasattr(out, "_fields") else type(out)(sliced_items)
    return out


def attach(model: nn.Module, key: Key = None) -> RemovableHandle:
    """Make ``model(...)`` return :func:`select` of its output (a forward hook; remove it with the handle)."""
    def hook(module: nn.Module, args: Any, out: Any) -> torch.Tensor:
        return select(out, key)

    return model.register_forward_hook(hook)


__all__ = ["Key", "OutputError", "parse_key", "describe", "select", "take", "attach"]
