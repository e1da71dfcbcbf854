"""``NoiseMonitor``: logged RAD variance against Monte Carlo during a run, data noise against
``variance.minibatch``'s per-example path, no effect on training, files, plot and errors;
``AutoPlan``: switches between steps within the budget, logged with reasons."""

from __future__ import annotations

import copy
import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import radvar
from radvar import rng, variance, zoo
from radvar.plan import Plan
from radvar.sketch import Bernoulli, Projection, Quantize, Subsample
from radvar.tradeoff import DEFAULT_FAMILIES
from radvar.train import fit
from radvar.train.monitor import TOTAL, NoiseMonitor, load, plot_noise
from radvar.train.retune import AutoPlan, current_plan
from radvar.variance.minibatch import per_example_sq_norms

pytestmark = pytest.mark.usefixtures("one_thread")


def _small_mlp() -> nn.Sequential:
    return zoo.mlp(in_features=64, hidden=32, depth=2)


def _train(model: nn.Module, plan, monitor: NoiseMonitor | None, steps: int = 30, callbacks=()):
    x, y = zoo.digits()
    return fit(model, (x, y), loss_fn=monitor.loss_fn if monitor else F.cross_entropy,
               optimizer=lambda p: torch.optim.SGD(p, lr=0.1), plan=plan, steps=steps, batch_size=64,
               log_every=10, seed=3, callbacks=[*([monitor] if monitor else []), *callbacks], progress=False)


def test_logged_rad_variance_agrees_with_monte_carlo():
    """At steps 10, 20, 30 of a run, each layer's logged closed-form variance lies inside the Student-t
    interval of 200 Monte Carlo draws (radvar.variance.empirical) on the same batch and parameters; the
    intervals are Bonferroni-widened over the 3 x 3 comparisons, so the family's level is 99%."""
    model = _small_mlp()
    plan = Plan({"0": Subsample(0.3), "2": Bernoulli(0.4, per_example=True), "4": Projection(0.5)})
    monitor = NoiseMonitor(model, F.cross_entropy, every=10)
    snapshots = []
    _train(model, plan, monitor, callbacks=[lambda row: snapshots.append((copy.deepcopy(model), monitor.batch))])
    assert [s for s in monitor.frame["step"].unique()] == [10, 20, 30] and len(snapshots) == 3
    comparisons = 3 * len(plan)
    for (snap, batch), (step, logged) in zip(snapshots, monitor.frame.groupby("step")):
        mc = variance.empirical(snap, batch, F.cross_entropy, plan, draws=200,
                                confidence=1 - 0.01 / comparisons).per_layer.set_index("layer")
        for _, row in logged[logged["layer"] != TOTAL].iterrows():
            lo, hi = mc.loc[row["layer"], ["ci_low", "ci_high"]]
            assert lo <= row["rad_variance"] <= hi, (step, row["layer"], row["rad_variance"], lo, hi)
        total = logged.set_index("layer").loc[TOTAL, "rad_variance"]
        assert total == pytest.approx(logged.loc[logged["layer"] != TOTAL, "rad_variance"].sum())


def test_monitor_leaves_training_bitwise_unchanged():
    """Same seed with and without the monitor: bitwise equal parameters, same radvar stream position,
    torch's global RNG untouched (the model has RAD dropout, which draws from radvar's stream)."""
    def model() -> nn.Module:
        torch.manual_seed(1)
        return nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Dropout(0.2), nn.Linear(32, 10))

    plain, watched = model(), model()
    torch.manual_seed(7)
    _train(plain, Subsample(0.2, per_example=True), None)
    plain_rng, plain_torch = rng.get_state(), torch.random.get_rng_state()
    torch.manual_seed(7)
    monitor = NoiseMonitor(watched, F.cross_entropy, every=10)
    _train(watched, Subsample(0.2, per_example=True), monitor)
    assert len(monitor.frame) == 3 * 3
    assert rng.get_state() == plain_rng and torch.equal(torch.random.get_rng_state(), plain_torch)
    for (name, a), b in zip(plain.state_dict().items(), watched.state_dict().values()):
        assert torch.equal(a, b), name


@pytest.mark.parametrize("build", [_small_mlp, lambda: zoo.cnn(in_channels=1, image=8)], ids=["mlp", "cnn"])
def test_data_noise_matches_per_example_gradients(build):
    """tr Σ per layer (weight and bias) equals the one from variance.minibatch's per-example norms
    (one loss per example); the noise-scale columns follow their formulas."""
    model = radvar.convert(build(), Subsample(0.25))
    x, y = zoo.digits()
    x = x[:24].reshape(24, 1, 8, 8) if isinstance(model[0], nn.Conv2d) else x[:24]
    y = y[:24]
    monitor = NoiseMonitor(model, F.cross_entropy, every=1, ema=0.5)
    monitor.measure(x, y, step=1)
    monitor.measure(x, y, step=2)
    norms, sums = per_example_sq_norms(model, x, y, F.cross_entropy)
    frame = monitor.frame
    last = frame[frame["step"] == 2].set_index("layer")
    n = x.shape[0]
    for name in (k for k in norms if not k.endswith(".bias")):
        per_example = norms[name] + norms.get(f"{name}.bias", 0.0)
        mean_sq = float((sums[name] / n).square().sum() + (sums[f"{name}.bias"] / n).square().sum())
        trace = (float(per_example.sum()) - n * mean_sq) / (n - 1)
        row = last.loc[name]
        assert row["trace_sigma"] == pytest.approx(trace, rel=1e-4)
        assert row["grad_sq_batch"] == pytest.approx(mean_sq, rel=1e-4)
    assert frame["grad_sq"].to_numpy() == pytest.approx((frame["grad_sq_batch"] - frame["trace_sigma"] / n).to_numpy())
    resolved = frame["grad_sq"] > 0  # else the |G|² estimate cannot resolve the gradient: B_simple = inf
    assert frame.loc[resolved, "noise_scale"].to_numpy() == pytest.approx(
        (frame["trace_sigma"] / frame["grad_sq"])[resolved].to_numpy())
    assert (frame.loc[~resolved, "noise_scale"] == float("inf")).all()
    same = frame[frame["step"] == 1]  # one measurement: bias-corrected EMAs are the measured values
    assert same["trace_sigma_ema"].to_numpy() == pytest.approx(same["trace_sigma"].to_numpy())
    eq = last["trace_sigma"] / (last["data_variance"] + last["rad_variance"])
    assert last["equivalent_batch_size"].to_numpy() == pytest.approx(eq.to_numpy())
    assert (last["equivalent_batch_size"] < n).all() and (last["rad_variance"] > 0).all()


def test_files_plot_and_ledger_bytes(tmp_path):
    model = _small_mlp()
    monitor = NoiseMonitor(model, F.cross_entropy, every=10, out=tmp_path / "run")
    _train(model, Subsample(0.1), monitor, steps=20)
    frame = monitor.frame
    disk = load(tmp_path / "run" / "noise.csv")
    assert list(disk.columns) == list(frame.columns) and len(disk) == len(frame) == 2 * 4
    doc = json.loads((tmp_path / "run" / "noise.json").read_text(),
                     parse_constant=lambda c: pytest.fail(f"non-JSON number {c}"))
    assert doc["settings"]["every"] == 10 and len(doc["rows"]) == len(frame)
    assert load(tmp_path / "run" / "noise.json")["rad_variance"].tolist() == pytest.approx(frame["rad_variance"].tolist())
    # bytes are the ledger's: the converted model's per-module saved bytes on a batch of 64
    x, y = zoo.digits()
    ledger = radvar.memory.saved_bytes(model, x[:64].clone(), F.cross_entropy, y[:64].clone())
    last = frame[frame["step"] == 20].set_index("layer")
    assert last.loc[TOTAL, "bytes_kept"] == ledger.total
    assert all(last.loc[n, "bytes_kept"] == ledger.by_module[n] < last.loc[n, "bytes_exact"] for n in ("0", "2", "4"))
    plot_noise(frame, tmp_path / "noise.png")
    assert (tmp_path / "noise.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bad_input_and_misuse():
    model = _small_mlp()
    with pytest.raises(ValueError, match="every must be a positive int"):
        NoiseMonitor(model, F.cross_entropy, every=0)
    with pytest.raises(ValueError, match=r"ema must be a decay in \[0, 1\)"):
        NoiseMonitor(model, F.cross_entropy, ema=1.0)
    with pytest.raises(RuntimeError, match="pass loss_fn=monitor.loss_fn to fit"):
        NoiseMonitor(model, F.cross_entropy, every=10)({"step": 10})
    summed = NoiseMonitor(model, lambda out, y: F.cross_entropy(out, y, reduction="sum"))
    x, y = zoo.digits()
    with pytest.raises(ValueError, match="need a mean-reduced loss"):
        summed.measure(x[:8], y[:8], step=1)
    with pytest.raises(ValueError, match="need a non-empty NoiseMonitor frame"):
        plot_noise(summed.frame)



def _autoplan_run(plan, budget, min_gain, steps=40, out=None, families=DEFAULT_FAMILIES):
    torch.manual_seed(0)
    model = _small_mlp()
    monitor = NoiseMonitor(model, F.cross_entropy, every=10)
    auto = AutoPlan(monitor, budget=budget, every=20, min_gain=min_gain, out=out, families=families)
    _train(model, plan, monitor, steps=steps, callbacks=[auto])
    return model, monitor, auto


def test_autoplan_switches_between_steps_within_the_budget(tmp_path):
    """Starting exact (over a 0.3 budget) the first re-tune switches for that reason; the monitor's rows show
    the old plan up to the switch step and the new one after it; the ledger of the new plan fits the budget."""
    model, monitor, auto = _autoplan_run(None, 0.3, 0.05, out=tmp_path)
    first = auto.frame.iloc[0]
    assert first["step"] == 20 and "over the budget" in first["reason"]
    assert first["bytes_before"] > first["budget_bytes"] >= first["bytes_after"]
    assert first["equivalent_batch_after"] < first["equivalent_batch_before"]  # exact -> RAD adds variance
    frame = monitor.frame[monitor.frame["layer"] != TOTAL]
    assert set(frame.loc[frame["step"] <= 20, "sketch"]) == {"exact"}
    assert "exact" not in set(frame.loc[frame["step"] == 30, "sketch"])
    last = auto.frame.iloc[-1]
    assert last["plan_after"] == "; ".join(f"{n}: {s.label() if s else 'exact'}" for n, s in current_plan(model).items())
    x, y = zoo.digits()
    assert radvar.memory.saved_bytes(model, x[:64].clone(), F.cross_entropy, y[:64].clone()).total \
        <= last["budget_bytes"] * 1.01  # Bernoulli/Importance keep a random count; tune reserves 6 sd for it
    saved = json.loads((tmp_path / "retune.json").read_text())
    assert len(saved["switches"]) == len(auto.frame) and saved["settings"]["every"] == 20


def test_autoplan_without_a_switch_leaves_training_unchanged():
    """min_gain 0.999: Subsample(0.1) is within the budget and no plan is 99.9% better, so nothing switches,
    and the run is bitwise the run without the re-tuner (re-tuning consumed no RAD or torch draws)."""
    sampling = tuple(f for f in DEFAULT_FAMILIES if not isinstance(f.template, Quantize))  # Quantize: >99.9% better
    model, _, auto = _autoplan_run(Subsample(0.1), 0.5, 0.999, families=sampling)
    assert auto.frame.empty
    torch.manual_seed(0)
    plain = _small_mlp()
    _train(plain, Subsample(0.1), NoiseMonitor(plain, F.cross_entropy, every=10), steps=40)
    for a, b in zip(plain.parameters(), model.parameters()):
        assert torch.equal(a, b)


def test_autoplan_bad_input():
    monitor = NoiseMonitor(_small_mlp(), F.cross_entropy, every=10)
    with pytest.raises(ValueError, match=r"every must be a positive multiple of the monitor's every \(10\)"):
        AutoPlan(monitor, budget=0.3, every=15)
    with pytest.raises(ValueError, match=r"budget must be an int \(bytes\) > 0 or a float in \(0, 1\]"):
        AutoPlan(monitor, budget=1.5)
    with pytest.raises(ValueError, match=r"min_gain must be a number in \[0, 1\)"):
        AutoPlan(monitor, budget=0.3, min_gain=1.0)
    with pytest.raises(RuntimeError, match="the monitor has no measurement at step 200"):
        AutoPlan(monitor, budget=0.3)({"step": 200})
