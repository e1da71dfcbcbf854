"""Resume is bitwise the uninterrupted run: parameters, optimizer state, history and torch's RNG.

Each case trains N steps straight, then trains the same run again but interrupts it
(KeyboardInterrupt from a callback) after its last checkpoint, and resumes that
checkpoint into a fresh model and optimizer (other initial weights, torch's global
RNG and radvar's stream moved elsewhere), as a new process would.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import radvar
from radvar import sketch, zoo
from radvar.train import checkpoint, fit


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: extra threads only add contention


@pytest.fixture(scope="module")
def train_data():
    x, y = zoo.digits()
    return x[:600], y[:600]


def mlp() -> nn.Module:
    return zoo.mlp(in_features=64, hidden=32, depth=2)


def dropout_mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Dropout(0.3), nn.Linear(32, 32), nn.ReLU(),
                         nn.Dropout(0.2), nn.Linear(32, 10))


SGD = lambda params: torch.optim.SGD(params, lr=0.05, momentum=0.9)  # noqa: E731
ADAM = lambda params: torch.optim.Adam(params, lr=1e-3)  # noqa: E731

# name: (model, fit arguments, the logged step whose callback interrupts, the step of the last checkpoint before it)
CASES: dict[str, tuple[Any, dict[str, Any], int, int]] = {
    "dropout": (dropout_mlp, dict(plan=sketch.Subsample(0.3), steps=12, batch_size=50, log_every=4,
                                  checkpoint_every=2), 8, 6),
    "importance_plan": (mlp, dict(plan=sketch.Importance(0.3), steps=12, batch_size=50, log_every=4,
                                  checkpoint_every=3), 8, 6),
    "amp_bf16": (mlp, dict(plan=sketch.Projection(0.25), amp="bf16", steps=12, batch_size=50, log_every=4,
                           checkpoint_every=3, optimizer=ADAM), 8, 6),
    "uneven_intervals": (mlp, dict(plan=sketch.Subsample(0.2, per_example=True), steps=17, batch_size=50,
                                   log_every=5, checkpoint_every=3), 10, 9),
    "crossing_epochs": (dropout_mlp, dict(plan=sketch.Bernoulli(0.4), steps=30, batch_size=50, log_every=4,
                                          checkpoint_every=7), 16, 14),
    "epoch_boundary": (mlp, dict(plan=sketch.Subsample(0.2), steps=20, batch_size=50, log_every=4,
                                 checkpoint_every=6), 16, 12),
    "epochs_mode_partial_batch": (mlp, dict(plan=sketch.Importance(0.5), epochs=3, batch_size=70, log_every=5,
                                            checkpoint_every=4, eval_every=10), 15, 12),
    "compiled": (mlp, dict(plan=sketch.Subsample(0.25), compile="aot_eager", steps=10, batch_size=50, log_every=4,
                           checkpoint_every=3), 8, 6),
    "cuda_fp16_dropout": (dropout_mlp, dict(plan=sketch.Subsample(0.3), amp="fp16", device="cuda", steps=12,
                                            batch_size=50, log_every=4, checkpoint_every=3), 8, 6),
}
NEEDS_CUDA = {"cuda_fp16_dropout"}  # the GradScaler's state and the CUDA generator's


def _global_rng() -> list[torch.Tensor]:
    return [torch.get_rng_state(), *(torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [])]


class Interrupt(KeyboardInterrupt):
    """Stands for Ctrl-C arriving while a history row is logged."""


def _interrupt_at(step: int):
    def callback(row: dict[str, Any]) -> None:
        if row["step"] == step:
            raise Interrupt
    return callback


def _equal(a: Any, b: Any) -> bool:
    """Bitwise equality of nested state dicts (tensors by torch.equal, dtype included)."""
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b))
    return a == b


def _run(make, kwargs, data, init: int = 0, then: int | None = None, **extra):
    """fit a fresh ``make()`` built after ``torch.manual_seed(init)``; ``then`` reseeds torch before fit."""
    torch.manual_seed(init)  # the model's initial weights and torch's global RNG (CPU and CUDA)
    model = make()
    if then is not None:
        torch.manual_seed(then)
    opts = []
    args = dict(loss_fn=F.cross_entropy, seed=4, progress=False, eval_data=(data[0][:200], data[1][:200]),
                optimizer=SGD) | kwargs
    build = args.pop("optimizer")
    hist = fit(model, data, optimizer=lambda p: opts.append(build(p)) or opts[0], **args, **extra)
    return model, opts[0], hist


@pytest.mark.parametrize("case", sorted(CASES))
def test_resume_is_bitwise_the_uninterrupted_run(case, train_data, tmp_path):
    if case in NEEDS_CUDA and not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    make, kwargs, interrupt, saved_at = CASES[case]
    straight, straight_opt, h_straight = _run(make, kwargs, train_data, checkpoint=tmp_path / "straight.ckpt")
    rng_after = _global_rng()

    path = tmp_path / "run.ckpt"
    with pytest.raises(Interrupt):
        _run(make, kwargs, train_data, checkpoint=path, callbacks=[_interrupt_at(interrupt)])
    assert checkpoint.load(path)["meta"]["step"] == saved_at  # the run really was cut after its last checkpoint

    radvar.seed(12345)  # radvar's stream, torch's RNG and the initial weights elsewhere: all must come from the file
    resumed, resumed_opt, h_resumed = _run(make, kwargs, train_data, init=1, then=99, checkpoint=path, resume=True)

    assert all(torch.equal(a, b) for a, b in zip(straight.state_dict().values(), resumed.state_dict().values()))
    assert _equal(straight_opt.state_dict(), resumed_opt.state_dict())
    timing = ["step_time_s"]
    assert list(h_straight.columns) == list(h_resumed.columns)
    assert h_straight.drop(columns=timing).equals(h_resumed.drop(columns=timing)), (
        h_straight.drop(columns=timing).compare(h_resumed.drop(columns=timing)))
    assert all(torch.equal(a, b) for a, b in zip(_global_rng(), rng_after))  # dropout draws continue as straight


def test_interrupted_checkpoint_holds_the_logging_window(train_data, tmp_path):
    """checkpoint_every=3, log_every=5: the checkpoint at step 9 carries steps 6..9's losses."""
    make, kwargs, interrupt, _ = CASES["uneven_intervals"]
    path = tmp_path / "run.ckpt"
    with pytest.raises(Interrupt):
        _run(make, kwargs, train_data, checkpoint=path, callbacks=[_interrupt_at(interrupt)])
    meta = checkpoint.load(path)["meta"]
    assert meta["step"] == 9 and len(meta["windows"][0]) == 4 and [r["step"] for r in meta["rows"]] == [5]


def test_resume_cli_equals_straight_run(tmp_path):
    """radvar train: 6 steps straight vs 3 steps then --resume to 6 give the same history.csv."""
    import pandas as pd
    from click.testing import CliRunner

    from cli.main import cli

    base = ["train", "--keep", "0.2", "--batch-size", "50", "--log-every", "3", "-q"]
    runner = CliRunner()
    assert runner.invoke(cli, [*base, "--steps", "6", "--out", str(tmp_path / "a")]).exit_code == 0
    ck = str(tmp_path / "c.ckpt")
    assert runner.invoke(cli, [*base, "--steps", "3", "--checkpoint", ck, "--out", str(tmp_path / "b")]).exit_code == 0
    res = runner.invoke(cli, [*base, "--steps", "6", "--checkpoint", ck, "--resume", "--out", str(tmp_path / "b")])
    assert res.exit_code == 0, res.output
    a, b = (pd.read_csv(tmp_path / d / "history.csv").drop(columns="step_time_s") for d in ("a", "b"))
    assert a.equals(b)
