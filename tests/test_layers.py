"""Twins, convert() and Plan: exactness of compact twins, structure, validation, JSON."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import radvar
from radvar import Plan, zoo
from radvar.layers import RADConv2d, RADLinear
from radvar.sketch import Projection, Subsample

COMPACT = [
    (nn.ReLU(), (4, 3, 8, 8)),
    (nn.LeakyReLU(0.2), (4, 3, 8, 8)),
    (nn.AvgPool1d(3, 2, 1), (4, 3, 11)),
    (nn.AvgPool2d(3, 2, 1, ceil_mode=True, count_include_pad=False), (4, 3, 9, 7)),
    (nn.AvgPool2d(2, divisor_override=3), (4, 3, 8, 8)),
    (nn.AdaptiveAvgPool2d((3, 2)), (4, 3, 9, 7)),
    (nn.MaxPool2d(3, 2, 1, dilation=1, ceil_mode=True), (4, 3, 9, 7)),
    (nn.MaxPool2d(2, 1, 0, dilation=2), (4, 3, 8, 8)),
    (nn.Dropout(0.3), (4, 3, 8, 8)),
]


@pytest.mark.parametrize("module,shape", COMPACT, ids=lambda v: type(v).__name__ if isinstance(v, nn.Module) else "")
def test_compact_twins_are_exact_and_keep_less(module, shape):
    x = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    twin = radvar.convert(module, None)
    assert type(twin) is not type(module) and isinstance(twin, type(module))
    torch.manual_seed(5)
    y_ref = module(x)
    torch.manual_seed(5)
    y = twin(x)
    assert torch.equal(y, y_ref)
    gy = torch.randn_like(y)
    assert torch.equal(torch.autograd.grad(y, x, gy)[0], torch.autograd.grad(y_ref, x, gy)[0])
    plain = radvar.memory.saved_bytes(module, x).total
    compact = radvar.memory.saved_bytes(twin, x).total
    assert compact <= plain / 8


def test_convert_keeps_parameters_state_dict_and_original():
    model = zoo.cnn()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rad = radvar.convert(model, Subsample(0.1))
    assert isinstance(rad[0], RADConv2d) and isinstance(rad[-1], RADLinear)
    assert type(model[0]) is nn.Conv2d  # the original is untouched
    assert rad.state_dict().keys() == model.state_dict().keys()
    for k, v in rad.state_dict().items():
        assert torch.equal(v, before[k])
    same = radvar.convert(model, Subsample(0.1), inplace=True)
    assert same is model and isinstance(model[0], RADConv2d)


def test_user_subclasses_and_unplanned_modules_are_left_alone():
    class MyLinear(nn.Linear):
        def forward(self, x):
            return super().forward(x) * 2

    model = nn.Sequential(MyLinear(4, 4), nn.PReLU(4), nn.Linear(4, 2))
    rad = radvar.convert(model, Subsample(0.5))
    assert type(rad[0]) is MyLinear and type(rad[1]) is nn.PReLU and isinstance(rad[2], RADLinear)
    assert set(Plan.uniform(model, Subsample(0.5))) == {"2"}


def test_plan_validation_errors():
    model = zoo.mlp(in_features=8, hidden=6)
    with pytest.raises(ValueError, match=r"Plan names module '9', which the model does not have"):
        radvar.convert(model, Plan({"9": Subsample(0.1)}))
    with pytest.raises(TypeError, match=r"Plan entry '1' is a torch.nn.ReLU, which radvar cannot randomize; "
                       r"supported types: \[.*'torch.nn.Conv1d', .*'torch.nn.Linear'.*\]"):
        radvar.convert(model, Plan({"1": Subsample(0.1)}))
    with pytest.raises(ValueError, match=r"view 'positions' is not allowed; allowed: \[None, 'features', 'rows'\]"):
        radvar.convert(model, Plan({"0": Subsample(0.1, view="positions")}))
    with pytest.raises(TypeError, match="must be a radvar.sketch.Sketch or None"):
        Plan({"0": 0.1})
    with pytest.raises(TypeError, match="convert: plan must be a radvar.Plan, a radvar.sketch.Sketch or None"):
        radvar.convert(model, 0.1)


def test_plan_json_round_trip(tmp_path):
    model = zoo.mlp(in_features=8, hidden=6)
    plan = Plan({"0": Subsample(0.1), "2": Projection(0.3, dist="gaussian"), "4": None}, {"budget": 123})
    path = tmp_path / "plan.json"
    plan.save(path)
    loaded = Plan.load(path)
    assert loaded == plan and loaded.provenance == {"budget": 123}
    assert json.loads(path.read_text())["entries"]["4"] == "exact"
    rad = radvar.convert(model, loaded)
    assert rad[4].sketch is None and rad[2].sketch == Projection(0.3, dist="gaussian")
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({**plan.to_dict(), "version": 99}))
    with pytest.raises(ValueError, match="unsupported plan version 99"):
        Plan.load(bad)
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        Plan.load(bad)
    assert [p.name for p in tmp_path.iterdir()] and not any(p.name.startswith(".") for p in tmp_path.iterdir())


def test_extra_repr_names_the_sketch():
    rad = radvar.convert(zoo.mlp(8, 6), Subsample(0.1))
    assert "sketch=Subsample(0.1, shared)" in repr(rad)


def test_training_step_runs_end_to_end():
    x, y = zoo.digits()
    model = radvar.convert(zoo.mlp(in_features=64), Subsample(0.2))
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for i in range(60):
        idx = slice(i * 25 % 1500, i * 25 % 1500 + 150)
        loss = F.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert sum(losses[-10:]) / 10 < 0.5 * sum(losses[:10]) / 10, losses


def test_atomic_write_leaves_nothing_when_the_writer_fails(tmp_path):
    from radvar._atomic import atomic_path

    target = tmp_path / "out.csv"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            open(tmp, "w").write("half")
            raise RuntimeError("writer failed")
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["out.csv"]


def test_every_randomized_twin_has_variance_statistics_on_every_view():
    """capture and minibatch find statistics for every randomized layer kind, one ViewStats per declared view
    (propagating kinds have none: their error is not confined to one weight gradient)."""
    from radvar.layers import kind_for, randomized_twins

    assert all(t.kind is None for t in randomized_twins() if t.propagates)
    twins = [t for t in randomized_twins() if not t.propagates]
    assert {t.__name__ for t in twins} >= {"RADLinear", "RADConv1d", "RADConv2d", "RADConv3d"}
    for twin in twins:
        if twin.propagates:  # activations, norms, attention: no closed-form weight statistics
            assert twin.views and twin.kind is None, twin
            continue
        assert twin.views and twin.kind is not None, twin
        assert callable(twin.kind.view_stats) and callable(twin.kind.per_example_sq_norms), twin
        assert twin.kind.views == twin.views


@pytest.mark.parametrize("module,x", [(nn.Linear(5, 3), (4, 5)), (nn.Conv2d(2, 3, 3, padding=1), (2, 2, 5, 5))],
                         ids=["linear", "conv2d"])
def test_statistics_cover_exactly_the_declared_views(module, x):
    from radvar.layers import kind_for

    x = torch.randn(x, dtype=torch.float64)
    module = module.double()
    g = torch.randn_like(module(x))
    kind = kind_for(module)
    stats = kind.view_stats(module, x, g, torch.Generator().manual_seed(0), 16, False)
    assert tuple(stats) == type(radvar.convert(module, Subsample(0.5))).views
    w, b = kind.per_example_sq_norms(module, x, g)
    assert w.shape == b.shape == (x.shape[0],)


def test_a_randomized_twin_without_statistics_or_with_unknown_views_is_refused():
    from radvar.layers import Twin, register

    class Lone(nn.Linear, Twin):
        randomized = True
        views = ("features",)

    with pytest.raises(TypeError, match="randomized twin Lone has no variance statistics"):
        register(nn.Linear)(Lone)

    class Odd(nn.Linear, Twin):
        randomized = True
        views = ("channels",)

    with pytest.raises(ValueError, match=r"Odd.views must be a non-empty tuple of view names"):
        register(nn.Linear, stats=object)(Odd)
    assert radvar.layers.twin_for(nn.Linear(2, 2)) is RADLinear  # neither registration took effect


def test_plan_coerce_reads_a_plan_a_sketch_or_none():
    model = zoo.cnn()
    plan = Plan.uniform(model, Subsample(0.1))
    assert Plan.coerce(model, plan) is plan
    assert Plan.coerce(model, Subsample(0.1)) == plan
    assert all(v is None for v in Plan.coerce(model, None).values()) and len(Plan.coerce(model, None)) == len(plan)
    with pytest.raises(TypeError, match=r"analytic: plan must be a radvar.Plan, a radvar.sketch.Sketch or None, "
                                        r"got float"):
        Plan.coerce(model, 0.1, "analytic")
    with pytest.raises(ValueError, match="Plan names module 'nope'"):
        Plan.coerce(model, Plan({"nope": None}))


@pytest.mark.parametrize("rows,n_in,n_out", [(3, 16, 12), (40, 6, 5)], ids=["gram", "entries"])
def test_linear_per_example_norms_on_sequences_match_each_examples_gradient(rows, n_in, n_out):
    """‖∂W_b‖² and ‖∂b_b‖² for inputs (B, T, n_in): through the T x T Gram matrices where T(n_in + n_out) <
    n_in·n_out, else through ∂W_b's entries; both equal the norms of Σ_t g_t x_tᵀ and Σ_t g_t."""
    from radvar.layers import kind_for

    module = nn.Linear(n_in, n_out).double()
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(4, rows, n_in, dtype=torch.float64, generator=gen)
    g = torch.randn(4, rows, n_out, dtype=torch.float64, generator=gen)
    w, b = kind_for(module).per_example_sq_norms(module, x, g)
    torch.testing.assert_close(w, torch.einsum("bto,bti->boi", g, x).square().sum((1, 2)), rtol=1e-12, atol=0)
    torch.testing.assert_close(b, g.sum(1).square().sum(1), rtol=1e-12, atol=0)
