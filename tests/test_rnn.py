"""IRNN and its RAD twin: exact forward, unbiased weight gradients, exact rest, measured memory, errors."""

from __future__ import annotations

import math
import pathlib
import subprocess
import sys

import pytest
import torch
from scipy import stats

import radvar
from radvar import Plan, rnn, variance
from radvar.layers import RADLinear, twin_for
from radvar.rnn import CompactIRNN
from radvar.sketch import Importance, Projection, Subsample, kept_count

from .stats import assert_unbiased


@pytest.fixture(autouse=True)
def _one_thread():
    """These ops are tiny: one intra-op thread avoids contention on shared cores (results are unaffected)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)

SKETCHES = [
    Subsample(0.3),
    Subsample(0.3, per_example=True),
    Projection(0.3),
    Projection(0.3, per_example=True),
    Importance(0.3),
    Subsample(0.3, view="rows"),
]


def _small(batch_first: bool = True) -> tuple[rnn.IRNN, torch.Tensor, torch.Tensor, torch.Tensor]:
    """A double IRNN (3 -> 6, 5 steps, batch 4) with perturbed weights, an input, an h0, and output weights."""
    g = torch.Generator().manual_seed(1)
    cell = rnn.IRNN(3, 6, batch_first=batch_first).double()
    with torch.no_grad():
        cell.hh.weight.add_(0.3 * torch.randn(6, 6, generator=g, dtype=torch.float64))
        cell.ih.bias.copy_(0.1 * torch.randn(6, generator=g, dtype=torch.float64))
        cell.hh.bias.copy_(0.1 * torch.randn(6, generator=g, dtype=torch.float64))
    x = torch.randn(4, 5, 3, generator=g, dtype=torch.float64)
    if not batch_first:
        x = x.transpose(0, 1).contiguous()
    h0 = torch.randn(4, 6, generator=g, dtype=torch.float64).relu()
    gy = torch.randn(x.shape[:2] + (6,), generator=g, dtype=torch.float64)
    return cell, x, h0, gy


def _loss_of(out: tuple[torch.Tensor, torch.Tensor], gy: torch.Tensor) -> torch.Tensor:
    return (out[0] * gy).sum() + out[1].square().sum()


def _loss(module: rnn.IRNN, x: torch.Tensor, h0: torch.Tensor, gy: torch.Tensor) -> torch.Tensor:
    return _loss_of(module(x, h0), gy)


def _grads(module: rnn.IRNN, x: torch.Tensor, h0: torch.Tensor, gy: torch.Tensor) -> dict[str, torch.Tensor]:
    x, h0 = x.clone().requires_grad_(), h0.clone().requires_grad_()
    names = [n for n, _ in module.named_parameters()]
    grads = torch.autograd.grad(_loss(module, x, h0, gy), [p for _, p in module.named_parameters()] + [x, h0])
    return dict(zip(names + ["x", "h0"], grads))


class _Wrapped(torch.nn.Module):
    """The IRNN with a fixed h0 as a one-input model, for ``radvar.variance.capture``."""

    def __init__(self, cell: rnn.IRNN, h0: torch.Tensor) -> None:
        super().__init__()
        self.rnn, self.h0 = cell, h0

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.rnn(x, self.h0)


def _predicted_variance(cell: rnn.IRNN, x: torch.Tensor, h0: torch.Tensor, gy: torch.Tensor, sketch) -> float | None:
    """radvar.variance's closed form for ``hh`` (one capture call per step, summed), or None without one."""
    cap = variance.capture(_Wrapped(cell, h0), (x, gy), lambda out, gy: _loss_of(out, gy))
    assert len(cap["rnn.hh"].calls) == x.shape[1]  # every step is a call of the same layer
    value, method = variance.layer_variance(cap["rnn.hh"], sketch)
    return value if method == "closed form" else None


def test_plain_cell_matches_torch_rnn():
    cell, x, h0, _ = _small()
    ref = torch.nn.RNN(3, 6, nonlinearity="relu", batch_first=True).double()
    with torch.no_grad():
        for ours, theirs in (("ih", "ih"), ("hh", "hh")):
            getattr(ref, f"weight_{theirs}_l0").copy_(getattr(cell, ours).weight)
            getattr(ref, f"bias_{theirs}_l0").copy_(getattr(cell, ours).bias)
    out, h_n = cell(x, h0)
    ref_out, ref_h = ref(x, h0.unsqueeze(0))
    torch.testing.assert_close(out, ref_out)
    torch.testing.assert_close(h_n, ref_h[0])


def test_identity_init():
    cell = rnn.IRNN(2, 5)
    assert torch.equal(cell.hh.weight, torch.eye(5))
    assert not cell.ih.bias.any() and not cell.hh.bias.any()


@pytest.mark.parametrize("sketch", SKETCHES, ids=lambda s: s.label())
def test_weight_gradients_unbiased_and_the_rest_exact(sketch):
    cell, x, h0, gy = _small()
    exact = _grads(cell, x, h0, gy)
    rad = radvar.convert(cell, sketch)
    assert isinstance(rad, CompactIRNN) and isinstance(rad.hh, RADLinear) and rad.hh.sketch == sketch
    draws = [_grads(rad, x, h0, gy) for _ in range(200)]
    for name in ("ih.weight", "hh.weight"):
        assert_unbiased(torch.stack([d[name] for d in draws]), exact[name])
    for name in ("ih.bias", "hh.bias", "x", "h0"):  # g_t is backpropagated exactly
        torch.testing.assert_close(draws[0][name], exact[name])
    predicted = _predicted_variance(cell, x, h0, gy, sketch)
    if predicted is not None:  # the weight is used at every step: per-step variances add
        err = torch.stack([(d["hh.weight"] - exact["hh.weight"]).square().sum() for d in draws])
        z = stats.norm.ppf(1 - 1e-4 / 2)
        assert abs(float(err.mean()) - predicted) <= z * float(err.std()) / len(draws) ** 0.5


def test_forward_exact_and_exact_modes_match_plain():
    cell, x, h0, gy = _small(batch_first=False)
    rad = radvar.convert(cell, Subsample(0.2))
    for a, b in zip(cell(x, h0), rad(x, h0)):
        assert torch.equal(a, b)
    exact = _grads(cell, x, h0, gy)
    with radvar.exact():
        in_exact = _grads(rad, x, h0, gy)
    keep_one = _grads(radvar.convert(cell, Subsample(1.0)), x, h0, gy)
    for name, value in exact.items():
        assert torch.equal(in_exact[name], value) and torch.equal(keep_one[name], value)


def test_seeded_draws_repeat_and_global_rng_untouched():
    cell, x, h0, gy = _small()
    rad = radvar.convert(cell, Projection(0.3))
    state = torch.get_rng_state()
    radvar.seed(7)
    first = _grads(rad, x, h0, gy)["hh.weight"]
    radvar.seed(7)
    again = _grads(rad, x, h0, gy)["hh.weight"]
    assert torch.equal(first, again)
    assert torch.equal(torch.get_rng_state(), state)


@pytest.mark.parametrize("sketch", [Subsample(0.1), Projection(0.1, per_example=True)], ids=lambda s: s.label())
def test_memory_per_step_ledger(sketch):
    """Ledger bytes match the accounting below, and RAD keeps >= 5x less per step at keep 0.1, hidden 100.

    Plain loop: x, h_0 and every h_t (the ReLU output, also the next step's linear input).
    RAD: per step a sketch of x_t and of h_{t-1} (k = ceil(0.1 n) features) and a 1-bit mask.
    """
    batch, steps, inputs, hidden = 32, 12, 1, 100
    model = rnn.IRNN(inputs, hidden)
    x = torch.rand(batch, steps, inputs)
    plain = radvar.memory.saved_bytes(model, x).total
    rad = radvar.memory.saved_bytes(radvar.convert(model, sketch), x).total
    assert plain == 4 * (batch * steps * inputs + (steps + 1) * batch * hidden)
    per_step = 4 * batch * (kept_count(0.1, inputs) + kept_count(0.1, hidden)) + math.ceil(batch * hidden / 8)
    assert rad == steps * per_step
    assert plain / steps >= 5 * rad / steps
    # all exact: hh keeps h_0..h_{T-1} (attributed to hh), the ReLU a mask a step, and h_T is kept by nobody
    exact = radvar.memory.saved_bytes(radvar.convert(model, None), x)
    assert exact.total == plain - 4 * batch * hidden + steps * math.ceil(batch * hidden / 8)
    assert exact.per_module.set_index("module").loc["hh", "bytes"] == 4 * (steps * batch * hidden)


def test_classifier_plan_and_conversion():
    model = rnn.irnn(hidden_size=8)
    plan = Plan.uniform(model, Subsample(0.1))
    assert dict(plan) == {"rnn.ih": Subsample(0.1), "rnn.hh": Subsample(0.1), "head": Subsample(0.1)}
    assert twin_for(model.rnn) is CompactIRNN
    x, y = rnn.sequential_digits()
    assert x.shape == (1797, 64, 1) and y.shape == (1797,) and 0.0 <= float(x.min()) <= float(x.max()) <= 1.0
    rad = radvar.convert(model, plan)
    assert rad(x[:5]).shape == (5, 10)
    with pytest.raises(ValueError, match=r"'rnn.hh' \(Linear\): view 'positions' is not allowed; "
                                         r"allowed: \[None, 'features', 'rows'\]"):
        radvar.convert(model, Plan({"rnn.hh": Subsample(0.1, view="positions")}))


@pytest.mark.parametrize("kwargs,error,message", [
    ({"input_size": 0, "hidden_size": 4}, ValueError, r"IRNN: input_size must be a positive int, got 0"),
    ({"input_size": 1.5, "hidden_size": 4}, TypeError, r"IRNN: input_size must be a positive int, got 1.5 \(float\)"),
    ({"input_size": 1, "hidden_size": -3}, ValueError, r"IRNN: hidden_size must be a positive int, got -3"),
    ({"input_size": 1, "hidden_size": 4, "nonlinearity": "tanh"}, ValueError,
     r"IRNN: nonlinearity must be one of \('relu',\), got 'tanh'"),
    ({"input_size": 1, "hidden_size": 4, "batch_first": 1}, TypeError, r"IRNN: batch_first must be a bool, got 1"),
])
def test_bad_construction(kwargs, error, message):
    with pytest.raises(error, match=message):
        rnn.IRNN(**kwargs)


def test_bad_inputs_and_keep():
    model = radvar.convert(rnn.IRNN(3, 4), Subsample(0.5))
    with pytest.raises(ValueError, match=r"x must have shape \(batch, steps, input_size\) with input_size=3 "
                                         r"and no empty dimension, got \(2, 5, 2\)"):
        model(torch.zeros(2, 5, 2))
    with pytest.raises(ValueError, match=r"got \(2, 3\)"):
        model(torch.zeros(2, 3))
    with pytest.raises(ValueError, match=r"got \(2, 0, 3\)"):
        model(torch.zeros(2, 0, 3))
    with pytest.raises(TypeError, match=r"x must be a floating-point tensor, got dtype torch.int64"):
        model(torch.zeros(2, 5, 3, dtype=torch.long))
    with pytest.raises(TypeError, match=r"x must be a tensor \(batch, steps, input_size\), got list"):
        model([[0.0]])
    with pytest.raises(ValueError, match=r"h0 must be None or a tensor of shape \(batch, hidden_size\) = "
                                         r"\(2, 4\), got \(1, 2, 4\)"):
        model(torch.zeros(2, 5, 3), torch.zeros(1, 2, 4))
    for keep in (0.0, 1.5, float("nan")):
        with pytest.raises(ValueError, match=r"Subsample: keep must be in \(0, 1\], got"):
            radvar.convert(rnn.IRNN(3, 4), Subsample(keep))
    with pytest.raises(TypeError, match=r"IRNNClassifier: classes must be a positive int, got '10'"):
        rnn.irnn(classes="10")


@pytest.mark.slow
def test_analysis_quick_run(tmp_path):
    """analyses/rnn.py --quick runs end to end and writes its table, data and figure (~30 s on shared cores)."""
    root = pathlib.Path(__file__).resolve().parents[1]
    done = subprocess.run([sys.executable, str(root / "analyses" / "rnn.py"), "--quick", "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    for name in ("rnn_quick.md", "rnn_quick.json", "rnn_quick_curves.png"):
        assert (tmp_path / name).stat().st_size > 0
    assert "## Memory per step" in (tmp_path / "rnn_quick.md").read_text()
