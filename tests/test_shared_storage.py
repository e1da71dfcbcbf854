"""A tensor kept by several ops is freed only if every keeper drops it: the tuner's memory model reads the
ledger's keepers, so a plan never pays sketch bytes for an input that another exact op keeps anyway."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import radvar
from radvar import zoo
from radvar.memory import saved_bytes
from radvar.plan import Plan
from radvar.sketch import Subsample
from radvar.tradeoff.candidates import EXACT, candidates
from radvar.tradeoff.tune import tune

pytestmark = pytest.mark.usefixtures("one_thread")


class SquareSkip(nn.Module):
    """``lin``'s input h is also kept by the exact product h * h (which saves h for its backward)."""

    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Linear(32, 64)
        self.lin = nn.Linear(64, 64)
        self.act = nn.ReLU()  # its compact twin keeps a bit mask, not its output
        self.out = nn.Linear(64, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.inp(x)
        return self.out(self.act(self.lin(h) + h * h))


def _batch(shape: tuple[int, ...], classes: int) -> tuple[tuple[torch.Tensor], torch.Tensor]:
    gen = torch.Generator().manual_seed(4)
    return (torch.randn(*shape, generator=gen),), torch.randint(0, classes, (shape[0],), generator=gen)


def _measured(model: nn.Module, plan: Plan, batch) -> int:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", radvar.CoverageWarning)
        return saved_bytes(radvar.convert(model, plan), batch[0], F.cross_entropy, batch[1]).total


def _every_sketch_frees_bytes(model: nn.Module, plan: Plan, batch) -> None:
    """Measured: setting any one sketched layer of ``plan`` back to exact costs bytes (the sketch frees more
    than it keeps)."""
    measured = _measured(model, plan, batch)
    for name, sketch in plan.items():
        if sketch is not None:
            assert measured < _measured(model, Plan({**plan, name: None}), batch), name


def test_the_shared_input_is_fixed_and_the_layer_frees_nothing():
    model, batch = SquareSkip(), _batch((64, 32), 4)
    cands = candidates(model, batch, F.cross_entropy)
    h_bytes = 64 * 64 * 4
    assert cands.shared == {"lin": {"bytes": h_bytes, "kept_by": ["(top)"]}}
    exact = cands.table[cands.table["family"] == EXACT].set_index("layer")["bytes"]
    assert exact["lin"] == 0 and exact["inp"] == 64 * 32 * 4 and exact["out"] == 64 * 64 * 4
    assert cands.fixed + int(exact.sum()) == cands.exact_total == _measured(model, Plan({}), batch)
    # the premise, measured: sketching lin adds its sketch's bytes to what the all-exact model keeps
    assert _measured(model, Plan({"lin": Subsample(0.1)}), batch) > cands.exact_total


@pytest.mark.parametrize("fraction", [0.45, 0.7])
def test_tune_never_sketches_an_input_another_op_keeps(fraction):
    model, batch = SquareSkip(), _batch((64, 32), 4)
    plan = tune(model, batch, F.cross_entropy, budget=fraction)
    assert plan["lin"] is None
    assert plan.provenance["shared_inputs"] == {"lin": {"bytes": 64 * 64 * 4, "kept_by": ["(top)"]}}
    assert plan["inp"] is not None and plan["out"] is not None
    assert _measured(model, plan, batch) <= plan.provenance["budget"]["bytes"]
    assert plan.provenance["measured_bytes"] <= plan.provenance["predicted_bytes"]
    _every_sketch_frees_bytes(model, plan, batch)


def _vit() -> nn.Module:
    return zoo.vit(image=16, patch=4, embed=16, depth=2, heads=2, classes=3)


def test_vit_attention_output_projection_is_not_randomized():
    """attn.proj's input is a view of the fused attention's output, which attention keeps."""
    model, batch = _vit(), _batch((8, 3, 16, 16), 3)
    cands = candidates(model, batch, F.cross_entropy)
    assert set(cands.shared) == {"blocks.0.attn.proj", "blocks.1.attn.proj"}
    assert all(v["kept_by"] == [name.rsplit(".", 1)[0]] for name, v in cands.shared.items())
    exact = cands.table[cands.table["family"] == EXACT].set_index("layer")["bytes"]
    assert cands.fixed + int(exact.sum()) == cands.exact_total
    plan = tune(model, batch, F.cross_entropy, budget=0.6)
    assert plan["blocks.0.attn.proj"] is None and plan["blocks.1.attn.proj"] is None
    assert sum(s is not None for s in plan.values()) >= 6
    assert _measured(model, plan, batch) <= plan.provenance["budget"]["bytes"]
    _every_sketch_frees_bytes(model, plan, batch)


def test_analyze_shows_no_layer_that_keeps_more_than_exact():
    """The report of the tuned plan: no randomized layer goes from 0 B exact to a sketch's bytes."""
    model, batch = _vit(), _batch((8, 3, 16, 16), 3)
    data = (batch[0][0], batch[1])
    plan = tune(model, batch, F.cross_entropy, budget=0.6)
    layers = radvar.report.analyze(model, data, F.cross_entropy, batch_size=8, plan=plan).per_layer
    sketched = layers[layers["sketch"] != "exact"]
    assert len(sketched) >= 6
    # a functional site whose tensors the ledger attributes to the module that made them shows 0 B both ways
    assert (sketched["bytes_plan"] <= sketched["bytes_exact"]).all(), sketched[["layer", "bytes_exact", "bytes_plan"]]
    assert (sketched["bytes_plan"] < sketched["bytes_exact"]).sum() >= 6


class Fork(nn.Module):
    """``a`` and ``b`` read the same input and nothing else keeps it: it is freed only if both are sketched."""

    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Linear(32, 64)
        self.a = nn.Linear(64, 32)
        self.b = nn.Linear(64, 32)
        self.act = nn.ReLU()
        self.out = nn.Linear(32, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.inp(x)
        return self.out(self.act(self.a(h) + self.b(h)))


def test_joint_input_is_one_unit_whose_front_is_the_brute_force_front():
    import itertools

    import numpy as np

    from radvar.tradeoff.solve import _nondominated

    model, batch = Fork(), _batch((64, 32), 4)
    cands = candidates(model, batch, F.cross_entropy)
    h_bytes = 64 * 64 * 4
    assert cands.joint == [(h_bytes, ("a", "b"))] and cands.shared == {}
    assert cands.units() == [["inp"], ["a", "b"], ["out"]]
    assert int(cands.uniform(None, 1.0)["bytes"].sum()) + cands.fixed == cands.exact_total
    groups = {n: g for n, g in cands.table.groupby("layer", sort=False)}
    a, b = groups["a"], groups["b"]
    combos = list(itertools.product(range(len(a)), range(len(b))))
    m = np.array([a["bytes"].iloc[i] + b["bytes"].iloc[j]
                  + h_bytes * (a["sketch"].iloc[i] is None or b["sketch"].iloc[j] is None) for i, j in combos])
    v = np.array([a["variance"].iloc[i] + b["variance"].iloc[j] for i, j in combos])
    keep = _nondominated(m, v)
    fm, fv = cands.options()[1]
    assert sorted(zip(fm.tolist(), fv.tolist())) == sorted(zip(m[keep].tolist(), v[keep].tolist()))


@pytest.mark.parametrize("fraction, sketched", [(0.5, True), (0.8, False)])
def test_tune_sketches_a_jointly_kept_input_in_all_its_readers_or_none(fraction, sketched):
    """At a tight budget freeing the shared input pays (both readers sketched); at a loose one neither is."""
    model, batch = Fork(), _batch((64, 32), 4)
    plan = tune(model, batch, F.cross_entropy, budget=fraction)
    assert (plan["a"] is not None) == (plan["b"] is not None) == sketched
    assert plan.provenance["joint_inputs"] == [{"bytes": 64 * 64 * 4, "kept_by": ["a", "b"]}]
    measured = _measured(model, plan, batch)
    assert measured <= plan.provenance["predicted_bytes"] and measured <= plan.provenance["budget"]["bytes"]
    _every_sketch_frees_bytes(model, plan, batch)
