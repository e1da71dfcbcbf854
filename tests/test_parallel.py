"""Large numpy work split over threads (radvar._parallel) gives the same results at any thread count."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from radvar import _bits, _parallel, rng
from radvar.sketch.base import coins, uniform


@pytest.fixture
def threads():
    """Run a body at several torch thread counts, restoring the count after."""
    before = torch.get_num_threads()
    yield lambda n: torch.set_num_threads(n)
    torch.set_num_threads(before)


def test_run_covers_the_range_in_aligned_parts(threads):
    threads(3)
    parts: list[tuple[int, int]] = []
    _parallel.run(lambda a, b: parts.append((a, b)), 1000, align=8, min_items=10)
    parts.sort()
    assert len(parts) == 3 and parts[0][0] == 0 and parts[-1][1] == 1000
    assert all(a % 8 == 0 for a, _ in parts) and all(b == a2 for (_, b), (a2, _) in zip(parts, parts[1:]))
    parts.clear()
    _parallel.run(lambda a, b: parts.append((a, b)), 1000, min_items=2000)  # small: one inline call
    assert parts == [(0, 1000)]


def test_bits_and_draws_are_the_same_at_any_thread_count(threads):
    shape = (700, 1001)  # above MIN_ITEMS, and not a multiple of 8 or 2
    assert shape[0] * shape[1] > _parallel.MIN_ITEMS
    mask = torch.from_numpy(np.random.default_rng(0).random(shape) < 0.3)
    results = []
    for n in (1, 2, 3):
        threads(n)
        packed = _bits.pack(mask)
        results.append([packed, _bits.unpack(packed, shape), _bits.select(packed, shape, 1.0, 0.5, torch.float32),
                        uniform(shape, rng.generator(1, "cpu"), torch.zeros(())),
                        uniform(shape, rng.generator(1, "cpu"), torch.zeros((), dtype=torch.float64)),
                        coins(shape, 0.2, rng.generator(1, "cpu"), torch.zeros(()))])
    assert torch.equal(results[0][0], torch.from_numpy(np.packbits(mask.numpy(), bitorder="little")))
    assert torch.equal(results[0][1], mask)
    for other in results[1:]:
        for a, b in zip(results[0], other):
            assert torch.equal(a, b)
