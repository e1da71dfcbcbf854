"""Checks every randomized layer kind must pass, shared by the per-kind test files."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import pandas as pd
import torch
from torch import nn

import radvar
from radvar import variance
from radvar.layers import kind_for
from radvar.sketch import Sketch
from radvar.variance.statistics import agreement, holm


class Single(nn.Module):
    """A model holding one layer under ``name``, so a Plan can name it."""

    def __init__(self, name: str, layer: nn.Module) -> None:
        super().__init__()
        self.name = name
        self.add_module(name, layer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return getattr(self, self.name)(x)


def linear_loss(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return (out * target).sum()


def check_analytic_agrees_with_monte_carlo(layer: nn.Module, x: torch.Tensor, sketches: Sequence[Sketch],
                                           view: str, draws: int = 500) -> None:
    """Every sketch in ``view``: analytic = empirical (z from both standard errors, Holm at 0.01), and the
    analytic value inside the empirical 99% interval for at least 90% of rows."""
    model = Single("layer", layer)
    target = torch.randn_like(model(x))
    tables = []
    for sk in sketches:
        plan = radvar.Plan({"layer": dataclasses.replace(sk, view=view)})
        a = variance.analytic(model, (x, target), linear_loss, plan)
        e = variance.empirical(model, (x, target), linear_loss, plan, draws=draws, confidence=0.99)
        tables.append(agreement(a, e))
    table = pd.concat(tables, ignore_index=True)
    reject, _ = holm(table["p"].to_numpy(), 0.01)
    assert not reject.any(), table.loc[reject, ["sketch", "rad_variance_analytic", "rad_variance_empirical", "z"]]
    assert table["inside_ci"].mean() >= 0.9


def check_per_example_norms(layer: nn.Module, x: torch.Tensor) -> None:
    """The kind's per-example squared gradient norms equal torch.func's per-example gradients."""
    from torch.func import functional_call, grad, vmap

    gy = torch.randn_like(layer(x))
    w, b = kind_for(layer).per_example_sq_norms(layer, x, gy)
    params = {k: v.detach() for k, v in layer.named_parameters()}
    per = vmap(grad(lambda p, xi, gi: (functional_call(layer, p, (xi[None],)) * gi[None]).sum()),
               in_dims=(None, 0, 0))(params, x, gy)
    torch.testing.assert_close(w, per["weight"].flatten(1).square().sum(1))
    torch.testing.assert_close(b, per["bias"].square().sum(1))


def check_ledger_keeps_the_sketch(layer: nn.Module, x: torch.Tensor, sketch: Sketch, view: tuple[int, int]) -> None:
    """Measured by the saved-tensor ledger: the plain layer keeps its input, the twin exactly the sketch's bytes
    of the (rows, features) ``view``, under a third of the input at these keeps."""
    plain = radvar.memory.saved_bytes(layer, x).total
    rad = radvar.memory.saved_bytes(radvar.convert(layer, sketch), x).total
    assert plain == x.numel() * x.element_size()
    assert rad == sketch.saved_bytes(view, x.dtype) < plain / 3
