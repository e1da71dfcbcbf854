"""Data noise of the minibatch gradient: tr Σ of per-example gradients, all parameters.

For a mean-reduced loss the minibatch gradient over B i.i.d. examples has
covariance trace ``tr Σ / B`` with ``Σ`` the covariance of one example's gradient
(DESIGN §2). On a batch, per-example gradients ``g_b`` (``torch.func.vmap`` of
``torch.func.grad``, the model run exactly) give the unbiased estimate
``tr Σ ≈ Σ_b ‖g_b − ḡ‖² / (B − 1)``.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import nn
from torch.func import functional_call, grad, vmap

from .. import rng
from ..variance.capture import split_batch


def trace_sigma(model: nn.Module, batch: Any, loss_fn: Callable[..., torch.Tensor], chunk: int = 64) -> float:
    """Unbiased tr Σ of the per-example gradient (every parameter) on ``batch = (inputs, targets)``.

    ``chunk`` examples are vectorised at a time. Needs a model whose forward treats
    examples independently (no batch norm in training mode) and at least 2 examples.
    """
    inputs, targets = split_batch(batch, "trace_sigma")
    n = int(inputs[0].shape[0])
    if n < 2:
        raise ValueError(f"trace_sigma: need at least 2 examples, got {n}")
    params = {k: v.detach() for k, v in model.named_parameters()}

    def one(p: dict[str, torch.Tensor], xs: tuple, t: torch.Tensor) -> torch.Tensor:
        out = functional_call(model, p, tuple(v.unsqueeze(0) for v in xs))
        return loss_fn(out, t.unsqueeze(0))

    per_example = vmap(grad(one), in_dims=(None, 0, 0))
    total_sq, mean = 0.0, {k: torch.zeros_like(v, dtype=torch.float64) for k, v in params.items()}
    with rng.exact():
        for start in range(0, n, chunk):
            sl = slice(start, start + chunk)
            g = per_example(params, tuple(v[sl] for v in inputs), targets[sl])
            for k, v in g.items():
                v = v.double()
                total_sq += float(v.square().sum())
                mean[k] += v.sum(0) / n
    mean_sq = sum(float(v.square().sum()) for v in mean.values())
    return (total_sq - n * mean_sq) / (n - 1)
