"""radvar.tune and the candidate curves: ledger-checked memory, optimality against uniform plans, errors."""

from __future__ import annotations

import importlib
import json

import pytest
import torch
import torch.nn.functional as F

import radvar
from radvar.memory import saved_bytes
from radvar.sketch import Importance, Subsample
from radvar.tradeoff import DEFAULT_FAMILIES, allocate, candidates, tune
from radvar.tradeoff.tune import measured_bytes

from .tradeoff_cases import small_digits_mlp

KEEPS = (0.1, 0.25, 0.5)


@pytest.fixture(scope="module")
def setup():
    model, (x, y), batch = small_digits_mlp(64)
    cands = candidates.candidates(model, batch, F.cross_entropy, DEFAULT_FAMILIES, KEEPS)
    return model, (x, y), batch, cands


def test_fixed_plus_exact_layers_is_the_exact_ledger_total(setup):
    model, _, batch, cands = setup
    exact = allocate.uniform(cands, None)
    assert exact.bytes == cands.exact_total
    assert cands.exact_total == saved_bytes(radvar.convert(model, None), batch[0], F.cross_entropy, batch[1]).total


@pytest.mark.parametrize("template", DEFAULT_FAMILIES, ids=lambda s: s.label())
def test_predicted_bytes_bound_the_ledger_after_convert(setup, template):
    """Subsample and Projection keep exactly what they promise; Importance at most its reservation."""
    model, _, batch, cands = setup
    for keep in KEEPS:
        alloc = allocate.uniform(cands, template, keep)
        measured = measured_bytes(model, alloc.plan(), batch, F.cross_entropy)
        if isinstance(template.at(keep), Importance):
            assert measured <= alloc.bytes
        else:
            assert measured == alloc.bytes


def test_tuned_plan_is_within_budget_and_never_worse_than_uniform(setup, tmp_path):
    model, data, batch, cands = setup
    uni = allocate.uniform(cands, Subsample(1.0), 0.25)
    plan = tune(model, data, F.cross_entropy, budget=uni.bytes, batch_size=64, families=DEFAULT_FAMILIES, keeps=KEEPS)
    prov = plan.provenance
    assert measured_bytes(model, plan, batch, F.cross_entropy) <= uni.bytes
    assert prov["measured_bytes"] <= prov["budget"]["bytes"] == uni.bytes
    assert prov["predicted_bytes"] <= uni.bytes
    for template in DEFAULT_FAMILIES:
        best = allocate.best_uniform(cands, template, uni.bytes, KEEPS)
        if best is not None:
            assert prov["predicted_rad_variance"] <= best.variance * (1 + 1e-12)
    path = tmp_path / "plan.json"
    plan.save(path)
    again = radvar.Plan.load(path)
    assert again == plan and again.provenance == json.loads(json.dumps(prov))
    assert prov["radvar_version"] == radvar.__version__ and prov["data"]["batch_size"] == 64
    radvar.convert(model, again)  # applies


def test_fraction_budget_and_variance_budget(setup):
    model, data, batch, cands = setup
    plan = tune(model, data, F.cross_entropy, budget=0.3, batch_size=64, families=DEFAULT_FAMILIES, keeps=KEEPS)
    assert plan.provenance["budget"]["bytes"] == int(0.3 * cands.exact_total)
    assert measured_bytes(model, plan, batch, F.cross_entropy) <= 0.3 * cands.exact_total
    vb = 0.5 * plan.provenance["predicted_rad_variance"]
    low = tune(model, data, F.cross_entropy, variance_budget=vb, batch_size=64, families=DEFAULT_FAMILIES, keeps=KEEPS)
    assert low.provenance["predicted_rad_variance"] <= vb
    assert low.provenance["predicted_bytes"] >= plan.provenance["predicted_bytes"]
    zero = tune(model, data, F.cross_entropy, variance_budget=0.0, batch_size=64, families=DEFAULT_FAMILIES, keeps=KEEPS)
    assert all(s is None for s in zero.values())


def test_budget_errors_name_the_smallest_feasible(setup):
    model, data, _, cands = setup
    smallest = cands.fixed + int(cands.table.groupby("layer")["bytes"].min().sum())
    kw = dict(batch_size=64, families=DEFAULT_FAMILIES, keeps=KEEPS)
    with pytest.raises(ValueError, match=f"smallest feasible budget is {smallest:,} bytes"):
        tune(model, data, F.cross_entropy, budget=smallest - 1, **kw)
    with pytest.raises(ValueError, match=f"smallest feasible budget is {smallest:,} bytes"):
        tune(model, data, F.cross_entropy, budget=cands.fixed // 2, **kw)
    for bad in (0, -100):
        with pytest.raises(ValueError, match=f"budget must be positive.*{smallest:,} bytes"):
            tune(model, data, F.cross_entropy, budget=bad, **kw)
    for bad in (0.0, 1.5):
        with pytest.raises(ValueError, match=r"must be in \(0, 1\].*smallest feasible budget"):
            tune(model, data, F.cross_entropy, budget=bad, **kw)
    with pytest.raises(ValueError, match="exactly one of budget"):
        tune(model, data, F.cross_entropy, budget=10**6, variance_budget=1.0, **kw)
    with pytest.raises(ValueError, match="exactly one of budget"):
        tune(model, data, F.cross_entropy, **kw)
    with pytest.raises(TypeError, match="budget must be an int"):
        tune(model, data, F.cross_entropy, budget="1MB", **kw)
    with pytest.raises(ValueError, match="batch_size must be an int in"):
        tune(model, data, F.cross_entropy, budget=0.5, batch_size=10**6, families=DEFAULT_FAMILIES, keeps=KEEPS)
    with pytest.raises(ValueError, match="keeps must be"):
        tune(model, data, F.cross_entropy, budget=0.5, batch_size=64, keeps=(0.0, 2.0))
    with pytest.raises(TypeError, match="families: every entry"):
        tune(model, data, F.cross_entropy, budget=0.5, batch_size=64, families=("subsample",))
    with pytest.raises(ValueError, match="solver must be one of"):
        tune(model, data, F.cross_entropy, budget=0.5, solver="greedy", **kw)


def test_relative_variance_budget_is_a_fraction_of_the_data_noise(setup):
    model, data, batch, _ = setup
    plan = tune(model, data, F.cross_entropy, variance_budget=0.1, relative=True, batch_size=64,
                families=DEFAULT_FAMILIES, keeps=KEEPS)
    prov = plan.provenance
    noise = radvar.variance.minibatch(model, data, F.cross_entropy, 64).total["data_variance"].iloc[0]
    assert prov["data_variance"] == pytest.approx(noise, rel=1e-12)
    assert prov["variance_budget"]["absolute"] == pytest.approx(0.1 * prov["data_variance"])
    assert prov["predicted_rad_variance"] <= prov["variance_budget"]["absolute"]
    with pytest.raises(ValueError, match="relative=True applies to variance_budget"):
        tune(model, data, F.cross_entropy, budget=0.5, relative=True, batch_size=64, families=DEFAULT_FAMILIES, keeps=KEEPS)


class _FirstToken(torch.nn.Module):
    """The head reads a strided view (first token) of a bigger activation: the ledger counts the whole
    storage the view keeps alive, the exact candidate only the view (like a BERT pooler)."""

    def __init__(self):
        super().__init__()
        self.embed, self.norm, self.head = torch.nn.Linear(8, 16), torch.nn.LayerNorm(16), torch.nn.Linear(16, 3)

    def forward(self, x):
        return self.head(self.norm(self.embed(x))[:, 0])


@pytest.fixture(scope="module")
def first_token():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(16, 12, 8, generator=g), torch.randint(0, 3, (16,), generator=g)
    torch.manual_seed(0)
    return _FirstToken(), (x, y)


@pytest.mark.parametrize("budget", [0.9, 0.8])
def test_retries_meet_the_budget_when_the_prediction_is_under_the_ledger(first_token, budget, monkeypatch):
    """The ledger sees more than the memory model predicts for sketched plans (simulated: a fixed excess on
    every measurement of a plan that sketches something): the first plan overshoots, the retries aim below
    the budget by the prediction error and end within it."""
    model, data = first_token
    tune_module = importlib.import_module("radvar.tradeoff.tune")
    real = tune_module.measured_bytes
    batch = ((data[0],), data[1])
    honest = tune(model, data, F.cross_entropy, budget=budget, families=[Subsample.family()], keeps=KEEPS).provenance
    exact = real(model, radvar.Plan.uniform(model, None), batch, F.cross_entropy)
    excess = honest["budget"]["bytes"] - honest["attempts"][0]["measured_bytes"] + exact // 20  # first plan: over
    monkeypatch.setattr(tune_module, "measured_bytes",
                        lambda m, plan, *a: real(m, plan, *a) + (excess if any(plan.values()) else 0))
    plan = tune(model, data, F.cross_entropy, budget=budget, families=[Subsample.family()], keeps=KEEPS)
    p = plan.provenance
    first = p["attempts"][0]
    assert first["measured_bytes"] > p["budget"]["bytes"] >= first["predicted_bytes"]  # the case guarded
    assert p["measured_bytes"] <= p["budget"]["bytes"]
    assert p["measured_bytes"] == real(model, plan, batch, F.cross_entropy) + excess


def test_unreachable_measured_budget_names_the_smallest_feasible(first_token, monkeypatch):
    model, data = first_token
    tune_module = importlib.import_module("radvar.tradeoff.tune")
    real = tune_module.measured_bytes
    monkeypatch.setattr(tune_module, "measured_bytes", lambda *a: real(*a) + 40_000)
    cheapest = real(model, radvar.Plan.uniform(model, Subsample(0.1)), ((data[0],), data[1]), F.cross_entropy)
    with pytest.raises(ValueError, match=rf"tune: the memory budget 29,322 bytes cannot be met as measured by the "
                                         rf"ledger; the smallest feasible budget is {cheapest + 40_000:,} bytes"):
        tune(model, data, F.cross_entropy, budget=0.9, families=[Subsample.family()], keeps=KEEPS)
