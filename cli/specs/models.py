"""Model specs: a zoo name, ``package.module:factory`` or ``path/to/file.py:factory``.

The factory gets ``--model-arg key=value`` keyword arguments (values parsed as
Python literals, else kept as strings). A zoo model without ``--model-arg`` is
sized to the data (input features, channels, image side, classes).
"""

from __future__ import annotations

import ast
import math
from typing import Any, Iterable

import torch
from torch import nn

from radvar import zoo

from .data import Batch
from .errors import SpecError, load_object, one_line, read_torch_file

ZOO_DEFAULT_DATA = {"mlp": "digits", "cnn": "synthetic:3x32x32:10", "wide_mlp": "synthetic:2048:10",
                    "irnn": "sequential_digits"}


def parse_model_args(items: Iterable[str]) -> dict[str, Any]:
    """``key=value`` strings -> kwargs; values are Python literals when they parse, else strings."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.isidentifier():
            raise SpecError(f"--model-arg: {item!r} is not of the form key=value with key a Python identifier")
        try:
            out[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            out[key] = value
    return out


def _fit_zoo_kwargs(name: str, x: torch.Tensor, y: torch.Tensor) -> dict[str, Any]:
    """Size a zoo model to the data: features/channels/image side from x, classes from y."""
    classes = int(y.max()) + 1 if not y.is_floating_point() and y.numel() else 10
    if name == "mlp":
        return {"in_features": math.prod(x.shape[1:]), "classes": classes}
    if name == "cnn":
        if x.dim() != 4 or x.shape[2] != x.shape[3]:
            raise SpecError(f"model 'cnn' needs square images (N, C, H, H); the data has shape {tuple(x.shape)}")
        return {"in_channels": int(x.shape[1]), "image": int(x.shape[2]), "classes": classes}
    if name == "irnn":
        return {"input_size": int(x.shape[-1]), "classes": classes}
    return {"classes": classes}


def default_data(model_spec: str | None) -> str:
    """The data a model is analysed on when ``--data`` is not given."""
    return ZOO_DEFAULT_DATA.get(model_spec or "mlp", "digits")


def load_model(spec: str | None, model_args: Iterable[str] = (), weights: str | None = None,
               data: Batch | None = None) -> nn.Module:
    """Build the model a spec names (None: the paper MLP sized to the data), then load ``weights``."""
    kwargs = parse_model_args(model_args)
    name = spec or "mlp"
    if name in zoo.MODELS:
        if not kwargs and data is not None:
            kwargs = _fit_zoo_kwargs(name, *data)
        factory: Any = zoo.MODELS[name]
    elif ":" in name:
        factory = load_object(name, "MODEL")
        if not callable(factory):
            raise SpecError(f"MODEL: {name!r} is a {type(factory).__name__}, not a callable factory")
    else:
        raise SpecError(f"MODEL: unknown model {name!r}; allowed: a zoo name {sorted(zoo.MODELS)}, "
                        "package.module:factory or path/to/file.py:factory")
    try:
        model = factory(**kwargs)
    except Exception as e:
        raise SpecError(f"MODEL: factory {name!r} raised {one_line(e)}") from e
    if not isinstance(model, nn.Module):
        raise SpecError(f"MODEL: factory {name!r} returned a {type(model).__name__}, not a torch.nn.Module")
    if weights is not None:
        load_weights(model, weights)
    return model


def load_weights(model: nn.Module, path: str) -> None:
    """Load a state_dict saved with ``torch.save`` (read with ``weights_only=True``)."""
    state = read_torch_file(path, "--weights")
    if not isinstance(state, dict):
        raise SpecError(f"--weights: {path!r} holds a {type(state).__name__}, not a state_dict")
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        detail = " ".join(" ".join(str(e).splitlines()[1:]).split()) or one_line(e)  # the lines after the header
        raise SpecError(f"--weights: {path!r} does not match the model ({detail[:400]})") from e
