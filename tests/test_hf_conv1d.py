"""transformers' Conv1D (y = x W + b, W of shape (in, out)) as a RAD layer kind: unbiased in float64, closed
forms against Monte Carlo, ledger bytes, keep = 1 bitwise plain, GPT-2 converted."""

from __future__ import annotations

import dataclasses
import warnings

import pytest
import torch
from torch import nn

import radvar
from radvar.layers import kind_for
from radvar.sketch import Bernoulli, Importance, Projection, Subsample

from .kind_checks import (check_analytic_agrees_with_monte_carlo, check_ledger_keeps_the_sketch,
                          check_per_example_norms)
from .stats import assert_unbiased

transformers = pytest.importorskip("transformers")
Conv1D = transformers.pytorch_utils.Conv1D

pytestmark = pytest.mark.usefixtures("one_thread")

SKETCHES = [Bernoulli(0.3), Subsample(0.3), Subsample(0.3, per_example=True), Subsample(0.3, replace=True),
            Projection(0.3), Projection(0.3, dist="gaussian", per_example=True), Importance(0.3)]


def _layer() -> tuple[nn.Module, torch.Tensor]:
    """7 outputs from 5 inputs, a (3, 4, 5) input: leading dims beyond the batch are flattened into rows."""
    g = torch.Generator().manual_seed(2)
    layer = Conv1D(7, 5).double()
    with torch.no_grad():
        layer.bias.normal_(generator=g)
    return layer, torch.randn(3, 4, 5, generator=g, dtype=torch.float64)


def _draws(module: nn.Module, x: torch.Tensor, gy: torch.Tensor, n: int) -> torch.Tensor:
    return torch.stack([torch.autograd.grad(module(x), module.weight, gy)[0] for _ in range(n)])


def test_twin_is_registered_with_the_linear_statistics():
    layer, _ = _layer()
    rad = radvar.convert(layer, Subsample(0.5))
    assert type(rad).__name__ == "RADHFConv1D" and isinstance(rad, Conv1D)
    assert type(rad).views == ("features", "rows")
    assert type(kind_for(layer)) is type(kind_for(nn.Linear(2, 2)))
    types = radvar.layers.randomizable_types()
    assert "transformers.pytorch_utils.Conv1D" in types and "torch.nn.Conv1d" in types
    assert repr(rad) == "Conv1D(nf=7, nx=5, sketch=Subsample(0.5, shared))"


@pytest.mark.parametrize("view", ["features", "rows"])
@pytest.mark.parametrize("sketch", SKETCHES, ids=lambda s: s.label())
def test_weight_gradient_unbiased_float64(sketch, view):
    """z-test per entry over 300 draws (threshold from the draws' own standard deviation), Bonferroni."""
    layer, x = _layer()
    rad = radvar.convert(layer, dataclasses.replace(sketch, view=view))
    gy = torch.randn_like(layer(x))
    exact, = torch.autograd.grad(layer(x), layer.weight, gy)
    draws = _draws(rad, x, gy, 300)
    assert draws.shape[1:] == layer.weight.shape == (5, 7)
    assert_unbiased(draws, exact, rtol=1e-12)


def test_input_and_bias_gradients_exact():
    layer, x = _layer()
    x = x.requires_grad_()
    rad = radvar.convert(layer, Subsample(0.3))
    y, y_ref = rad(x), layer(x)
    torch.testing.assert_close(y, y_ref, rtol=1e-12, atol=1e-12)
    gy = torch.randn_like(y)
    got = torch.autograd.grad(y, (x, rad.bias), gy)
    ref = torch.autograd.grad(y_ref, (x, layer.bias), gy)
    torch.testing.assert_close(got, ref, rtol=1e-12, atol=1e-12)


def test_keep_one_is_bitwise_plain_autograd():
    layer, x = _layer()
    x = x.requires_grad_()
    gy = torch.randn_like(layer(x))
    ref = torch.autograd.grad(layer(x), (x, layer.weight, layer.bias), gy)
    rad = radvar.convert(layer, Subsample(1.0))
    y = rad(x)
    assert torch.equal(y, layer(x))
    for got, want in zip(torch.autograd.grad(y, (x, rad.weight, rad.bias), gy), ref):
        assert torch.equal(got, want)


@pytest.mark.parametrize("view", ["features", "rows"])
def test_analytic_agrees_with_500_draw_monte_carlo(view):
    layer, x = _layer()
    check_analytic_agrees_with_monte_carlo(layer, x, SKETCHES, view)


def test_per_example_norms_match_torch_func():
    check_per_example_norms(*_layer())


@pytest.mark.parametrize("sketch", [Subsample(0.25), Subsample(0.25, view="rows"), Projection(0.25)],
                         ids=lambda s: s.label())
def test_ledger_keeps_the_sketch_not_the_input(sketch):
    view = (40, 32) if sketch.view in (None, "features") else (32, 40)
    check_ledger_keeps_the_sketch(Conv1D(16, 32), torch.randn(4, 10, 32), sketch, view)


def _gpt2() -> nn.Module:
    cfg = transformers.GPT2Config(n_layer=2, n_embd=64, n_head=4, vocab_size=50, n_positions=16,
                                  bos_token_id=0, eos_token_id=0)
    return transformers.GPT2Model(cfg).train()


def test_gpt2_projections_become_twins_and_convert_is_quiet():
    model = _gpt2()
    with warnings.catch_warnings():
        warnings.simplefilter("error", radvar.CoverageWarning)
        rad = radvar.convert(model, Subsample(0.1))
    projections = {n: type(m).__name__ for n, m in rad.named_modules() if isinstance(m, Conv1D)}
    assert sorted(projections) == sorted(f"h.{i}.{p}" for i in range(2)
                                         for p in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"))
    assert set(projections.values()) == {"RADHFConv1D"}
    assert all(m.sketch == Subsample(0.1) for n, m in rad.named_modules() if n in projections)
    ids = torch.randint(0, 50, (2, 16), generator=torch.Generator().manual_seed(3))
    exact = radvar.memory.saved_bytes(radvar.convert(model, None), ids).total
    only_projections = radvar.convert(model, radvar.Plan({n: Subsample(0.1) for n in projections}))
    converted = radvar.memory.saved_bytes(only_projections, ids).total
    # measured: each projection's input (32 token rows; 256 features into mlp.c_proj) replaced by its sketch
    inputs = {n: m.nx for n, m in rad.named_modules() if isinstance(m, Conv1D)}
    assert exact - converted == sum(32 * nx * 4 - Subsample(0.1).saved_bytes((32, nx), torch.float32)
                                    for nx in inputs.values())
    out = rad(ids).last_hidden_state.sum()
    out.backward()
    assert all(torch.isfinite(p.grad).all() for p in rad.parameters() if p.grad is not None)
