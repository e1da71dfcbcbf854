"""radvar.pde: exact adjoint vs autograd, unbiased randomized adjoint, measured memory, bad input."""

from __future__ import annotations

import math

import pytest
import torch
from scipy.stats import norm

import radvar
from radvar import pde


pytestmark = pytest.mark.usefixtures("one_thread")


def _params(seed: int = 1) -> torch.Tensor:
    """A start with every source term active (not only the paper's near-zero ones)."""
    gen = torch.Generator().manual_seed(seed)
    theta = torch.rand(7, generator=gen, dtype=torch.float64) * 2 - 1
    theta[0] = 4.932
    return theta


def test_solver_matches_discrete_eigenmode() -> None:
    """Constant S = c: sin(pi x) sin(pi y) is an eigenvector of I + r L + dt c with eigenvalue
    1 + 4 r (cos(pi dx) - 1) + dt c (the 1-D stencil's eigenvalue 2 cos(pi dx) - 2, twice)."""
    prob = pde.ReactionDiffusion(grid=17, steps=50)
    c = 3.0
    theta = torch.zeros(7, dtype=torch.float64)
    theta[0] = c
    factor = 1 + 4 * prob.r * (math.cos(math.pi * prob.dx) - 1) + prob.dt * c
    states = prob.simulate(theta, every=10)
    assert states.shape == (6, 17, 17)
    expected = prob.initial() * factor ** torch.arange(0, 51, 10, dtype=torch.float64)[:, None, None]
    torch.testing.assert_close(states, expected, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(prob.initial(), prob.target(0.0))
    assert prob.source(theta, 0.3).shape == (17, 17)


def test_source_formula() -> None:
    prob = pde.ReactionDiffusion(grid=9, steps=1)
    theta = torch.arange(1.0, 8.0, dtype=torch.float64)
    t = 0.3
    x = prob.x_full[:, None]
    st, ct, sx, cx = math.sin(math.pi * t), math.cos(math.pi * t), torch.sin(2 * math.pi * x), torch.cos(2 * math.pi * x)
    expected = 1 + 2 * st + 3 * ct + sx * (4 * st + 5 * ct) + cx * (6 * st + 7 * ct)
    torch.testing.assert_close(prob.source(theta, t), expected.expand(9, 9))


@pytest.mark.parametrize("method", ["exact", "rad", "checkpoint"])
def test_keep_one_equals_autograd_float64(method: str) -> None:
    prob = pde.ReactionDiffusion(grid=33, steps=150, chunk=64)
    theta = _params()
    loss_ref, grad_ref = prob.gradient(theta, method="autograd")
    loss, grad = prob.gradient(theta, keep=1.0, method=method, **({"checkpoint_every": 7} if method == "checkpoint" else {}))
    assert abs(loss - loss_ref) / loss_ref < 1e-12
    assert ((grad - grad_ref).norm() / grad_ref.norm()).item() < 1e-10


def test_keep_one_row_of_mixed_batch_is_exact() -> None:
    prob = pde.ReactionDiffusion(grid=17, steps=100, chunk=32)
    theta = _params()
    _, exact = prob.gradient(theta, method="exact")
    losses, grads = prob.gradient(theta.expand(3, 7), keep=[0.05, 1.0, 0.3])
    torch.testing.assert_close(grads[1], exact, rtol=1e-12, atol=0.0)
    torch.testing.assert_close(losses, losses[1].expand(3))  # the forward is exact at every keep
    with radvar.exact():
        _, inside = prob.gradient(theta, keep=0.05)
    torch.testing.assert_close(inside, exact, rtol=1e-12, atol=0.0)


@pytest.mark.parametrize("keep", [0.05, 0.3])  # k = 12 (repeat-rejection sampler) and k = 68 (top-k sampler) of m = 225
def test_rad_gradient_unbiased(keep: float) -> None:
    """Per-parameter z-test of the mean of R independent draws against the exact gradient,
    threshold the Bonferroni-corrected normal quantile at family level alpha = 1e-3."""
    prob = pde.ReactionDiffusion(grid=17, steps=80, chunk=40)
    theta = _params()
    _, exact = prob.gradient(theta, method="exact")
    draws = 1000
    radvar.seed(1234)
    _, grads = prob.gradient(theta.expand(draws, 7), keep=keep)
    sd = grads.std(dim=0)
    assert (sd > 0).all()
    z = (grads.mean(dim=0) - exact) / (sd / math.sqrt(draws))
    bound = norm.ppf(1 - 1e-3 / (2 * 7))
    assert z.abs().max().item() < bound, (z, bound)


def test_variance_decreases_with_keep() -> None:
    prob = pde.ReactionDiffusion(grid=17, steps=80, chunk=40)
    theta = _params()
    radvar.seed(7)
    _, grads = prob.gradient(theta.expand(600, 7), keep=[0.02] * 200 + [0.1] * 200 + [0.5] * 200)
    var = [grads[i : i + 200].var(dim=0).sum().item() for i in (0, 200, 400)]
    assert var[0] > var[1] > var[2] > 0


def test_reproducible_independent_and_global_rng_untouched() -> None:
    prob = pde.ReactionDiffusion(grid=17, steps=60, chunk=16)
    theta = _params()
    state = torch.get_rng_state()
    radvar.seed(3)
    _, g1 = prob.gradient(theta.expand(2, 7), keep=0.05)
    radvar.seed(3)
    _, g2 = prob.gradient(theta.expand(2, 7), keep=0.05)
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(g1, g2)
    assert not torch.equal(g1[0], g1[1])  # rows draw independently
    idx = prob._indices(key=99, row=0, block=0, size=16, k=12)
    assert all(len(set(r.tolist())) == 12 for r in idx)  # without replacement
    assert len({tuple(sorted(r.tolist())) for r in idx}) == 16  # a fresh sample per step
    assert torch.equal(idx, prob._indices(key=99, row=0, block=0, size=16, k=12))  # regenerated in backward


def test_backward_memory_scales_with_keep_measured() -> None:
    steps, m = 256, 31 * 31
    prob = pde.ReactionDiffusion(grid=33, steps=steps, chunk=64)
    theta = _params()
    exact = pde.backward_bytes(prob, theta, method="exact")
    assert exact == steps * m * 8
    for keep in (0.1, 0.01, 0.001):
        k = math.ceil(keep * m)
        assert pde.backward_bytes(prob, theta, keep=keep) == steps * k * 8
    assert pde.backward_bytes(prob, theta, method="checkpoint", checkpoint_every=16) == 16 * m * 8
    assert pde.backward_bytes(prob, theta, method="autograd") > exact


def test_fit_quick_keep_001_close_to_exact() -> None:
    """Quick setting (1/8 time unit, 60 Adam steps); the full 10% goal is in analyses/pde_control.py."""
    prob = pde.ReactionDiffusion(grid=33, steps=512, chunk=256)
    radvar.seed(0)
    hist = pde.fit(prob, keep=[1.0, 0.01], steps=60, lr=1e-2, seed=0)
    assert set(hist.columns) >= {"step", "keep", "loss", "theta0"}
    end = hist[hist.step == 60].set_index("keep").loss
    start = hist[hist.step == 0].loss.iloc[0]
    assert end[1.0] < 0.5 * start
    assert end[0.01] < 1.25 * end[1.0]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"grid": 3}, r"grid must be an int >= 5.*got 3"),
        ({"grid": 33, "dt": 1 / 1000}, r"dt=0\.001 breaks explicit-Euler stability: 4\*D\*dt/dx\*\*2 = 1\.024 > 1.*dt <= 0\.000976562"),
        ({"diffusion": -1.0}, r"diffusion must be a finite number > 0, got -1\.0"),
        ({"steps": 0}, r"steps must be an int >= 1, got 0"),
    ],
)
def test_bad_problem_raises(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        pde.ReactionDiffusion(**kwargs)


@pytest.mark.parametrize("keep", [0.0, 1.5, -0.1, float("nan")])
def test_bad_keep_raises(keep: float) -> None:
    prob = pde.ReactionDiffusion(grid=9, steps=4)
    with pytest.raises(ValueError, match=r"keep must be in \(0, 1\], got"):
        prob.loss(_params(), keep=keep)


def test_bad_call_raises() -> None:
    prob = pde.ReactionDiffusion(grid=9, steps=4)
    with pytest.raises(ValueError, match=r"method must be one of .*got 'adjoint'"):
        prob.loss(_params(), method="adjoint")
    with pytest.raises(ValueError, match=r"params must have shape \(7,\) or \(B, 7\), got \(6,\)"):
        prob.loss(torch.zeros(6, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"keep < 1 needs method='rad'"):
        prob.loss(_params(), keep=0.5, method="exact")
    with pytest.raises(ValueError, match=r"checkpoint_every applies to method='checkpoint' only"):
        prob.loss(_params(), method="exact", checkpoint_every=2)
    with pytest.raises(ValueError, match=r"one value per params row \(2\), got 3"):
        prob.loss(_params().expand(2, 7), keep=[0.1, 0.2, 0.3])
