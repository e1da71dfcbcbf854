"""Checkpoints for :func:`radvar.train.fit`, written atomically.

A checkpoint holds what a resumed run needs to continue the same run: the
model's and optimizer's (and GradScaler's) state, the step and epoch counters,
the history so far, and radvar's RAD stream position (base seed, counter), so
a resumed run draws the same sketches an uninterrupted one would.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from .._atomic import atomic_path

FORMAT = "radvar.train.checkpoint"
VERSION = 1


def save(path: str | os.PathLike, state: dict[str, Any]) -> None:
    """``torch.save`` to a temp file in the same folder, then rename into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        torch.save({"format": FORMAT, "version": VERSION, **state}, tmp)


def load(path: str | os.PathLike) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save`; ValueError if it is not one."""
    state = torch.load(path, map_location="cpu", weights_only=False)
    if not isinstance(state, dict) or state.get("format") != FORMAT or state.get("version") != VERSION:
        raise ValueError(f"checkpoint {str(path)!r} is not a {FORMAT} version {VERSION} file")
    return state
