"""Checkpoints never run code, and bad ones are named: payloads, corrupt files, other runs' files.

fit raises a ValueError naming the file and what is wrong; ``radvar train`` prints one
line and exits 2; the file is left as it was and a payload never runs.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner

from cli.main import cli
from radvar import sketch, zoo
from radvar.train import checkpoint, fit

SGD = lambda params: torch.optim.SGD(params, lr=0.05, momentum=0.9)  # noqa: E731


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: extra threads only add contention


@pytest.fixture(scope="module")
def data():
    x, y = zoo.digits()
    return x[:200], y[:200]


class OpenPayload:
    """Unpickling this calls ``open(path, "w")``: it creates a file."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return open, (self.path, "w")


class ExecPayload(OpenPayload):
    """Unpickling this runs Python source that creates a file."""

    def __reduce__(self):
        return exec, (f"open({self.path!r}, 'w').close()",)


def _write_payload(path: Path, payload: object, container: str) -> None:
    if container == "raw_pickle":
        path.write_bytes(pickle.dumps(payload))
    elif container == "top_level":
        torch.save(payload, path)
    else:  # hidden inside an otherwise well-formed checkpoint
        torch.save({"format": checkpoint.FORMAT, "version": checkpoint.VERSION, "meta": "{}",
                    "model": {"0.weight": torch.zeros(2), "x": payload}, "optimizer": {}, "scaler": None,
                    "ranks": [{"torch_rng": torch.get_rng_state(), "cuda_rng": []}]}, path)


def _fit(data, path, **kw):
    args = dict(loss_fn=F.cross_entropy, optimizer=SGD, steps=2, batch_size=50, seed=0, progress=False,
                checkpoint=path, resume=True) | kw
    return fit(zoo.mlp(in_features=64, hidden=32, depth=2), data, **args)


def _cli(*args: str):
    return CliRunner().invoke(cli, ["train", "--steps", "2", "--batch-size", "50", "-q", *args])


def _one_line_error(res, *needles: str) -> None:
    lines = res.output.strip().splitlines()
    assert res.exit_code == 2 and len(lines) == 1 and lines[0].startswith("radvar: error:"), res.output
    for needle in needles:
        assert needle in lines[0], lines[0]


@pytest.mark.parametrize("payload", [OpenPayload, ExecPayload])
@pytest.mark.parametrize("container", ["raw_pickle", "top_level", "nested"])
def test_checkpoint_payload_never_runs(data, tmp_path, payload, container):
    target = tmp_path / "pwned"
    live = tmp_path / "live"
    pickle.loads(pickle.dumps(payload(live)))  # the payload works when unpickled the unsafe way
    assert live.exists()
    ckpt = tmp_path / "evil.ckpt"
    _write_payload(ckpt, payload(target), container)
    before = ckpt.read_bytes()
    with pytest.raises(ValueError, match="evil.ckpt") as err:
        _fit(data, ckpt)
    assert not target.exists()
    if container == "raw_pickle":  # protocol 4: the reader stops at the first opcode it does not allow
        assert "not a readable" in str(err.value) and "nothing in it was run" in str(err.value)
    else:
        assert "holds Python objects" in str(err.value) and "never runs code" in str(err.value)
    with pytest.raises(ValueError, match="refusing to overwrite"):
        _fit(data, ckpt, resume=False)  # nor is the file overwritten by a new run
    assert not target.exists() and ckpt.read_bytes() == before
    res = _cli("--checkpoint", str(ckpt), "--resume", "--out", str(tmp_path / "out"))
    _one_line_error(res, "evil.ckpt")
    assert not target.exists() and ckpt.read_bytes() == before
    assert not (tmp_path / "out").exists()  # nothing left behind


def _real_checkpoint(data, path: Path, **kw) -> None:
    _fit(data, path, resume=False, **kw)


@pytest.mark.parametrize("damage, message", [
    ("random_bytes", "not a readable"),
    ("empty", "not a readable"),
    ("truncated", "not a readable"),
    ("text", "not a readable"),
    ("tensor_only", "is not a radvar.train.checkpoint file"),
    ("old_version", "version 1"),
    ("bad_meta", "is damaged"),
])
def test_corrupt_checkpoint_is_named(data, tmp_path, damage, message):
    ckpt = tmp_path / "run.ckpt"
    if damage == "random_bytes":
        ckpt.write_bytes(torch.randint(0, 256, (4096,), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
                         .numpy().tobytes())
    elif damage == "empty":
        ckpt.write_bytes(b"")
    elif damage == "truncated":
        _real_checkpoint(data, ckpt)
        ckpt.write_bytes(ckpt.read_bytes()[: ckpt.stat().st_size // 2])
    elif damage == "text":
        ckpt.write_text("these are my notes\n")
    elif damage == "tensor_only":
        torch.save(torch.zeros(3), ckpt)
    elif damage == "old_version":
        torch.save({"format": checkpoint.FORMAT, "version": 1, "model": {}}, ckpt)
    else:
        _real_checkpoint(data, ckpt)
        state = torch.load(ckpt, weights_only=True)
        torch.save(state | {"meta": "{not json"}, ckpt)
    before = ckpt.read_bytes()
    with pytest.raises(ValueError, match=message) as err:
        _fit(data, ckpt)
    assert str(ckpt) in str(err.value)
    _one_line_error(_cli("--checkpoint", str(ckpt), "--resume", "--out", str(tmp_path / "out")), str(ckpt))
    assert ckpt.read_bytes() == before


class Wrapped(torch.nn.Module):
    """The same MLP one level down: the same shapes under other entry names."""

    def __init__(self) -> None:
        super().__init__()
        self.net = zoo.mlp(in_features=64, hidden=32, depth=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


@pytest.mark.parametrize("change, message", [
    (dict(model=lambda: zoo.mlp(in_features=64, hidden=16, depth=2)), "model shapes (checkpoint vs model): 0.weight"),
    (dict(model=lambda: zoo.mlp(in_features=64, hidden=32, depth=3)), "missing model entries: 6.weight, 6.bias"),
    (dict(model=lambda: torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))),
     "missing model entries: 1.weight, 1.bias; unexpected model entries: 0.weight, 0.bias, 2.weight ..."),
    (dict(model=Wrapped), "model Sequential in the checkpoint vs Wrapped; missing model entries: net.0.weight"),
    (dict(optimizer=lambda p: torch.optim.Adam(p)), "optimizer SGD in the checkpoint vs Adam"),
    (dict(amp="bf16", device="cpu"), "autocast dtype None in the checkpoint vs torch.bfloat16"),
    (dict(batch_size=40), "batch_size 50 in the checkpoint vs 40"),
])
def test_checkpoint_of_another_run_is_named(data, tmp_path, change, message):
    ckpt = tmp_path / "run.ckpt"
    _real_checkpoint(data, ckpt)
    before = ckpt.read_bytes()
    make = change.pop("model", lambda: zoo.mlp(in_features=64, hidden=32, depth=2))
    model = make()
    weights = [p.detach().clone() for p in model.parameters()]
    args = dict(loss_fn=F.cross_entropy, optimizer=SGD, steps=4, batch_size=50, seed=0, progress=False,
                checkpoint=ckpt, resume=True) | change
    with pytest.raises(ValueError, match="does not fit this run") as err:
        fit(model, data, **args)
    assert message in str(err.value) and str(ckpt) in str(err.value)
    assert all(torch.equal(a, b) for a, b in zip(weights, model.parameters()))  # nothing loaded half-way
    assert ckpt.read_bytes() == before


def test_cli_checkpoint_of_another_optimizer(tmp_path):
    ckpt = str(tmp_path / "run.ckpt")
    assert _cli("--checkpoint", ckpt, "--out", str(tmp_path / "a")).exit_code == 0
    _one_line_error(_cli("--checkpoint", ckpt, "--resume", "--optimizer", "adam", "--out", str(tmp_path / "b")),
                    "optimizer SGD in the checkpoint vs Adam", ckpt)
    _one_line_error(_cli("--checkpoint", ckpt, "--resume", "--batch-size", "40", "--out", str(tmp_path / "b")),
                    "batch_size 50 in the checkpoint vs 40")


def test_checkpoint_path_that_is_a_folder(data, tmp_path):
    with pytest.raises(IsADirectoryError, match="is a folder"):
        _fit(data, tmp_path)


def test_checkpoint_holds_only_weights(data, tmp_path):
    """Every entry of a written checkpoint is a tensor or plain data (what weights_only accepts)."""
    ckpt = tmp_path / "run.ckpt"
    _real_checkpoint(data, ckpt, plan=sketch.Importance(0.3))
    plain = (torch.Tensor, dict, list, tuple, str, int, float, bool, type(None))

    def walk(x):
        assert isinstance(x, plain), type(x)
        if isinstance(x, dict):
            for k, v in x.items():
                walk(k)
                walk(v)
        elif isinstance(x, (list, tuple)):
            for v in x:
                walk(v)

    walk(torch.load(ckpt, weights_only=True))
    meta = checkpoint.load(ckpt)["meta"]
    assert meta["step"] == 2 and meta["rng"]["counter"] > 0 and meta["ledger"] > 0


def test_batch_size_larger_than_training_split(data, tmp_path):
    with pytest.raises(ValueError, match="batch_size 201 is larger than the training data: 200 examples"):
        fit(zoo.mlp(in_features=64), data, loss_fn=F.cross_entropy, optimizer=SGD, steps=2, batch_size=201,
            progress=False)
    fit(zoo.mlp(in_features=64), data, loss_fn=F.cross_entropy, optimizer=SGD, steps=1, batch_size=200,
        progress=False)  # the whole split as one batch is fine
    res = CliRunner().invoke(cli, ["train", "--steps", "2", "--batch-size", "1500", "-q", "--out",
                                   str(tmp_path / "out")])
    _one_line_error(res, "batch_size 1500 is larger than the training data: 1438 examples")
    assert not (tmp_path / "out").exists()


def test_checkpoint_never_overwrites_a_users_file(data, tmp_path):
    notes = tmp_path / "notes.txt"
    notes.write_text("my notes\n")
    with pytest.raises(ValueError, match="refusing to overwrite it"):
        _fit(data, notes, resume=False)
    _one_line_error(_cli("--checkpoint", str(notes), "--out", str(tmp_path / "out")), "refusing to overwrite", "notes.txt")
    assert notes.read_text() == "my notes\n" and sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]
