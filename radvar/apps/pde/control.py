"""Fitting the source parameters of :class:`~radvar.apps.pde.problem.ReactionDiffusion` with Adam, and its backward bytes."""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd
import torch

from ...memory import saved_bytes_of
from .problem import N_PARAMS, ReactionDiffusion


def initial_params(seed: int = 0, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """The paper's start: constant 4.932 (about D 2 pi^2, balancing diffusion), the others U(-0.1, 0.1) from ``seed``."""
    gen = torch.Generator().manual_seed(seed)
    theta = (torch.rand(N_PARAMS, generator=gen, dtype=dtype) * 2 - 1) * 0.1
    theta[0] = 4.932
    return theta


def backward_bytes(prob: ReactionDiffusion, params: torch.Tensor, keep: float = 1.0, method: str = "rad", **kw: int) -> int:
    """:func:`radvar.memory.saved_bytes_of` one forward of ``prob.loss(params, keep, method)`` (``params`` excluded)."""
    theta = params.detach().clone().requires_grad_(True)
    return saved_bytes_of(lambda: prob.loss(theta, keep, method, **kw), exclude=[theta])


def fit(
    prob: ReactionDiffusion,
    keep: float | Sequence[float] = 1.0,
    steps: int = 800,
    lr: float = 1e-2,
    seed: int = 0,
    method: str = "rad",
    init: torch.Tensor | None = None,
) -> pd.DataFrame:
    """Adam (lr ``lr``) on theta for ``steps`` iterations, one run per keep, all from the same start
    (:func:`initial_params` of ``seed`` unless ``init``), solved together in one vectorised batch.

    Returns a long DataFrame (run, step, keep, loss, theta0..theta6), ``run`` the row index of
    ``keep`` (repeat a keep for independent RAD runs): ``loss`` is the exact J of the
    iterate at ``step`` (the forward pass is exact for every keep); step = ``steps`` is the end point.
    """
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise ValueError(f"fit: steps must be an int >= 0, got {steps!r}")
    if not isinstance(lr, (int, float)) or not lr > 0:
        raise ValueError(f"fit: lr must be a number > 0, got {lr!r}")
    keeps = list(keep) if isinstance(keep, (list, tuple)) else [keep]
    start = initial_params(seed, prob.dtype) if init is None else init.detach().to(prob.dtype)
    theta = start.reshape(1, N_PARAMS).repeat(len(keeps), 1).requires_grad_(True)
    opt = torch.optim.Adam([theta], lr=lr)
    records = []

    def log(step: int, losses: torch.Tensor) -> None:
        for r, k in enumerate(keeps):
            row = {f"theta{j}": float(v) for j, v in enumerate(theta[r].detach())}
            records.append({"run": r, "step": step, "keep": k, "loss": float(losses[r]), **row})

    for step in range(steps):
        opt.zero_grad()
        losses = prob.loss(theta, keeps, method)
        log(step, losses.detach())
        losses.sum().backward()
        opt.step()
    with torch.no_grad():
        log(steps, prob.loss(theta, [1.0] * len(keeps), "exact" if method != "autograd" else method))
    return pd.DataFrame.from_records(records)
