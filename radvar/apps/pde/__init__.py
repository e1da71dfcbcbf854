"""Linear reaction-diffusion control with a randomized adjoint (RAD, Oktay et al., ICLR 2021, §5.3).

Problem (the paper's fission-reactor toy model). On the unit square, Dirichlet
boundary phi = 0,

    d phi / dt = D lap(phi) + S(x, t; theta) phi,
    S = th0 + th1 sin(pi t) + th2 cos(pi t)
        + sin(2 pi x) (th3 sin(pi t) + th4 cos(pi t))
        + cos(2 pi x) (th5 sin(pi t) + th6 cos(pi t)),
    phi(x, y, 0) = sin(pi x) sin(pi y),
    target(x, y, t) = sin(pi x) sin(pi y) + 0.25 sin(2 pi x) sin(pi y) sin(pi t).

Discretisation: an n x n grid with spacing dx = 1/(n-1), explicit Euler with the
five-point Laplacian, interior points only (the boundary stays 0):

    phi_{s+1} = M_s phi_s,   M_s = I + r L + dt diag(S(t_s)),   r = D dt / dx^2,  t_s = s dt,

stable for 4 r <= 1 (FTCS bound, e.g. LeVeque, *Finite Difference Methods*, 2007, §9.6).
As L = T (x) I + I (x) T (T = tridiag(1, -2, 1)) and S does not depend on y, a step is two
batched matrix products: M_s phi = (P + dt diag_x S_s) phi + phi Q, P = (1 - 4r) I + r Sh, Q = r Sh
(Sh: ones on the first off-diagonals).
Loss: J = sum_{s=1..T} dt * mean_grid (phi_s - target(t_s))^2, the mean over all
n^2 grid points (boundary errors are 0).

Adjoint (discrete, exact). With g_s = dJ/dphi_s = (2 dt / n^2) (phi_s - target_s) and
lambda_{T+1} = 0,

    lambda_s = g_s + M_s^T lambda_{s+1}          (s = T .. 1; M_s symmetric),
    dJ/dtheta = sum_{s=0..T-1} dt sum_x lambda_{s+1}(x) phi_s(x) dS(x, t_s)/dtheta.

The recursion for lambda is linear and needs no state; the state enters only
through g_s (linear in phi_s) and the parameter contraction (linear in phi_s).

Randomized adjoint. For each step s >= 1 forward keeps k = ceil(keep * m) of the
m interior values of phi_s, drawn without replacement, independently per step
(indices regenerated from a seed in backward, never stored). Backward uses
phî_s = (m/k) Pi_s phi_s (Pi_s the 0/1 diagonal of the sample), so E[phî_s] = phi_s since each
point is kept with probability k/m. Then lambdâ is linear in the phî, so
E[lambdâ_s] = lambda_s; and lambdâ_{s+1} depends only on the samples of steps
> s, independent of the sample of step s, so
E[lambdâ_{s+1}(x) phî_s(x)] = lambda_{s+1}(x) phi_s(x): every term of dJ/dtheta
is unbiased. phi_0 is known and used exactly. keep = 1 stores phi_s whole and is
the exact adjoint; ``method="checkpoint"`` stores every c-th state and recomputes
the rest in backward (Griewank & Walther, *Evaluating Derivatives*, 2008, ch. 12).

Memory is what autograd keeps for backward, measured by :func:`radvar.memory.saved_bytes_of`
(unique storages packed through ``torch.autograd.graph.saved_tensors_hooks``,
parameters excluded): T k values for RAD, T m for exact, ceil(T/c) m for checkpoints.
"""

from .control import backward_bytes, fit, initial_params
from .problem import METHODS, N_PARAMS, ReactionDiffusion

__all__ = ["ReactionDiffusion", "METHODS", "N_PARAMS", "initial_params", "backward_bytes", "fit"]
