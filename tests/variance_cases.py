"""The variance matrix cases shared by tests/test_variance.py and benchmarks/bench_variance.py:
every catalogue sketch on one small layer of each kind, with fixed inputs and output gradients."""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

import radvar
from radvar.sketch import Bernoulli, Importance, Projection, Subsample

SKETCHES = [
    Bernoulli(0.3), Bernoulli(0.3, per_example=False),
    Subsample(0.3), Subsample(0.3, per_example=True), Subsample(0.3, replace=True),
    Subsample(0.3, per_example=True, replace=True),
    Projection(0.3), Projection(0.3, dist="gaussian"), Projection(0.3, per_example=True),
    Projection(0.3, dist="gaussian", per_example=True), Importance(0.3),
]


class FourKinds(nn.Module):
    """One small layer of each kind on its own input: Linear 2-D and 3-D, Conv1d (reflect), Conv2d (stride, groups)."""

    def __init__(self) -> None:
        super().__init__()
        self.lin2 = nn.Linear(10, 4)
        self.lin3 = nn.Linear(8, 3)
        self.conv1 = nn.Conv1d(3, 4, 3, padding=1, padding_mode="reflect")
        self.conv2 = nn.Conv2d(4, 6, 3, stride=2, padding=1, groups=2)

    def forward(self, a, b, c, d):
        return self.lin2(a), self.lin3(b), self.conv1(c), self.conv2(d)


def linear_loss(outs, targets) -> torch.Tensor:
    """Σ ⟨out, t⟩: the output gradients are the fixed targets."""
    return sum((o * t).sum() for o, t in zip(outs, targets))


def four_kinds() -> tuple[nn.Module, tuple, tuple]:
    g = torch.Generator().manual_seed(3)
    model = FourKinds().double()
    shapes = [(6, 10), (2, 4, 8), (3, 3, 9), (3, 4, 6, 5)]
    inputs = tuple(torch.relu(torch.randn(s, generator=g, dtype=torch.float64)) for s in shapes)  # sparse, as ReLU
    targets = tuple(torch.randn(o.shape, generator=g, dtype=torch.float64) for o in model(*inputs))
    return model, inputs, targets


def plan_for(sketch, other_views: bool) -> radvar.Plan:
    lin = dataclasses.replace(sketch, view="rows") if other_views else sketch
    conv = dataclasses.replace(sketch, view="examples") if other_views else sketch
    return radvar.Plan({"lin2": lin, "lin3": lin, "conv1": conv, "conv2": conv})
