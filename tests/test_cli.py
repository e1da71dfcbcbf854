"""The radvar command through click's CliRunner: analyze, report, bench, zoo, bad specs."""

from __future__ import annotations

import base64
import io
import json
import re
import textwrap

import pytest
from click.testing import CliRunner
from PIL import Image

import radvar
import torch
from radvar import _native
from cli.main import cli
from cli.specs import SpecError

USER_MODEL = textwrap.dedent('''
    import torch
    from torch import nn


    class Block(nn.Module):
        """Pre-norm residual MLP block over tokens: x + W2 gelu(W1 LayerNorm(x))."""

        def __init__(self, d):
            super().__init__()
            self.norm = nn.LayerNorm(d)
            self.up = nn.Linear(d, 2 * d)
            self.act = nn.GELU()
            self.down = nn.Linear(2 * d, d)

        def forward(self, x):
            return x + self.down(self.act(self.up(self.norm(x))))


    class Net(nn.Module):
        def __init__(self, tokens, d, classes):
            super().__init__()
            self.pos = nn.Embedding(tokens, d)
            self.block = Block(d)
            self.head = nn.Linear(d, classes)

        def forward(self, x):
            h = x + self.pos(torch.arange(x.shape[1], device=x.device))
            return self.head(self.block(h).mean(1))


    def make_model(tokens=8, d=16, classes=5):
        return Net(tokens, d, classes)


    def raises():
        raise RuntimeError("no GPU here")


    def not_a_module():
        return 42
''')


@pytest.fixture(scope="module")
def user_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("user") / "mymodel.py"
    path.write_text(USER_MODEL)
    return path


def run(*args: str):
    return CliRunner().invoke(cli, list(args), catch_exceptions=True)


@pytest.fixture(scope="module")
def default_report(tmp_path_factory):
    """`radvar analyze --out DIR --json -` on the built-in model and data, run once (batch 60 to stay quick)."""
    radvar.seed(0)
    out = tmp_path_factory.mktemp("analyze") / "report"
    result = run("analyze", "--batch-size", "60", "--out", str(out), "--json", "-", "--quiet")
    assert result.exit_code == 0, result.output + result.stderr
    return out, result


def test_version_and_zoo():
    assert run("--version").stdout.strip() == f"radvar {radvar.__version__}"
    listing = run("zoo").stdout
    for name in ("mlp", "cnn", "wide_mlp", "irnn", "digits", "synthetic", "sequential_digits"):
        assert re.search(rf"^  {name}\s", listing, re.M), name


def test_json_dash_prints_only_json(default_report):
    _, result = default_report
    doc = json.loads(result.stdout)  # nothing but the JSON on stdout
    assert doc["format"] == "radvar.analysis"
    assert [r["layer"] for r in doc["layers"]] == ["0", "1", "2", "3", "4", "5", "6", "(loss)"]
    assert doc["meta"]["plan"].startswith("recommended by radvar.tune for the memory of uniform Subsample(0.1")
    # what the step times depend on: torch, its threads and whether radvar's compiled kernels ran
    assert doc["meta"]["torch"] == torch.__version__ and doc["meta"]["threads"] >= 1
    assert doc["meta"]["kernels"] == (f"compiled ({_native.build_id()})" if _native.available()
                                      else "not built (numpy paths)")
    entries = doc["plan"]["entries"]
    linear = [r for r in doc["layers"] if r["type"] == "Linear"]
    assert [r["layer"] for r in linear] == sorted(entries) == ["0", "2", "4", "6"]
    for r in linear:  # the table shows the plan's entry and its variance
        assert r["sketch"] == ("exact" if entries[r["layer"]] == "exact" else
                               radvar.sketch.Sketch.from_dict(entries[r["layer"]]).label())
        assert r["data_variance"] > 0 and (r["rad_variance"] > 0) == (r["sketch"] != "exact")
    totals = doc["totals"]
    assert totals["bytes_exact"] == sum(r["bytes_exact"] for r in doc["layers"])
    assert totals["bytes_plan"] == sum(r["bytes_plan"] for r in doc["layers"])
    assert totals["bytes_plan"] <= doc["plan"]["provenance"]["budget"]["bytes"] < totals["bytes_exact"]
    assert totals["rad_variance"] == pytest.approx(sum(r["rad_variance"] for r in linear))
    b, d, r = totals["batch_size"], totals["data_variance"], totals["rad_variance"]
    assert b == 60 and totals["equivalent_batch_size"] == pytest.approx(b * d / (d + r))


def test_report_folder_has_decodable_figures(default_report):
    out, result = default_report
    assert sorted(p.name for p in out.iterdir()) == [
        ".radvar-report.json", "analysis.json", "frontier.png", "memory.png", "report.html", "report.md",
        "variance.png"]
    assert json.loads((out / ".radvar-report.json").read_text()) == {"format": "radvar-report", "version": 1}
    html = (out / "report.html").read_text()
    images = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', html)
    assert len(images) == 3
    for data in images:
        img = Image.open(io.BytesIO(base64.b64decode(data)))
        assert img.format == "PNG" and img.size[0] > 300
        img.verify()
    assert json.loads((out / "analysis.json").read_text()) == json.loads(result.stdout)
    assert "![Memory by layer](memory.png)" in (out / "report.md").read_text()
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]  # no temp folders left


def test_report_rerenders_the_same_table(default_report):
    out, _ = default_report
    again = run("report", str(out / "analysis.json"))
    assert again.exit_code == 0, again.stderr
    doc = json.loads((out / "analysis.json").read_text())
    for record in doc["layers"]:
        assert re.search(rf"^\s*{re.escape(record['layer'])}\s+{re.escape(record['type'])}\s", again.stdout, re.M)
    assert json.loads(run("report", str(out / "analysis.json"), "--format", "json").stdout) == doc
    md = run("report", str(out / "analysis.json"), "--format", "markdown").stdout
    assert md.startswith("| layer | type | shape |")


def test_user_model_with_layers_radvar_leaves_exact(user_file):
    result = run("analyze", f"{user_file}:make_model", "--data", "synthetic:8x16:5:96", "--batch-size", "32",
                 "--json", "-", "--quiet")
    assert result.exit_code == 0, result.stderr
    layers = {r["layer"]: r for r in json.loads(result.stdout)["layers"]}
    row = layers["pos"]  # an Embedding: no twin, left exact
    assert row["type"] == "Embedding" and row["sketch"] == "exact" and not row["randomized"]
    assert row["rad_variance"] == 0
    for name, kind in (("block.norm", "LayerNorm"), ("block.act", "GELU")):  # propagating twins: the tuner may
        row = layers[name]                                                      # sketch them, never at a cost
        assert row["type"] == kind and row["bytes_exact"] > 0
        assert row["bytes_plan"] == row["bytes_exact"] if row["sketch"] == "exact" else \
            row["bytes_plan"] < row["bytes_exact"]
        if row["sketch"] != "exact":  # the report shows what the sketch costs: its probed variance
            assert row["method"].startswith("propagated") and 0 < row["rad_variance"] < float("inf"), row
    plan = json.loads(result.stdout)["plan"]["entries"]
    assert {"block.down", "block.up", "head"} <= set(plan) <= {"block.down", "block.up", "head", "block.norm",
                                                                "block.act"}


def test_analyze_shows_the_probed_variance_of_propagating_layers(user_file, tmp_path):
    """LayerNorm and GELU rows carry their probe-estimated RAD variance (finite, with a standard error and a
    "propagated" method), the table prints it, and the RAD total is the sum of the rows."""
    path = tmp_path / "analysis.json"
    result = run("analyze", f"{user_file}:make_model", "--data", "synthetic:8x16:5:96", "--batch-size", "32",
                 "--sketch", "subsample:0.5", "--json", str(path), "--quiet")
    assert result.exit_code == 0, result.stderr
    doc = json.loads(path.read_text())
    layers = {r["layer"]: r for r in doc["layers"]}
    for name, kind in (("block.norm", "LayerNorm"), ("block.act", "GELU")):
        row = layers[name]
        assert row["type"] == kind and row["sketch"] == "Subsample(0.5, shared)", row
        assert row["method"].startswith("propagated"), row
        assert 0 < row["rad_variance"] < float("inf") and 0 < row["rad_se"] < row["rad_variance"], row
        assert 0 < row["batch_rad_variance"] < float("inf") and row["data_variance"] is None, row
        line = re.search(rf"^\s*{re.escape(name)}\s+{kind}\s.*$", result.stdout, re.M).group(0)
        assert f"{row['rad_variance']:.3g} ± {row['rad_se']:.3g}" in line, line
    assert doc["totals"]["rad_variance"] == pytest.approx(sum(r["rad_variance"] for r in doc["layers"]), rel=1e-12)
    assert doc["totals"]["rad_total"].startswith("first order")
    assert "first order" in result.stdout


def test_analyze_probes_sets_the_probe_passes_per_site(user_file, tmp_path):
    """--probes P with --probe-rtol 0: the propagating rows say how the 3 RAD batches shared P probes scored
    against the default 8 shared directions (⌈P/√3⌉ and ⌈8/√3⌉ each), or P probes each pushed back with
    --directions 0 (P/3 each); fewer than 2 probes, 1 direction, or a negative or infinite tolerance, is
    refused."""
    each = "on each of 3 batches"
    for extra, method in [((), f"propagated (4 probes, 5 directions, {each})"),
                          (("--directions", "0"), f"propagated (2 probes, {each})"),
                          (("--directions", "3"), f"propagated (4 probes, 2 directions, {each})")]:
        path = tmp_path / "analysis.json"
        result = run("analyze", f"{user_file}:make_model", "--data", "synthetic:8x16:5:96", "--batch-size", "32",
                     "--sketch", "subsample:0.5", "--probes", "6", "--probe-rtol", "0", *extra, "--json", str(path),
                     "--quiet")
        assert result.exit_code == 0, result.stderr
        layers = {r["layer"]: r for r in json.loads(path.read_text())["layers"]}
        assert layers["block.norm"]["method"] == method
    for flag, value in [("--probes", "1"), ("--probe-rtol", "-0.1"), ("--probe-rtol", "inf"), ("--directions", "1")]:
        bad = run("analyze", f"{user_file}:make_model", "--data", "synthetic:8x16:5:96", flag, value, "--quiet")
        assert bad.exit_code == 2 and flag in bad.stderr and "Traceback" not in bad.stderr, (flag, bad.stderr)


def test_analysis_rows_for_functional_sites_carry_their_probe_estimate():
    """A functional site of the plan (F.gelu, key ":gelu.0" from the pattern "*:*") gets a row with its probed
    variance and standard error; the RAD total is the sum of the rows."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(6, 8), nn.Linear(8, 3)

        def forward(self, x):
            return self.b(F.gelu(self.a(x)))

    x = torch.randn(32, 6, generator=torch.Generator().manual_seed(0))
    y = torch.arange(32) % 3
    plan = radvar.Plan({"a": radvar.sketch.Subsample(0.5), "*:*": radvar.sketch.Quantize(2)})
    a = radvar.report.analyze(Net(), (x, y), F.cross_entropy, batch_size=16, plan=plan, timing=False)
    rows = a.per_layer.set_index("layer")
    site = rows.loc[":gelu.0"]
    assert site["type"] == "gelu (functional)" and site["sketch"] == "Quantize(2 bits, per-row)"
    assert site["method"].startswith("propagated") and 0 < site["rad_se"] < site["rad_variance"] < float("inf")
    assert a.total["rad_variance"].iloc[0] == pytest.approx(rows["rad_variance"].sum(), rel=1e-12)


@pytest.mark.parametrize("args, message", [
    (["analyze", "missing/model.py:make"], "MODEL: file 'missing/model.py' does not exist"),
    (["analyze", "{user}:nope"], "has no attribute 'nope'"),
    (["analyze", "{user}:raises"], "factory '.*:raises' raised RuntimeError: no GPU here"),
    (["analyze", "{user}:not_a_module"], "returned a int, not a torch.nn.Module"),
    (["analyze", "{user}:make_model", "--data", "synthetic:3x32x32:10"], "do not fit the model"),
    (["analyze", "--loss", "hinge"], "unknown loss 'hinge'"),
    (["analyze", "--sketch", "subsample:2"], "keep must be in \\(0, 1\\], got 2.0"),
    (["analyze", "--batch-size", "5000"], "--batch-size: 5000 is larger than the 1797 examples"),
    (["analyze", "--model-arg", "width"], "--model-arg: 'width' is not of the form key=value"),
    (["analyze", "--budget", "1.5"], "--budget: '1.5' is neither a fraction in \\(0, 1\\] nor a whole number"),
    (["analyze", "--budget", "0"], "--budget: fraction '0' must be in \\(0, 1\\]"),
    (["analyze", "--draws", "1"], "--draws: 1 draw has no variance"),
    (["tune", "--budget", "100", "-o", "{tmp}/plan.json"], "smallest feasible budget is"),
    (["bench", "--data", "nowhere.pt"], "--data: file 'nowhere.pt' does not exist"),
    (["report", "nothing.json"], "ANALYSIS.json: file 'nothing.json' does not exist"),
])
def test_bad_specs_print_one_line_and_exit_2(user_file, tmp_path, args, message):
    out = tmp_path / "report"
    args = [a.replace("{user}", str(user_file)).replace("{tmp}", str(tmp_path)) for a in args]
    result = run(*args, *(["--out", str(out)] if args[0] == "analyze" else []))
    assert result.exit_code == 2, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith("radvar: error: ") and re.search(message, lines[-1]), lines
    assert "Traceback" not in result.stderr and result.stdout == ""
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_debug_shows_the_exception():
    result = run("analyze", "--loss", "hinge", "--debug")
    assert isinstance(result.exception, SpecError) and result.exit_code == 1


def test_out_refuses_a_folder_that_is_not_a_report(tmp_path):
    (tmp_path / "keep.txt").write_text("mine")
    result = run("analyze", "--data", "synthetic:64:10:40", "--batch-size", "20", "--out", str(tmp_path), "-q")
    assert result.exit_code == 2 and "is not a radvar report folder" in result.stderr
    assert [p.name for p in tmp_path.iterdir()] == ["keep.txt"]


def test_bench_on_a_small_model():
    result = run("bench", "--data", "synthetic:16:4:64", "--model-arg", "in_features=16", "--model-arg",
                 "hidden=8", "--batch-size", "32", "--reps", "1", "--sketch", "subsample:0.5", "--format", "json")
    assert result.exit_code == 0, result.stderr
    doc = json.loads(result.stdout)
    configs = doc["configs"]
    assert [c["config"] for c in configs] == ["plain PyTorch", "Subsample(0.5, shared)"]
    assert configs[1]["saved_bytes"] < configs[0]["saved_bytes"]
    assert doc["meta"]["kernels"].startswith("compiled (" if _native.available() else "not built")
    assert f"radvar kernels {doc['meta']['kernels']}" in result.stderr


def test_tune_saves_a_plan_within_budget(tmp_path):
    path = tmp_path / "plan.json"
    result = run("tune", "--data", "synthetic:16:4:64", "--batch-size", "32", "--budget", "0.5", "-o", str(path),
                 "-q")
    assert result.exit_code == 0, result.stderr
    plan = radvar.Plan.load(path)
    assert sorted(plan) == ["0", "2", "4", "6"]
    budget = plan.provenance["budget"]["bytes"]
    assert plan.provenance["measured_bytes"] <= budget == int(0.5 * plan.provenance["exact_bytes"])
    assert f"{plan.provenance['measured_bytes']:,} bytes measured" in result.stdout


def test_draws_check_the_closed_form_on_the_first_batch():
    """The Monte Carlo interval (99%, Student t over the draws) covers the closed form of the same batch."""
    result = run("analyze", "--data", "synthetic:16:4:256", "--model-arg", "in_features=16", "--model-arg",
                 "hidden=32", "--batch-size", "64", "--sketch", "subsample:0.3:per-example", "--draws", "100",
                 "--json", "-", "-q")
    assert result.exit_code == 0, result.stderr
    linear = [r for r in json.loads(result.stdout)["layers"] if r["type"] == "Linear"]
    assert len(linear) == 4
    for r in linear:
        assert r["ci_low"] <= r["batch_rad_variance"] <= r["ci_high"], r
        assert r["ci_low"] <= r["mc_variance"] <= r["ci_high"]
