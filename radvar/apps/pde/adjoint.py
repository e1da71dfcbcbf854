"""The randomized adjoint of :class:`~radvar.apps.pde.problem.ReactionDiffusion` as an autograd Function.

Forward solves and keeps per-step samples of the state (or every state, or
checkpoints); backward runs the discrete adjoint recursion on the unbiased
reconstructions (derivation in :mod:`radvar.pde`).
"""

from __future__ import annotations

import torch

from ...sketch.base import kept_count
from .problem import _PAIRS, ReactionDiffusion


class Adjoint(torch.autograd.Function):
    """Forward: solve and keep per-step samples (or all states, or checkpoints); backward: the adjoint above."""

    @staticmethod
    def forward(ctx, theta: torch.Tensor, prob: ReactionDiffusion, keeps: tuple[float, ...], key: int, every: int | None):  # type: ignore[override]
        rows = theta.shape[0]
        theta = theta.detach()
        ks = [kept_count(p, prob.m) for p in keeps]
        size = every or prob.chunk
        blocks = prob._chunks(size)
        phi = prob._phi0(rows)
        total = theta.new_zeros(rows)
        if every is None:  # per row: T x k sampled values (k = m: every state)
            kept = [theta.new_empty(prob.steps, k) for k in ks]
        else:  # the state entering each block
            kept = [theta.new_empty(len(blocks), rows, prob.interior, prob.interior)]
        for i, (a, b) in enumerate(blocks):
            if every is not None:
                kept[0][i] = phi
            states = prob._advance(phi, prob._step_matrices(theta, a - 1, b - 1))
            phi = states[-1]
            total += prob._loss_rows(states, a, b)
            if every is None:
                flat = states.view(b - a, rows, prob.m)
                for r, k in enumerate(ks):
                    vals = flat[:, r] if k == prob.m else flat[:, r].gather(1, prob._indices(key, r, i, b - a, k))
                    kept[r][a - 1 : b - 1] = vals
        ctx.save_for_backward(theta, *kept)
        ctx.prob, ctx.ks, ctx.key, ctx.every = prob, ks, key, every
        return total

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):  # type: ignore[override]
        theta, *kept = ctx.saved_tensors
        prob: ReactionDiffusion = ctx.prob
        ks, key, every = ctx.ks, ctx.key, ctx.every
        rows, m, nx = theta.shape[0], prob.m, prob.interior
        blocks = prob._chunks(every or prob.chunk)
        lam = theta.new_zeros(rows, nx, nx)  # lambda_{T+1}
        q_mat = prob._q.expand(rows, -1, -1)
        q = theta.new_zeros(rows, 3, 3)  # sum_s f_b(t_s) sum_x lambda_{s+1} phi_s g_a(x)
        for i in range(len(blocks) - 1, -1, -1):
            a, b = blocks[i]
            size = b - a
            if every is not None:
                phis = prob._advance(kept[0][i], prob._step_matrices(theta, a - 1, b - 1))
            else:
                flat = theta.new_zeros(size, rows, m)
                for r, k in enumerate(ks):
                    vals = kept[r][a - 1 : b - 1]
                    if k == m:
                        flat[:, r] = vals
                    else:
                        flat[:, r].scatter_(1, prob._indices(key, r, i, size, k), vals * (m / k))
                phis = flat.view(size, rows, nx, nx)
            g = (phis - prob._target_interior(a, b)) * (2 * prob.dt / prob.grid**2)
            mats = prob._step_matrices(theta, a, b)  # M_s is symmetric: P, diag S and Q are
            lams = theta.new_empty(size + 1, rows, nx, nx)
            lams[size] = lam
            for j in range(size - 1, -1, -1):
                torch.baddbmm(torch.baddbmm(g[j], lams[j + 1], q_mat), mats[j], lams[j + 1], out=lams[j])
            w = (lams[1:] * phis).sum(dim=3)  # (size, rows, nx): lambda_{s+1} phi_s summed over y
            q += torch.einsum("sbx,ax,sc->bac", w, prob._g, prob._time_basis(prob._times(a, b)))
            lam = lams[0]
        w0 = (lam * prob._phi0(rows)).sum(dim=2)  # s = 0, phi_0 exact
        q += torch.einsum("bx,ax,c->bac", w0, prob._g, prob._time_basis(prob._times(0, 1))[0])
        grad = torch.stack([q[:, a, c] for a, c in _PAIRS], dim=1) * prob.dt
        return grad * grad_out[:, None], None, None, None, None
