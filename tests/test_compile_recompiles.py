"""torch.compile of a converted ResNet: RAD conv twins never make dynamo recompile once per layer shape."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import radvar
from radvar import zoo
from radvar.sketch import Subsample


@pytest.mark.slow
def test_converted_resnet_compiles_without_recompiles(one_thread):
    """A converted ResNet-18 (width 8) compiles with dynamo's recompile limit a hard error (the RAD conv
    forward used to be compiled once per layer configuration until it hit the limit; it now runs eagerly
    as a whole); the compiled step's gradients equal the eager ones at the same seed."""
    import torch._dynamo

    model = radvar.convert(zoo.resnet18(classes=3, width=8), Subsample(0.5)).eval()
    x, y = torch.randn(2, 3, 32, 32), torch.tensor([0, 2])
    torch._dynamo.reset()
    compiled = torch.compile(model, backend="eager")
    try:
        with torch._dynamo.config.patch(fail_on_recompile_limit_hit=True):
            radvar.seed(3)
            F.cross_entropy(compiled(x), y).backward()
            got = [p.grad.clone() for p in model.parameters()]
            model.zero_grad(set_to_none=True)
            F.cross_entropy(compiled(x), y).backward()  # a second step: no recompile either
    finally:
        torch._dynamo.reset()
    model.zero_grad(set_to_none=True)
    radvar.seed(3)
    F.cross_entropy(model(x), y).backward()
    for a, b in zip(got, [p.grad for p in model.parameters()]):
        torch.testing.assert_close(a, b)
