"""Large numpy work split over torch's intra-op threads.

radvar does some CPU work in numpy (bit packing, table decodes, raw random words) where numpy is
faster than torch on one thread; numpy itself uses one. :func:`run` cuts a range into one
contiguous part per thread (``torch.get_num_threads()``) and runs the parts on a shared pool,
so that at two or more threads this work scales like torch's own ops. The parts write disjoint
slices of one output and numpy releases the GIL in them, so the result is the same whatever
the thread count. Ranges under :data:`MIN_ITEMS` run inline.
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

import torch

MIN_ITEMS = 1 << 18
"""Smallest range split over threads: below it the hand-off costs more than the second thread saves."""

_LOCK = threading.Lock()
_POOL: dict[tuple[int, int], ThreadPoolExecutor] = {}


def _pool(threads: int) -> ThreadPoolExecutor:
    """The pool for ``threads``, one per process (a forked child has none of its parent's threads)."""
    key = (os.getpid(), threads)
    with _LOCK:
        if key not in _POOL:
            _POOL[key] = ThreadPoolExecutor(threads, thread_name_prefix="radvar")
        return _POOL[key]


def run(fn: Callable[[int, int], None], n: int, align: int = 1, min_items: int = MIN_ITEMS) -> None:
    """Call ``fn(start, stop)`` on contiguous parts covering ``range(n)`` (every start a multiple of
    ``align``): one part per torch thread when ``n >= min_items``, else one call."""
    threads = torch.get_num_threads()
    if threads < 2 or n < min_items or threading.current_thread().name.startswith("radvar"):
        fn(0, n)
        return
    step = -(-n // threads)
    step += -step % align
    bounds = [(start, min(n, start + step)) for start in range(0, n, step)]
    futures = [_pool(threads).submit(fn, *b) for b in bounds[1:]]
    fn(*bounds[0])
    for future in futures:
        future.result()
