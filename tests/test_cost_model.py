"""The step-time cost model (radvar.bench.cost) and the tuner's time budget (radvar.tradeoff.timebudget).

No timing is asserted: layer timings are replaced by deterministic fake tables.
"""

from __future__ import annotations

import itertools
import json
import math
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from radvar.bench import cost as cost_lib
from radvar.sketch import Importance, Projection, Subsample
from radvar.tradeoff import candidates as cand_lib
from radvar.tradeoff import tune
from radvar.tradeoff.allocate import allocate
from radvar.tradeoff.timebudget import check_max_slowdown, within_time

KEEPS = (0.1, 0.3, 0.6)


def fake_time(module, shape, dtype, sketch, reps=5, warmup=1):
    """Plain 1 ms; a sketch adds 10 ms · keep for Importance, 0.1 ms · keep otherwise; an exact compact twin
    (sketch None: a ReLU keeping its mask) 0.05 ms."""
    if sketch is None:
        return cost_lib.LayerTime(1e-3, 1.05e-3, 1.05)
    slope = 10e-3 if isinstance(sketch, Importance) else 0.1e-3
    return cost_lib.LayerTime(1e-3, 1e-3 + slope * sketch.keep, 1.0 + slope * sketch.keep / 1e-3)


class FakeCost(cost_lib.CostModel):
    """Extra seconds from :func:`fake_time` (through the real interpolation); a plain step of 10 ms."""

    def __init__(self):
        super().__init__(cost_lib.CostCache(None))

    def layer(self, module, shape, dtype, sketch):
        return fake_time(module, shape, dtype, sketch)

    def step_seconds(self, model, x, y, loss_fn, reps=5, warmup=1):
        return 10e-3


def test_cache_round_trip_measures_once_and_respects_umask(tmp_path, monkeypatch):
    calls = []  # measurements kept (a process's first timing is a discarded warm-up with reps=1)
    monkeypatch.setattr(cost_lib, "time_layer", lambda *a, **k: (a[4] > 1 and calls.append(a)) or fake_time(*a))
    path = tmp_path / "sub" / "cost.json"
    layer = nn.Linear(6, 4)
    old = os.umask(0o027)
    try:
        model = cost_lib.CostModel(cost_lib.CostCache(path))
        first = model.layer(layer, (8, 6), torch.float32, Subsample(0.1))
        model.save()
    finally:
        os.umask(old)
    assert len(calls) == 1 and path.stat().st_mode & 0o777 == 0o640
    doc = json.loads(path.read_text())
    assert doc["format"] == cost_lib.FORMAT and len(doc["entries"]) == 1
    again = cost_lib.CostModel(cost_lib.CostCache(path)).layer(layer, (8, 6), torch.float32, Subsample(0.1))
    assert again == first and len(calls) == 1  # read from the file, not measured
    other = cost_lib.CostModel(cost_lib.CostCache(path))
    other.layer(layer, (8, 6), torch.float32, Subsample(0.3))  # a new key: measured, merged with the file
    other.save()
    assert len(json.loads(path.read_text())["entries"]) == 2 and len(calls) == 2


@pytest.mark.parametrize("content", ['{"not": "ours"}', "plain text, not JSON", ""])
def test_a_file_radvar_did_not_write_is_never_overwritten(tmp_path, monkeypatch, content):
    monkeypatch.setattr(cost_lib, "time_layer", lambda *a, **k: fake_time(*a))
    path = tmp_path / "cost.json"
    path.write_text(content)
    with pytest.warns(RuntimeWarning, match="radvar did not write it"):
        model = cost_lib.CostModel(cost_lib.CostCache(path))
    model.layer(nn.Linear(3, 2), (4, 3), torch.float32, Subsample(0.5))
    model.save()
    assert path.read_text() == content


def test_default_cache_lives_under_radvar_cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("RADVAR_CACHE_DIR", str(tmp_path / "c"))
    monkeypatch.setattr(cost_lib, "time_layer", lambda *a, **k: fake_time(*a))
    model = cost_lib.CostModel()
    model.layer(nn.Linear(3, 2), (4, 3), torch.float32, Subsample(0.5))
    model.save()
    files = list((tmp_path / "c").iterdir())
    assert [f.name for f in files] == [f"cost-{cost_lib.machine_id(torch.device('cpu'))}.json"]


def test_extra_seconds_interpolates_between_timed_keeps():
    cm = FakeCost()
    calls = [((8, 6), torch.float32), ((8, 6), torch.float32)]  # two calls per step
    layer = nn.Linear(6, 4)
    assert cm.extra_seconds(layer, calls, None) == 0.0
    assert cm.extra_seconds(layer, calls, Subsample(0.1)) == pytest.approx(2 * 0.1e-3 * 0.1)
    assert cm.extra_seconds(layer, calls, Importance(0.2)) == pytest.approx(2 * 10e-3 * 0.2)  # linear: exact
    assert cm.extra_seconds(layer, calls, Importance(0.95)) == pytest.approx(2 * 10e-3 * 0.9)  # clamped at 0.9


def _candidates():
    g = torch.Generator().manual_seed(0)
    model = nn.Sequential(nn.Linear(12, 10), nn.ReLU(), nn.Linear(10, 8), nn.ReLU(), nn.Linear(8, 3))
    x, y = torch.randn(40, 12, generator=g), torch.randint(0, 3, (40,), generator=g)
    fams = [Subsample.family(), Importance.family(), Projection.family()]
    return model, x, y, fams, cand_lib.candidates(model, ((x,), y), F.cross_entropy, fams, KEEPS)


def _fake_seconds(cands) -> np.ndarray:
    """Importance rows 10 ms · keep, other sketches 0.1 ms · keep, exact 0."""
    out = []
    for sk in cands.table["sketch"]:
        out.append(0.0 if sk is None else (10e-3 if isinstance(sk, Importance) else 0.1e-3) * sk.keep)
    return np.asarray(out)


def test_within_time_meets_both_budgets_and_matches_brute_force_when_loose():
    _, _, _, _, cands = _candidates()
    seconds = _fake_seconds(cands)
    budget = int(cands.fixed + cands.table.groupby("layer")["bytes"].min().sum() * 1.5)
    free = allocate(cands, budget)
    loose = within_time(cands, seconds, budget, time_budget=1.0)
    assert loose.multiplier == 0.0 and loose.allocation.variance == pytest.approx(free.variance)
    options = [g for _, g in cands.table.groupby("layer", sort=False)]
    best = math.inf
    for tight in (2e-3, 5e-4, 4e-5):
        got = within_time(cands, seconds, budget, time_budget=tight)
        assert got.allocation.bytes <= budget and got.seconds <= tight + 1e-15
        # the exhaustive optimum under both budgets bounds it from below
        opt = math.inf
        for combo in itertools.product(*(range(len(g)) for g in options)):
            rows = [g.iloc[i] for g, i in zip(options, combo)]
            idx = [g.index[i] for g, i in zip(options, combo)]
            if cands.fixed + sum(r["bytes"] for r in rows) <= budget and seconds[idx].sum() <= tight:
                opt = min(opt, sum(r["variance"] for r in rows))
        assert opt <= got.allocation.variance * (1 + 1e-12) and math.isfinite(opt)
        assert got.allocation.variance >= free.variance * (1 - 1e-12)
        best = min(best, got.allocation.variance)
    assert not any(isinstance(s, Importance) for s in
                   within_time(cands, seconds, budget, time_budget=4e-5).allocation.per_layer["sketch"])


def test_within_time_names_an_impossible_time_budget():
    _, _, _, _, cands = _candidates()
    seconds = _fake_seconds(cands) + np.where(cands.table["sketch"].isna(), 0.0, 1.0)  # every sketch +1 s
    smallest = int(cands.fixed + cands.table.groupby("layer")["bytes"].min().sum())
    with pytest.raises(ValueError, match="time budget cannot be met within the memory budget"):
        within_time(cands, seconds, smallest, time_budget=0.5)


def test_tune_with_max_slowdown_records_and_meets_the_prediction():
    model, x, y, fams, cands = _candidates()
    kw = dict(batch_size=40, families=fams, keeps=KEEPS, stats=cands.capture)
    free = tune(model, (x, y), F.cross_entropy, budget=0.6, **kw)
    timed = tune(model, (x, y), F.cross_entropy, budget=0.6, max_slowdown=1.05, cost=FakeCost(), **kw)
    step = timed.provenance["step_time"]
    assert free.provenance["step_time"] is None
    assert step["max_slowdown"] == 1.05 and step["plain_step_seconds"] == 10e-3
    assert step["predicted_slowdown"] <= 1.05 + 1e-12
    assert timed.provenance["measured_bytes"] <= timed.provenance["budget"]["bytes"]
    assert timed.provenance["predicted_rad_variance"] >= free.provenance["predicted_rad_variance"] * (1 - 1e-12)


class SlowerThanPredicted(FakeCost):
    """A converted model steps at the plain 10 ms plus ``factor`` times the extra seconds that the fake
    layer table predicts for its sketches (one call per layer): the cost model under-predicts."""

    def __init__(self, factor):
        super().__init__()
        self.factor = factor

    def step_seconds(self, model, x, y, loss_fn, reps=5, warmup=1):
        sketches = [m.sketch for m in model.modules() if getattr(m, "sketch", None) is not None]
        extra = sum((10e-3 if isinstance(sk, Importance) else 0.1e-3) * sk.keep for sk in sketches)
        return 10e-3 + self.factor * extra


def test_tune_with_max_slowdown_solves_again_until_the_measured_step_meets_it():
    model, x, y, fams, cands = _candidates()
    kw = dict(batch_size=40, families=fams, keeps=KEEPS, stats=cands.capture)
    timed = tune(model, (x, y), F.cross_entropy, budget=0.6, max_slowdown=1.05, cost=SlowerThanPredicted(10.0), **kw)
    tries = timed.provenance["step_time"]["measured"]
    assert tries[0]["measured_slowdown"] > 1.05 >= tries[-1]["measured_slowdown"]
    assert timed.provenance["step_time"]["measured_slowdown"] == tries[-1]["measured_slowdown"]
    assert timed.provenance["measured_bytes"] <= timed.provenance["budget"]["bytes"]


def test_tune_names_a_time_budget_no_measured_plan_meets():
    model, x, y, fams, cands = _candidates()
    kw = dict(batch_size=40, families=fams, keeps=KEEPS, stats=cands.capture)
    with pytest.raises(ValueError, match=r"1.05x the plain step cannot be met as measured .* measured [0-9.]+x"):
        tune(model, (x, y), F.cross_entropy, budget=0.6, max_slowdown=1.05, cost=SlowerThanPredicted(1e6), **kw)


@pytest.mark.parametrize("bad", [1.0, 0.5, -2.0, math.nan, math.inf, 0])
def test_bad_max_slowdown_values_are_named(bad):
    with pytest.raises(ValueError, match=r"max_slowdown must be a finite number > 1.*got"):
        check_max_slowdown(bad)


@pytest.mark.parametrize("bad", [True, "1.3", None])
def test_max_slowdown_must_be_a_number(bad):
    with pytest.raises(TypeError, match="max_slowdown must be a number > 1"):
        check_max_slowdown(bad)


def test_tune_rejects_max_slowdown_without_a_memory_budget():
    model, x, y, fams, _ = _candidates()
    with pytest.raises(ValueError, match="max_slowdown applies with a memory budget"):
        tune(model, (x, y), F.cross_entropy, variance_budget=1.0, max_slowdown=1.3)
    with pytest.raises(ValueError, match=r"max_slowdown must be a finite number > 1.*got 0.9"):
        tune(model, (x, y), F.cross_entropy, budget=0.5, max_slowdown=0.9)


def test_a_cache_only_model_never_measures(monkeypatch):
    monkeypatch.setattr(cost_lib, "time_layer", lambda *a, **k: pytest.fail("measured"))
    cm = cost_lib.CostModel(cost_lib.CostCache(None), measure=False)
    assert math.isnan(cm.extra_seconds(nn.Linear(3, 2), [((4, 3), torch.float32)], Subsample(0.5)))
    assert cm.extra_seconds(nn.Linear(3, 2), [((4, 3), torch.float32)], None) == 0.0


def test_timing_leaves_radvar_stream_and_grads_as_they_were(monkeypatch):
    import radvar
    layer = nn.Linear(5, 4)
    radvar.seed(11)
    before = radvar.rng.get_state()
    cost_lib.time_layer(layer, (6, 5), torch.float32, Subsample(0.5), reps=1, warmup=0)
    assert radvar.rng.get_state() == before
    model = nn.Sequential(nn.Linear(5, 3))
    marker = torch.ones_like(model[0].weight)
    model[0].weight.grad = marker
    cost_lib.CostModel(cost_lib.CostCache(None)).step_seconds(model, torch.randn(4, 5), torch.tensor([0, 1, 2, 0]),
                                                              F.cross_entropy, reps=1, warmup=0)
    assert model[0].weight.grad is marker and radvar.rng.get_state() == before


def test_a_stateless_module_is_timed_on_the_cpu(monkeypatch):
    monkeypatch.setattr(cost_lib, "time_layer", lambda *a, **k: fake_time(*a))
    cm = cost_lib.CostModel(cost_lib.CostCache(None))
    assert cm.extra_seconds(nn.ReLU(), [((4, 3), torch.float32)], Subsample(0.5)) == pytest.approx(0.1e-3 * 0.5)


def test_machine_id_changes_with_radvars_compiled_kernels(monkeypatch):
    """Layer timings cached with one build of the kernels (or none) are not read back with another."""
    from radvar import _native

    cpu = torch.device("cpu")
    with_kernels = cost_lib.machine_id(cpu)
    monkeypatch.setattr(_native, "_BUILD", "none" if _native.build_id() != "none" else "0123456789ab")
    assert cost_lib.machine_id(cpu) != with_kernels


def test_a_sketched_linear_after_a_relu_is_charged_the_relus_mask():
    """option_seconds: a Linear that follows a ReLU in a Sequential pays the compact ReLU's extra time when
    sketched (its ReLU keeps a mask then, and runs as torch.relu while the Linear is exact); the first one,
    after no ReLU, does not."""
    from radvar.tradeoff.timebudget import option_seconds

    model, x, _, _, cands = _candidates()
    cost = FakeCost()
    got = option_seconds(cands, model, x, cost)
    modules = dict(model.named_modules())
    calls = [((40, 10), torch.float32)]
    for i, (layer, sketch) in enumerate(zip(cands.table["layer"], cands.table["sketch"])):
        if sketch is None:
            assert got[i] == 0.0
            continue
        shapes = cost_lib.input_shapes(model, x)[layer]
        want = cost.extra_seconds(modules[layer], shapes, sketch) + (0.05e-3 if layer != "0" else 0.0)
        assert got[i] == pytest.approx(want, rel=1e-12), (layer, sketch)
    assert cost.compact_seconds(nn.ReLU(), calls) == pytest.approx(0.05e-3)
    assert cost.compact_seconds(nn.Identity(), calls) == 0.0  # no compact twin


class SlowConversion(FakeCost):
    """The converted model, even all exact, steps at 12 ms against the plain 10 ms."""

    def step_seconds(self, model, x, y, loss_fn, reps=5, warmup=1):
        return 10e-3 if type(model) is nn.Sequential else 12e-3


def test_tune_counts_what_the_all_exact_conversion_adds_to_the_step():
    model, x, y, fams, cands = _candidates()
    kw = dict(batch_size=40, families=fams, keeps=KEEPS, stats=cands.capture)
    timed = tune(model, (x, y), F.cross_entropy, budget=0.6, max_slowdown=1.3, cost=SlowConversion(), **kw)
    step = timed.provenance["step_time"]
    assert step["fixed_extra_seconds"] == pytest.approx(2e-3)
    assert 1.2 <= step["predicted_slowdown"] <= 1.3 + 1e-12
    with pytest.raises(ValueError, match=r"every layer exact .* already steps at 1.20x plain; raise max_slowdown"):
        tune(model, (x, y), F.cross_entropy, budget=0.6, max_slowdown=1.15, cost=SlowConversion(), **kw)


def test_a_plans_predicted_extra_time_counts_its_layers_and_the_relu_masks_they_bring():
    from radvar import Plan
    from radvar.tradeoff.timebudget import plan_extra_seconds

    model, x, _, _, _ = _candidates()
    cost = FakeCost()
    plan = Plan({"0": Subsample(0.3), "2": Subsample(0.3), "4": None})
    shapes, modules = cost_lib.input_shapes(model, x), dict(model.named_modules())
    want = sum(cost.extra_seconds(modules[n], shapes[n], Subsample(0.3)) for n in ("0", "2")) + 0.05e-3
    assert plan_extra_seconds(model, x, plan, cost) == pytest.approx(want, rel=1e-12)
    unmeasured = cost_lib.CostModel(cost_lib.CostCache(None), measure=False)  # nothing cached: not predicted
    assert math.isnan(plan_extra_seconds(model, x, plan, unmeasured))
