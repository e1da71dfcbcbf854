"""Every sketch x layer kind is unbiased; keep = 1 is exact."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

import radvar
from radvar.sketch import Bernoulli, Importance, Projection, Subsample

from .stats import assert_unbiased

SKETCHES = [
    Bernoulli(0.3),
    Bernoulli(0.3, per_example=False),
    Subsample(0.3),
    Subsample(0.3, per_example=True),
    Subsample(0.3, replace=True),
    Subsample(0.3, per_example=True, replace=True),
    Projection(0.3),
    Projection(0.3, dist="gaussian"),
    Projection(0.3, per_example=True),
    Importance(0.3),
]


def _layer(kind: str) -> tuple[nn.Module, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    if kind == "linear2d":
        return nn.Linear(12, 5), torch.randn(7, 12, generator=g)
    if kind == "linear3d":
        return nn.Linear(10, 4), torch.randn(3, 5, 10, generator=g)
    if kind == "conv1d":
        return nn.Conv1d(4, 6, 3, padding=1), torch.randn(3, 4, 11, generator=g)
    return nn.Conv2d(4, 6, 3, stride=2, padding=1, groups=2), torch.randn(2, 4, 7, 6, generator=g)


def _grads(module: nn.Module, x: torch.Tensor, gy: torch.Tensor, draws: int) -> torch.Tensor:
    out = []
    for _ in range(draws):
        w, = torch.autograd.grad(module(x), module.weight, gy)
        out.append(w)
    return torch.stack(out)


KINDS = ["linear2d", "linear3d", "conv1d", "conv2d"]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("sketch", SKETCHES, ids=lambda s: s.label())
def test_weight_gradient_unbiased(kind, sketch):
    base, x = _layer(kind)
    base = base.double()
    x = x.double()
    x = torch.relu(x) if isinstance(sketch, Importance) else x  # importance is built for sparse inputs too
    rad = radvar.convert(base, sketch)
    gy = torch.randn_like(base(x))
    exact, = torch.autograd.grad(base(x), base.weight, gy)
    assert_unbiased(_grads(rad, x, gy, draws=200), exact)


@pytest.mark.parametrize("kind,view", [("linear3d", "rows"), ("conv2d", "examples"), ("conv1d", "examples")])
@pytest.mark.parametrize("sketch", [Subsample(0.3), Bernoulli(0.3), Projection(0.3)], ids=lambda s: s.label())
def test_other_views_unbiased(kind, view, sketch):
    base, x = _layer(kind)
    base, x = base.double(), x.double()
    sk = dataclasses.replace(sketch, view=view)
    rad = radvar.convert(base, sk)
    gy = torch.randn_like(base(x))
    exact, = torch.autograd.grad(base(x), base.weight, gy)
    assert_unbiased(_grads(rad, x, gy, draws=200), exact)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("sketch", SKETCHES, ids=lambda s: s.label())
def test_input_and_bias_gradients_exact(kind, sketch):
    base, x = _layer(kind)
    base, x = base.double(), x.double().requires_grad_()
    rad = radvar.convert(base, sketch)
    gy = torch.randn_like(base(x))
    ex = torch.autograd.grad(base(x), [x, base.bias], gy)
    got = torch.autograd.grad(rad(x), [x, rad.bias], gy)
    for e, g in zip(ex, got):
        torch.testing.assert_close(g, e, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("cls", [Bernoulli, Subsample, Projection, Importance])
def test_keep_one_is_exact(kind, cls):
    base, x = _layer(kind)
    base, x = base.double(), x.double()
    rad = radvar.convert(base, cls(1.0))
    gy = torch.randn_like(base(x))
    exact, = torch.autograd.grad(base(x), base.weight, gy)
    got, = torch.autograd.grad(rad(x), rad.weight, gy)
    assert torch.equal(got, exact)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("sketch", [Subsample(1.0), Bernoulli(1.0), Importance(1.0)], ids=lambda s: s.label())
def test_sketch_math_at_keep_one_reconstructs_exactly(kind, sketch):
    """The op itself (not the layer's exact shortcut) reproduces the exact gradient at keep 1."""
    from radvar.ops import rad_conv, rad_linear

    base, x = _layer(kind)
    base, x = base.double(), x.double()
    gy = torch.randn_like(base(x))
    exact, = torch.autograd.grad(base(x), base.weight, gy)
    if isinstance(base, nn.Linear):
        y = rad_linear(x, base.weight, base.bias, sketch)
    else:
        y = rad_conv(x, base.weight, base.bias, base.stride, base.padding, base.dilation, base.groups, sketch)
    got, = torch.autograd.grad(y, base.weight, gy)
    torch.testing.assert_close(got, exact, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("kind", KINDS)
def test_dtypes(dtype, kind):
    base, x = _layer(kind)
    base, x = base.to(dtype), x.to(dtype).requires_grad_()
    for sketch in SKETCHES:
        rad = radvar.convert(base, sketch)
        y = rad(x)
        assert y.dtype == dtype
        torch.testing.assert_close(y, base(x))
        y.sum().backward()
        assert rad.weight.grad.dtype == dtype and torch.isfinite(rad.weight.grad).all()
        assert x.grad.dtype == dtype


def test_padding_modes_and_string_padding():
    for conv in [nn.Conv2d(3, 4, 3, padding="same"), nn.Conv2d(3, 4, 4, padding="same", dilation=2),
                 nn.Conv2d(3, 4, 3, padding=1, padding_mode="reflect"), nn.Conv1d(3, 4, 3, padding="valid")]:
        conv = conv.double()
        x = torch.randn(2, 3, *([9] * (conv.weight.dim() - 2)), dtype=torch.float64)
        rad = radvar.convert(conv, Subsample(0.5))
        torch.testing.assert_close(rad(x), conv(x))
        gy = torch.randn_like(conv(x))
        exact, = torch.autograd.grad(conv(x), conv.weight, gy)
        assert_unbiased(_grads(rad, x, gy, draws=200), exact)


def test_exact_context_and_no_grad():
    base, x = _layer("linear2d")
    rad = radvar.convert(base, Subsample(0.2))
    gy = torch.randn(7, 5)
    exact, = torch.autograd.grad(base(x), base.weight, gy)
    with radvar.exact():
        got, = torch.autograd.grad(rad(x), rad.weight, gy)
    assert torch.equal(got, exact)
    with torch.no_grad():
        torch.testing.assert_close(rad(x), base(x))


def test_frozen_weights_draw_nothing_and_keep_the_plain_graph():
    base, x = _layer("conv2d")
    rad = radvar.convert(base, Subsample(0.2))
    rad.weight.requires_grad_(False)
    xr = x.clone().requires_grad_()
    gx, = torch.autograd.grad(rad(xr), xr, torch.ones_like(base(x)))
    ref, = torch.autograd.grad(base(xr), xr, torch.ones_like(base(x)))
    assert torch.equal(gx, ref)
    state = radvar.rng._state.counter
    rad(x)
    assert radvar.rng._state.counter == state  # no RAD key was drawn


def test_importance_conv2d_float64_unbiased_to_float64_precision():
    """Regression (float64 Importance was computed in float32): on a float64 Conv2d whose channel 0 has
    few nonzeros per row (π = 1, so that slice of ∂W is deterministic) and whose other channels are
    dense, the mean of the draws matches the exact gradient within its z-bound plus 1e-12 relative."""
    g = torch.Generator().manual_seed(5)
    base = nn.Conv2d(3, 4, 3, padding=1).double()
    x = torch.randn(4, 3, 8, 8, generator=g, dtype=torch.float64) * 1e3 + 1 / 3
    x[:, 0] = 0.0
    x[:, 0, 0, :3] = torch.randn(4, 3, generator=g, dtype=torch.float64) + 1 / 7  # 3 of 64 positions
    rad = radvar.convert(base, Importance(0.3))
    gy = torch.randn(4, 4, 8, 8, generator=g, dtype=torch.float64)
    exact, = torch.autograd.grad(base(x), base.weight, gy)
    draws = _grads(rad, x, gy, draws=300)
    assert (draws[:, :, 0].std(0) == 0).all()
    assert_unbiased(draws, exact, rtol=1e-12)
