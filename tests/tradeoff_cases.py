"""The small digits problem the tradeoff tests share."""

from __future__ import annotations

import torch
from torch import nn

import radvar
from radvar import zoo


def small_digits_mlp(n: int) -> tuple[nn.Module, tuple[torch.Tensor, torch.Tensor], tuple]:
    """Seeded: a 64-32-32-10 MLP, all of digits, and a batch of the first ``n`` examples (copied)."""
    torch.manual_seed(0)
    radvar.seed(0)
    x, y = zoo.digits()
    model = zoo.mlp(in_features=64, hidden=32, depth=2)
    return model, (x, y), ((x[:n].clone(),), y[:n].clone())
