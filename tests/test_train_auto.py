"""``fit(plan="auto")`` and ``radvar train --budget``: the plan re-tunes itself between steps, within the budget.

Checked: each step's forward and backward use one plan, and the plan in force at
every step is the one the switch log says; every plan used is within the budget
as the ledger measures it; checkpoint and resume stay bitwise with the plan and
the re-tuner's state in the checkpoint; bad arguments are refused with the value named.
"""

from __future__ import annotations

import copy
import json

import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner

import radvar
from cli.main import cli
from radvar import sketch, zoo
from radvar.memory import saved_bytes
from radvar.train import checkpoint, fit
from radvar.train.retune import current_plan
from tests.stats import assert_unbiased
from tests.test_train_resume import Interrupt, _equal, _global_rng, _interrupt_at, _run, mlp

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: extra threads only add contention

AUTO = dict(plan="auto", budget=0.15, retune_every=5, steps=16, batch_size=50, log_every=4)


@pytest.fixture(scope="module")
def train_data():
    x, y = zoo.digits()
    return x[:600], y[:600]


def _labels(model: torch.nn.Module) -> str:
    """The plan in force, as the switch log writes it (modules, then site entries)."""
    plan = current_plan(model)
    return "; ".join(f"{n}: {s.label() if s is not None else 'exact'}" for n, s in {**plan, **plan.sites}.items())


class PlanRecordingSGD(torch.optim.SGD):
    """SGD that records the model's plan when a step starts (zero_grad, before the forward) and ends (step)."""

    def __init__(self, params, model: torch.nn.Module, log: list[tuple[str, str]]) -> None:
        super().__init__(params, lr=0.05, momentum=0.9)
        self.model, self.log = model, log

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.log.append(("start", _labels(self.model)))
        super().zero_grad(set_to_none)

    def step(self, closure=None):
        self.log.append(("end", _labels(self.model)))
        return super().step(closure)


def _auto_run(data, tmp_path, **kwargs):
    torch.manual_seed(0)
    model, log = mlp(), []
    args = dict(AUTO, loss_fn=F.cross_entropy, seed=3, progress=False, log_dir=tmp_path) | kwargs
    hist = fit(model, data, optimizer=lambda p: PlanRecordingSGD(p, model, log), **args)
    switches = json.loads((tmp_path / "retune.json").read_text())["switches"]
    return model, hist, log, switches


def test_each_step_uses_one_plan_the_logged_one(train_data, tmp_path):
    """Switches happen only between steps: a step starts and ends under the same plan, and the plan in force
    at step t is plan_after of the last switch at a step < t (the first switch is at step 0, before step 1)."""
    _, hist, log, switches = _auto_run(train_data, tmp_path)
    assert len(log) == 2 * AUTO["steps"] and [k for k, _ in log] == ["start", "end"] * AUTO["steps"]
    assert switches[0]["step"] == 0 and "over the budget" in switches[0]["reason"]
    assert any(s["step"] > 0 for s in switches), "no re-tune switched mid-run; the test would not cross a switch"
    assert all(s["step"] % AUTO["retune_every"] == 0 and s["plan_after"] != s["plan_before"] for s in switches)
    assert hist.attrs["switches"] == len(switches)
    for t in range(1, AUTO["steps"] + 1):
        start, end = log[2 * t - 2][1], log[2 * t - 1][1]
        in_force = [s for s in switches if s["step"] < t][-1]["plan_after"]
        assert start == end == in_force, f"step {t}"
    for before, after in zip(switches, switches[1:]):
        assert after["plan_before"] == before["plan_after"]  # nothing changed the plan outside the log


def test_gradient_after_a_switch_is_unbiased(train_data, tmp_path):
    """The model as a re-tune left it (converted in place from the plan before) gives unbiased weight gradients:
    the mean of 400 RAD gradients on a batch matches the exact gradient (z-test, Bonferroni, alpha 1e-4)."""
    model, _, _, switches = _auto_run(train_data, tmp_path)
    assert len(switches) >= 2 and _labels(model) == switches[-1]["plan_after"]
    x, y = (t[100:150] for t in train_data)
    weights = [m.weight for m in model.modules() if isinstance(m, torch.nn.Linear)]

    def gradient() -> torch.Tensor:
        return torch.cat([g.reshape(-1) for g in torch.autograd.grad(F.cross_entropy(model(x), y), weights)])

    with radvar.exact():
        exact = gradient()
    radvar.seed(7)
    draws = torch.stack([gradient() for _ in range(400)])
    assert not torch.allclose(draws[0], exact)  # the plan is randomized
    assert_unbiased(draws, exact)


@pytest.mark.parametrize("budget", [0.15, 6000])
def test_retuned_plans_are_within_the_budget(train_data, tmp_path, budget):
    """The ledger of every plan used (fit's own saved_bytes column, re-measured after each switch) and of the
    final plan, measured here on a batch of the monitored shape, are within the budget."""
    model, hist, _, switches = _auto_run(train_data, tmp_path, budget=budget)
    x, y = (t[:AUTO["batch_size"]].clone() for t in train_data)
    exact = saved_bytes(radvar.convert(copy.deepcopy(model), None), x, F.cross_entropy, y).total
    limit = int(budget * exact) if isinstance(budget, float) else budget
    assert {s["budget_bytes"] for s in switches} == {limit}
    assert all(s["bytes_after"] <= limit < s["bytes_before"] or s["step"] > 0 for s in switches)
    assert all(s["bytes_after"] <= limit for s in switches)
    assert (hist["saved_bytes"] <= limit).all(), hist["saved_bytes"].tolist()
    final = saved_bytes(copy.deepcopy(model), x, F.cross_entropy, y).total
    assert final <= limit and _labels(model) == switches[-1]["plan_after"]


def test_resume_of_an_adaptive_run_is_bitwise(train_data, tmp_path):
    """The resume harness with plan='auto': the plan in force, the switches and the noise log come back from the
    checkpoint, so the resumed run switches as the straight one did, bitwise."""
    kwargs = dict(plan="auto", budget=0.15, retune_every=3, steps=14, batch_size=50, log_every=4,
                  checkpoint_every=2)
    straight, straight_opt, h_straight = _run(mlp, kwargs, train_data, checkpoint=tmp_path / "s.ckpt",
                                              log_dir=tmp_path / "s")
    rng_after = _global_rng()
    path = tmp_path / "run.ckpt"
    with pytest.raises(Interrupt):
        _run(mlp, kwargs, train_data, checkpoint=path, callbacks=[_interrupt_at(8)], log_dir=tmp_path / "r")
    assert checkpoint.load(path)["meta"]["step"] == 6
    radvar.seed(12345)
    resumed, resumed_opt, h_resumed = _run(mlp, kwargs, train_data, init=1, then=99, checkpoint=path, resume=True,
                                           log_dir=tmp_path / "r")

    switches = [json.loads((tmp_path / d / "retune.json").read_text())["switches"] for d in ("s", "r")]
    assert switches[0] == switches[1] and any(s["step"] > 6 for s in switches[0]), switches[0]
    assert current_plan(straight) == current_plan(resumed)
    assert all(torch.equal(a, b) for a, b in zip(straight.state_dict().values(), resumed.state_dict().values()))
    assert _equal(straight_opt.state_dict(), resumed_opt.state_dict())
    timing = ["step_time_s"]
    assert h_straight.drop(columns=timing).equals(h_resumed.drop(columns=timing))
    noise = [pd.read_csv(tmp_path / d / "noise.csv").drop(columns=["seconds", "cpu_seconds"]) for d in ("s", "r")]
    assert noise[0].equals(noise[1]) and sorted(set(noise[0]["step"])) == [0, 3, 6, 9, 12]
    assert all(torch.equal(a, b) for a, b in zip(_global_rng(), rng_after))


def test_resume_refuses_another_kind_of_plan(train_data, tmp_path):
    path = tmp_path / "run.ckpt"
    _run(mlp, dict(plan="auto", budget=0.2, retune_every=2, steps=2, batch_size=50, log_every=2), train_data,
         checkpoint=path)
    with pytest.raises(ValueError, match=r"an adaptive run \(plan='auto'\) in the checkpoint vs a fixed plan"):
        _run(mlp, dict(plan=sketch.Subsample(0.2), steps=4, batch_size=50), train_data, checkpoint=path, resume=True)
    with pytest.raises(ValueError, match=r"budget 0.2, retune_every 2 in the checkpoint vs 0.3, 2"):
        _run(mlp, dict(plan="auto", budget=0.3, retune_every=2, steps=4, batch_size=50), train_data,
             checkpoint=path, resume=True)


@pytest.mark.parametrize("kwargs, error, message", [
    (dict(plan="auto", budget=1.5), ValueError, "budget must be a fraction in (0, 1] of the exact saved bytes "
                                                "(float) or a number of bytes > 0 (int), got 1.5"),
    (dict(plan="auto", budget=0), ValueError, "got 0"),
    (dict(plan="auto", budget=-0.1), ValueError, "got -0.1"),
    (dict(plan="auto", budget=True), ValueError, "got True"),
    (dict(plan="auto", budget="15%"), ValueError, "got '15%'"),
    (dict(plan="auto", budget=0.2, retune_every=0), ValueError, "retune_every must be a positive int or None, got 0"),
    (dict(plan="auto", budget=0.2, retune_every=2.5), ValueError, "retune_every must be a positive int or None, got 2.5"),
    (dict(plan="auto"), ValueError, "plan='auto' needs budget="),
    (dict(plan=sketch.Subsample(0.2), budget=0.2), ValueError, "budget=0.2 apply only to plan='auto'"),
    (dict(retune_every=10), ValueError, "retune_every=10 apply only to plan='auto'"),
    (dict(plan="adaptive"), TypeError, "plan must be a radvar.Plan, a radvar.sketch.Sketch, 'auto' or None, "
                                        "got 'adaptive'"),
    (dict(plan="auto", budget=0.2, amp="bf16"), ValueError, "plan='auto' solves its budget on the full-precision "
                                                             "ledger, so it runs without amp; got amp='bf16'"),
    (dict(plan=sketch.Subsample(0.2), log_dir="logs"), ValueError, "log_dir is the folder of an adaptive run"),
])
def test_bad_adaptive_arguments(train_data, tmp_path, kwargs, error, message):
    with pytest.raises(error) as info:
        fit(mlp(), train_data, loss_fn=F.cross_entropy, optimizer=lambda p: torch.optim.SGD(p, lr=0.1), steps=2,
            batch_size=50, progress=False, **kwargs)
    assert message in str(info.value)
    assert not (tmp_path / "logs").exists()


def test_cli_budget_retune_end_to_end(tmp_path):
    """radvar train --budget --retune-every: the switch log (with reasons), the noise log and plot are written;
    the first plan is tuned at step 0 and re-tuned at steps 3 and 6, every plan within the budget."""
    res = CliRunner().invoke(cli, ["train", "--model-arg", "in_features=64", "--model-arg", "hidden=32", "--budget", "0.15", "--retune-every", "3",
                                   "--steps", "7", "--batch-size", "50", "--log-every", "3", "--out", str(tmp_path),
                                   "-q"])
    assert res.exit_code == 0, res.output
    switches = pd.read_csv(tmp_path / "retune.csv")
    assert switches["step"].iloc[0] == 0 and switches["reason"].str.len().gt(0).all()
    assert (switches["bytes_after"] <= switches["budget_bytes"]).all()
    assert sorted(set(pd.read_csv(tmp_path / "noise.csv")["step"])) == [0, 3, 6]
    assert json.loads((tmp_path / "retune.json").read_text())["settings"]["every"] == 3
    assert (pd.read_csv(tmp_path / "history.csv")["saved_bytes"] <= switches["budget_bytes"].iloc[0]).all()
    assert (tmp_path / "noise.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"{len(switches)} plan switches logged with their reasons" in res.output


@pytest.mark.parametrize("args, message", [
    (["--budget", "1.5"], "--budget: '1.5' is neither a fraction in (0, 1] nor a whole number of bytes"),
    (["--budget", "-0.2"], "--budget: '-0.2' is not a fraction in (0, 1]"),
    (["--budget", "0.2", "--retune-every", "0"], "--retune-every: '0' is not a whole number of steps >= 1"),
    (["--budget", "0.2", "--retune-every", "ten"], "--retune-every: 'ten' is not a whole number of steps >= 1"),
    (["--retune-every", "5"], "--retune-every 5 needs --budget"),
    (["--budget", "0.2", "--keep", "0.1"], "--budget re-tunes the plan during training; it cannot be combined"),
    (["--budget", "0.2", "--plan", "plan.json"], "it cannot be combined with --plan or --keep"),
    (["--budget", "0"], "--budget: fraction '0' must be in (0, 1]"),
    (["--budget", "abc"], "--budget: 'abc' is not a fraction in (0, 1] or a size like 2000000, 2MB, 1.5MiB"),
    (["--budget", "nan"], "--budget: 'nan' is not a fraction in (0, 1]"),
    (["--budget", ""], "--budget: '' is not a fraction in (0, 1]"),
    (["--budget", "0.2", "--retune-every", "-5"], "--retune-every: '-5' is not a whole number of steps >= 1"),
    (["--budget", "0.2", "--retune-every", "2.5"], "--retune-every: '2.5' is not a whole number of steps >= 1"),
    (["--co-optimize"], "--co-optimize needs --budget"),
])
def test_cli_bad_budget_or_interval(tmp_path, args, message):
    res = CliRunner().invoke(cli, ["train", "--steps", "2", "--out", str(tmp_path / "out"), "-q", *args])
    assert res.exit_code == 2 and message in res.output, res.output
    assert len(res.output.strip().splitlines()) == 1 and not (tmp_path / "out").exists()


def test_no_retune_on_a_partial_batch(train_data, tmp_path):
    """600 examples in batches of 70: steps 9 and 18 end the epochs with 40 examples, and are not re-tuned on."""
    _, _, log, _ = _auto_run(train_data, tmp_path, steps=None, epochs=2, batch_size=70, retune_every=3)
    assert len(log) == 2 * 18
    assert sorted(set(pd.read_csv(tmp_path / "noise.csv")["step"])) == [0, 3, 6, 12, 15]


def test_resumed_to_more_steps_equals_the_longer_run(train_data, tmp_path):
    """6 steps, then resumed to 12, equals 12 straight: the re-tune due at step 6 also runs when 6 is the last step."""
    kwargs = dict(plan="auto", budget=0.15, retune_every=3, batch_size=50, log_every=3)
    long, _, h_long = _run(mlp, kwargs | dict(steps=12), train_data, log_dir=tmp_path / "a")
    _run(mlp, kwargs | dict(steps=6), train_data, checkpoint=tmp_path / "c.ckpt", log_dir=tmp_path / "b")
    resumed, _, h_resumed = _run(mlp, kwargs | dict(steps=12), train_data, init=1, checkpoint=tmp_path / "c.ckpt",
                                 resume=True, log_dir=tmp_path / "b")
    assert all(torch.equal(a, b) for a, b in zip(long.state_dict().values(), resumed.state_dict().values()))
    assert h_long.drop(columns="step_time_s").equals(h_resumed.drop(columns="step_time_s"))
    logs = [json.loads((tmp_path / d / "retune.json").read_text())["switches"] for d in ("a", "b")]
    assert logs[0] == logs[1]
    noise = [pd.read_csv(tmp_path / d / "noise.csv").drop(columns=["seconds", "cpu_seconds"]) for d in ("a", "b")]
    assert noise[0].equals(noise[1]) and sorted(set(noise[0]["step"])) == [0, 3, 6, 9, 12]


def test_auto_refused_under_ddp_before_joining(train_data, tmp_path, monkeypatch):
    """Under torchrun (WORLD_SIZE > 1) plan='auto' is refused by the argument checks, before the process
    group is joined: every rank would re-tune on its own batch and the replicas' plans would drift apart."""
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ValueError, match=r"plan='auto' runs in one process \(each rank would re-tune on its own "
                                         r"batch\); got a world of 2 ranks"):
        fit(mlp(), train_data, loss_fn=F.cross_entropy, optimizer=lambda p: torch.optim.SGD(p, lr=0.1), steps=2,
            batch_size=50, progress=False, plan="auto", budget=0.2, device="cpu")
    assert not torch.distributed.is_initialized()


@pytest.mark.parametrize("args, env, message", [
    (["--amp", "bf16"], {}, "plan='auto' solves its budget on the full-precision ledger, so it runs without amp"),
    ([], {"WORLD_SIZE": "2"}, "plan='auto' runs in one process"),
])
def test_cli_auto_with_amp_or_ddp_is_refused(tmp_path, args, env, message):
    res = CliRunner().invoke(cli, ["train", "--steps", "2", "--out", str(tmp_path / "out"), "-q", "--budget", "0.2",
                                   *args], env=env)
    assert res.exit_code == 2 and message in res.output, res.output
    assert len(res.output.strip().splitlines()) == 1 and not (tmp_path / "out").exists()


class BatchRecordingSGD(torch.optim.SGD):
    """SGD that records the size of each step's training batch: the first forward after zero_grad."""

    def __init__(self, params, model: torch.nn.Module, sizes: list[int]) -> None:
        super().__init__(params, lr=0.05, momentum=0.9)
        self.armed = False

        def see(module, args):
            if self.armed:
                sizes.append(int(args[0].shape[0]))
                self.armed = False

        model.register_forward_pre_hook(see)

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.armed = True
        super().zero_grad(set_to_none)


def test_co_optimize_switches_the_batch_between_steps_within_the_budget(train_data, tmp_path):
    """co_optimize=True: a re-tune may change the batch size; every step after a switch trains on a batch of the
    logged size (the step-t batch is batch_after of the last switch before t), each batch switch carries its reason
    and the predicted totals, and every plan used is within the budget in bytes (the ledger at its batch size)."""
    torch.manual_seed(0)
    model, sizes = mlp(), []
    hist = fit(model, train_data, loss_fn=F.cross_entropy, optimizer=lambda p: BatchRecordingSGD(p, model, sizes),
               **(AUTO | dict(steps=12, retune_every=4)), seed=3, progress=False, log_dir=tmp_path, co_optimize=True)
    switches = json.loads((tmp_path / "retune.json").read_text())
    assert switches["settings"]["batch_sizes"] == [12, 25, 50, 100, 200]
    log = switches["switches"]
    moved = [s for s in log if s["batch_after"] != s["batch_before"]]
    assert moved, "no batch switch: the test would not cross one"
    assert all(s["reason"].startswith(f"batch {s['batch_before']} -> {s['batch_after']}: predicted total variance")
               for s in moved)
    assert len(sizes) == 12
    for t in range(1, 13):
        assert sizes[t - 1] == [s for s in log if s["step"] < t][-1]["batch_after"], (t, sizes, log)
    budget = switches["settings"]["budget_bytes"]
    assert all(s["bytes_after"] <= budget == s["budget_bytes"] for s in log)
    assert (hist["saved_bytes"] <= budget).all() and hist.attrs["batch_size"] == sizes[-1]
    b = sizes[-1]
    assert saved_bytes(copy.deepcopy(model), train_data[0][:b].clone(), F.cross_entropy,
                       train_data[1][:b].clone()).total <= budget


def test_batches_cut_at_a_fixed_size_are_those_of_split():
    """fit's batch cutter, with a fixed size, yields exactly the batches of order.split (runs without co_optimize
    are unchanged)."""
    from radvar.train.fit import _cut
    x, y = torch.arange(23.0).unsqueeze(1), torch.arange(23)
    order = torch.randperm(23, generator=torch.Generator().manual_seed(0))
    cut = list(_cut(x, y, order, lambda: 5))
    assert [len(b[1]) for b in cut] == [5, 5, 5, 5, 3]
    assert all(torch.equal(b[1], y[idx]) for b, idx in zip(cut, order.split(5)))


@pytest.mark.parametrize("kwargs, data, message", [
    (dict(co_optimize=True), None, "co_optimize=True applies only to plan='auto'"),
    (dict(plan="auto", budget=0.2, co_optimize=[1, 50]), None,
     "co_optimize must be False, True or a non-empty sequence of batch sizes (ints >= 2), got [1, 50]"),
    (dict(plan="auto", budget=0.2, co_optimize="yes"), None, "got 'yes'"),
    (dict(plan="auto", budget=0.2, co_optimize=[50, 1000]), None,
     "co_optimize batch sizes must be at most the 600 training examples, got [50, 1000]"),
    (dict(plan="auto", budget=0.2, co_optimize=True, checkpoint="run.ckpt"), None,
     "co_optimize cannot be combined with checkpoint="),
    (dict(plan="auto", budget=0.2, co_optimize=True), "loader",
     "co_optimize needs data as an (inputs, targets) pair of tensors, which fit cuts into batches of any size; "
     "the batches of a list are its own"),
])
def test_bad_co_optimize(train_data, kwargs, data, message):
    given = [(train_data[0][:50], train_data[1][:50])] if data == "loader" else train_data
    with pytest.raises(ValueError) as info:
        fit(mlp(), given, loss_fn=F.cross_entropy, optimizer=lambda p: torch.optim.SGD(p, lr=0.1), steps=2,
            batch_size=50, progress=False, **kwargs)
    assert message in str(info.value)


def test_cli_co_optimize_end_to_end(tmp_path):
    """radvar train --budget --co-optimize: the switch log holds the batch sizes before and after each switch."""
    res = CliRunner().invoke(cli, ["train", "--model-arg", "in_features=64", "--model-arg", "hidden=32", "--budget",
                                   "0.15", "--retune-every", "3", "--co-optimize", "--steps", "6", "--batch-size", "40",
                                   "--log-every", "3", "--out", str(tmp_path), "-q"])
    assert res.exit_code == 0, res.output
    switches = pd.read_csv(tmp_path / "retune.csv")
    assert {"batch_before", "batch_after"} <= set(switches.columns) and switches["batch_before"].iloc[0] == 40
    assert json.loads((tmp_path / "retune.json").read_text())["settings"]["batch_sizes"] == [10, 20, 40, 80, 160]



class _GeluMLP(torch.nn.Module):
    """Two Linears around an ``F.gelu`` call: the model's one functional site is ``":gelu.0"``."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = torch.nn.Linear(64, 32), torch.nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(F.gelu(self.a(x)))


def test_retune_keeps_the_functional_site_routing(train_data):
    """The plan in force includes the router's site entries (what the switch log and an adaptive run's checkpoint
    record); a switch routes the sites the tuner's plan names."""
    from radvar.layers.functional import router_of
    from radvar.train.monitor import NoiseMonitor
    from radvar.train.retune import AutoPlan

    torch.manual_seed(0)
    model = radvar.convert(_GeluMLP(), radvar.Plan({"a": None, "b": None, ":gelu.0": sketch.Quantize(4)}))
    before = current_plan(model)
    assert before.sites == {":gelu.0": sketch.Quantize(4)}
    resumed = radvar.convert(_GeluMLP(), radvar.Plan.from_dict(before.to_dict()))  # as a resume converts
    assert router_of(resumed).entries == {":gelu.0": sketch.Quantize(4)}
    monitor = NoiseMonitor(model, F.cross_entropy, every=1)
    monitor.close()
    auto = AutoPlan(monitor, 0.5, every=1, families=(sketch.Quantize(8),), min_gain=0.0)
    x, y = train_data[0][:64], train_data[1][:64]
    switch = auto.retune(1, float(monitor.measure(x, y, step=1)[-1]["data_variance"]))
    assert switch is not None and ":gelu.0: Quantize(4 bits" in switch["plan_before"]
    entries = router_of(model).entries
    assert entries and any(v is not None for v in entries.values())  # the site is still routed, sketched
    assert current_plan(model).sites == entries and switch["plan_after"] == _labels(model)
