"""``radvar train``: writes history.csv and the learning curve; bad options exit 2 with one line."""

from __future__ import annotations

import pandas as pd
import pytest
from click.testing import CliRunner

import radvar
from cli.main import cli
from radvar import sketch, zoo


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: extra threads only add contention


def test_train_writes_history_and_plot(tmp_path):
    res = CliRunner().invoke(cli, ["train", "--keep", "0.1", "--sketch", "subsample:per-example", "--steps", "6",
                                   "--log-every", "3", "--batch-size", "50", "--out", str(tmp_path), "-q"])
    assert res.exit_code == 0, res.output
    hist = pd.read_csv(tmp_path / "history.csv")
    assert list(hist["step"]) == [3, 6] and {"loss", "eval_loss", "eval_accuracy", "saved_bytes"} <= set(hist)
    assert (tmp_path / "learning_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "Subsample(keep=0.1, per_example=True" in res.output


def test_train_with_plan_file(tmp_path):
    plan = radvar.Plan.uniform(zoo.mlp(in_features=64), sketch.Projection(0.2))
    plan.save(tmp_path / "plan.json")
    res = CliRunner().invoke(cli, ["train", "--plan", str(tmp_path / "plan.json"), "--steps", "2", "--log-every", "2",
                                   "--out", str(tmp_path / "out"), "-q"])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "out" / "history.csv").exists()


@pytest.mark.parametrize("args, message", [
    (["--keep", "1.5"], "keep must be in (0, 1], got 1.5"),
    (["--amp", "fp16"], "amp='fp16' (autocast with a GradScaler) needs a CUDA device"),
    (["--resume"], "--resume needs --checkpoint"),
])
def test_train_bad_input(tmp_path, args, message):
    res = CliRunner().invoke(cli, ["train", "--steps", "2", "--out", str(tmp_path), "-q", *args])
    assert res.exit_code == 2 and message in res.output


def test_train_plan_for_another_model(tmp_path):
    radvar.Plan.uniform(zoo.cnn(in_channels=1, image=8), sketch.Subsample(0.1)).save(tmp_path / "cnn.json")
    res = CliRunner().invoke(cli, ["train", "--plan", str(tmp_path / "cnn.json"), "--steps", "2",
                                   "--out", str(tmp_path), "-q"])
    assert res.exit_code == 2 and "radvar: error:" in res.output


def test_train_out_never_touches_a_users_files(tmp_path):
    """--out holding files radvar did not write is refused before training; nothing in it changes."""
    out = tmp_path / "run"
    out.mkdir()
    (out / "history.csv").write_text("mine\n")
    (out / "notes.txt").write_text("keep me\n")
    res = CliRunner().invoke(cli, ["train", "--steps", "2", "--log-every", "2", "--out", str(out), "-q"])
    assert res.exit_code == 2 and "is not a radvar train folder" in res.output and str(out) in res.output
    assert sorted(p.name for p in out.iterdir()) == ["history.csv", "notes.txt"]
    assert (out / "history.csv").read_text() == "mine\n" and (out / "notes.txt").read_text() == "keep me\n"


def test_train_failure_leaves_no_folder_and_rerun_replaces_its_own(tmp_path):
    """A run that fails during training leaves no --out folder; a second run may replace the first's."""
    out = tmp_path / "run"
    res = CliRunner().invoke(cli, ["train", "--steps", "2", "--batch-size", "100000", "--out", str(out), "-q"])
    assert res.exit_code == 2 and not out.exists() and list(tmp_path.iterdir()) == []
    for _ in range(2):
        res = CliRunner().invoke(cli, ["train", "--steps", "2", "--log-every", "2", "--out", str(out), "-q"])
        assert res.exit_code == 0, res.output
    assert {"history.csv", "learning_curve.png"} <= {p.name for p in out.iterdir()}


def test_train_refuses_a_checkpoint_inside_out(tmp_path):
    res = CliRunner().invoke(cli, ["train", "--steps", "2", "--out", str(tmp_path / "run"),
                                   "--checkpoint", str(tmp_path / "run" / "ckpt.pt"), "-q"])
    assert res.exit_code == 2 and "is inside --out" in res.output and not (tmp_path / "run").exists()
