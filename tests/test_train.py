"""radvar.train: fit, History, checkpoint/resume, AMP, torch.compile, max_batch_size, bad input."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import radvar
from radvar import memory, sketch, zoo
from radvar.train import History, compile_model, fit, max_batch_size

SGD = lambda params: torch.optim.SGD(params, lr=0.05, momentum=0.9)  # noqa: E731


def small() -> torch.nn.Module:
    return zoo.mlp(in_features=64, hidden=32, depth=2)


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: extra threads only add contention


@pytest.fixture(scope="module")
def digits():
    x, y = zoo.digits()
    return (x[:600], y[:600]), (x[1500:], y[1500:])


def test_fit_history_columns_and_ledger(digits):
    train, test = digits
    model = small()
    hist = fit(model, train, loss_fn=F.cross_entropy, optimizer=SGD, plan=sketch.Subsample(0.25), steps=12,
               batch_size=50, eval_data=test, log_every=4, seed=3, progress=False)
    assert isinstance(hist, History)
    assert list(hist["step"]) == [4, 8, 12]
    assert list(hist["epoch"]) == [0, 0, 0]  # 600 / 50 = 12 batches: all in epoch 0
    assert {"loss", "lr", "step_time_s", "saved_bytes", "eval_loss", "eval_accuracy"} <= set(hist.columns)
    assert hist["eval_accuracy"].between(0, 1).all()
    radvar.seed(0)
    first = train[0][:50].clone(), train[1][:50].clone()
    assert hist["saved_bytes"].iloc[0] == memory.saved_bytes(model, first[0], F.cross_entropy, first[1]).total
    assert hist.steps_to(float("inf")) == 4 and hist.steps_to(-1.0) is None
    assert "12 steps" in hist.summary()


def test_fit_keeps_global_rng_and_is_reproducible(digits):
    train, _ = digits
    runs = []
    for _ in range(2):
        torch.manual_seed(0)
        model = small()
        state = torch.get_rng_state()
        fit(model, train, loss_fn=F.cross_entropy, optimizer=SGD, plan=sketch.Bernoulli(0.3), steps=6,
            batch_size=40, seed=7, progress=False)
        assert torch.equal(torch.get_rng_state(), state)  # RAD draws and data order never touch the global RNG
        runs.append([p.detach().clone() for p in model.parameters()])
    assert all(torch.equal(a, b) for a, b in zip(*runs))
    model = small()
    state = torch.get_rng_state()
    unseeded = fit(model, train, loss_fn=F.cross_entropy, optimizer=SGD, steps=2, batch_size=40, progress=False)
    assert torch.equal(torch.get_rng_state(), state)  # without a seed the data order comes from OS entropy
    assert isinstance(unseeded.attrs["seed"], int)


def test_epochs_mode_rows(digits):
    train, _ = digits
    hist = fit(small(), train, loss_fn=F.cross_entropy, optimizer=SGD, epochs=2, batch_size=100,
               log_every=4, seed=0, progress=False, eval_data={"train": train, "test": digits[1]})
    assert {"train_loss", "train_accuracy", "test_loss", "test_accuracy"} <= set(hist.columns)
    assert list(hist["step"]) == [4, 8, 12]  # 6 batches per epoch
    assert list(hist["epoch"]) == [0, 1, 1]


def test_resume_continues_the_same_run(digits, tmp_path):
    train, _ = digits
    kw = dict(loss_fn=F.cross_entropy, optimizer=SGD, plan=sketch.Subsample(0.2, per_example=True),
              batch_size=50, log_every=3, seed=11, progress=False)
    torch.manual_seed(0)
    straight = small()
    h_straight = fit(straight, train, steps=18, **kw)
    torch.manual_seed(0)
    fit(small(), train, steps=9, checkpoint=tmp_path / "c.pt", **kw)
    torch.manual_seed(1)  # a different init: everything must come from the checkpoint
    resumed = small()
    h_resumed = fit(resumed, train, steps=18, checkpoint=tmp_path / "c.pt", resume=True, **kw)
    assert all(torch.equal(a, b) for a, b in zip(straight.parameters(), resumed.parameters()))
    cols = ["step", "epoch", "loss", "saved_bytes"]
    assert h_straight[cols].equals(h_resumed[cols])


def test_callback_stops(digits):
    train, _ = digits
    seen = []
    hist = fit(small(), train, loss_fn=F.cross_entropy, optimizer=SGD, steps=50, batch_size=50, log_every=2,
               seed=0, progress=False, callbacks=[lambda row: seen.append(row["step"]) or row["step"] >= 4])
    assert seen == [2, 4] and hist["step"].iloc[-1] == 4


def test_bf16_autocast_keeps_rad_state_in_bf16(digits):
    """Every floating tensor a RAD model saves under bf16 autocast is bf16 (the ledger's pack hook)."""
    train, _ = digits
    model = radvar.convert(small(), sketch.Subsample(0.25))
    rad_saved = []

    def pack(t):
        rad_saved.append(t.dtype)
        return t

    with torch.autocast("cpu", dtype=torch.bfloat16), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = model(train[0][:32])
    floats = {d for d in rad_saved if d.is_floating_point}
    assert floats == {torch.bfloat16} and out.dtype == torch.bfloat16
    with torch.autocast("cpu", dtype=torch.bfloat16):
        bf16 = memory.saved_bytes(model, train[0][:32]).per_module.set_index("module")["bytes"]
    fp32 = memory.saved_bytes(model, train[0][:32]).per_module.set_index("module")["bytes"]
    # the first layer's sketch halves (its fp32 weight is a parameter, its bf16 copy is counted)
    weight_copy = model[0].weight.numel() * 2
    assert bf16["0"] - weight_copy == fp32["0"] // 2
    hist = fit(small(), train, loss_fn=F.cross_entropy, optimizer=SGD, plan=sketch.Subsample(0.25), steps=4,
               batch_size=50, amp="bf16", log_every=2, seed=0, progress=False)
    assert torch.isfinite(torch.tensor(hist["loss"].to_numpy())).all()


def test_compiled_gradients_equal_eager(digits):
    """Three consecutive steps: fresh RAD draws each step, bitwise the eager gradients at the same seed."""
    x, y = digits[0][0][:64], digits[0][1][:64]
    model = radvar.convert(small(), sketch.Subsample(0.2))

    def grads(net):
        radvar.seed(5)
        steps = []
        for _ in range(3):
            model.zero_grad()
            F.cross_entropy(net(x), y).backward()
            steps.append([p.grad.clone() for p in model.parameters()])
        return steps

    eager = grads(model)
    with compile_model(model, backend="aot_eager") as compiled:
        comp = grads(compiled)
    plain_compiled = grads(torch.compile(model, backend="aot_eager"))  # no helper needed: RAD ops run eagerly
    assert radvar.rng.get_state()["counter"] == 3 * 3  # a fresh key per RAD layer per step, none baked in
    assert not torch.equal(eager[0][0], eager[1][0])  # each step draws afresh
    for e, c, d in zip(eager, comp, plain_compiled):
        assert all(torch.equal(a, b) for a, b in zip(e, c))
        assert all(torch.equal(a, b) for a, b in zip(e, d))
    # through fit: compiled training gives the eager run's parameters bitwise
    fitted = []
    for compile in (False, "aot_eager"):
        torch.manual_seed(0)
        net = small()
        fit(net, digits[0], loss_fn=F.cross_entropy, optimizer=SGD, plan=sketch.Subsample(0.2), steps=3,
            batch_size=64, seed=5, compile=compile, progress=False)
        fitted.append(list(net.parameters()))
    assert all(torch.equal(a, b) for a, b in zip(*fitted))


def test_max_batch_size_ledger(digits):
    sample = (digits[0][0][:8], digits[0][1][:8])
    limit = 400_000
    exact = max_batch_size(small(), None, sample, F.cross_entropy, memory_limit=limit)
    rad = max_batch_size(small(), sketch.Subsample(0.1), sample, F.cross_entropy, memory_limit=limit)
    for cap, plan in ((exact, None), (rad, sketch.Subsample(0.1))):
        net = radvar.convert(small(), plan)
        at = lambda b: memory.saved_bytes(net, sample[0][torch.arange(b) % 8], F.cross_entropy,  # noqa: E731
                                          sample[1][torch.arange(b) % 8]).total
        assert at(cap.batch_size) <= limit < at(cap.batch_size + 1)
        assert cap.measured_bytes == at(cap.batch_size)
    assert rad.batch_size > 2 * exact.batch_size


@pytest.mark.parametrize("kwargs, exc, match", [
    (dict(steps=0), ValueError, "steps must be a positive int"),
    (dict(steps=-3), ValueError, "steps must be a positive int"),
    (dict(steps=2, epochs=1), ValueError, "exactly one of steps and epochs"),
    (dict(steps=2, amp="fp16"), ValueError, "amp='fp16'.*needs a CUDA device"),
    (dict(steps=2, amp="fp8"), ValueError, "amp must be None, 'bf16' or 'fp16', got 'fp8'"),
    (dict(steps=2, batch_size=None), ValueError, "batch_size is required"),
    (dict(steps=2, log_every=0), ValueError, "log_every must be a positive int"),
    (dict(steps=2, plan="subsample"), TypeError, "plan must be a radvar.Plan"),
    (dict(steps=2, compile=3), TypeError, "compile must be a bool"),
    (dict(steps=2, device="cuda:7"), ValueError, "torch.cuda.is_available"),
    (dict(steps=2, resume=True), ValueError, "resume=True needs checkpoint=PATH"),
    (dict(steps=2, checkpoint_every=3), ValueError, "checkpoint_every=3 needs checkpoint=PATH"),
    (dict(steps=2, checkpoint=3), TypeError, "checkpoint must be a path or None, got 3"),
    (dict(steps=2, batch_size=601), ValueError, "batch_size 601 is larger than the training data: 600 examples"),
])
def test_fit_bad_input(digits, kwargs, exc, match):
    if kwargs.get("device") == "cuda:7" and torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    if kwargs.get("amp") == "fp16":
        kwargs["device"] = "cpu"
    args = dict(loss_fn=F.cross_entropy, optimizer=SGD, batch_size=50, progress=False) | kwargs
    with pytest.raises(exc, match=match):
        fit(small(), digits[0], **args)


def test_fit_rejects_plan_for_another_model(digits):
    plan = radvar.Plan.uniform(zoo.cnn(in_channels=1, image=8), sketch.Subsample(0.1))
    with pytest.raises(ValueError, match="Plan names module '0'|which the model does not have|axis"):
        fit(zoo.mlp(in_features=64, depth=1), digits[0], loss_fn=F.cross_entropy, optimizer=SGD, plan=plan,
            steps=2, batch_size=50, progress=False)


def test_bad_data_and_capacity_input(digits):
    with pytest.raises(TypeError, match="data must be an \\(inputs, targets\\) pair"):
        fit(small(), 3, loss_fn=F.cross_entropy, optimizer=SGD, steps=2, progress=False)
    with pytest.raises(ValueError, match="memory_limit .* is required"):
        max_batch_size(small(), None, (digits[0][0][:4], digits[0][1][:4]), F.cross_entropy, device="cpu")
    with pytest.raises(ValueError, match="memory_limit must be a positive int"):
        max_batch_size(small(), None, (digits[0][0][:4], digits[0][1][:4]), F.cross_entropy, memory_limit=-1)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_fit_names_the_first_non_finite_example(bad):
    """fit validates all of a tensor dataset before training and names the offending example."""
    x, y = torch.randn(20, 4, generator=torch.Generator().manual_seed(0)), torch.zeros(20, dtype=torch.long)
    x[17, 2] = bad
    model = nn.Sequential(nn.Linear(4, 3))
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(ValueError, match="example 17"):
        fit(model, (x, y), loss_fn=F.cross_entropy, optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
            batch_size=5, steps=2, progress=False)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
