"""Functional-call interception (radvar.layers.functional): site keys, routing, RAD activations."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from radvar import memory
from radvar.layers.functional import FUNCTION_KINDS, functional_sites, intercept
from radvar.sketch import Projection, Subsample

from .stats import assert_unbiased

pytestmark = pytest.mark.usefixtures("one_thread")


class Net(nn.Module):
    """F.gelu in its own forward (site ":0"), an nn.SiLU ("act:0"), an nn.LayerNorm ("norm:0")."""

    def __init__(self, approximate: str = "none"):
        super().__init__()
        self.approximate = approximate
        self.lin1, self.norm, self.lin2, self.act, self.lin3 = (
            nn.Linear(5, 8), nn.LayerNorm(8), nn.Linear(8, 6), nn.SiLU(), nn.Linear(6, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.gelu(self.lin1(x), approximate=self.approximate)
        return self.lin3(self.act(self.lin2(self.norm(h))))


def rad_activation(name: str, sketch):
    """The routed op of ``F.<name>`` keeping ``sketch`` of f'(x) (radvar.layers.activations)."""
    return FUNCTION_KINDS[name].factory(sketch)


def setup(approximate: str = "none") -> tuple[Net, torch.Tensor, torch.Tensor]:
    return Net(approximate).double(), torch.randn(7, 5, dtype=torch.float64), torch.tensor([0, 1, 2, 0, 1, 2, 0])


def grads(model: nn.Module, x: torch.Tensor, y: torch.Tensor, plan=None) -> torch.Tensor:
    model.zero_grad(set_to_none=True)
    with intercept(model, plan):
        loss = F.cross_entropy(model(x), y)
    loss.backward()
    return torch.cat([p.grad.flatten() for p in model.parameters()])


def plain_grads(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    model.zero_grad(set_to_none=True)
    F.cross_entropy(model(x), y).backward()
    return torch.cat([p.grad.flatten() for p in model.parameters()])


def test_sites_name_the_module_and_the_call():
    model, x, _ = setup()
    assert functional_sites(model, x) == {":0": "gelu", "norm:0": "layer_norm", "act:0": "silu"}


def test_no_plan_is_bitwise_plain():
    model, x, y = setup()
    assert torch.equal(grads(model, x, y), plain_grads(model, x, y))


@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_keep_one_gives_the_exact_gradient(approximate):
    """Subsample(1.0) is exact: the routed ops run the plain functions, bitwise."""
    model, x, y = setup(approximate)
    plan = {":0": rad_activation("gelu", Subsample(1.0)), "act:0": rad_activation("silu", Subsample(1.0))}
    assert torch.equal(grads(model, x, y, plan), plain_grads(model, x, y))


def test_sketched_derivatives_are_unbiased():
    model, x, y = setup()
    plan = {":0": rad_activation("gelu", Subsample(0.5, per_example=True)),
            "act:0": rad_activation("silu", Subsample(0.5))}
    draws = torch.stack([grads(model, x, y, plan) for _ in range(400)])
    assert draws.std(0).max() > 0  # the draws do vary
    assert_unbiased(draws, plain_grads(model, x, y))


def test_routed_site_keeps_the_sketch_not_the_input():
    model, x, y = setup()
    plain = memory.saved_bytes(model, x, F.cross_entropy, y).by_module
    with intercept(model, {"act:0": rad_activation("silu", Subsample(0.5))}):
        routed = memory.saved_bytes(model, x, F.cross_entropy, y).by_module
    assert plain["act"] == 7 * 6 * 8  # SiLU keeps its float64 input
    assert routed["act"] == 7 * math.ceil(0.5 * 6) * 8  # half the features of f'(x)


def test_layer_norm_routes_to_any_op():
    model, x, y = setup()
    calls = []

    def op(*args, **kwargs):
        calls.append(args[1])
        return F.layer_norm(*args, **kwargs)

    assert torch.equal(grads(model, x, y, {"norm:0": op}), plain_grads(model, x, y))
    assert calls == [(8,)]


def test_bad_plans_are_named():
    model, x, y = setup()
    with pytest.raises(ValueError, match=r"functional site\(s\) \['lin1:0'\] that no call reached; sites of this "
                                         r"model: \[':0', 'act:0', 'norm:0'\]"):
        grads(model, x, y, {"lin1:0": rad_activation("gelu", Subsample(0.5))})
    with pytest.raises(TypeError, match="plan entries must be 'module:index' -> callable op"):
        grads(model, x, y, {"act": rad_activation("silu", Subsample(0.5))})
    with pytest.raises(ValueError, match=r"tanh route: sketch family 'projection' is not allowed; allowed: "
                                         r"\['quantize', 'subsample', 'bernoulli', 'importance'\] or None"):
        rad_activation("tanh", Projection(0.5))
