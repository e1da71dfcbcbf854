"""nn.ConvTranspose2d as a RAD layer kind: unbiased in float64, closed forms against Monte Carlo, ledger bytes."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

import radvar
from radvar.layers import kind_for
from radvar.ops import rad_convolution
from radvar.sketch import Bernoulli, Importance, Projection, Subsample

from .kind_checks import (check_analytic_agrees_with_monte_carlo, check_ledger_keeps_the_sketch,
                          check_per_example_norms)
from .stats import assert_unbiased

pytestmark = pytest.mark.usefixtures("one_thread")

SKETCHES = [Bernoulli(0.3), Subsample(0.3), Subsample(0.3, per_example=True), Subsample(0.3, replace=True),
            Projection(0.3), Projection(0.3, dist="gaussian", per_example=True), Importance(0.3)]


def _layer() -> tuple[nn.Module, torch.Tensor]:
    """Stride 2, padding 1, dilation 2, output padding 1, two groups: every index of the transposed map."""
    g = torch.Generator().manual_seed(2)
    layer = nn.ConvTranspose2d(4, 6, 3, stride=2, padding=1, output_padding=1, groups=2, dilation=2).double()
    return layer, torch.randn(3, 4, 5, 4, generator=g, dtype=torch.float64).relu()


def _draws(module: nn.Module, x: torch.Tensor, gy: torch.Tensor, n: int) -> torch.Tensor:
    return torch.stack([torch.autograd.grad(module(x), module.weight, gy)[0] for _ in range(n)])


def test_twin_is_registered_with_statistics():
    layer, _ = _layer()
    rad = radvar.convert(layer, Subsample(0.5))
    assert type(rad).__name__ == "RADConvTranspose2d" and isinstance(rad, nn.ConvTranspose2d)
    assert type(rad).views == ("positions", "examples") and kind_for(layer) is type(rad).kind
    assert "torch.nn.ConvTranspose2d" in radvar.layers.randomizable_types()


@pytest.mark.parametrize("view", ["positions", "examples"])
@pytest.mark.parametrize("sketch", SKETCHES, ids=lambda s: s.label())
def test_weight_gradient_unbiased_float64(sketch, view):
    """z-test per entry over 300 draws (threshold from the draws' own standard deviation), Bonferroni."""
    layer, x = _layer()
    rad = radvar.convert(layer, dataclasses.replace(sketch, view=view))
    gy = torch.randn_like(layer(x))
    exact, = torch.autograd.grad(layer(x), layer.weight, gy)
    assert_unbiased(_draws(rad, x, gy, 300), exact, rtol=1e-12)


def test_input_and_bias_gradients_exact_and_output_size_respected():
    layer, x = _layer()
    x = x.requires_grad_()
    rad = radvar.convert(layer, Subsample(0.3))
    for size in (None, [11, 9]):
        y, y_ref = rad(x, output_size=size), layer(x, output_size=size)
        assert torch.equal(y, y_ref)
        gy = torch.randn_like(y)
        got = torch.autograd.grad(y, (x, rad.bias), gy)
        ref = torch.autograd.grad(y_ref, (x, layer.bias), gy)
        torch.testing.assert_close(got, ref, rtol=1e-12, atol=1e-12)


def test_keep_one_is_exact_and_the_op_at_keep_one_reconstructs():
    layer, x = _layer()
    gy = torch.randn_like(layer(x))
    exact, = torch.autograd.grad(layer(x), layer.weight, gy)
    rad = radvar.convert(layer, Subsample(1.0))
    assert torch.equal(torch.autograd.grad(rad(x), rad.weight, gy)[0], exact)
    y = rad_convolution(x, layer.weight, layer.bias, layer.stride, layer.padding, layer.dilation, True,
                        layer.output_padding, layer.groups, Subsample(1.0))
    torch.testing.assert_close(torch.autograd.grad(y, layer.weight, gy)[0], exact, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("view", ["positions", pytest.param("examples", marks=pytest.mark.slow)])
def test_analytic_agrees_with_500_draw_monte_carlo(view):
    layer, x = _layer()
    check_analytic_agrees_with_monte_carlo(layer, x, SKETCHES, view)


def test_per_example_norms_match_torch_func():
    check_per_example_norms(*_layer())


@pytest.mark.parametrize("sketch", [Subsample(0.25), Subsample(0.25, view="examples"), Projection(0.25)],
                         ids=lambda s: s.label())
def test_ledger_keeps_the_sketch_not_the_input(sketch):
    view = (4 * 8, 100) if sketch.view in (None, "positions") else (4, 800)
    layer, x = nn.ConvTranspose2d(8, 4, 3, stride=2).float(), torch.randn(4, 8, 10, 10)
    check_ledger_keeps_the_sketch(layer, x, sketch, view)
