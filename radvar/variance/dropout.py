"""``dropout``: one set of dropout masks for every pass of a variance estimate.

RAD variance is the sketches' noise given the dropout masks M, E[‖Ĝ − G‖² | M]:
the exact pass and every sketched pass must draw the same masks. :func:`held`
takes, when entered, the state of torch's generators (``nn.Dropout``,
``F.dropout``, torch's attention dropout) and a base key of radvar's stream;
each pass inside ``same()`` (the context factory it yields) restarts torch's
generators from that state and draws radvar's dropout keys
(:func:`radvar.rng.same_dropout`: RAD attention, sketched or exact) from one
list derived from the base. Estimates entered at the same positions of both
streams (``torch.manual_seed(s); radvar.seed(s)``) condition on the same masks.
Nested, it yields the outer ``same``. torch's generators are restored on exit.
"""

from __future__ import annotations

import contextlib
import threading
from typing import Callable, ContextManager, Iterator, Sequence

import torch

from .. import rng

_active = threading.local()


@contextlib.contextmanager
def held(tensors: Sequence[object]) -> Iterator[Callable[[], ContextManager[None]]]:
    """Yield ``same``: each ``with same():`` block draws the dropout masks the first one drew (module docstring).
    The CUDA generators restored are those of the devices of ``tensors`` (others are ignored)."""
    outer = getattr(_active, "same", None)
    if outer is not None:
        yield outer
        return
    devices = sorted({t.device.index or 0 for t in tensors if isinstance(t, torch.Tensor) and t.device.type == "cuda"})
    keys: list[int] = []
    base = rng.next_key()
    with torch.random.fork_rng(devices=devices):
        cpu, cuda = torch.get_rng_state(), [torch.cuda.get_rng_state(d) for d in devices]

        @contextlib.contextmanager
        def same() -> Iterator[None]:
            torch.set_rng_state(cpu)
            for device, state in zip(devices, cuda):
                torch.cuda.set_rng_state(state, device)
            with rng.same_dropout(keys, base):
                yield

        _active.same = same
        try:
            yield same
        finally:
            _active.same = None
