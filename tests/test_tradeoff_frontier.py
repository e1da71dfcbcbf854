"""Frontier and batch-size co-optimisation: dominance, ledger-checked memory at other batch sizes."""

from __future__ import annotations

import numpy as np
import pytest
import torch.nn.functional as F

import radvar
from radvar.tradeoff import DEFAULT_FAMILIES, batch, candidates, frontier
from radvar.tradeoff.tune import measured_bytes

from .tradeoff_cases import small_digits_mlp

KEEPS = (0.1, 0.25, 0.5)
B = 64


@pytest.fixture(scope="module")
def setup():
    model, (x, y), fit = small_digits_mlp(B)
    cands = candidates.candidates(model, fit, F.cross_entropy, DEFAULT_FAMILIES, KEEPS)
    trace_sigma = float(radvar.variance.minibatch(model, (x, y), F.cross_entropy, B).total["trace_sigma"].iloc[0])
    return model, (x, y), cands, trace_sigma


def test_tuned_front_dominates_every_uniform_plan(setup):
    model, data, cands, ts = setup
    front = frontier.frontier(model, data, F.cross_entropy, cands, ts, small_batches=(8, 16), families=DEFAULT_FAMILIES)
    t = front.table
    tuned = t[t.curve == frontier.TUNED]
    assert np.all(np.diff(tuned.bytes) > 0) and np.all(np.diff(tuned.rad_variance) < 0)
    for r in t[t.curve.str.startswith("uniform")].itertuples():
        better = tuned[tuned.bytes <= r.bytes]
        assert not better.empty and better.rad_variance.min() <= r.rad_variance * (1 + 1e-12)
    small = t[t.curve == frontier.SMALL_BATCH].set_index("batch_size")
    x, y = data
    for b in (8, 16):
        assert small.loc[b, "bytes"] == measured_bytes(model, radvar.Plan({}), ((x[:b].clone(),), y[:b].clone()),
                                                       F.cross_entropy)
        assert small.loc[b, "total_variance"] == pytest.approx(ts / b)
    at = front.at(int(small.loc[16, "bytes"]))
    assert (at.bytes <= small.loc[16, "bytes"]).all()
    with pytest.raises(ValueError, match="trace_sigma must be a number >= 0"):
        frontier.frontier(model, data, F.cross_entropy, cands, -1.0)


def test_co_optimum_fits_the_ledger_at_its_batch_and_beats_the_exact_batch(setup):
    model, data, cands, ts = setup
    x, y = data
    budget = int(0.5 * cands.exact_total)
    sizes = (16, 32, 64, 96)
    co = batch.co_optimize(model, data, F.cross_entropy, budget, sizes, ts, fit_batch=B, families=DEFAULT_FAMILIES,
                           keeps=KEEPS, groups=8)
    assert list(co.table.batch_size) == list(sizes)
    best = co.best
    plan = co.allocation.plan()
    b = int(best.batch_size)
    measured = measured_bytes(model, plan, ((x[:b].clone(),), y[:b].clone()), F.cross_entropy)
    assert measured <= best.rad_bytes <= budget  # the batch-scaled memory model is a ledger bound
    exact = co.best_exact
    assert exact is not None and exact.exact_fits and exact.exact_bytes <= budget
    assert best.total_variance <= exact.data_variance  # the all-exact plan at that batch was a candidate
    assert "best exact batch that fits" in co.summary()
    with pytest.raises(ValueError, match="batch_sizes must be ints in"):
        batch.co_optimize(model, data, F.cross_entropy, budget, (0, 16), ts)
    with pytest.raises(ValueError, match="budget must be a positive int"):
        batch.co_optimize(model, data, F.cross_entropy, -1, sizes, ts)


def test_small_batches_start_at_two_on_a_train_mode_batchnorm():
    """A BatchNorm in training mode cannot run on one example: the smallest exact batch measured is 2."""
    import torch
    from torch import nn

    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(8, 6, generator=g), torch.randint(0, 3, (8,), generator=g)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 5), nn.BatchNorm1d(5), nn.ReLU(), nn.Linear(5, 3)).train()
    assert frontier.smallest_batch(model) == 2 and frontier.smallest_batch(model.eval()) == 1
    model.train()
    cands = candidates.candidates(model, (x, y), F.cross_entropy, DEFAULT_FAMILIES[:1], (0.5,))
    front = frontier.frontier(model, (x, y), F.cross_entropy, cands, 1.0, small_batches=(1, 2, 4),
                              families=DEFAULT_FAMILIES[:1])
    small = front.table[front.table.curve == frontier.SMALL_BATCH]
    assert list(small.batch_size) == [2, 4]
    assert small.bytes.iloc[0] == candidates.fixed_bytes(model, (x[:2].clone(),), F.cross_entropy, y[:2].clone())[1]
