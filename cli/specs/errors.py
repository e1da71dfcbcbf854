"""``SpecError``, and reading the user's files and code (``module:attr`` or ``file.py:attr``)."""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import pickle
import re
import sys
from pathlib import Path
from typing import Any

import torch


class SpecError(ValueError):
    """A command-line spec that cannot be used; the message is one line."""


def one_line(exc: BaseException) -> str:
    """``Type: first line of the message``."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")


def existing_file(path: str | Path, what: str) -> Path:
    """``path`` as a Path; names the option if there is no such file."""
    if not Path(path).is_file():
        raise SpecError(f"{what}: file {str(path)!r} does not exist")
    return Path(path)


def read_torch_file(path: str, what: str) -> Any:
    """``torch.load(path, weights_only=True)`` on CPU, with one-line errors."""
    existing_file(path, what)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        found = re.search(r"Unsupported global: GLOBAL [\w.]+", str(e))
        raise SpecError(f"{what}: {path!r} holds Python objects, not only tensors"
                        f"{f' ({found.group()})' if found else ''}; radvar reads tensors only (torch.load with "
                        f"weights_only=True) and never runs code from a file") from e
    except Exception as e:
        raise SpecError(f"{what}: cannot read {path!r} as a weights-only torch file ({one_line(e)})") from e


def _import_file(path: Path, what: str) -> Any:
    existing_file(path, what)
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
        raise SpecError(f"{what}: importing {str(path)!r} failed: {one_line(e)}") from e
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
            raise SpecError(f"{what}: cannot import module {source!r} ({one_line(e)})") from e
        except Exception as e:
            raise SpecError(f"{what}: importing module {source!r} failed: {one_line(e)}") from e
    obj: Any = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            public = sorted(n for n in dir(module) if not n.startswith("_"))[:12]
            raise SpecError(f"{what}: {source!r} has no attribute {attr!r}; it has {public}")
        obj = getattr(obj, part)
    return obj
