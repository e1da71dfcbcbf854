"""radvar.report.coverage (what radvar can sketch, and why the rest stays exact) and convert's CoverageWarning."""

from __future__ import annotations

import inspect
import json
import re
import warnings

import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner
from torch import nn

import radvar
from radvar import Plan, memory, zoo
from radvar.report import coverage
from radvar.sketch import Quantize, Subsample

pytestmark = pytest.mark.usefixtures("one_thread")


class SharedInput(nn.Module):
    """``h = up(x)`` is kept by both ``act`` (an ELU: no twin, no functional kind) and ``down`` (a Linear)."""

    def __init__(self, d: int = 6, classes: int = 3):
        super().__init__()
        self.up = nn.Linear(d, d)
        self.act = nn.ELU()
        self.down = nn.Linear(d, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.up(x)
        return self.down(h) + self.act(h)[:, :3]


def tiny_vit() -> nn.Module:
    return zoo.vit(image=16, patch=4, embed=12, depth=2, heads=2, classes=3)


def batch(shape: tuple[int, ...], classes: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.randn(*shape), torch.randint(0, classes, (shape[0],))


@pytest.mark.parametrize("factory, shape", [(tiny_vit, (4, 3, 16, 16)),
                                            (lambda: zoo.resnet18(classes=3, width=4), (4, 3, 16, 16)),
                                            (lambda: zoo.mlp(8, 6, 2, 3), (4, 8))])
def test_totals_are_the_ledger_totals(factory, shape):
    model, (x, y) = factory(), batch(shape)
    cov = coverage(model, x, F.cross_entropy, y, Subsample(0.25))
    plain = memory.saved_bytes(model, x, F.cross_entropy, y)
    converted = memory.saved_bytes(radvar.convert(model, Subsample(0.25)), x, F.cross_entropy, y)
    assert cov.total["bytes_plain"] == plain.total == cov.per_layer["bytes_plain"].sum()
    assert cov.total["bytes_converted"] == converted.total == cov.per_layer["bytes_converted"].sum()
    assert cov.total["bytes_sketchable"] + cov.total["bytes_exact"] == plain.total
    # what stays exact is kept unchanged; everything else converted keeps is the twins' compact state
    twins = cov.per_layer[cov.per_layer["status"] != "exact"]["bytes_converted"].sum()
    assert cov.total["bytes_converted"] == cov.total["bytes_exact"] + twins


def test_mlp_is_all_sketchable_but_the_loss():
    model, (x, y) = zoo.mlp(8, 6, 2, 3), batch((5, 8))
    cov = coverage(model, x, F.cross_entropy, y, Subsample(0.5))
    loss = cov.per_layer.set_index("module").loc["(loss)"]
    assert loss["why"] == "the loss" and cov.total["bytes_exact"] == loss["bytes_plain"] > 0
    assert set(cov.per_layer["status"]) == {"sketched", "compact", "exact"}


class Mixed(nn.Module):
    """An ELU (no twin, no functional kind), torch.exp in its own forward (no kind) and a product of two
    activations (a ``mul`` site, which takes quantize sketches only)."""

    def __init__(self, d: int = 6, classes: int = 3):
        super().__init__()
        self.lin1, self.act, self.lin2, self.head = nn.Linear(d, d), nn.ELU(), nn.Linear(d, d), nn.Linear(d, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.exp(self.act(self.lin1(x))) * self.lin2(x))


def test_reasons_name_the_modules_and_the_sites():
    model, (x, y) = Mixed(), batch((4, 6))
    rows = coverage(model, x, F.cross_entropy, y, Subsample(0.5)).per_layer.set_index("module")
    assert rows.loc["act", "why"] == "no twin for torch.nn.ELU"
    assert rows.loc["(top)", "why"] == "functional call inside the model" and rows.loc["(top)", "bytes_plain"] > 0
    assert rows.loc[":mul.0", "why"] == "mul takes ['quantize'] with view=None"
    assert rows.loc[":mul.0", "type"] == "mul" and rows.loc[":mul.0", "bytes_sketchable"] == 0
    assert rows.loc["lin1", "status"] == "sketched" and rows.loc["lin1", "why"] == ""
    rows = coverage(model, x, F.cross_entropy, y, Quantize(2)).per_layer.set_index("module")
    assert rows.loc[":mul.0", "status"] == "sketched"
    assert rows.loc[":mul.0", "bytes_sketchable"] == rows.loc[":mul.0", "bytes_plain"] > 0
    rows = coverage(model, x, F.cross_entropy, y, Plan({"lin1": Quantize(2)})).per_layer.set_index("module")
    assert rows.loc[":mul.0", "why"] == "exact in the plan"


def test_input_kept_by_another_module_and_exact_in_the_plan():
    model, (x, y) = SharedInput(), batch((4, 6))
    cov = coverage(model, x, F.cross_entropy, y, Subsample(0.5))
    rows = cov.per_layer.set_index("module")
    assert rows.loc["down", "why"] == "input kept by act" and rows.loc["down", "status"] == "sketched"
    assert rows.loc["act", "bytes_sketchable"] == 0  # h stays: ELU keeps it whatever down does
    assert "input kept by torch.nn.ELU" in cov.exact_left()["reason"].tolist()
    plan = Plan({"up": None, "down": Subsample(0.5)})
    rows = coverage(model, x, F.cross_entropy, y, plan).per_layer.set_index("module")
    assert rows.loc["up", "status"] == "exact" and rows.loc["up", "why"] == "exact in the plan"


def test_summary_html_and_json():
    model, (x, y) = tiny_vit(), batch((2, 3, 16, 16))
    cov = coverage(model, x, F.cross_entropy, y, Subsample(0.5))
    lines = cov.summary_lines()
    assert re.match(r"radvar can sketch \d+\.\d% of the saved bytes \(.* of .*\); .* stay exact$", lines[0])
    assert lines[1] == "left exact:" and "(loss): the loss [(loss)]" in cov.summary()
    assert "<table" in cov._repr_html_() and "radvar can sketch" in cov._repr_html_()
    doc = json.loads(json.dumps(cov.to_dict()))
    assert doc["total"]["bytes_plain"] == cov.total["bytes_plain"] and len(doc["per_layer"]) == len(cov.rows)


def test_convert_warns_when_it_randomizes_nothing():
    with pytest.warns(radvar.CoverageWarning, match=r"sketches 0 module\(s\)( \(site patterns \['\*:\*'\] match as "
                                                    r"the model runs\))?; 1 of the model's 1 weight layers stay exact, "
                                                    r"of types \['torch.nn.Embedding'\]"):
        radvar.convert(nn.Sequential(nn.Embedding(10, 4)), Subsample(0.1))
    with pytest.warns(radvar.CoverageWarning, match=r"sketches 1 module\(s\).*; 1 of the model's 1 weight layers "
                                                    r"stay exact, of types \['torch.nn.Embedding'\]"):
        radvar.convert(nn.Sequential(nn.Embedding(10, 4), nn.LayerNorm(4)), Subsample(0.1))


def test_convert_is_quiet_when_it_covers_the_model_or_is_asked_for_exact():
    with warnings.catch_warnings():
        warnings.simplefilter("error", radvar.CoverageWarning)
        radvar.convert(zoo.mlp(8, 6, 2, 3), Subsample(0.1))
        radvar.convert(zoo.resnet18(width=4), Subsample(0.1))
        radvar.convert(nn.Sequential(nn.Embedding(10, 4)), None)
        radvar.convert(zoo.mlp(8, 6, 2, 3), Plan({"0": None}))


def test_convert_names_hf_conv1d_apart_from_torch_conv1d():
    """HF Conv1D has its own twin (radvar.layers.hf_conv1d): converting GPT-2 is quiet, and the type is
    listed by its full path beside torch.nn.Conv1d."""
    transformers = pytest.importorskip("transformers")
    cfg = transformers.GPT2Config(n_layer=1, n_embd=8, n_head=2, vocab_size=16, n_positions=8,
                                  bos_token_id=0, eos_token_id=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error", radvar.CoverageWarning)
        radvar.convert(transformers.GPT2Model(cfg), Subsample(0.1))
    with pytest.raises(TypeError, match=r"is a torch.nn.Embedding, which radvar cannot randomize; "
                                        r"supported types: \[.*'torch.nn.Conv1d'.*'transformers.pytorch_utils.Conv1D'"):
        radvar.convert(transformers.GPT2Model(cfg), Plan({"wte": Subsample(0.1)}))


def test_analyze_prints_what_stays_exact(tmp_path):
    from cli.main import cli

    path = tmp_path / "net.py"
    path.write_text("import torch\nfrom torch import nn\n\n\n" + inspect.getsource(SharedInput)
                    + "\n\ndef make():\n    return SharedInput(6, 3)\n")
    result = CliRunner().invoke(cli, ["analyze", f"{path}:make", "--data", "synthetic:6:3:48", "--batch-size",
                                      "16", "--sketch", "subsample:0.5", "-q"])
    assert result.exit_code == 0, result.output
    assert re.search(r"^radvar can sketch \d+\.\d% of the saved bytes", result.stdout, re.M)
    assert re.search(r"torch.nn.ELU: no twin for torch.nn.ELU \[act\]$", result.stdout, re.M)
    assert re.search(r"torch.nn.Linear: input kept by torch.nn.ELU \[down\]$", result.stdout, re.M)
    path.write_text("import torch\nfrom torch import nn\n\n\n" + inspect.getsource(Mixed)
                    + "\n\ndef make():\n    return Mixed(6, 3)\n")
    result = CliRunner().invoke(cli, ["analyze", f"{path}:make", "--data", "synthetic:6:3:48", "--batch-size",
                                      "16", "--sketch", "subsample:0.5", "-q"])
    assert result.exit_code == 0, result.output
    assert re.search(r"mul: mul takes \['quantize'\] with view=None \[:mul.0\]$", result.stdout, re.M)


def test_bad_plan_is_named():
    with pytest.raises(TypeError, match="coverage: plan_or_sketch must be a radvar.Plan, a radvar.sketch.Sketch or "
                                        "None, got float"):
        coverage(zoo.mlp(8, 6, 2, 3), torch.randn(2, 8), plan_or_sketch=0.1)
