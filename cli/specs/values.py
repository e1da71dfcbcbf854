"""Scalar specs: memory budgets, sketches, devices."""

from __future__ import annotations

import dataclasses
import math
import re
from fractions import Fraction
from typing import Any

import torch

from radvar.sketch import Sketch, families

from .errors import SpecError

_UNITS = {"b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "kib": 2**10, "mib": 2**20, "gib": 2**30}


@dataclasses.dataclass(frozen=True)
class Budget:
    """A memory budget: a fraction of the exact model's saved bytes, or absolute bytes."""

    fraction: float | None = None
    nbytes: int | None = None

    @property
    def value(self) -> float | int:
        """What :func:`radvar.tradeoff.tune` takes: a float fraction or int bytes."""
        return self.fraction if self.fraction is not None else self.nbytes

    def __str__(self) -> str:
        return f"{self.fraction:g} of exact" if self.fraction is not None else f"{self.nbytes:,} bytes"


def parse_budget(text: str) -> Budget:
    """``F`` in (0, 1] (a fraction of exact saved bytes) or bytes: ``123456``, ``2MB``, ``1.5MiB``."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:e[+-]?\d+)?)\s*([kmg]i?b|b)?\s*", text.lower())
    if not m:
        raise SpecError(f"--budget: {text!r} is not a fraction in (0, 1] or a size like 2000000, 2MB, 1.5MiB")
    value, unit = Fraction(m.group(1)), m.group(2)  # exact: 10**23 bytes stays 10**23, not float's rounding
    if unit is None and value <= 1:
        if value <= 0:
            raise SpecError(f"--budget: fraction {text!r} must be in (0, 1]")
        return Budget(fraction=float(value))
    nbytes = value * _UNITS[unit or "b"]
    if unit is None and value.denominator != 1:
        raise SpecError(f"--budget: {text!r} is neither a fraction in (0, 1] nor a whole number of bytes")
    if nbytes < 1:
        raise SpecError(f"--budget: {text!r} is less than one byte")
    return Budget(nbytes=int(nbytes))


def parse_max_slowdown(text: str) -> float:
    """``--max-slowdown``: a finite number > 1 (step time over the plain PyTorch step)."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value <= 1.0:
        raise SpecError(f"--max-slowdown: {text!r} must be a finite number > 1 (the plan's step time over the plain "
                        f"PyTorch step time, e.g. 1.3)")
    return value


def sketch_options(cls: type[Sketch]) -> dict[str, tuple[str, Any]]:
    """The bare ``--sketch`` options of a family, derived from its dataclass fields: ``shared``
    (per_example False), each bool field's name with ``-`` for ``_`` (True), and each value a field
    lists in ``metadata["choices"]``. Maps the option to (field, value)."""
    out: dict[str, tuple[str, Any]] = {"shared": ("per_example", False)}
    for f in dataclasses.fields(cls):
        if isinstance(f.default, bool):
            out[f.name.replace("_", "-")] = (f.name, True)
        for choice in f.metadata.get("choices", ()):
            out[str(choice)] = (f.name, choice)
    return out


def _field_value(cls: type[Sketch], name: str, text: str, spec: str) -> Any:
    """``NAME=VALUE``: VALUE read as the type of the field's default, or ``metadata["type"]`` (str when it
    defaults to None and names no type)."""
    field = {f.name: f for f in dataclasses.fields(cls) if f.name != "keep"}.get(name)
    if field is None:
        raise SpecError(f"--sketch: {cls.kind} has no field {name!r} in {spec!r}; fields: {sorted(_names(cls))}")
    default = field.metadata["type"](0) if "type" in field.metadata else field.default
    if isinstance(default, bool):
        if text.lower() not in ("true", "false"):
            raise SpecError(f"--sketch: {name}={text!r} in {spec!r} must be true or false")
        return text.lower() == "true"
    if isinstance(default, (int, float)):
        try:
            return type(default)(text)
        except ValueError:
            raise SpecError(f"--sketch: {name}={text!r} in {spec!r} is not a {type(default).__name__}") from None
    return text


def _names(cls: type[Sketch]) -> list[str]:
    return [f.name for f in dataclasses.fields(cls) if f.name != "keep"]


def parse_sketch(text: str) -> Sketch:
    """``KIND:KEEP[:OPTION...]``, KIND a registered family, e.g. ``subsample:0.1:per-example``
    (a family whose knob is another field reads that field there, e.g. ``quantize:2`` for bits).

    OPTION is one of the family's bare options (:func:`sketch_options`) or ``FIELD=VALUE``
    (``axis=NAME`` is read as the deprecated spelling of ``view=NAME``).
    """
    parts = text.split(":")
    kinds = families()
    if len(parts) < 2 or parts[0] not in kinds:
        raise SpecError(f"--sketch: {text!r} must be KIND:KEEP[:OPTION...] with KIND in {sorted(kinds)}")
    cls = kinds[parts[0]]
    if cls.leading == "keep":
        try:
            leading: Any = float(parts[1])
        except ValueError:
            raise SpecError(f"--sketch: keep {parts[1]!r} in {text!r} is not a number in (0, 1]") from None
    else:
        leading = _field_value(cls, cls.leading, parts[1], text)
    fields: dict[str, Any] = {"kind": parts[0], cls.leading: leading}
    bare = sketch_options(cls)
    for opt in parts[2:]:
        if opt in bare:
            name, value = bare[opt]
            fields[name] = value
        elif "=" in opt:
            name, value = opt.split("=", 1)
            name = "view" if name == "axis" else name
            fields[name] = _field_value(cls, name, value, text)
        else:
            allowed = [*bare, *(f"{n}=VALUE" for n in _names(cls))]
            raise SpecError(f"--sketch: unknown option {opt!r} in {text!r}; allowed for {parts[0]}: {allowed}")
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
