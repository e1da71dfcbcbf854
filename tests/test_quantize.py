"""Quantize: options, JSON, packing and saved bytes (by the ledger), unbiasedness and the closed-form variance."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import torch
from scipy.stats import binom
from torch import nn

import radvar
from radvar import _bits, _native, rng
from radvar.memory import saved_bytes
from radvar.sketch import Importance, Projection, Quantize, Sketch, Subsample
from radvar.variance.statistics import mean_ci

from .stats import assert_unbiased

BITS = (1, 2, 4, 8)


def _layer(kind: str) -> tuple[nn.Module, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    if kind == "linear2d":
        return nn.Linear(12, 5), torch.randn(7, 12, generator=g)
    if kind == "linear3d":
        return nn.Linear(8, 4), torch.randn(3, 5, 8, generator=g)
    if kind == "conv1d":
        return nn.Conv1d(4, 6, 3, padding=1), torch.randn(3, 4, 12, generator=g)
    return nn.Conv2d(4, 6, 3, stride=2, padding=1, groups=2), torch.randn(2, 4, 6, 6, generator=g)


def _view(kind: str, axis: str | None, x: torch.Tensor) -> torch.Tensor:
    """The 2-D view the op hands the sketch (see radvar.ops.linear / radvar.ops.conv)."""
    if kind.startswith("linear"):
        flat = x.reshape(-1, x.shape[-1])
        return flat.t() if axis == "rows" else flat
    return x.reshape(x.shape[0], -1) if axis == "examples" else x.reshape(x.shape[0] * x.shape[1], -1)


def _entry_variance(kind: str, sketch: Quantize, x: torch.Tensor) -> torch.Tensor:
    """Var(x̂) per entry of x (in x's layout)."""
    v = sketch.entry_variance(_view(kind, sketch.view, x))
    return v.t().reshape(x.shape) if kind.startswith("linear") and sketch.view == "rows" else v.reshape(x.shape)


def _weight_grad(module: nn.Module, x: torch.Tensor, gy: torch.Tensor) -> torch.Tensor:
    w, = torch.autograd.grad(module(x), module.weight, gy)
    return w


def _draws(module: nn.Module, x: torch.Tensor, gy: torch.Tensor, draws: int) -> torch.Tensor:
    return torch.stack([_weight_grad(module, x, gy) for _ in range(draws)])


# ---- options and serialisation ------------------------------------------------------------------------------

@pytest.mark.parametrize("bits", [0, 3, 16, -2, 2.0, True, "2", None])
def test_bad_bits_name_the_value_and_the_allowed_ones(bits):
    with pytest.raises(ValueError, match=re.escape(f"bits must be one of (1, 2, 4, 8), got {bits!r}")):
        Quantize(bits)


@pytest.mark.parametrize("group", [0, -4, 2.5, True, "8"])
def test_bad_group_names_the_value(group):
    with pytest.raises(ValueError, match=r"group must be a positive int .* or None .*, got"):
        Quantize(2, group=group)


def test_group_that_does_not_divide_the_features_is_refused_where_the_view_is_known():
    sketch = Quantize(2, group=5)
    msg = r"group=5 does not divide the 16 features of the view; allowed: a divisor of 16, or group=None"
    with pytest.raises(ValueError, match=msg):
        sketch.saved_bytes((3, 16))
    with pytest.raises(ValueError, match=msg):
        sketch.compress(torch.randn(3, 16), rng.generator(0, "cpu"))
    with pytest.raises(ValueError, match=msg):
        radvar.convert(nn.Linear(16, 2), sketch)(torch.randn(3, 16)).sum().backward()


def test_bad_view_and_json_fields():
    with pytest.raises(ValueError, match="view must be one of"):
        Quantize(2, view="channels")
    with pytest.raises(ValueError, match=r"bits must be one of \(1, 2, 4, 8\), got 3"):
        Sketch.from_dict({"kind": "quantize", "bits": 3})
    with pytest.raises(ValueError, match=r"unknown field\(s\) \['scale'\]"):
        Sketch.from_dict({"kind": "quantize", "bits": 2, "scale": 1})


@pytest.mark.parametrize("sketch", [Quantize(1), Quantize(2), Quantize(4, group=8), Quantize(8, view="rows")],
                         ids=repr)
def test_json_round_trip_and_plan_file(sketch, tmp_path):
    assert Sketch.from_dict(json.loads(json.dumps(sketch.to_dict()))) == sketch
    model = nn.Sequential(nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 2))
    plan = radvar.Plan.uniform(model, sketch)
    plan.save(tmp_path / "plan.json")
    assert radvar.Plan.load(tmp_path / "plan.json") == plan


def test_label_and_derived_fields():
    assert Quantize(2).label() == "Quantize(2 bits, per-row)"
    assert Quantize(1, group=64, view="rows").label() == "Quantize(1 bit, group=64, view=rows)"
    assert Quantize(8).keep == 0.25 and Quantize(2).per_example is True
    assert repr(Quantize(4, group=8)) == "Quantize(bits=4, group=8, view=None)"


# ---- packing, contract, bytes -------------------------------------------------------------------------------

@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("numel", [1, 3, 8, 13, 64, 1001])
def test_code_packing_round_trip(bits, numel):
    codes = torch.randint(0, 1 << bits, (numel,), generator=torch.Generator().manual_seed(numel), dtype=torch.uint8)
    packed = _bits.pack_codes(codes, bits)
    assert packed.dtype == torch.uint8 and packed.numel() == -(-numel * bits // 8)
    assert packed.untyped_storage().nbytes() == packed.numel()
    assert torch.equal(_bits.unpack_codes(packed, (numel,), bits, torch.float64), codes.double())


@pytest.mark.parametrize("bits", BITS)
def test_numpy_and_torch_decode_paths_agree(bits, monkeypatch):
    codes = torch.randint(0, 1 << bits, (5, 37), generator=torch.Generator().manual_seed(3), dtype=torch.uint8)
    fast = _bits.unpack_codes(_bits.pack_codes(codes, bits), codes.shape, bits, torch.float32)
    monkeypatch.setattr(_bits, "numpy_ok", lambda t: False)
    slow_packed = _bits.pack_codes(codes, bits)
    assert torch.equal(slow_packed, _bits.pack_codes(codes, bits))
    assert torch.equal(_bits.unpack_codes(slow_packed, codes.shape, bits, torch.float32), fast)


@pytest.mark.skipif(not _native.available(), reason="radvar's C kernels were not built (no C compiler at install)")
@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("shape, group", [((150, 784), None), ((7, 12), 4), ((3, 1000), 8), ((1, 1), None),
                                          ((5, 37), None), ((600, 3), 3)])
def test_compiled_kernel_gives_the_numpy_paths_codes(bits, shape, group, monkeypatch):
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(bits))
    x[0] = 0.5  # a constant row (step 0) is kept exactly by both
    sketch = Quantize(bits, group=group)
    gens = [rng.generator(key, "cpu") for key in (11, 12, 13)]
    compiled = sketch._round(x, gens)
    monkeypatch.setattr(_native, "available", lambda: False)
    reference = sketch._round(x, [rng.generator(key, "cpu") for key in (11, 12, 13)])
    for (codes, bounds), (want_codes, want_bounds) in zip(compiled, reference):
        assert codes.dtype == torch.uint8 and torch.equal(codes, want_codes)
        assert torch.equal(bounds, want_bounds)


def test_compiled_kernels_can_be_turned_off():
    code = "import radvar._native as n; print(n.available())"
    out = subprocess.run([sys.executable, "-c", code], env={**os.environ, "RADVAR_NO_KERNELS": "1"},
                         capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


@pytest.mark.parametrize("sketch", [Quantize(b, group=g) for b in BITS for g in (None, 4)], ids=repr)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_contract(sketch, dtype):
    x = torch.randn(9, 16, dtype=torch.float64).relu().to(dtype)
    saved, meta = sketch.compress(x, rng.generator(3, "cpu"))
    assert sum(t.numel() * t.element_size() for t in saved) == sketch.saved_bytes((9, 16), dtype)
    assert saved[1].dtype == dtype  # offsets and steps in the input dtype
    dense = sketch.restore(saved, meta, rng.generator(3, "cpu"))
    assert dense.dtype == dtype and dense.shape == x.shape
    again, _ = sketch.compress(x, rng.generator(3, "cpu"))
    assert all(torch.equal(a, b) for a, b in zip(saved, again))  # a key reproduces the draw
    groups = x.float().reshape(9, -1, sketch.group or 16)
    lo, hi = groups.amin(-1, keepdim=True), groups.amax(-1, keepdim=True)
    levels = (dense.float().reshape(groups.shape) - lo) / torch.where(hi > lo, (hi - lo) / sketch.levels, 1.0)
    tol = (4 * torch.finfo(torch.float32).eps if dtype != torch.bfloat16 else 0.05) * sketch.levels  # bf16 rounds x̂
    assert (levels - levels.round()).abs().max() < tol and levels.min() > -tol and levels.max() < sketch.levels + tol
    a, b = torch.randn(4, 9, dtype=dtype), torch.randn(16, 5, dtype=dtype)
    torch.testing.assert_close(sketch.left_matmul(a, saved, meta, rng.generator(3, "cpu")), a @ dense)
    torch.testing.assert_close(sketch.right_matmul(saved, meta, rng.generator(3, "cpu"), b), dense @ b)


def test_values_on_the_grid_and_constant_rows_are_kept_exactly():
    grid = torch.arange(16, dtype=torch.float64).repeat(3, 1) * 0.5 - 2.0  # 16 levels: exact at 4 bits
    sketch = Quantize(4)
    saved, meta = sketch.compress(grid, rng.generator(0, "cpu"))
    assert torch.equal(sketch.restore(saved, meta, None), grid)
    assert sketch.entry_variance(grid).abs().max() < 1e-20
    const = torch.full((4, 10), 3.25, dtype=torch.float64)
    for bits in BITS:
        q = Quantize(bits)
        assert torch.equal(q.restore(*q.compress(const, rng.generator(1, "cpu")), None), const)


@pytest.mark.parametrize("kind", ["linear3d", "conv2d"])
@pytest.mark.parametrize("sketch", [Quantize(1), Quantize(2), Quantize(4, group=2), Quantize(8, view="rows"),
                                    Quantize(2, view="examples")], ids=repr)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_ledger_measures_what_saved_bytes_promises(kind, sketch, dtype):
    if sketch.view == "rows" and kind != "linear3d" or sketch.view == "examples" and kind != "conv2d":
        pytest.skip("view not offered by this layer kind")
    module, x = _layer(kind)
    module, x = module.to(dtype), x.to(dtype)
    report = saved_bytes(radvar.convert(module, sketch), x)
    view = _view(kind, sketch.view, x)
    assert report.total == sketch.saved_bytes(tuple(view.shape), dtype)
    if sketch.group is None:
        assert report.total < saved_bytes(radvar.convert(module, None), x).total


# ---- randomness ---------------------------------------------------------------------------------------------

def test_reproducible_under_radvar_seed_and_global_rng_untouched():
    module, x = _layer("conv2d")
    rad = radvar.convert(module, Quantize(2))
    gy = torch.randn_like(module(x))
    state = torch.get_rng_state()
    radvar.seed(11)
    first = _weight_grad(rad, x, gy)
    second = _weight_grad(rad, x, gy)
    radvar.seed(11)
    assert torch.equal(_weight_grad(rad, x, gy), first)
    assert not torch.equal(first, second)
    assert torch.equal(torch.get_rng_state(), state)


# ---- unbiasedness and variance (float64) --------------------------------------------------------------------

@pytest.mark.parametrize("sketch", [Quantize(b, group=g) for b in BITS for g in (None, 3)], ids=repr)
def test_rounds_up_with_probability_equal_to_the_fraction(sketch):
    """Per entry the number of round-ups in D draws is Binomial(D, f) (exact two-sided test, Bonferroni
    over entries at 1e-4): then E[x̂] = lo + (⌊u⌋ + f)Δ = x. And Σ_e (x̂_e − x_e)² has mean
    Σ_e Δ²f(1 − f),
    inside its 99% t-interval over the draws."""
    x = torch.randn(6, 12, dtype=torch.float64)
    d = 400
    draws = torch.stack([sketch.restore(*sketch.compress(x, rng.generator(i, "cpu")), None) for i in range(d)])
    groups = x.reshape(6, -1, sketch.group or 12)
    lo, hi = groups.amin(-1, keepdim=True), groups.amax(-1, keepdim=True)
    u = ((groups - lo) / ((hi - lo) / sketch.levels)).reshape(x.shape)
    levels = ((draws.reshape(d, *groups.shape) - lo) / ((hi - lo) / sketch.levels)).reshape(d, *x.shape)
    ups = (levels - u.floor()).round()
    assert set(ups.unique().tolist()) <= {0.0, 1.0}
    count, f = ups.sum(0).flatten().numpy(), (u - u.floor()).flatten().numpy()
    p = np.minimum(1.0, 2 * np.minimum(binom.cdf(count, d, f), binom.sf(count - 1, d, f)))
    worst = p.argmin()
    assert p[worst] * p.size > 1e-4, f"entry {worst}: {count[worst]} round-ups in {d} draws at f={f[worst]}"
    sq = (draws - x).square().sum((1, 2))
    low, high = mean_ci(float(sq.mean()), float(sq.var()), d, 0.99)
    assert low <= float(sketch.entry_variance(x).sum()) <= high


LAYER_CASES = [("linear2d", None), ("linear3d", None), ("linear3d", "rows"), ("conv1d", None),
               ("conv2d", None), ("conv2d", "examples")]


@pytest.mark.parametrize("kind,axis", LAYER_CASES)
@pytest.mark.parametrize("bits", [1, 2, 4])
def test_weight_gradient_unbiased(kind, axis, bits):
    module, x = _layer(kind)
    module, x = module.double(), x.double()
    rad = radvar.convert(module, Quantize(bits, view=axis))
    gy = torch.randn_like(module(x))
    assert_unbiased(_draws(rad, x, gy, 200), _weight_grad(module, x, gy))


def _entry_weights(module: nn.Module, x: torch.Tensor, gy: torch.Tensor) -> torch.Tensor:
    """‖∂G/∂x_e‖² per entry e of x: the weight gradient G is linear in x (an exact Jacobian, independent
    of radvar)."""
    w = module.weight.detach()

    def grad_w(inp: torch.Tensor) -> torch.Tensor:
        wv = w.clone().requires_grad_()
        out = module._conv_forward(inp, wv, None) if isinstance(module, nn.modules.conv._ConvNd) \
            else torch.nn.functional.linear(inp, wv)
        return torch.autograd.grad(out, wv, gy, create_graph=True)[0]

    jac = torch.autograd.functional.jacobian(grad_w, x)  # (*W, *x)
    return jac.reshape(w.numel(), *x.shape).square().sum(0)


@pytest.mark.parametrize("kind,axis", LAYER_CASES)
@pytest.mark.parametrize("bits,grouped", [(1, False), (2, False), (4, True), (8, False)])
def test_weight_gradient_variance_closed_form_inside_monte_carlo_interval(kind, axis, bits, grouped):
    """E‖Ĝ − G‖² = Σ_e Var(x̂_e)·‖∂G/∂x_e‖² (independent entries) vs 500 draws, 99% t-interval."""
    module, x = _layer(kind)
    n = _view(kind, axis, x).shape[1]
    sketch = Quantize(bits, group=(n // 2 if n % 2 == 0 else n // 3) if grouped else None, view=axis)
    module, x = module.double(), x.double()
    gy = torch.randn_like(module(x))
    exact = _weight_grad(module, x, gy)
    predicted = float((_entry_variance(kind, sketch, x) * _entry_weights(module, x, gy)).sum())
    sq = (_draws(radvar.convert(module, sketch), x, gy, 500) - exact).square().flatten(1).sum(1)
    low, high = mean_ci(float(sq.mean()), float(sq.var()), len(sq), 0.99)
    assert low <= predicted <= high, (low, predicted, high)


# ---- the family: registry, tuner candidates, CLI, variance.analytic ------------------------------------------

def _parse(text: str):
    from cli.specs import parse_sketch
    return parse_sketch(text)


def test_registered_family_sweeps_bit_widths_and_the_cli_reads_bits():
    from cli.specs.errors import SpecError
    from radvar.sketch import families

    assert families()["quantize"] is Quantize
    fam = Quantize.family(group=4)
    assert fam.label() == "Quantize(group=4)"
    assert fam.sweep([0.1, 0.5]) == [Quantize(b, group=4) for b in BITS]
    assert fam.at(0.07) == Quantize(2, group=4) and fam.at(0.01) == Quantize(1, group=4)
    assert _parse("quantize:4:group=64:view=rows") == Quantize(4, group=64, view="rows")
    with pytest.raises(SpecError, match=r"bits must be one of \(1, 2, 4, 8\), got 3"):
        _parse("quantize:3")
    with pytest.raises(SpecError, match=r"group='x'"):
        _parse("quantize:2:group=x")


MLP_SKETCHES = [Quantize(2), Quantize(4, group=5), Quantize(1, view="rows")]


@pytest.mark.parametrize("sketch", MLP_SKETCHES, ids=repr)
def test_analytic_inside_the_monte_carlo_interval_of_empirical(sketch):
    """radvar.variance.analytic (closed form from one capture) vs variance.empirical (500 draws, 99% interval),
    per layer, on a small MLP and a small CNN with a transposed convolution."""
    from radvar import variance

    g = torch.Generator().manual_seed(4)
    mlp = nn.Sequential(nn.Linear(20, 10), nn.ReLU(), nn.Linear(10, 4))
    x, y = torch.randn(30, 20, generator=g), torch.randint(0, 4, (30,), generator=g)
    cases = [(mlp, x, y)]
    if sketch.group is None and sketch.view is None:
        cnn = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.ReLU(), nn.ConvTranspose2d(3, 2, 2, stride=2),
                            nn.Flatten(), nn.Linear(2 * 100, 4))
        cases.append((cnn, torch.randn(6, 2, 5, 5, generator=g), torch.randint(0, 4, (6,), generator=g)))
    for model, inputs, targets in cases:
        ana = variance.analytic(model, (inputs, targets), nn.functional.cross_entropy, sketch).per_layer
        emp = variance.empirical(model, (inputs, targets), nn.functional.cross_entropy, sketch, draws=500).per_layer
        merged = ana.merge(emp, on="layer", suffixes=("_a", "_e"))
        assert (merged["method_a"] == "closed form").all()
        inside = (merged["ci_low_e"] <= merged["rad_variance_a"]) & (merged["rad_variance_a"] <= merged["ci_high_e"])
        assert inside.all(), merged[["layer", "rad_variance_a", "ci_low_e", "ci_high_e"]]
        assert (merged["bytes_plan_a"] == [sketch.saved_bytes(s) for s in _view_shapes(model, inputs, sketch)]).all()


def _view_shapes(model: nn.Module, inputs: torch.Tensor, sketch: Quantize) -> list[tuple[int, int]]:
    """(rows, features) of each randomized layer's view, from a forward pass."""
    shapes = []
    h = inputs
    for m in model:
        if isinstance(m, (nn.Linear, nn.Conv2d, nn.ConvTranspose2d)):
            kind = "linear2d" if isinstance(m, nn.Linear) else "conv2d"  # the same default views
            shapes.append(tuple(_view(kind, sketch.view, h).shape))
        h = m(h)
    return shapes


# ---- composition: round what a sampling sketch keeps ---------------------------------------------------------

COMPOSED = [Quantize(2, sample=Subsample(0.25)), Quantize(2, sample=Subsample(0.5, per_example=True)),
            Quantize(4, sample=Projection(0.5))]


def test_composition_options_and_json():
    q = Quantize(2, sample=Subsample(0.25, per_example=True))
    assert Sketch.from_dict(json.loads(json.dumps(q.to_dict()))) == q
    assert q.label() == "Quantize(2 bits, per-row, after Subsample(0.25, per-example))"
    assert q.keep == 2 / 32 * 0.25
    with pytest.raises(ValueError, match=r"sample must be None or a sketch of kind \('subsample', 'projection'\)"):
        Quantize(2, sample=Importance(0.5))
    with pytest.raises(ValueError, match="no closed-form variance.*variance.empirical"):
        from radvar.sketch import ViewStats
        q.variance(ViewStats(2, 3, 1.0, 1.0, 1.0, 1.0, 0.0, 0.0, "closed form"))


@pytest.mark.parametrize("kind", ["linear3d", "conv2d"])
@pytest.mark.parametrize("sketch", COMPOSED, ids=repr)
def test_composition_unbiased_and_its_bytes_measured(kind, sketch):
    module, x = _layer(kind)
    module, x = module.double(), x.double()
    rad = radvar.convert(module, sketch)
    gy = torch.randn_like(module(x))
    assert_unbiased(_draws(rad, x, gy, 300), _weight_grad(module, x, gy))
    assert saved_bytes(rad, x).total == sketch.saved_bytes(tuple(_view(kind, None, x).shape), torch.float64)


@pytest.mark.parametrize("bits", [1, 2, 4])
def test_transposed_convolution_weight_gradient_unbiased(bits):
    g = torch.Generator().manual_seed(2)
    module, x = nn.ConvTranspose2d(4, 6, 3, stride=2, padding=1).double(), torch.randn(2, 4, 5, 5, generator=g).double()
    rad = radvar.convert(module, Quantize(bits))
    gy = torch.randn_like(module(x))
    assert_unbiased(_draws(rad, x, gy, 200), _weight_grad(module, x, gy))
    assert saved_bytes(rad, x).total == Quantize(bits).saved_bytes((8, 25), torch.float64)
