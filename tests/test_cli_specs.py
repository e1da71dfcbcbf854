"""Spec parsing of the radvar command: models, data, losses, budgets, sketches, devices."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from cli import specs
from radvar.sketch import Importance, Projection, Subsample


def test_zoo_model_is_sized_to_the_data():
    x, y = specs.load_data("synthetic:1x8x8:3:20")
    model = specs.load_model("cnn", data=(x, y))
    assert model(x).shape == (20, 3)
    seq = specs.load_data("sequential_digits")
    assert specs.load_model("irnn", ["hidden_size=8"], data=seq)(seq[0][:2]).shape == (2, 10)


def test_model_args_are_literals_or_strings():
    assert specs.parse_model_args(["hidden=16", "name=abc", "shape=(1, 2)"]) == {
        "hidden": 16, "name": "abc", "shape": (1, 2)}
    with pytest.raises(specs.SpecError, match="--model-arg: '3=4'"):
        specs.parse_model_args(["3=4"])


def test_module_factory_and_weights(tmp_path):
    model = specs.load_model("radvar.zoo:mlp", ["in_features=4", "hidden=3", "depth=1"])
    path = tmp_path / "w.pt"
    torch.save({k: torch.ones_like(v) for k, v in model.state_dict().items()}, path)
    loaded = specs.load_model("radvar.zoo:mlp", ["in_features=4", "hidden=3", "depth=1"], str(path))
    assert all(bool((p == 1).all()) for p in loaded.parameters())
    with pytest.raises(specs.SpecError, match="does not match the model"):
        specs.load_model("radvar.zoo:mlp", ["in_features=5", "hidden=3", "depth=1"], str(path))
    with pytest.raises(specs.SpecError, match="cannot import module 'no_such_pkg_xyz'"):
        specs.load_model("no_such_pkg_xyz:make")


@pytest.mark.parametrize("save", ["pt", "npz", "pt_tuple"])
def test_data_files(tmp_path, save):
    x, y = np.random.default_rng(0).normal(size=(12, 5)).astype(np.float32), np.arange(12) % 3
    path = tmp_path / f"d.{save.split('_')[0]}"
    if save == "npz":
        np.savez(path, inputs=x, targets=y)
    elif save == "pt":
        torch.save({"x": torch.from_numpy(x), "y": torch.from_numpy(y)}, path)
    else:
        torch.save((torch.from_numpy(x), torch.from_numpy(y)), path)
    got_x, got_y = specs.load_data(str(path))
    assert torch.equal(got_x, torch.from_numpy(x)) and torch.equal(got_y, torch.from_numpy(y))


def test_data_from_a_dataset_or_loader(tmp_path):
    src = tmp_path / "mydata.py"
    src.write_text(
        "import torch\n"
        "from torch.utils.data import DataLoader, TensorDataset\n"
        "ds = TensorDataset(torch.arange(20.).reshape(10, 2), torch.arange(10) % 2)\n"
        "def dataset():\n    return ds\n"
        "def loader():\n    return DataLoader(ds, batch_size=4)\n"
        "def items():\n    return [(torch.zeros(2), 1)] * 3\n")
    for fn in ("dataset", "loader"):
        x, y = specs.load_data(f"{src}:{fn}")
        assert x.shape == (10, 2) and torch.equal(y, torch.arange(10) % 2)
    assert specs.load_data(f"{src}:dataset", limit=4)[0].shape == (4, 2)
    with pytest.raises(specs.SpecError, match="where a tensor or array was expected"):
        specs.load_data(f"{src}:items")


@pytest.mark.parametrize("spec, message", [
    ("synthetic:3x0:10", "synthetic shape .3x0."), ("synthetic:4:ten", "CLASSES 'ten'"), ("synthetic:4", "synthetic:SHAPE:CLASSES"),
    ("mnist", "unknown data 'mnist'"), ("missing.npz", "file 'missing.npz' does not exist"),
])
def test_bad_data_specs(spec, message):
    with pytest.raises(specs.SpecError, match=message):
        specs.load_data(spec)


def test_losses():
    out, y = torch.zeros(4, 3), torch.tensor([0, 1, 2, 0])
    assert specs.load_loss("mse")(out, y) == pytest.approx(1 / 3)
    assert specs.load_loss("torch.nn.functional:cross_entropy")(out, y) == pytest.approx(np.log(3))
    with pytest.raises(specs.SpecError, match="unknown loss 'hinge'; allowed: cross_entropy, mse"):
        specs.load_loss("hinge")
    with pytest.raises(specs.SpecError, match="must return a scalar tensor, got \\(2,\\)"):
        specs.check_fit(nn.Linear(2, 3), torch.zeros(4, 2), y, lambda o, t: o.sum(1))


@pytest.mark.parametrize("text, fraction, nbytes", [
    ("0.25", 0.25, None), ("1", 1.0, None), ("2000000", None, 2_000_000), ("2MB", None, 2_000_000),
    ("1.5MiB", None, 1_572_864), ("64 kb", None, 64_000),
    ("100000000000000000000000", None, 10**23), ("1e23", None, 10**23), ("123456789012345678901gb", None,
                                                                          123456789012345678901 * 10**9),
])
def test_budgets(text, fraction, nbytes):
    assert specs.parse_budget(text) == specs.Budget(fraction, nbytes)


@pytest.mark.parametrize("text, message", [
    ("0", "fraction '0' must be in"), ("-1", "is not a fraction"), ("1.5", "neither a fraction"),
    ("lots", "is not a fraction"), ("0.5b", "less than one byte"),
])
def test_bad_budgets(text, message):
    with pytest.raises(specs.SpecError, match=message):
        specs.parse_budget(text)


def test_sketch_specs():
    assert specs.parse_sketch("subsample:0.1") == Subsample(0.1)
    assert specs.parse_sketch("subsample:0.2:per-example:replace") == Subsample(0.2, per_example=True, replace=True)
    assert specs.parse_sketch("projection:0.5:gaussian") == Projection(0.5, dist="gaussian")
    assert specs.parse_sketch("importance:0.1:view=rows") == Importance(0.1, view="rows")
    assert specs.parse_sketch("importance:0.1:axis=rows") == Importance(0.1, view="rows")  # old spelling
    assert specs.parse_sketch("subsample:0.1:replace=true:per_example=true") == Subsample(0.1, True, replace=True)
    with pytest.raises(specs.SpecError, match=r"unknown option 'twice'.*allowed for subsample: \['shared', "
                                              r"'per-example', 'replace', 'per_example=VALUE'"):
        specs.parse_sketch("subsample:0.1:twice")
    with pytest.raises(specs.SpecError, match="keep 'x'"):
        specs.parse_sketch("bernoulli:x")
    with pytest.raises(specs.SpecError, match="per_example must be True"):
        specs.parse_sketch("importance:0.1:shared")


def test_devices():
    assert specs.resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(specs.SpecError, match="allowed: cpu, cuda, auto"):
        specs.resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(specs.SpecError, match="torch.cuda.is_available\\(\\) is False"):
            specs.resolve_device("cuda")
