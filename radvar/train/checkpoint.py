"""Checkpoints of :func:`radvar.train.fit`: a weights-only file, written atomically.

A checkpoint holds what a resumed run needs to continue the same run bitwise:

* ``model``, ``optimizer`` and ``scaler``: their ``state_dict()``s (tensors and
  plain containers);
* ``ranks``: for each rank, torch's global CPU generator state ``torch_rng``
  and, when CUDA is in use, every CUDA generator's state ``cuda_rng`` (uint8
  tensors), so dropout and any other draw from torch's global RNG continue
  where they were;
* ``meta``: one JSON string with the step/epoch/batch position, the data-order
  seed, radvar's RAD stream position (:func:`radvar.rng.get_state`), the
  saved-bytes ledger measured at the start, the history rows so far, each
  rank's logging window (per-step losses, times and peaks since the last row),
  the world size, and what the run must match on resume (model and optimizer
  class names, autocast dtype, batch size); for an adaptive run
  (``plan="auto"``) also ``auto``: the budget, the re-tune interval, the plan
  in force, the switches so far and the noise monitor's log and smoothing state.

Reading uses ``torch.load(weights_only=True)``: a file that holds anything but
tensors and plain containers (a pickled object, a payload) is refused with a
``ValueError`` before any of it is built, so loading never runs code.
"""

from __future__ import annotations

import json
import os
import re
import warnings
from pathlib import Path
from typing import Any

import torch

from .._atomic import atomic_path

FORMAT = "radvar.train.checkpoint"
VERSION = 2
META_KEYS = ("step", "epoch", "batch", "seed", "rng", "ledger", "rows", "windows", "world_size", "model_class",
             "optimizer_class", "amp", "batch_size")


def rng_states(device: torch.device) -> dict[str, Any]:
    """torch's global CPU generator state and, when CUDA is initialised, every CUDA generator's."""
    cuda = device.type == "cuda" or (torch.cuda.is_available() and torch.cuda.is_initialized())
    return {"torch_rng": torch.get_rng_state(), "cuda_rng": torch.cuda.get_rng_state_all() if cuda else []}


def set_rng_states(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_states` returned (CUDA states for the devices present)."""
    torch.set_rng_state(state["torch_rng"])
    if state["cuda_rng"] and torch.cuda.is_available():
        for i, s in enumerate(state["cuda_rng"][:torch.cuda.device_count()]):
            torch.cuda.set_rng_state(s, i)


def save(path: str | os.PathLike, *, model: dict[str, Any], optimizer: dict[str, Any],
         scaler: dict[str, Any] | None, ranks: list[dict[str, Any]], meta: dict[str, Any]) -> None:
    """Write a checkpoint to a temp file beside ``path``, then rename it into place."""
    missing = set(META_KEYS) - set(meta)
    if missing:
        raise ValueError(f"checkpoint.save: meta lacks {sorted(missing)}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {"format": FORMAT, "version": VERSION, "meta": json.dumps(meta), "model": model,
             "optimizer": optimizer, "scaler": scaler, "ranks": ranks}
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def _unreadable(path: Path, error: BaseException) -> ValueError:
    """A one-line ValueError for what ``torch.load(weights_only=True)`` raised on ``path``."""
    text = str(error)
    unsafe = re.search(r"Unsupported global: GLOBAL (\S+)", text)
    if unsafe:
        return ValueError(f"checkpoint {str(path)!r} holds Python objects, not only tensors and plain data "
                          f"({unsafe.group(1)}); refused: radvar loads checkpoints weights-only and never runs "
                          f"code from one")
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if "Weights only load failed" in text:
        after = text.split("WeightsUnpickler error:")[-1].strip().splitlines()
        detail = after[0].strip() if after else type(error).__name__
        return ValueError(f"checkpoint {str(path)!r} is not a readable {FORMAT} file: weights-only loading "
                          f"refused it ({detail}); nothing in it was run")
    first = lines[0] if lines else type(error).__name__
    return ValueError(f"checkpoint {str(path)!r} is not a readable {FORMAT} file (corrupt or truncated?): {first}")


def load(path: str | os.PathLike) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save`, weights-only; ``meta`` comes back parsed.

    ValueError naming the file if it is corrupt, truncated, holds pickled objects, or is not
    a version-``VERSION`` radvar checkpoint; OSError if it cannot be opened.
    """
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"checkpoint {str(path)!r} is a folder, not a file")
    with open(path, "rb") as f:  # OSError (missing, unreadable) propagates with the path in it
        try:
            with warnings.catch_warnings():  # torch warns about odd pickle protocols before refusing them
                warnings.simplefilter("ignore", UserWarning)
                state = torch.load(f, map_location="cpu", weights_only=True)
        except Exception as e:  # torch raises many types for bad bytes; all mean "not a checkpoint"
            raise _unreadable(path, e) from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise ValueError(f"checkpoint {str(path)!r} is not a {FORMAT} file")
    if state.get("version") != VERSION:
        raise ValueError(f"checkpoint {str(path)!r} is {FORMAT} version {state.get('version')!r}; this radvar "
                         f"reads version {VERSION} only")
    try:
        meta = json.loads(state["meta"])
        if not isinstance(meta, dict) or set(META_KEYS) - set(meta):
            raise ValueError("meta lacks fields")
        ranks = state["ranks"]
        if not (isinstance(state["model"], dict) and isinstance(state["optimizer"], dict) and isinstance(ranks, list)
                and len(ranks) == meta["world_size"] == len(meta["windows"])
                and all(isinstance(r["torch_rng"], torch.Tensor) and isinstance(r["cuda_rng"], list) for r in ranks)):
            raise ValueError("model, optimizer or per-rank entries have wrong types or counts")
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"checkpoint {str(path)!r} is damaged: {e}") from None
    return {**state, "meta": meta}
