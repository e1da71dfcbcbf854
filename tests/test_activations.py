"""Elementwise activations (radvar.layers.activations): a sketch of f'(x) instead of x.

Derivative forms against autograd, unbiasedness of every gradient in float64 for every activation and
accepted family, the per-entry variance g²·Var(d̂) for Quantize, exact paths bitwise plain, in-place
modules, saved bytes by the ledger, functional routes, and errors.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Callable

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import radvar
from radvar import memory
from radvar.layers import kind_for, twin_for
from radvar.layers.activations import FAMILIES, HF_DERIVATIVES
from radvar.layers.functional import FUNCTION_KINDS, functional_sites, intercept
from radvar.layers.registry import propagating
from radvar.ops._kept import rows_view
from radvar.sketch import Bernoulli, Importance, Projection, Quantize, Sketch, Subsample
from radvar.variance.statistics import mean_ci

from .kind_checks import Single, check_ledger_keeps_the_sketch
from .stats import assert_unbiased

pytestmark = pytest.mark.usefixtures("one_thread")

TORCH: dict[str, Callable[[], nn.Module]] = {
    "GELU": nn.GELU, "GELU-tanh": lambda: nn.GELU("tanh"), "SiLU": nn.SiLU,
    "SiLU-inplace": lambda: nn.SiLU(inplace=True), "Tanh": nn.Tanh, "Sigmoid": nn.Sigmoid,
    "Softplus": lambda: nn.Softplus(beta=2.0, threshold=3.0), "Mish": nn.Mish,
    "Mish-inplace": lambda: nn.Mish(inplace=True), "Hardswish": nn.Hardswish,
    "Hardswish-inplace": lambda: nn.Hardswish(inplace=True), "ReLU6": nn.ReLU6,
    "ReLU6-inplace": lambda: nn.ReLU6(inplace=True),
}


def _hf() -> dict[str, Callable[[], nn.Module]]:
    """Every transformers class with a twin, plus its options that change the formula's code path."""
    try:
        from transformers import activations as hf
    except ImportError:
        return {}
    options = {"ClippedGELUActivation": {"min": -0.1, "max": 1.5}}
    cases = {name: (lambda c=getattr(hf, name), o=options.get(name, {}): c(**o))
             for name in HF_DERIVATIVES if hasattr(hf, name)}
    if hasattr(hf, "GELUTanh"):
        cases["GELUTanh-python"] = lambda: hf.GELUTanh(use_gelu_tanh_python=True)
    cases["GELUActivation-python"] = lambda: hf.GELUActivation(use_gelu_python=True)
    return cases


ACTIVATIONS = {**TORCH, **_hf()}
SAMPLERS = [Subsample(0.5), Subsample(0.5, per_example=True), Bernoulli(0.5), Importance(0.5)]
SKETCHES = [Quantize(1), Quantize(2), Quantize(4), *SAMPLERS]


@dataclasses.dataclass(frozen=True)
class Identity(Sketch):
    """Keeps its input whole but is not ``exact``, so the sketched path runs with d̂ = d."""

    kind = "identity"

    def compress(self, x, gen):
        return (x.clone(),), {}

    def restore(self, saved, meta, gen):
        return saved[0]

    def saved_bytes(self, shape, dtype=torch.float32):
        return shape[0] * shape[1] * torch.empty((), dtype=dtype).element_size()

    def variance(self, view):
        return 0.0, "exact"


SPREAD = {"ReLU6": (3.0, 1.0), "ReLU6-inplace": (3.0, 1.0), "LaplaceActivation": (0.7, 0.12)}
"""(bias, weight scale) of ``lin`` per activation, default (0.25, 0.6): pre-activations of sd ≈ 6^½·scale
about the bias, past the kinks (0, ±3, 6, softplus' threshold, the clip ends) but not so deep into
saturation that f' spans many decades within a row. There a rounding (or an Importance draw) moves
an entry with a probability ∝ its tiny f', too rarely for the draws to show its mean, and a z-test
would report that missing mean as bias."""


class Net(nn.Module):
    """lin -> act: every gradient, the upstream weights included, goes through f'(x)."""

    def __init__(self, act: nn.Module):
        super().__init__()
        self.lin, self.act = nn.Linear(6, 6), act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.lin(x))


def setup(name: str) -> tuple[Net, torch.Tensor, torch.Tensor]:
    """``Net`` (float64), an input (4, 3, 6) and a target for ``(out · target).sum()``."""
    g = torch.Generator().manual_seed(3)
    net = Net(ACTIVATIONS[name]()).double()
    bias, scale = SPREAD.get(name, (0.25, 0.6))
    with torch.no_grad():
        net.lin.weight.copy_(scale * torch.randn(6, 6, generator=g, dtype=torch.float64))
        net.lin.bias.fill_(bias)
    x = torch.randn(4, 3, 6, generator=g, dtype=torch.float64)
    return net, x, torch.randn(4, 3, 6, generator=g, dtype=torch.float64)


def grads(net: nn.Module, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    x = x.clone().requires_grad_()
    net.zero_grad(set_to_none=True)
    (net(x) * target).sum().backward()
    return torch.cat([x.grad.flatten(), *(p.grad.flatten() for p in net.parameters())])


def with_sketch(net: Net, sketch: Sketch | None) -> Net:
    """``net`` converted with ``sketch`` on the activation only (the Linear exact)."""
    return radvar.convert(net, radvar.Plan({"lin": None, "act": sketch}))


# ---- the kind ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ACTIVATIONS)
def test_registered_as_a_propagating_kind(name):
    module = ACTIVATIONS[name]()
    twin = twin_for(module)
    assert twin.randomized and twin.propagates and propagating(module) and kind_for(module) is None
    assert twin.views == ("features",) and twin.families == FAMILIES
    rad = radvar.convert(Single("act", module), Quantize(2))
    assert isinstance(rad.act, type(module)) and "sketch=Quantize(2 bits, per-row)" in repr(rad.act)


def test_uniform_plans_skip_them_for_a_family_they_refuse():
    net = Net(nn.GELU())
    assert set(radvar.Plan.uniform(net, Projection(0.5))) == {"lin"}
    assert set(radvar.Plan.uniform(net, Quantize(2))) == {"lin", "act"}


# ---- derivative forms, exact paths ------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ACTIVATIONS)
def test_derivative_form_matches_autograd_and_forward_is_bitwise_plain(name):
    """With d̂ = d (a non-exact identity sketch) every gradient equals plain autograd's to rounding."""
    net, x, target = setup(name)
    rad = with_sketch(net, None)
    rad.act.sketch = Identity(0.5)  # bypasses Plan validation on purpose: not a family the kind takes
    with torch.no_grad():
        plain_out = net(x)
    assert torch.equal(rad(x.clone().requires_grad_()), plain_out)
    torch.testing.assert_close(grads(rad, x, target), grads(net, x, target), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", ACTIVATIONS)
def test_exact_plans_and_keep_one_are_bitwise_plain(name):
    net, x, target = setup(name)
    plain = grads(net, x, target)
    for sketch in (None, Subsample(1.0), Bernoulli(1.0)):
        assert torch.equal(grads(with_sketch(net, sketch), x, target), plain)
    rad = with_sketch(net, Quantize(2))
    with radvar.exact():
        assert torch.equal(grads(rad, x, target), plain)
    with torch.no_grad():
        assert torch.equal(rad(x), net(x))
    frozen = x.clone()  # an input needing no gradient: the plain function, nothing kept
    assert memory.saved_bytes(Single("act", rad.act), frozen).total == 0


@pytest.mark.parametrize("name", [n for n in TORCH if n.endswith("-inplace")])
def test_inplace_modules_write_the_output_into_their_input(name):
    net, x, _ = setup(name)
    rad = with_sketch(net, Quantize(2))
    h = rad.lin(x.clone().requires_grad_())
    out = rad.act(h)
    assert out.data_ptr() == h.data_ptr() and torch.equal(out, net.act(net.lin(x)))
    leaf = torch.randn(3, 6, dtype=torch.float64, requires_grad=True)
    with pytest.raises(RuntimeError, match="leaf Variable that requires grad"):  # as plain torch says
        rad.act(leaf)


# ---- unbiasedness and variance -----------------------------------------------------------------------------------

def stacked_draws(net: Net, x: torch.Tensor, target: torch.Tensor, draws: int) -> torch.Tensor:
    """``draws`` independent estimates of (∂x, ∂W, ∂b), as :func:`grads` orders them, from one call: x, W
    and b are stacked ``draws`` times, each copy of the Linear feeding its own rows to the activation
    (the families drawn per row or per entry draw every copy independently)."""
    xs = x.expand(draws, *x.shape).clone().requires_grad_()
    ws = net.lin.weight.detach().expand(draws, 6, 6).clone().requires_grad_()
    bs = net.lin.bias.detach().expand(draws, 6).clone().requires_grad_()
    h = torch.einsum("dbri,doi->dbro", xs, ws) + bs[:, None, None, :]
    (net.act(h) * target).sum().backward()
    return torch.cat([xs.grad.flatten(1), ws.grad.flatten(1), bs.grad.flatten(1)], 1)


@pytest.mark.parametrize("sketch", SKETCHES, ids=lambda s: s.label())
@pytest.mark.parametrize("name", ACTIVATIONS)
def test_every_gradient_unbiased(name, sketch):
    """∂x and the upstream ∂W, ∂b (each entry mixing several d̂): per-entry z-test of 1000 draws in one
    call, thresholds from their sd (200 calls for the shared Subsample: one feature set for all rows)."""
    net, x, target = setup(name)
    rad = with_sketch(net, sketch)
    if sketch.per_example:
        draws = stacked_draws(rad, x, target, 1000)
    else:
        draws = torch.stack([grads(rad, x, target) for _ in range(200)])
    assert_unbiased(draws, grads(net, x, target), rtol=1e-12)
    if isinstance(sketch, Quantize):  # rounding varies iff some d entry falls between two levels
        h = net.lin(x).detach().requires_grad_()
        (d,) = torch.autograd.grad(net.act(h * 1.0).sum(), h)
        assert (draws.std(0).max() > 0) == bool(sketch.entry_variance(rows_view(d)).sum() > 0)
    else:
        assert draws.std(0).max() > 0


def test_rounding_after_sampling_is_unbiased():
    net, x, target = setup("GELU")
    rad = with_sketch(net, Quantize(2, sample=Subsample(0.5, per_example=True)))
    assert_unbiased(stacked_draws(rad, x, target, 1000), grads(net, x, target), rtol=1e-12)


def test_relu6_derivative_is_kept_exactly_by_quantize():
    """A 0/1 derivative lies on the two levels of any bit width: no variance at all."""
    net, x, target = setup("ReLU6")
    assert torch.equal(grads(with_sketch(net, Quantize(1)), x, target), grads(net, x, target))


@pytest.mark.parametrize("bits", [1, 2, 4])
@pytest.mark.parametrize("name", ["GELU", "Tanh", "Softplus", "NewGELUActivation"])
def test_input_gradient_variance_is_g_squared_times_the_rounding_variance(name, bits):
    """E‖∂x̂ − ∂x‖² = Σ_i g_i²·Δ_i² f_i(1 − f_i) (independent entries) vs 500 draws, 99% t-interval."""
    if name not in ACTIVATIONS:
        pytest.skip("transformers is not installed")
    sketch = Quantize(bits)
    act = ACTIVATIONS[name]().double()
    x = torch.randn(6, 10, dtype=torch.float64) * 3
    g = torch.randn(6, 10, dtype=torch.float64)
    xr = x.clone().requires_grad_()
    (d,) = torch.autograd.grad(act(xr), xr, torch.ones_like(x))
    predicted = float((g.square() * sketch.entry_variance(rows_view(d)).view_as(x)).sum())
    rad = radvar.convert(Single("act", act), sketch)
    xs = x.expand(500, *x.shape).clone().requires_grad_()  # 500 independent draws: rows are rounded apart
    (draws,) = torch.autograd.grad(rad(xs), xs, g.expand_as(xs))
    sq = (draws - g * d).square().flatten(1).sum(1)
    low, high = mean_ci(float(sq.mean()), float(sq.var()), len(sq), 0.99)
    assert low <= predicted <= high, (low, predicted, high)


# ---- memory --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["GELU", "GELU-tanh", "SiLU", "Tanh", "Sigmoid", "Softplus", "Mish", "Hardswish",
                                  "ReLU6"])
@pytest.mark.parametrize("sketch", [Quantize(1), Quantize(2), Quantize(4)], ids=lambda s: s.label())
def test_ledger_keeps_the_sketch_of_the_derivative(name, sketch):
    """Plain torch keeps x (or y) whole; the twin keeps b bits an entry plus (lo, Δ) per row."""
    x = torch.randn(4, 8, 64, requires_grad=True)
    check_ledger_keeps_the_sketch(ACTIVATIONS[name](), x, sketch, (32, 64))
    assert sketch.saved_bytes((32, 64)) == 32 * 64 * sketch.bits // 8 + 2 * 32 * 4


@pytest.mark.parametrize("name", sorted(_hf()))
def test_ledger_transformers_classes(name):
    """The formula classes keep several intermediates in plain autograd; the twin only the sketch."""
    x = torch.randn(4, 8, 64, requires_grad=True)
    act = ACTIVATIONS[name]()
    plain = memory.saved_bytes(act, x).total
    rad = memory.saved_bytes(radvar.convert(act, Quantize(2)), x).total
    assert rad == Quantize(2).saved_bytes((32, 64)) < plain / 10


# ---- functional routes --------------------------------------------------------------------------------------

class Functional(nn.Module):
    """Each routed function called directly in forward."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(5, 6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.lin(x)
        return (F.gelu(h, approximate="tanh") + F.silu(h) + torch.tanh(h) + h.sigmoid() + F.sigmoid(h)
                + F.tanh(h) + F.softplus(h, beta=2.0, threshold=3.0))


def routed_grads(model: nn.Module, x: torch.Tensor, target: torch.Tensor, sketch: Sketch | None) -> torch.Tensor:
    sites = functional_sites(model, x)
    plan = {site: FUNCTION_KINDS[fn].factory(sketch) for site, fn in sites.items()}
    x = x.clone().requires_grad_()
    model.zero_grad(set_to_none=True)
    with intercept(model, plan):
        out = model(x)
    (out * target).sum().backward()
    return torch.cat([x.grad.flatten(), *(p.grad.flatten() for p in model.parameters())])


def test_functional_sites_are_routed():
    model = Functional().double()
    assert sorted(functional_sites(model, torch.randn(2, 5, dtype=torch.float64)).values()) == sorted(
        ["gelu", "silu", "tanh", "sigmoid", "sigmoid", "tanh", "softplus"])


def test_functional_routes_unbiased_and_exact_when_exact():
    model = Functional().double()
    x, target = torch.randn(4, 5, dtype=torch.float64) * 2, torch.randn(4, 6, dtype=torch.float64)
    plain = grads(model, x, target)
    assert torch.equal(routed_grads(model, x, target, None), plain)
    assert torch.equal(routed_grads(model, x, target, Subsample(1.0)), plain)
    for sketch in (Quantize(2), Bernoulli(0.5)):  # 1000 stacked copies of x: independent input gradients
        draws = routed_grads(model, x.expand(1000, *x.shape), target, sketch)[:1000 * x.numel()]
        draws = draws.view(1000, -1)
        assert draws.std(0).max() > 0
        assert_unbiased(draws, plain[:x.numel()], rtol=1e-12)


def test_functional_route_keeps_the_sketch():
    model = Functional()
    x = torch.randn(16, 5)
    sites = functional_sites(model, x)
    plan = {site: FUNCTION_KINDS[fn].factory(Quantize(2)) for site, fn in sites.items()}
    plain = memory.saved_bytes(model, x).total
    with intercept(model, plan):
        routed = memory.saved_bytes(model, x).total
    # plain: the Linear's input, its output h (kept by gelu, silu and softplus, counted once) and the four
    # outputs of tanh and sigmoid; routed: the Linear's input and one sketch per call
    assert plain == 16 * 5 * 4 + 5 * 16 * 6 * 4
    assert routed == 16 * 5 * 4 + len(sites) * Quantize(2).saved_bytes((16, 6))


def test_out_argument_runs_plain():
    op = FUNCTION_KINDS["tanh"].factory(Quantize(2))
    x, out = torch.randn(3, 4), torch.empty(3, 4)
    assert op(x, out=out) is out and torch.equal(out, torch.tanh(x))


# ---- bad input ----------------------------------------------------------------------------------------------

def test_refused_family_and_view_are_named():
    net = Net(nn.GELU())
    allowed = re.escape(f"allowed: {list(FAMILIES)} or 'exact'")
    with pytest.raises(ValueError, match=r"Plan entry 'act' \(torch\.nn\.GELU\): sketch family 'projection' is not "
                                         r"allowed; " + allowed):
        radvar.Plan({"act": Projection(0.5)}).validate(net)
    with pytest.raises(ValueError, match=r"view 'rows' is not allowed; allowed: \[None, 'features'\]"):
        radvar.Plan({"act": Quantize(2, view="rows")}).validate(net)
    with pytest.raises(ValueError, match=r"bits must be one of \(1, 2, 4, 8\), got 3"):
        Quantize(3)
    with pytest.raises(TypeError, match=r"gelu route: sketch must be a radvar.sketch.Sketch or None \(exact\), got 0.5"):
        FUNCTION_KINDS["gelu"].factory(0.5)
    with pytest.raises(ValueError, match=r"softplus route: view 'rows' is not allowed"):
        FUNCTION_KINDS["softplus"].factory(Quantize(2, view="rows"))


def test_transformers_stays_optional(monkeypatch):
    """Without transformers no transformers twin is made (torch's are registered regardless)."""
    import sys

    from radvar.layers import activations

    monkeypatch.setitem(sys.modules, "transformers", None)  # import transformers now raises ImportError
    assert activations._register_hf() == {}
    assert twin_for(nn.GELU()) is activations.RADGELU
