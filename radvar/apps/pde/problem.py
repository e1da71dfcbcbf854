"""The discretised reaction-diffusion control problem (see :mod:`radvar.pde` for every formula)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from ... import rng
from ...rng import mix
from ...sketch.base import check_keep

METHODS = ("rad", "exact", "checkpoint", "autograd")
N_PARAMS = 7
# (spatial basis a, time basis b) of each parameter: S = sum_j theta_j g_a(x) f_b(t),
# g = (1, sin 2 pi x, cos 2 pi x), f = (1, sin pi t, cos pi t).
_PAIRS = ((0, 0), (0, 1), (0, 2), (1, 1), (1, 2), (2, 1), (2, 2))
_MASK63 = (1 << 63) - 1


class ReactionDiffusion:
    """The discretised control problem; see the module docstring for every formula.

    ``grid`` points per side (boundary included, >= 5 so sin(2 pi x) is resolved),
    ``diffusion`` D > 0, time step ``dt`` with 4 D dt / dx^2 <= 1, ``steps`` = T.
    ``chunk`` steps are processed per vectorised block (memory of the transient
    block buffers, not of what backward keeps). The paper: grid 33, D = 0.25,
    dt = 1/4096, T = 40960 (10 time units).
    """

    def __init__(
        self,
        grid: int = 33,
        diffusion: float = 0.25,
        dt: float = 1 / 4096,
        steps: int = 40960,
        *,
        chunk: int = 512,
        dtype: torch.dtype = torch.float64,
        device: torch.device | str = "cpu",
    ) -> None:
        if isinstance(grid, bool) or not isinstance(grid, int) or grid < 5:
            raise ValueError(f"ReactionDiffusion: grid must be an int >= 5 (points per side, boundary included), got {grid!r}")
        if not isinstance(diffusion, (int, float)) or not math.isfinite(diffusion) or diffusion <= 0:
            raise ValueError(f"ReactionDiffusion: diffusion must be a finite number > 0, got {diffusion!r}")
        if not isinstance(dt, (int, float)) or not math.isfinite(dt) or dt <= 0:
            raise ValueError(f"ReactionDiffusion: dt must be a finite number > 0, got {dt!r}")
        dx = 1.0 / (grid - 1)
        number = 4 * diffusion * dt / dx**2
        if number > 1 + 1e-12:
            raise ValueError(
                f"ReactionDiffusion: dt={dt!r} breaks explicit-Euler stability: 4*D*dt/dx**2 = {number:.4g} > 1 "
                f"(D={diffusion}, dx=1/{grid - 1}); allowed: dt <= {dx**2 / (4 * diffusion):.6g}"
            )
        for name, value in (("steps", steps), ("chunk", chunk)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"ReactionDiffusion: {name} must be an int >= 1, got {value!r}")
        self.grid, self.diffusion, self.dt, self.steps, self.chunk = grid, float(diffusion), float(dt), steps, chunk
        self.dtype, self.device = dtype, torch.device(device)
        self.dx = dx
        self.r = self.diffusion * self.dt / dx**2
        self.interior = grid - 2
        self.m = self.interior**2
        kw = {"dtype": dtype, "device": self.device}
        self.x_full = torch.linspace(0.0, 1.0, grid, **kw)
        x = self.x_full[1:-1]
        self._sx = torch.sin(math.pi * x)
        self._g = torch.stack([torch.ones_like(x), torch.sin(2 * math.pi * x), torch.cos(2 * math.pi * x)])  # (3, nx)
        # I + r L = P (.) + (.) Q on the interior (Dirichlet 0): L = T (x) I + I (x) T, T = tridiag(1, -2, 1).
        shift = torch.diag(torch.ones(self.interior - 1, **kw), 1)
        shift = shift + shift.T
        self._p = (1 - 4 * self.r) * torch.eye(self.interior, **kw) + self.r * shift
        self._q = self.r * shift

    def __repr__(self) -> str:
        return f"ReactionDiffusion(grid={self.grid}, diffusion={self.diffusion}, dt={self.dt!r}, steps={self.steps})"

    # ---- problem definition (full grid, for users) ----
    def _time_basis(self, t: torch.Tensor) -> torch.Tensor:
        """f(t) = (1, sin pi t, cos pi t), shape (..., 3)."""
        return torch.stack([torch.ones_like(t), torch.sin(math.pi * t), torch.cos(math.pi * t)], dim=-1)

    def _as_time(self, t: float | torch.Tensor) -> torch.Tensor:
        return torch.as_tensor(t, dtype=self.dtype, device=self.device)

    def source(self, params: torch.Tensor, t: float | torch.Tensor) -> torch.Tensor:
        """S(x, y, t) on the full grid, shape (grid, grid) (x along dim 0); ``params`` shape (7,)."""
        theta = _check_params(params, self)
        if theta.shape[0] != 1:
            raise ValueError(f"source: params must have shape (7,), got {tuple(params.shape)}")
        x = self.x_full
        g = torch.stack([torch.ones_like(x), torch.sin(2 * math.pi * x), torch.cos(2 * math.pi * x)])
        f = self._time_basis(self._as_time(t))
        s = sum(theta[0, j] * g[a] * f[b] for j, (a, b) in enumerate(_PAIRS))
        return s[:, None].expand(self.grid, self.grid)

    def initial(self) -> torch.Tensor:
        """phi(x, y, 0) = sin(pi x) sin(pi y) on the full grid (boundary exactly 0)."""
        s = torch.sin(math.pi * self.x_full)
        s[0] = s[-1] = 0.0
        return s[:, None] * s[None, :]

    def target(self, t: float | torch.Tensor) -> torch.Tensor:
        """sin(pi x) sin(pi y) + 0.25 sin(2 pi x) sin(pi y) sin(pi t), shape (*t.shape, grid, grid)."""
        t = self._as_time(t)
        x = self.x_full
        sy = torch.sin(math.pi * x)
        sy[0] = sy[-1] = 0.0
        s2 = torch.sin(2 * math.pi * x)
        s2[0] = s2[-1] = 0.0
        amp = torch.sin(math.pi * t)[..., None, None]
        return sy[:, None] * sy[None, :] + 0.25 * amp * s2[:, None] * sy[None, :]

    def simulate(self, params: torch.Tensor, every: int = 1) -> torch.Tensor:
        """States phi_s on the full grid for s = 0, every, 2 every, ..., shape (S, grid, grid)."""
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise ValueError(f"simulate: every must be an int >= 1, got {every!r}")
        theta = _check_params(params, self).detach()
        if theta.shape[0] != 1:
            raise ValueError(f"simulate: params must have shape (7,), got {tuple(params.shape)}")
        phi = self._phi0(1)
        out = [phi]
        for a, b in self._chunks():
            buf = self._advance(phi, self._step_matrices(theta, a - 1, b - 1))
            phi = buf[-1]
            out.extend(buf[s - a] for s in range(a, b) if s % every == 0)
        inner = torch.stack(out)[:, 0]
        return F.pad(inner, (1, 1, 1, 1))

    # ---- vectorised interior machinery (states shaped (B, nx, ny), x along dim -2) ----
    def _phi0(self, rows: int) -> torch.Tensor:
        return (self._sx[:, None] * self._sx[None, :]).expand(rows, -1, -1).clone()

    def _chunks(self, size: int | None = None) -> list[tuple[int, int]]:
        """Blocks [a, b) of state indices 1..T."""
        size = size or self.chunk
        return [(a, min(a + size, self.steps + 1)) for a in range(1, self.steps + 1, size)]

    def _times(self, lo: int, hi: int) -> torch.Tensor:
        return torch.arange(lo, hi, dtype=self.dtype, device=self.device) * self.dt

    def _step_matrices(self, theta: torch.Tensor, lo: int, hi: int) -> torch.Tensor:
        """P + dt diag_x S(x, t_s) for s in [lo, hi), shape (hi-lo, B, nx, nx): since S does not depend
        on y, M_s phi = (P + dt diag S_s) phi + phi Q, two batched matrix products per step."""
        w = theta.new_zeros(theta.shape[0], 3, 3)
        for j, (a, b) in enumerate(_PAIRS):
            w[:, a, b] = theta[:, j]
        s = torch.einsum("bac,ax,nc->nbx", w, self._g, self._time_basis(self._times(lo, hi)))
        mats = self._p.expand(*s.shape, -1).clone()
        mats.diagonal(dim1=-2, dim2=-1).add_(s, alpha=self.dt)
        return mats

    def _target_interior(self, lo: int, hi: int) -> torch.Tensor:
        """target(t_s) on the interior for s in [lo, hi), shape (hi-lo, 1, nx, ny)."""
        amp = torch.sin(math.pi * self._times(lo, hi))
        s2 = self._g[1]
        base = self._sx[:, None] * self._sx[None, :]
        return (base + 0.25 * amp[:, None, None] * (s2[:, None] * self._sx[None, :]))[:, None]

    def _advance(self, phi: torch.Tensor, mats: torch.Tensor) -> torch.Tensor:
        """phi_{s+1} = M_s phi_s for each step matrix in ``mats``; returns the new states (steps, B, nx, ny)."""
        buf = phi.new_empty((mats.shape[0], *phi.shape))
        q = self._q.expand(phi.shape[0], -1, -1)
        for j in range(mats.shape[0]):
            torch.baddbmm(torch.bmm(phi, q), mats[j], phi, out=buf[j])
            phi = buf[j]
        return buf

    def _loss_rows(self, states: torch.Tensor, lo: int, hi: int) -> torch.Tensor:
        diff = states - self._target_interior(lo, hi)
        return diff.square().sum(dim=(0, 2, 3)) * (self.dt / self.grid**2)

    def _indices(self, key: int, row: int, block: int, size: int, k: int) -> torch.Tensor:
        """k of the m interior positions per step, uniform without replacement, independent per step,
        for one block of one row; a pure function of (key, row, block), so backward regenerates it.
        Small k: k uniform draws, rows with a repeat redrawn (rejection keeps the subset uniform);
        otherwise the k largest of m uniforms. The seed is a splitmix64 hash of (key, row, block):
        torch's CPU generator (mt19937) reads only the low 32 bits of a seed, so structured
        offsets such as key + row * 2**32 would repeat streams."""
        gen = rng.generator(mix(key ^ mix((row << 32) | block)) & _MASK63, self.device)
        if k * (k - 1) >= self.m:
            return torch.rand(size, self.m, generator=gen, device=self.device).topk(k, dim=1, sorted=False).indices
        idx = torch.randint(0, self.m, (size, k), generator=gen, device=self.device)
        while k > 1:
            ordered = idx.sort(dim=1).values
            bad = (ordered[:, 1:] == ordered[:, :-1]).any(dim=1).nonzero().flatten()
            if bad.numel() == 0:
                break
            idx[bad] = torch.randint(0, self.m, (bad.numel(), k), generator=gen, device=self.device)
        return idx

    # ---- public losses and gradients ----
    def loss(
        self,
        params: torch.Tensor,
        keep: float | Sequence[float] = 1.0,
        method: str = "rad",
        *,
        checkpoint_every: int | None = None,
    ) -> torch.Tensor:
        """J(theta), differentiable; ``params`` (7,) or (B, 7) (B independent runs in one vectorised solve).

        ``method``: "rad" (sampled adjoint, ``keep`` a fraction or one per row), "exact"
        (adjoint storing all states), "checkpoint" (states every ``checkpoint_every``
        steps, default ceil(sqrt(T)), recomputed in backward), "autograd" (plain
        autograd through a slicing-stencil solver; the reference). Inside
        ``radvar.exact()`` "rad" computes the exact gradient. Returns shape () or (B,).
        """
        if method not in METHODS:
            raise ValueError(f"loss: method must be one of {METHODS}, got {method!r}")
        theta = _check_params(params, self)
        rows = theta.shape[0]
        keeps = _check_keeps(keep, rows)
        if method != "rad" and any(k != 1.0 for k in keeps):
            raise ValueError(f"loss: keep < 1 needs method='rad', got keep={keep!r} with method={method!r}")
        if method == "autograd":
            out = self._autograd_loss(theta)
        else:
            every = None
            if checkpoint_every is not None and method != "checkpoint":
                raise ValueError(f"loss: checkpoint_every applies to method='checkpoint' only, got method={method!r}")
            if method == "checkpoint":
                every = checkpoint_every or math.ceil(math.sqrt(self.steps))
                if isinstance(every, bool) or not isinstance(every, int) or every < 1:
                    raise ValueError(f"loss: checkpoint_every must be an int >= 1, got {checkpoint_every!r}")
            if method == "exact" or rng.is_exact():
                keeps = (1.0,) * rows
            from .adjoint import Adjoint  # the adjoint op drives this class's solver steps

            out = Adjoint.apply(theta, self, keeps, rng.next_key(), every)
        return out if params.dim() == 2 else out[0]

    def gradient(
        self, params: torch.Tensor, keep: float | Sequence[float] = 1.0, method: str = "rad", **kw: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(J, dJ/dtheta) per row; for "rad" with keep < 1 one independent unbiased draw per row."""
        theta = params.detach().clone().requires_grad_(True)
        value = self.loss(theta, keep, method, **kw)
        (grad,) = torch.autograd.grad(value.sum(), theta)
        return value.detach(), grad

    def _autograd_loss(self, theta: torch.Tensor) -> torch.Tensor:
        """Reference: full-grid explicit Euler with a slicing Laplacian, differentiated by autograd."""
        n = self.grid
        phi = self.initial().expand(theta.shape[0], n, n)
        x = self.x_full
        g = torch.stack([torch.ones_like(x), torch.sin(2 * math.pi * x), torch.cos(2 * math.pi * x)])
        total = theta.new_zeros(theta.shape[0])
        for s in range(self.steps):
            f = self._time_basis(self._as_time(s * self.dt))
            src = sum(theta[:, j, None] * (g[a] * f[b]) for j, (a, b) in enumerate(_PAIRS))  # (B, n) over x
            c = phi[:, 1:-1, 1:-1]
            lap = phi[:, :-2, 1:-1] + phi[:, 2:, 1:-1] + phi[:, 1:-1, :-2] + phi[:, 1:-1, 2:] - 4 * c
            inner = c + self.r * lap + self.dt * src[:, 1:-1, None] * c
            phi = F.pad(inner, (1, 1, 1, 1))
            total = total + self.dt * (phi - self.target((s + 1) * self.dt)).square().mean(dim=(1, 2))
        return total


def _check_params(params: torch.Tensor, prob: ReactionDiffusion) -> torch.Tensor:
    if not isinstance(params, torch.Tensor):
        raise TypeError(f"params must be a torch.Tensor of shape (7,) or (B, 7), got {type(params).__name__}")
    if params.dim() not in (1, 2) or params.shape[-1] != N_PARAMS:
        raise ValueError(f"params must have shape (7,) or (B, 7), got {tuple(params.shape)}")
    if params.dtype != prob.dtype:
        raise ValueError(f"params dtype {params.dtype} does not match the problem's dtype {prob.dtype}")
    return params.reshape(-1, N_PARAMS)


def _check_keeps(keep: float | Sequence[float], rows: int) -> tuple[float, ...]:
    if isinstance(keep, (list, tuple)):
        if len(keep) != rows:
            raise ValueError(f"keep: a sequence needs one value per params row ({rows}), got {len(keep)}")
        return tuple(check_keep(k, "ReactionDiffusion") for k in keep)
    return (check_keep(keep, "ReactionDiffusion"),) * rows
