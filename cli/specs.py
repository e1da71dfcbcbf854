"""Command-line specs -> objects: models, data, losses, budgets, sketches, devices.

Every bad spec raises :class:`SpecError` (a ``ValueError``) whose message is one
line naming the spec, the value and what is allowed; ``cli.main`` prints it and
exits with status 2.

Model specs: a zoo name (``radvar zoo``), ``package.module:factory`` or
``path/to/file.py:factory``; the factory gets ``--model-arg key=value`` keyword
arguments (values parsed as Python literals, else kept as strings). A zoo
model without ``--model-arg`` is sized to the data (input features, channels,
image side, classes).

Data specs: a zoo dataset (``digits``, ``sequential_digits``), ``synthetic:SHAPE:CLASSES[:N]`` (``3x32x32``), a
``.pt``/``.npz`` file holding inputs and targets (keys ``inputs``/``targets``
or ``x``/``y``, or a 2-tuple in a ``.pt``), or ``module:fn``/``file.py:fn``
returning an ``(inputs, targets)`` pair, a ``Dataset`` or a ``DataLoader``.
At most ``limit`` examples are materialised.

Loss specs: ``cross_entropy``, ``mse`` (integer class targets are one-hot
encoded to the output's width) or ``module:fn``/``file.py:fn``.
"""

from __future__ import annotations

import ast
import dataclasses
import hashlib
import importlib
import importlib.util
import math
import re
import sys
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from radvar import zoo
from radvar.sketch import Sketch

Batch = tuple[torch.Tensor, torch.Tensor]
LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

SYNTHETIC_N = 1024
ZOO_DEFAULT_DATA = {"mlp": "digits", "cnn": "synthetic:3x32x32:10", "wide_mlp": "synthetic:2048:10",
                    "irnn": "sequential_digits"}
LOSSES = ("cross_entropy", "mse")
SKETCH_OPTIONS = ("shared", "per-example", "replace", "rademacher", "gaussian", "axis=NAME")
_UNITS = {"b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "kib": 2**10, "mib": 2**20, "gib": 2**30}


class SpecError(ValueError):
    """A command-line spec that cannot be used; the message is one line."""


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")


# ---- importing user code ----------------------------------------------------
def _import_file(path: Path, what: str) -> Any:
    if not path.is_file():
        raise SpecError(f"{what}: file {str(path)!r} does not exist")
    digest = hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:10]
    name = f"radvar_user_{path.stem}_{digest}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise SpecError(f"{what}: cannot import {str(path)!r} as a Python file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as e:
        del sys.modules[name]
        raise SpecError(f"{what}: importing {str(path)!r} failed: {_one_line(e)}") from e
    return module


def load_object(spec: str, what: str) -> Any:
    """The attribute named by ``module:attr`` or ``path/to/file.py:attr`` (dotted attrs allowed)."""
    source, sep, attr = spec.rpartition(":")
    if not sep or not source or not attr:
        raise SpecError(f"{what}: {spec!r} is not of the form package.module:name or path/to/file.py:name")
    if source.endswith(".py") or "/" in source or "\\" in source:
        module = _import_file(Path(source), what)
    else:
        try:
            module = importlib.import_module(source)
        except ImportError as e:
            raise SpecError(f"{what}: cannot import module {source!r} ({_one_line(e)})") from e
        except Exception as e:
            raise SpecError(f"{what}: importing module {source!r} failed: {_one_line(e)}") from e
    obj: Any = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            public = sorted(n for n in dir(module) if not n.startswith("_"))[:12]
            raise SpecError(f"{what}: {source!r} has no attribute {attr!r}; it has {public}")
        obj = getattr(obj, part)
    return obj


# ---- models -----------------------------------------------------------------
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
        raise SpecError(f"MODEL: factory {name!r} raised {_one_line(e)}") from e
    if not isinstance(model, nn.Module):
        raise SpecError(f"MODEL: factory {name!r} returned a {type(model).__name__}, not a torch.nn.Module")
    if weights is not None:
        load_weights(model, weights)
    return model


def load_weights(model: nn.Module, path: str) -> None:
    """Load a state_dict saved with ``torch.save`` (read with ``weights_only=True``)."""
    if not Path(path).is_file():
        raise SpecError(f"--weights: file {path!r} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise SpecError(f"--weights: cannot read {path!r} as a weights-only torch file ({_one_line(e)})") from e
    if not isinstance(state, dict):
        raise SpecError(f"--weights: {path!r} holds a {type(state).__name__}, not a state_dict")
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise SpecError(f"--weights: {path!r} does not match the model ({_one_line(e)})") from e


# ---- data -------------------------------------------------------------------
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


def _collect(obj: Any, source: str, limit: int) -> Batch:
    """Materialise a pair, a Dataset (indexable, sized) or an iterable of batches into two tensors."""
    if isinstance(obj, (tuple, list)) and len(obj) == 2 and all(isinstance(v, (torch.Tensor, np.ndarray)) for v in obj):
        x, y = _pair(obj, source)
        return x[:limit], y[:limit]
    if isinstance(obj, torch.utils.data.Dataset) and hasattr(obj, "__len__"):
        items = [obj[i] for i in range(min(len(obj), limit))]
        if not items:
            raise SpecError(f"--data: {source} returned an empty dataset")
        xs, ys = zip(*(_example(item, source) for item in items))
        return torch.stack(xs), torch.stack(ys)
    if isinstance(obj, Iterable):
        xs, ys, n = [], [], 0
        for batch in obj:
            x, y = _pair(batch, source)
            xs.append(x)
            ys.append(y)
            n += len(x)
            if n >= limit:
                break
        if not xs:
            raise SpecError(f"--data: {source} yielded no batches")
        return torch.cat(xs)[:limit], torch.cat(ys)[:limit]
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
        if not Path(spec).is_file():
            raise SpecError(f"--data: file {spec!r} does not exist")
        try:
            obj = torch.load(spec, map_location="cpu", weights_only=True)
        except Exception as e:
            raise SpecError(f"--data: cannot read {spec!r} as a weights-only torch file ({_one_line(e)})") from e
        x, y = _pair(obj, repr(spec))
    elif spec.endswith(".npz"):
        if not Path(spec).is_file():
            raise SpecError(f"--data: file {spec!r} does not exist")
        try:
            with np.load(spec, allow_pickle=False) as npz:
                x, y = _pair(npz, repr(spec))
        except (OSError, ValueError) as e:
            raise SpecError(f"--data: cannot read {spec!r} as .npz ({_one_line(e)})") from e
    elif ":" in spec:
        fn = load_object(spec, "--data")
        if not callable(fn):
            raise SpecError(f"--data: {spec!r} is a {type(fn).__name__}, not a callable")
        try:
            obj = fn()
        except Exception as e:
            raise SpecError(f"--data: {spec!r} raised {_one_line(e)}") from e
        x, y = _collect(obj, repr(spec), limit)
    else:
        raise SpecError(f"--data: unknown data {spec!r}; allowed: digits, synthetic:SHAPE:CLASSES[:N], "
                        "a .pt/.npz file, package.module:fn or path/to/file.py:fn")
    if x.dim() == 0 or y.dim() == 0 or len(x) != len(y):
        raise SpecError(f"--data: inputs {tuple(x.shape)} and targets {tuple(y.shape)} must share their first dim")
    if len(x) == 0:
        raise SpecError(f"--data: {spec!r} holds no examples")
    if x.dtype in (torch.float64, torch.float16, torch.bfloat16):
        x = x.float()
    return x[:limit], y[:limit]


# ---- losses -----------------------------------------------------------------
def _mse(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared error; integer class targets are one-hot encoded to the output width."""
    if not target.is_floating_point() and out.dim() == target.dim() + 1:
        target = F.one_hot(target, out.shape[-1])
    return F.mse_loss(out, target.to(out.dtype))


def load_loss(spec: str) -> LossFn:
    """``cross_entropy``, ``mse`` or a callable named by ``module:fn``/``file.py:fn``."""
    if spec == "cross_entropy":
        return F.cross_entropy
    if spec == "mse":
        return _mse
    if ":" in spec:
        fn = load_object(spec, "--loss")
        if not callable(fn):
            raise SpecError(f"--loss: {spec!r} is a {type(fn).__name__}, not a callable")
        return fn
    raise SpecError(f"--loss: unknown loss {spec!r}; allowed: {', '.join(LOSSES)}, package.module:fn or file.py:fn")


def check_fit(model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss_fn: LossFn) -> None:
    """Run the model and the loss on two examples; explain a mismatch in one line."""
    try:
        with torch.no_grad():
            out = model(x[:2])
    except Exception as e:
        raise SpecError(f"--data: inputs of shape {tuple(x.shape)} do not fit the model ({_one_line(e)})") from e
    try:
        loss = loss_fn(out, y[:2])
    except Exception as e:
        raise SpecError(f"--loss: the loss fails on model outputs {tuple(out.shape)} and targets "
                        f"{tuple(y.shape)} ({_one_line(e)})") from e
    if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
        shape = tuple(loss.shape) if isinstance(loss, torch.Tensor) else type(loss).__name__
        raise SpecError(f"--loss: the loss must return a scalar tensor, got {shape}")


# ---- budgets, sketches, devices ---------------------------------------------
@dataclasses.dataclass(frozen=True)
class Budget:
    """A memory budget: a fraction of the exact model's saved bytes, or absolute bytes."""

    fraction: float | None = None
    nbytes: int | None = None

    def resolve(self, exact_bytes: int) -> int:
        """Bytes allowed, given the bytes the exact model keeps."""
        return self.nbytes if self.nbytes is not None else int(self.fraction * exact_bytes)

    def __str__(self) -> str:
        return f"{self.fraction:g} of exact" if self.fraction is not None else f"{self.nbytes:,} bytes"


def parse_budget(text: str) -> Budget:
    """``F`` in (0, 1] (a fraction of exact saved bytes) or bytes: ``123456``, ``2MB``, ``1.5MiB``."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:e[+-]?\d+)?)\s*([kmg]i?b|b)?\s*", text.lower())
    if not m:
        raise SpecError(f"--budget: {text!r} is not a fraction in (0, 1] or a size like 2000000, 2MB, 1.5MiB")
    value, unit = float(m.group(1)), m.group(2)
    if unit is None and value <= 1:
        if value <= 0:
            raise SpecError(f"--budget: fraction {text!r} must be in (0, 1]")
        return Budget(fraction=value)
    nbytes = value * _UNITS[unit or "b"]
    if unit is None and not value.is_integer():
        raise SpecError(f"--budget: {text!r} is neither a fraction in (0, 1] nor a whole number of bytes")
    if nbytes < 1:
        raise SpecError(f"--budget: {text!r} is less than one byte")
    return Budget(nbytes=int(nbytes))


def parse_sketch(text: str) -> Sketch:
    """``KIND:KEEP[:OPTION...]``, KIND in radvar.sketch's catalogue, e.g. ``subsample:0.1:per-example``."""
    parts = text.split(":")
    kinds = sorted(Sketch.registry)
    if len(parts) < 2 or parts[0] not in Sketch.registry:
        raise SpecError(f"--sketch: {text!r} must be KIND:KEEP[:OPTION...] with KIND in {kinds}")
    try:
        keep = float(parts[1])
    except ValueError:
        raise SpecError(f"--sketch: keep {parts[1]!r} in {text!r} is not a number in (0, 1]") from None
    fields: dict[str, Any] = {"kind": parts[0], "keep": keep}
    for opt in parts[2:]:
        if opt in ("shared", "per-example"):
            fields["per_example"] = opt == "per-example"
        elif opt == "replace":
            fields["replace"] = True
        elif opt in ("rademacher", "gaussian"):
            fields["dist"] = opt
        elif opt.startswith("axis="):
            fields["axis"] = opt[5:]
        else:
            raise SpecError(f"--sketch: unknown option {opt!r} in {text!r}; allowed: {SKETCH_OPTIONS}")
    try:
        return Sketch.from_dict(fields)
    except (TypeError, ValueError) as e:
        raise SpecError(f"--sketch: {text!r}: {e}") from e


def resolve_device(text: str) -> torch.device:
    """``cpu``, ``cuda`` or ``auto`` (cuda when available)."""
    if text == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if text == "cuda" and not torch.cuda.is_available():
        raise SpecError("--device: 'cuda' was asked for but torch.cuda.is_available() is False; use cpu or auto")
    if text not in ("cpu", "cuda"):
        raise SpecError(f"--device: {text!r}; allowed: cpu, cuda, auto")
    return torch.device(text)
