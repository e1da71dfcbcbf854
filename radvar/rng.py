"""Random streams for RAD, isolated from torch's global RNG.

Contract:

* Every RAD draw comes from a ``torch.Generator`` seeded from a 64-bit key
  that :func:`next_key` hands out. The key is a Python ``int``: an op keeps it
  in its context and rebuilds the same generator in backward, so indices and
  projection matrices are regenerated, never stored. (Bulk uniforms on CPU,
  :func:`radvar.sketch.base.uniform`, come from a numpy PCG64 stream seeded
  by one draw of that generator: still a pure function of the key.)
* Keys are a pure function of (base seed, distributed rank, call counter).
  :func:`seed` sets the base seed and resets the counter, so the same program
  run twice on the same device draws bitwise the same sketches; each rank of a
  ``torch.distributed`` job gets its own stream.
* torch's global generator is never read or advanced: turning RAD on does not
  change the user's data order or dropout draws.
* Inside ``with radvar.exact():`` RAD layers compute exact gradients.
* Dropout inside RAD ops (attention) takes its mask's key from :func:`dropout_key`;
  :func:`same_dropout` makes several passes draw one set of masks, so a
  variance estimate compares a sketched pass with the exact pass given one
  dropout mask.
"""

from __future__ import annotations

import contextlib
import os
import threading
from typing import Iterator

import torch

_MASK64 = (1 << 64) - 1


def mix(z: int) -> int:
    """One step of splitmix64 (Steele, Lea, Flood 2014): a bijective 64-bit mixer."""
    z = (z + 0x9E3779B97F4A7C15) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return z ^ (z >> 31)


class _State(threading.local):
    def __init__(self) -> None:
        self.base = int.from_bytes(os.urandom(8), "little")
        self.counter = 0
        self.exact_depth = 0
        self.stream_of: tuple[int, int] | None = None  # (base, rank) that ``stream`` was mixed from
        self.stream = 0
        self.drops: tuple[list[int], list[int], int | None] | None = None  # (keys, [position], base)


_state = _State()


def seed(n: int) -> None:
    """Make RAD draws reproducible: set the base seed and restart the stream."""
    if isinstance(n, bool) or not isinstance(n, int):
        raise TypeError(f"radvar.seed: n must be an int, got {n!r} ({type(n).__name__})")
    _state.base = n & _MASK64
    _state.counter = 0


def get_state() -> dict[str, int]:
    """The calling thread's stream position (for checkpoints): base seed and call counter."""
    return {"base": _state.base, "counter": _state.counter}


def set_state(state: dict[str, int]) -> None:
    """Restore a position returned by :func:`get_state`."""
    _state.base, _state.counter = int(state["base"]) & _MASK64, int(state["counter"])


def _rank() -> int:
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank()
    return 0


def _stream(base: int, rank: int) -> int:
    return mix(base ^ mix(rank + 1))


def next_key() -> int:
    """A fresh 63-bit key for one RAD draw (one op call in forward)."""
    _state.counter += 1
    rank = _rank()
    if _state.stream_of != (_state.base, rank):
        _state.stream_of, _state.stream = (_state.base, rank), _stream(_state.base, rank)
    return mix(_state.stream ^ _state.counter) >> 1


def generator(key: int, device: torch.device | str) -> torch.Generator:
    """A generator on ``device`` seeded with ``key``; same key, same draws.

    torch's CPU generator (mt19937) uses only the low 32 bits of its seed, so
    on CPU the key is folded to 32 bits with its high half mixed in: keys that
    differ only above bit 31 still get different streams.
    """
    gen = torch.Generator(device=device)
    if gen.device.type == "cpu":
        key = mix(key) & 0xFFFFFFFF
    gen.manual_seed(key)
    return gen


def is_exact() -> bool:
    """True inside :func:`exact`."""
    return _state.exact_depth > 0


@contextlib.contextmanager
def exact() -> Iterator[None]:
    """Compute exact gradients in RAD layers (no sketching, full activations kept)."""
    _state.exact_depth += 1
    try:
        yield
    finally:
        _state.exact_depth -= 1


def dropout_key() -> int:
    """The key of one dropout mask a RAD op draws: :func:`next_key`, or inside :func:`same_dropout` the
    next key of its list."""
    if _state.drops is None:
        return next_key()
    keys, position, base = _state.drops
    if position[0] == len(keys):
        keys.append(next_key() if base is None else mix(base ^ (len(keys) + 1)) >> 1)
    position[0] += 1
    return keys[position[0] - 1]


def replays_dropout() -> bool:
    """True inside :func:`same_dropout`: RAD ops then draw their dropout masks from its keys even when exact."""
    return _state.drops is not None


def dropout_keys_drawn() -> list[int]:
    """The dropout keys the innermost :func:`same_dropout` block has handed out so far, in order."""
    if _state.drops is None:
        raise RuntimeError("radvar.rng.dropout_keys_drawn: only inside radvar.rng.same_dropout")
    return _state.drops[0][:_state.drops[1][0]]


@contextlib.contextmanager
def same_dropout(keys: list[int], base: int | None = None) -> Iterator[None]:
    """Inside, the i-th :func:`dropout_key` of the block is ``keys[i]``, and RAD ops with dropout use these keyed
    masks even when exact. When ``keys`` is shorter, the key appended is :func:`next_key`, or with ``base`` the
    key ``mix(base ^ (i + 1)) >> 1``. Blocks given one list that make the same calls draw the same masks."""
    previous, _state.drops = _state.drops, (keys, [0], base)
    try:
        yield
    finally:
        _state.drops = previous
