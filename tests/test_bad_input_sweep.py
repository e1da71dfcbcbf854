"""Bad input through the CLI, every command: exit 2, one stderr line naming the value and what is allowed,
no traceback, nothing written, and no code run from a data, weights or plan file."""

from __future__ import annotations

import json
import pickle
import re
import textwrap
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from cli.main import cli
from radvar.report.result import VERSION

FILES = {
    "good.py": '''
        import torch
        from torch import nn


        def make_model():
            torch.manual_seed(0)
            return nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))


        def batchnorm():
            torch.manual_seed(0)
            return nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3)).train()


        def not_module():
            return 42


        class Text(nn.Module):
            def __init__(self):
                super().__init__()
                self.fc = nn.Linear(6, 3)

            def forward(self, x):
                return {"scores": self.fc(x)}


        def dict_out():
            return Text()


        def _data(n=24, features=6):
            g = torch.Generator().manual_seed(0)
            return torch.randn(n, features, generator=g), torch.randint(0, 3, (n,), generator=g)


        def data():
            return _data()


        def wrong_features():
            return _data(features=5)


        def float_labels():
            x, y = _data()
            return x, y.float()


        def empty():
            return _data(n=0)


        def label_out_of_range_last():
            x, y = _data()
            y[-1] = 7
            return x, y


        def inf_last():
            x, y = _data()
            x[-1, 0] = float("inf")
            return x, y


        def nan_last():
            x, y = _data()
            x[-1, 2] = float("nan")
            return x, y
    ''',
    "syntax.py": "def make_model(:\n    pass\n",
    "importerror.py": "raise ImportError('No module named nowhere_pkg')\n",
    "malformed.json": '{"plan": [',
    "analysis_list.json": "[1, 2]",
    "analysis_no_meta.json": json.dumps({"format": "radvar.analysis", "version": VERSION}),
    "analysis_bad_layers.json": json.dumps({"format": "radvar.analysis", "version": VERSION, "meta": {}, "totals": {},
                                            "layers": 5}),
    "unknown_layer.json": json.dumps({"format": "radvar.plan", "version": 1, "entries": {"no_such_layer": "exact"}}),
}


class Payload:
    """Unpickling this creates the file ``path`` (it must never happen)."""

    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("inputs")
    for name, text in FILES.items():
        (root / name).write_text(textwrap.dedent(text))
    marker = str(root / "PWNED")
    torch.save({"0.weight": Payload(marker)}, root / "weights.pt")
    torch.save((Payload(marker), torch.zeros(3)), root / "data.pt")
    torch.save({"0.weight": torch.zeros(2, 2)}, root / "wrong.pt")
    (root / "pickle_plan.json").write_bytes(pickle.dumps(Payload(marker)))
    (root / "pickle_analysis.json").write_bytes(pickle.dumps(Payload(marker)))
    return root


GOOD = "{root}/good.py:make_model"
DATA = "{root}/good.py:data"
# (case id, model spec, extra options, regex the one stderr line must match); commands fill in the rest
COMMON = [
    ("syntax_error", "{root}/syntax.py:make_model", [], r"MODEL: importing '.*syntax\.py' failed: SyntaxError"),
    ("raises_importerror", "{root}/importerror.py:make_model", [],
     r"MODEL: importing '.*importerror\.py' failed: ImportError: No module named nowhere_pkg"),
    ("missing_function", "{root}/good.py:nope", [],
     r"MODEL: '.*good\.py' has no attribute 'nope'; it has \[.*'make_model'"),
    ("factory_returns_non_module", "{root}/good.py:not_module", [],
     r"MODEL: factory '.*not_module' returned a int, not a torch\.nn\.Module"),
    ("wrong_feature_count", GOOD, ["--data", "{root}/good.py:wrong_features"],
     r"--data: inputs of shape \(24, 5\) do not fit the model"),
    ("float_labels", GOOD, ["--data", "{root}/good.py:float_labels"],
     r"--loss: .*target dtype to be Long .* got Float"),
    ("zero_examples", GOOD, ["--data", "{root}/good.py:empty"], r"--data: '.*good\.py:empty' holds no examples"),
    ("nan_in_last_example", GOOD, ["--data", "{root}/good.py:nan_last"],
     r"--data: example 23 has a non-finite input value nan .*; all values must be finite"),
    ("label_out_of_range_in_last_example", GOOD, ["--data", "{root}/good.py:label_out_of_range_last"],
     r"--data: example 23 has label 7, outside the 3 classes .*; allowed: 0 to 2"),
    ("inf_in_last_example", GOOD, ["--data", "{root}/good.py:inf_last"], r"example 23 .*inf"),
    ("weights_pickle_payload", GOOD, ["--data", DATA, "--weights", "{root}/weights.pt"],
     r"--weights: '.*weights\.pt' holds Python objects, not only tensors \(Unsupported global: GLOBAL io\.open\); "
     r"radvar reads tensors only"),
    ("data_pickle_payload", GOOD, ["--data", "{root}/data.pt"],
     r"--data: '.*data\.pt' holds Python objects, not only tensors"),
    ("bad_output_key", "{root}/good.py:dict_out", ["--data", DATA, "{output}", "logits"],
     r"--output: output key 'logits' is not in the model output, dict with keys 'scores'"),
]
MORE = [
    ("batch_of_one_on_a_train_mode_batchnorm", "{root}/good.py:batchnorm", ["--data", DATA, "--batch-size", "1"],
     r"--batch-size: 1 is too small for a BatchNorm in training mode .* use --batch-size >= 2"),
    ("batch_larger_than_data", GOOD, ["--data", DATA, "--batch-size", "100"],
     r"100 is larger than the .*\b(24|20) examples"),
    ("weights_missing_file", GOOD, ["--data", DATA, "--weights", "{root}/nope.pt"], r"--weights: .*nope\.pt"),
    ("weights_wrong_shapes", GOOD, ["--data", DATA, "--weights", "{root}/wrong.pt"],
     r"--weights: '.*wrong\.pt' does not match the model .*size mismatch for 0\.weight"),
    ("unknown_loss", GOOD, ["--data", DATA, "--loss", "hinge"], r"--loss: .*'hinge'"),
    ("unknown_device", GOOD, ["--data", DATA, "--device", "tpu"], r"--device: .*'tpu'"),
    ("unknown_data", GOOD, ["--data", "imagenet"], r"--data: .*'imagenet'"),
    ("bad_synthetic_shape", GOOD, ["--data", "synthetic:x:3"], r"--data: .*'x'"),
    ("model_arg_without_equals", GOOD, ["--data", DATA, "--model-arg", "width"], r"--model-arg: .*'width'"),
    ("model_arg_unexpected", GOOD, ["--data", DATA, "--model-arg", "width=3"], r"MODEL: .*width"),
    ("output_index_out_of_range", "{root}/good.py:dict_out", ["--data", DATA, "{output}", "5"], r"--output: .*5"),
]
BUDGETS = [(f"budget_{name}", GOOD, ["--data", DATA, "--budget", value], rf"--budget: .*{re.escape(value)}")
           for name, value in [("0", "0"), ("negative", "-1"), ("nan", "nan"), ("abc", "abc"), ("1.5", "1.5")]]
UNKNOWN_FAMILY = ("unknown_family", GOOD, ["--data", DATA, "--sketch", "bogus:0.5"],
                  r"--sketch: 'bogus:0\.5' must be KIND:KEEP.* with KIND in \[.*'subsample'\]")
KEEPS = [("keep_0", "0"), ("keep_negative", "-0.1"), ("keep_1.5", "1.5"), ("keep_nan", "nan"), ("keep_abc", "abc")]
SKETCH = [(case, GOOD, ["--data", DATA, "--sketch", f"subsample:{keep}"], rf"--sketch: .*{re.escape(keep)}")
          for case, keep in KEEPS] + [
    UNKNOWN_FAMILY,
    ("unknown_sketch_option", GOOD, ["--data", DATA, "--sketch", "subsample:0.5:bogus"], r"--sketch: .*'bogus'")]
TRAIN = [(case, GOOD, ["--data", DATA, "--keep", keep], rf"keep must be in \(0, 1\], got {re.escape(keep)}")
         for case, keep in KEEPS[:-1]] + [
    ("keep_abc", GOOD, ["--data", DATA, "--keep", "abc"], r"Invalid value for '--keep': 'abc' is not a valid float"),
    UNKNOWN_FAMILY,
    ("plan_unknown_layer", GOOD, ["--data", DATA, "--plan", "{root}/unknown_layer.json"],
     r"Plan names module 'no_such_layer', which the model does not have; its randomizable modules are \['0', '2'\]"),
    ("plan_malformed_json", GOOD, ["--data", DATA, "--plan", "{root}/malformed.json"],
     r"malformed\.json: not valid JSON"),
    ("plan_pickle_payload", GOOD, ["--data", DATA, "--plan", "{root}/pickle_plan.json"],
     r"pickle_plan\.json: not valid JSON"),
]
SLOWDOWN = [(f"max_slowdown_{name}", GOOD, ["--data", DATA, "--max-slowdown", value],
             rf"--max-slowdown: '{re.escape(value)}' must be a finite number > 1")
            for name, value in [("1", "1"), ("0.5", "0.5"), ("negative", "-2"), ("nan", "nan"), ("inf", "inf"),
                                ("abc", "abc")]]
ANALYZE = SLOWDOWN + [
    ("one_draw", GOOD, ["--data", DATA, "--draws", "1"], r"--draws.*1"),
    ("out_is_a_file", GOOD, ["--data", DATA, "--out", "{root}/good.py"], r"good\.py"),
]
TUNE = SLOWDOWN + [("plan_in_a_missing_folder", GOOD, ["--data", DATA, "-o", "{root}/no/such/plan.json"], r"no/such")]
COMMANDS = {  # command: (its quick options, writing under the test's folder; its cases)
    "analyze": (lambda out: ["--batch-size", "8", "--out", str(out / "report"), "--json", str(out / "a.json")],
                COMMON + MORE + SKETCH + BUDGETS + ANALYZE),
    "tune": (lambda out: ["--batch-size", "8", "--budget", "0.5", "-o", str(out / "plan.json")],
             COMMON + MORE + SKETCH + BUDGETS + TUNE),
    "bench": (lambda out: ["--batch-size", "8", "--reps", "1"], COMMON + MORE + SKETCH),
    "train": (lambda out: ["--batch-size", "8", "--steps", "1", "--out", str(out / "train")], COMMON + MORE + TRAIN),
}
CASES = [pytest.param(command, *case[1:], id=f"{command}-{case[0]}")
         for command, (_, cases) in COMMANDS.items() for case in cases]


def _check(result, message: str, root: Path, out: Path) -> None:
    assert result.exit_code == 2, (result.exit_code, result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert re.search(message, lines[0]), lines[0]
    assert list(out.iterdir()) == []
    assert not (root / "PWNED").exists()


@pytest.mark.parametrize("command, model, extra, message", CASES)
def test_bad_input_is_one_line_exit_2_and_writes_nothing(files, tmp_path, command, model, extra, message):
    fill = {"root": str(files), "output": "--model-output" if command == "tune" else "--output"}
    args = [command, model.format(**fill), *COMMANDS[command][0](tmp_path), *(a.format(**fill) for a in extra),
            "-q"]  # the case's options last: they win over the command's defaults
    _check(CliRunner().invoke(cli, args, catch_exceptions=True), message, files, tmp_path)


REPORT_CASES = [  # (file, regex of the one stderr line)
    ("malformed.json", r"malformed\.json' is not valid JSON"),
    ("pickle_analysis.json", r"pickle_analysis\.json' is not valid JSON"),
    ("unknown_layer.json", r"unknown_layer\.json'.*expected format 'radvar\.analysis', got 'radvar\.plan'"),
    ("missing.json", r"file '.*missing\.json' does not exist"),
    ("analysis_list.json", r"analysis_list\.json'.*expected format 'radvar\.analysis', got 'list'"),
    ("analysis_no_meta.json", r"analysis_no_meta\.json'.*'meta' must be an object"),
    ("analysis_bad_layers.json", r"analysis_bad_layers\.json'.*'layers' must be a list of objects, got int"),
]


@pytest.mark.parametrize("name, message", [pytest.param(name, message, id=name) for name, message in REPORT_CASES])
def test_report_bad_analysis_file(files, tmp_path, name, message):
    result = CliRunner().invoke(cli, ["report", str(files / name), "--out", str(tmp_path / "r"), "-q"],
                                catch_exceptions=True)
    _check(result, message, files, tmp_path)


def test_analyze_runs_a_train_mode_batchnorm_at_a_small_batch(tmp_path):
    """The frontier's smallest exact batch (batch // 16 = 1 here) is raised to 2 for a train-mode BatchNorm."""
    (tmp_path / "bn.py").write_text(textwrap.dedent('''
        from torch import nn


        def make_model():
            return nn.Sequential(nn.Linear(64, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Linear(32, 10)).train()
    '''))
    result = CliRunner().invoke(cli, ["analyze", f"{tmp_path}/bn.py:make_model", "--batch-size", "16", "--json", "-",
                                      "-q"], catch_exceptions=True)
    assert result.exit_code == 0, result.stderr
    small = [r["label"] for r in json.loads(result.stdout)["frontier"] if r["kind"] == "exact small batch"]
    assert small == ["exact batch 2", "exact batch 4", "exact batch 8"]


def test_the_payload_creates_its_file_when_unpickled(tmp_path):
    """The payload cases above can fail: unpickling the payload does create the file."""
    pickle.loads(pickle.dumps(Payload(str(tmp_path / "PWNED")))).close()
    assert (tmp_path / "PWNED").exists()
