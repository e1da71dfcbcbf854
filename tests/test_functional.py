"""Functional routing (radvar.layers.functional): site keys, plans that name sites, routing installed by
convert, the RAD products (radvar.ops.product), and what the ledger and coverage see of them."""

from __future__ import annotations

import copy
import json
import pickle
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import radvar
from radvar import Plan, memory
from radvar.layers import Twin, register
from radvar.layers.functional import FUNCTION_KINDS, functional_sites, intercept, router_of
from radvar.ops.product import rad_matmul, rad_mul
from radvar.report import coverage
from radvar.sketch import Quantize, Subsample

from .stats import assert_unbiased

pytestmark = pytest.mark.usefixtures("one_thread")


class Wrapped(nn.Module):
    """Calls F.gelu in its forward; registered below with a twin, so its calls are not sites."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(x)


@register(Wrapped)
class WrappedTwin(Wrapped, Twin):
    """A compact twin of Wrapped (same forward): the twin decides what its calls keep."""


class Block(nn.Module):
    """A SwiGLU-like block with its own functional calls: gelu(gate) * up, (h @ hᵀ) @ h, and a constant scale."""

    def __init__(self, d: int = 5, h: int = 6):
        super().__init__()
        self.gate, self.up, self.down = nn.Linear(d, h), nn.Linear(d, h), nn.Linear(h, d)
        self.wrapped = Wrapped()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.gelu(self.gate(x)) * self.up(x)  # site block:gelu.0, then block:mul.0
        h = 0.5 * h * torch.ones_like(h)  # a scalar and a constant: no sites
        h = (h @ h.transpose(-1, -2)) @ h / h.shape[-1]  # block:matmul.0 and block:matmul.1
        return self.down(self.wrapped(h))


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.block = Block()
        self.head = nn.Linear(5, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(F.gelu(self.block(x)))  # site :gelu.0


SITES = {"block:gelu.0": "gelu", "block:mul.0": "mul", "block:matmul.0": "matmul", "block:matmul.1": "matmul",
         ":gelu.0": "gelu"}


def setup() -> tuple[Net, torch.Tensor, torch.Tensor]:
    return Net().double(), torch.randn(2, 4, 5, dtype=torch.float64), torch.randint(0, 3, (2, 4))


def grads(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    model.zero_grad(set_to_none=True)
    F.cross_entropy(model(x).flatten(0, 1), y.flatten()).backward()
    return torch.cat([p.grad.flatten() for p in model.parameters()])


def quiet(model: nn.Module, plan) -> nn.Module:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", radvar.CoverageWarning)
        return radvar.convert(model, plan)


def test_site_keys_name_the_module_the_function_and_the_call():
    model, x, _ = setup()
    assert functional_sites(model, x) == SITES
    assert radvar.functional_sites(radvar.convert(model, None), x) == SITES  # converted: the same keys
    with intercept(model) as seen:
        with torch.no_grad():  # without autograd nothing is routed: the mode is not even entered
            model(x)
        assert seen == {}
        model(x)
    assert seen == SITES


def test_convert_routes_without_a_context_manager():
    model, x, y = setup()
    rad = radvar.convert(model, Plan({"block:mul.0": Quantize(2), "block:matmul.1": Quantize(4)}))
    plain, routed = memory.saved_bytes(model, x, sites=True), memory.saved_bytes(rad, x, sites=True)
    assert routed.by_module["block:mul.0"] < plain.by_module["block:mul.0"]
    assert routed.by_module["block:matmul.0"] == plain.by_module["block:matmul.0"]  # not in the plan: plain
    assert routed.total < plain.total
    assert torch.isfinite(grads(rad, x, y)).all()


def test_exact_plans_are_bitwise_plain():
    model, x, y = setup()
    plain = grads(model, x, y)
    for plan in (Plan({"block:mul.0": None, "*:*": None}), Plan({"block.up": Subsample(1.0), "*:matmul.*": None})):
        rad = radvar.convert(model, plan)
        assert router_of(rad) is not None
        assert torch.equal(grads(rad, x, y), plain)
    with radvar.exact():  # an all-exact run of a sketched plan
        assert torch.equal(grads(quiet(model, Quantize(2)), x, y), plain)


def test_sketched_sites_are_unbiased():
    """Every site of the model routed (prototype gelu with a sampled 2-bit sketch, products with 2-bit):
    the whole gradient is unbiased, thresholds from the draws' variance."""
    model, x, y = setup()
    rad = quiet(model, Plan({"*:*": Quantize(2, sample=Subsample(0.5))}))
    draws = torch.stack([grads(rad, x, y) for _ in range(200)])
    assert draws.std(0).max() > 0
    assert_unbiased(draws, grads(model, x, y))


def test_mode_never_leaks():
    class Failing(Net):
        def forward(self, x):
            F.gelu(x)
            raise RuntimeError("boom")

    model, x, y = setup()
    bad = quiet(Failing(), Plan({"*:*": Quantize(2)}))
    for _ in range(2):
        with pytest.raises(RuntimeError, match="boom"):
            bad(x)
        assert not torch.overrides._get_current_function_mode_stack()
    rad = quiet(model, Plan({"*:*": Quantize(2)}))
    with pytest.raises(ValueError, match="nope"):  # an exception inside a submodule
        with torch.autograd.graph.saved_tensors_hooks(lambda t: (_ for _ in ()).throw(ValueError("nope")),
                                                      lambda t: t):
            rad(x)
    assert not torch.overrides._get_current_function_mode_stack()
    assert torch.isfinite(grads(rad, x, y)).all()  # and the next forward routes again
    assert router_of(rad).state().seen == SITES


def test_intercept_frees_its_ops_without_the_garbage_collector():
    """What the ops hold (an analysis's tensors) is released as the block ends, not at the next collection."""
    import gc
    import weakref

    model, x, _ = setup()
    held = torch.zeros(1000)
    gone = weakref.ref(held)

    def op(*args, held=held, **kwargs):
        return F.gelu(*args, **kwargs)

    gc.disable()
    try:
        with intercept(model, {":gelu.0": op}):
            model(x).sum().backward()
        del op, held
        assert gone() is None
    finally:
        gc.enable()


def test_reentrant_and_nested_calls():
    class Recursive(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(4, 4)

        def forward(self, x: torch.Tensor, depth: int = 1) -> torch.Tensor:
            h = F.gelu(self.lin(x))
            return h * self(h, depth - 1) if depth else h

    rec = quiet(Recursive(), Plan({"*:*": Quantize(2)}))
    x = torch.randn(3, 4)
    rec(x).sum().backward()
    assert router_of(rec).state().seen == {":gelu.0": "gelu", ":gelu.1": "gelu", ":mul.0": "mul"}
    assert not torch.overrides._get_current_function_mode_stack()

    inner = quiet(Block(), Plan({"*:mul.*": Quantize(2)}))
    outer = nn.Sequential(nn.Linear(5, 5), inner, nn.Linear(5, 5), inner)  # the routed model called twice
    outer(torch.randn(2, 3, 5)).sum().backward()
    assert set(router_of(inner).state().seen) == {":gelu.0", ":mul.0", ":matmul.0", ":matmul.1"}


def test_copies_pickles_and_state_dicts_keep_the_routing():
    model, x, y = setup()
    rad = quiet(model, Plan({"*:*": Quantize(2)}))
    for other in (copy.deepcopy(rad), pickle.loads(pickle.dumps(rad))):
        assert router_of(other) is not router_of(rad) and router_of(other).entries == router_of(rad).entries
        assert torch.isfinite(grads(other, x, y)).all()
        assert router_of(other).state().seen == SITES
    assert list(rad.state_dict()) == list(model.state_dict())
    plain = radvar.convert(rad, None)  # routing removed
    assert router_of(plain) is None
    assert all(not h for m in plain.modules() for h in (m._forward_pre_hooks, m._forward_hooks))
    assert torch.equal(grads(plain, x, y), grads(model, x, y))


def test_plan_with_sites_round_trips_through_json(tmp_path):
    plan = Plan({"block.up": Subsample(0.5), "block:mul.0": Quantize(2), "*:matmul.*": Quantize(4),
                 ":gelu.0": None})
    assert list(plan) == ["block.up"] and set(plan.sites) == {"block:mul.0", "*:matmul.*", ":gelu.0"}
    path = tmp_path / "plan.json"
    plan.save(path)
    assert list(json.loads(path.read_text())["entries"]) == ["block.up", "block:mul.0", "*:matmul.*", ":gelu.0"]
    assert Plan.load(path) == plan
    Plan.load(path).validate(setup()[0])


def test_bad_site_entries_are_named():
    model, x, _ = setup()
    cases = [
        ("blok:mul.0", "the model has no module 'blok'; did you mean \\['block'"),
        ("block:mull.0", "no functional kind 'mull'; allowed: \\[.*'matmul', 'mul'"),
        ("block:mul.x", "a site key is '<module>:<function>.<index>' with a 0-based int index"),
        ("block.wrapped:gelu.0", "'block.wrapped' is a .*Wrapped, which has its own twin"),
    ]
    for key, message in cases:
        with pytest.raises(ValueError, match=message):
            Plan({key: Quantize(2)}).validate(model)
    with pytest.raises(ValueError, match=r"sketch family 'subsample' is not allowed; allowed: \['quantize'\] or "
                                         r"'exact'"):
        radvar.convert(model, Plan({"block:mul.0": Subsample(0.5)}))
    with pytest.raises(ValueError, match="view 'rows' is not allowed; functional sites take view=None"):
        Plan({"*:mul.*": Quantize(2, view="rows")}).validate(model)
    rad = radvar.convert(model, Plan({"block:mul.1": Quantize(2), ":mul.0": Quantize(2)}))
    with pytest.raises(ValueError, match=r"functional site\(s\) \[':mul.0', 'block:mul.1'\] that no call "
                                         r"reached in this forward; sites of this model: \[':gelu.0', "
                                         r"'block:gelu.0', 'block:matmul.0'"):
        rad(x)
    with pytest.raises(TypeError, match="intercept: this model was converted with functional sites"):
        with intercept(rad, {":gelu.0": None}):
            pass


def test_uniform_reaches_every_site():
    model, x, y = setup()
    wild = Plan.uniform(model, Quantize(2))
    assert wild.sites == {"*:*": Quantize(2)}
    named = Plan.uniform(model, Quantize(2), example_inputs=x)
    assert named.sites == {k: Quantize(2) for k in SITES}
    assert set(Plan.uniform(model, Subsample(0.5), example_inputs=x).sites) == {
        k for k, name in SITES.items() if FUNCTION_KINDS[name].accepts(Subsample(0.5))}
    assert Plan.uniform(model, None).sites == {}
    a = memory.saved_bytes(radvar.convert(model, wild), x, sites=True)
    b = memory.saved_bytes(radvar.convert(model, named), x, sites=True)
    assert a.total == b.total < memory.saved_bytes(model, x).total
    assert router_of(radvar.convert(model, None)) is None  # no sites: nothing installed


def test_uniform_quantize_reaches_the_sites_of_gpt2():
    transformers = pytest.importorskip("transformers")
    model = transformers.GPT2LMHeadModel(transformers.GPT2Config(
        n_layer=2, n_embd=32, n_head=2, n_positions=16, vocab_size=64, bos_token_id=0, eos_token_id=0,
        attn_pdrop=0.0, resid_pdrop=0.0, embd_pdrop=0.0)).train()
    x = torch.randint(0, 64, (2, 16))
    rad = quiet(model, Quantize(2))
    rad(x).logits.sum().backward()
    router = router_of(rad)
    sites = router.state().seen
    routable = [s for s, name in sites.items() if name in FUNCTION_KINDS and FUNCTION_KINDS[name].accepts(Quantize(2))]
    assert routable and all(router.ops[s] is not None for s in routable)
    assert set(sites) == set(functional_sites(model, x))


class SwiGLU(nn.Module):
    def __init__(self, d: int = 16, h: int = 32):
        super().__init__()
        self.gate, self.up, self.down = nn.Linear(d, h), nn.Linear(d, h), nn.Linear(h, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(F.silu(self.gate(x)) * self.up(x))


def test_ledger_shows_the_bytes_a_sketched_swiglu_product_saves():
    model, x = SwiGLU(), torch.randn(8, 10, 16)
    plain = memory.saved_bytes(model, x, sites=True)
    rad = memory.saved_bytes(quiet(model, Plan({"*:mul.*": Quantize(2)})), x, sites=True)
    assert plain.by_module[":mul.0"] == 2 * 80 * 32 * 4  # silu(gate) and up, float32
    assert rad.by_module[":mul.0"] == 2 * Quantize(2).saved_bytes((80, 32))  # two 2-bit sketches
    assert plain.total - rad.total == plain.by_module[":mul.0"] - rad.by_module[":mul.0"]
    cov = coverage(model, x, plan_or_sketch=Plan({"*:mul.*": Quantize(2)}))
    rows = cov.per_layer.set_index("module")
    assert rows.loc[":mul.0", "status"] == "sketched" and rows.loc[":mul.0", "type"] == "mul"


@pytest.mark.parametrize("shapes", [((4, 3, 5), (3, 5)), ((4, 3, 5), (4, 1, 1)), ((6,), (2, 6))])
@pytest.mark.parametrize("sketch", [Quantize(1), Quantize(4), Quantize(2, sample=Subsample(0.5))])
def test_rad_mul_is_unbiased(shapes, sketch):
    a0, b0 = (torch.randn(s, dtype=torch.float64, requires_grad=True) for s in shapes)
    g = torch.randn(torch.broadcast_shapes(*shapes), dtype=torch.float64)

    def grad(op) -> torch.Tensor:
        a, b = a0 * 1.0, b0 * 1.0  # not leaves: both are sketched
        return torch.cat([t.flatten() for t in torch.autograd.grad(op(a, b), (a0, b0), g)])

    exact = grad(torch.mul)
    draws = torch.stack([grad(lambda a, b: rad_mul(a, b, sketch)) for _ in range(200)])
    assert draws.std(0).max() > 0
    assert_unbiased(draws, exact)
    assert torch.equal(grad(lambda a, b: rad_mul(a, b, None)), exact)


@pytest.mark.parametrize("shapes", [((4, 3, 5), (5, 2)), ((2, 1, 3, 4), (3, 4, 2)), ((3, 4, 6), (3, 6, 2))])
@pytest.mark.parametrize("sketch", [Quantize(2), Quantize(2, sample=Subsample(0.5))])
def test_rad_matmul_is_unbiased(shapes, sketch):
    a0, b0 = (torch.randn(s, dtype=torch.float64, requires_grad=True) for s in shapes)
    g = torch.randn(torch.matmul(a0, b0).shape, dtype=torch.float64)

    def grad(op) -> torch.Tensor:
        a, b = a0 * 1.0, b0 * 1.0
        return torch.cat([t.flatten() for t in torch.autograd.grad(op(a, b), (a0, b0), g)])

    exact = grad(torch.matmul)
    draws = torch.stack([grad(lambda a, b: rad_matmul(a, b, sketch)) for _ in range(200)])
    assert draws.std(0).max() > 0
    assert_unbiased(draws, exact)


def test_rad_matmul_takes_two_dimensions_or_more():
    with pytest.raises(ValueError, match=r"operands must have at least 2 dimensions, got shapes \(5,\) and \(5, 2\)"):
        rad_matmul(torch.randn(5), torch.randn(5, 2), Quantize(2))


def test_a_leaf_operand_is_kept_as_it_is():
    """A parameter times an activation: the parameter is kept exactly (it lives anyway), the activation sketched;
    the gradient of the activation side is then exact."""
    w = nn.Parameter(torch.randn(5, dtype=torch.float64))
    x0 = torch.randn(4, 5, dtype=torch.float64, requires_grad=True)
    x = x0 * 1.0
    out = rad_mul(w, x, Quantize(2))
    (gw, gx) = torch.autograd.grad(out, (w, x0), torch.ones_like(out))
    torch.testing.assert_close(gx, w.detach().expand(4, 5))
    assert memory.saved_bytes_of(lambda: rad_mul(w, x0 * 1.0, Quantize(2)), [w]) == Quantize(2).saved_bytes((4, 5),
                                                                                                          torch.float64)
