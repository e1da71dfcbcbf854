"""Bad data is named before any expensive work; per-example statistics on ordinary training-mode models.

Covers: radvar._data (validation over all of the data, streaming over batches);
the CLI (a bad label, NaN or inf in the LAST example: exit 2, one line naming
the example and the value, nothing written); radvar.bench and
radvar.variance.analytic never returning NaN; minibatch statistics on
train-mode BatchNorm, active dropout and non-tensor outputs, and
tune(variance_budget=...) on them.
"""

from __future__ import annotations

import re

import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner
from torch import nn

import radvar
from cli.main import cli
from radvar import _data
from radvar.bench import compare
from radvar.sketch import Subsample
from radvar.variance import analytic, minibatch
from radvar.variance.minibatch import per_example_sq_norms

pytestmark = pytest.mark.usefixtures("one_thread")


def _pair(n: int = 40, features: int = 6, classes: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randn(n, features, generator=g), torch.randint(0, classes, (n,), generator=g)


def _mlp(features: int = 6, classes: int = 3) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(features, 8), nn.ReLU(), nn.Linear(8, classes))


# ---- radvar._data.validate -------------------------------------------------------------------------------


def test_validate_names_a_bad_label_in_the_last_example():
    x, y = _pair()
    y[-1] = 3
    with pytest.raises(ValueError, match=r"^data: example 39 has label 3, outside the 3 classes .* 0 to 2$"):
        _data.validate(x, y, num_classes=3)
    y[-1] = -1
    with pytest.raises(ValueError, match="example 39 has label -1"):
        _data.validate((x, y), num_classes=3)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
def test_validate_names_a_non_finite_value_in_the_last_example(value):
    x, y = _pair()
    x[-1, 4] = value
    with pytest.raises(ValueError, match=rf"example 39 has a non-finite input value {value} at position \(4,\)"):
        _data.validate(x, y, name="data")
    x, y = _pair()
    yf = y.float()
    yf[-1] = value
    with pytest.raises(ValueError, match=rf"example 39 has a non-finite target value {value}"):
        _data.validate(x, yf)


def test_validate_streams_batches_and_counts_examples_across_them():
    x, y = _pair(n=40)
    y[33] = 7
    batches = ((x[s:s + 16], y[s:s + 16]) for s in range(0, 40, 16))  # a one-shot generator: read once
    with pytest.raises(ValueError, match="example 33 has label 7"):
        _data.validate(batches, num_classes=3)
    assert _data.validate([(x[:16], y[:16].clamp(max=2)), (x[16:], y[16:].clamp(max=2))], num_classes=3) == 40


def test_validate_names_inconsistent_shapes_and_bad_items():
    x, y = _pair()
    with pytest.raises(ValueError, match=r"example 16 \(data batch 1\) has per-example shapes \[\(5,\), \(\)\]"):
        _data.validate([(x[:16], y[:16]), (x[16:, :5], y[16:])])
    with pytest.raises(ValueError, match="must share their first dim"):
        _data.validate(x, y[:-1])
    with pytest.raises(TypeError, match="data batch 1 must be an \\(inputs, targets\\) pair"):
        _data.validate([(x, y), "oops"])
    with pytest.raises(ValueError, match="data is empty"):
        _data.validate([])


def test_validate_one_batch_with_tuple_inputs_and_targets():
    x, y = _pair(n=8)
    extra = torch.ones(3, 3)  # an input that does not index examples
    extra[1, 2] = float("nan")
    with pytest.raises(ValueError, match=r"capture: input 1 holds a non-finite value nan at position \(1, 2\)"):
        _data.validate((x, extra), (y, y.float()), name="capture")
    yf = y.float()
    yf[6] = float("inf")
    with pytest.raises(ValueError, match=r"example 6 has a non-finite target 1 value inf"):
        _data.validate((x,), (y, yf))
    assert _data.validate(x, {"labels": y}) == 8  # targets the loss alone understands are left to it


def test_split_take_and_examples_share_one_home():
    from radvar.tradeoff.tune import take_batch
    from radvar.variance.capture import split_batch
    from radvar.variance.minibatch import as_examples
    assert split_batch is _data.split_batch and take_batch is _data.take_batch and as_examples is _data.examples
    x, y = _pair()
    (xb,), yb = _data.take_batch((x, y), 8, "t")
    assert xb.shape[0] == 8 and xb.untyped_storage().nbytes() == xb.numel() * 4  # a copy, not a view
    xs, ys = _data.examples([(x[:10], y[:10]), (x[10:], y[10:])], "t")
    assert torch.equal(xs, x) and torch.equal(ys, y)


# ---- the command line: late bad data is exit 2 and one line ------------------------------------------------


def _bad_file(tmp_path, kind: str):
    x, y = _pair(n=64, features=16, classes=4)
    x[-1, 3] = float("nan") if kind == "nan" else x[-1, 3]
    x[-1, 5] = float("inf") if kind == "inf" else x[-1, 5]
    y[-1] = 4 if kind == "label" else y[-1]
    path = tmp_path / "data.pt"
    torch.save({"inputs": x, "targets": y}, path)
    return path


COMMANDS = {
    "analyze": ["analyze", "--batch-size", "32", "--sketch", "subsample:0.5", "--out", "{tmp}/report"],
    "tune": ["tune", "--batch-size", "32", "--budget", "0.5", "-o", "{tmp}/plan.json"],
    "bench": ["bench", "--batch-size", "32", "--reps", "1", "--sketch", "subsample:0.5"],
    "train": ["train", "--steps", "2", "--batch-size", "16", "--out", "{tmp}/train"],
}
MESSAGES = {"label": r"--data: example 63 has label 4, outside the 4 classes of the model output; allowed: 0 to 3",
            "nan": r"--data: example 63 has a non-finite input value nan at position \(3,\)",
            "inf": r"--data: example 63 has a non-finite input value inf at position \(5,\)"}


@pytest.mark.parametrize("kind", sorted(MESSAGES))
@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_cli_names_bad_data_in_the_last_example(tmp_path, command, kind):
    data = _bad_file(tmp_path, kind)
    args = [a.replace("{tmp}", str(tmp_path)) for a in COMMANDS[command]]
    model = ["mlp", "--model-arg", "in_features=16", "--model-arg", "classes=4"]
    result = CliRunner().invoke(cli, [*args[:1], *model, *args[1:], "--data", str(data), "-q"])
    assert result.exit_code == 2, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and re.search(MESSAGES[kind], lines[0]), lines
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data.pt"]  # nothing written


RAGGED = """
import torch


def batches():
    return [(torch.randn(8, 16), torch.randint(0, 4, (8,))), (torch.randn(8, 15), torch.randint(0, 4, (8,)))]


class Items(torch.utils.data.Dataset):
    def __len__(self):
        return 10

    def __getitem__(self, i):
        return torch.randn(16 if i < 9 else 17), 1


def items():
    return Items()
"""


@pytest.mark.parametrize("fn, example, batch", [("batches", 8, 1), ("items", 9, 9)])
def test_cli_names_the_example_whose_shape_differs(tmp_path, fn, example, batch):
    (tmp_path / "ragged.py").write_text(RAGGED)
    result = CliRunner().invoke(cli, ["analyze", "--data", f"{tmp_path / 'ragged.py'}:{fn}", "-q"])
    assert result.exit_code == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    pattern = rf"--data: .*: example {example} \(data batch {batch}\) has per-example shapes \[\(1[57],\), \(\)\]"
    assert len(lines) == 1 and re.search(pattern, lines[0]), lines


# ---- the library never returns NaN silently ------------------------------------------------------------------


def test_bench_names_non_finite_data_and_gradients():
    x, y = _pair(n=16)
    x[-1, 0] = float("nan")
    with pytest.raises(ValueError, match=r"bench: example 15 has a non-finite input value nan"):
        compare(_mlp(), x, y, F.cross_entropy, [Subsample(0.5)], reps=1, warmup=0)
    model = _mlp()
    with torch.no_grad():
        model[2].weight[0, 0] = float("inf")
    with pytest.raises(ValueError, match=r"bench: the loss is nan although every input and target value is finite"):
        compare(model, *_pair(n=16), F.cross_entropy, [Subsample(0.5)], reps=1, warmup=0)


def test_analytic_names_non_finite_data_and_gradients():
    model = _mlp()
    plan = radvar.Plan.uniform(model, Subsample(0.5))
    x, y = _pair(n=16)
    x[-1, 2] = float("inf")
    with pytest.raises(ValueError, match=r"analytic: example 15 has a non-finite input value inf at position \(2,\)"):
        analytic(model, (x, y), F.cross_entropy, plan)
    with torch.no_grad():
        model[0].bias[0] = float("nan")
    with pytest.raises(ValueError, match="capture: the loss is nan although every input and target value is finite"):
        analytic(model, _pair(n=16), F.cross_entropy, plan)


def test_minibatch_names_the_example_whose_gradient_is_not_finite():
    x, y = _pair(n=16)
    x[-1, 1] = float("nan")
    with pytest.raises(ValueError, match=r"minibatch: example 15 has a non-finite input value nan"):
        minibatch(_mlp(), (x, y), F.cross_entropy, 8)

    def loss_fn(out, target):  # finite data, but example 11's loss overflows
        return F.cross_entropy(out, target) * torch.where(target == 99, float("inf"), 1.0).sum()

    x, y = _pair(n=16)
    y[11] = 99
    head = nn.Linear(6, 100)
    with pytest.raises(ValueError, match=r"minibatch: the gradient of example 11 is not finite"):
        minibatch(head, (x, y), loss_fn, 8)


# ---- per-example statistics on training-mode models ---------------------------------------------------------


class _Net(nn.Module):
    """Linear layers around a train-mode BatchNorm1d and an active Dropout (examples interact via BN)."""

    def __init__(self, dropout: float = 0.0):
        super().__init__()
        self.fc1, self.bn, self.drop, self.fc2 = nn.Linear(6, 8), nn.BatchNorm1d(8), nn.Dropout(dropout), \
            nn.Linear(8, 3)

    def forward(self, x):
        return self.fc2(self.drop(torch.relu(self.bn(self.fc1(x)))))


def _reference_sq_norms(model: _Net, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per example, ‖∂ℓ_i/∂θ‖² over all parameters, one backward each, with the BatchNorm normalizing by
    the batch's (biased) statistics held fixed: the definition minibatch documents."""
    h = model.fc1(x).detach()
    ref = _Net()
    ref.load_state_dict(model.state_dict())
    ref.bn.running_mean, ref.bn.running_var = h.mean(0), h.var(0, unbiased=False)
    ref.eval()
    out = []
    for i in range(len(x)):
        grads = torch.autograd.grad(F.cross_entropy(ref(x[i:i + 1]), y[i:i + 1]), list(ref.parameters()))
        out.append(sum(g.double().square().sum() for g in grads))
    return torch.stack(out)


def test_minibatch_on_train_mode_batchnorm_freezes_buffers():
    model = _Net().train()
    x, y = _pair(n=24)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    norms, _ = per_example_sq_norms(model, x, y, F.cross_entropy)
    total = sum(norms.values())
    torch.testing.assert_close(total, _reference_sq_norms(model, x, y), rtol=1e-5, atol=1e-8)
    report = minibatch(model, (x, y), F.cross_entropy, 8, plan=Subsample(0.5))
    assert report.total["trace_sigma"].iloc[0] > 0
    small = minibatch(model, (x, y), F.cross_entropy, 2, plan=Subsample(0.01))  # no exact batch of 1 runs
    assert small.total["small_batch_same_memory"].iloc[0] == 0
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # running stats, num_batches_tracked unchanged
    assert model.training and model.bn.training


class _ConvNorms(nn.Module):
    """Conv -> train-mode BatchNorm2d -> GroupNorm -> LayerNorm over (C, H, W) -> Linear."""

    def __init__(self):
        super().__init__()
        self.conv, self.bn, self.gn = nn.Conv2d(2, 4, 3, padding=1), nn.BatchNorm2d(4), nn.GroupNorm(2, 4)
        self.ln, self.fc = nn.LayerNorm((4, 5, 5)), nn.Linear(100, 3)

    def forward(self, x):
        return self.fc(torch.relu(self.ln(self.gn(self.bn(self.conv(x))))).flatten(1))


def test_norm_parameters_take_the_per_example_fast_path(monkeypatch):
    """The affine parameters of BatchNorm (batch statistics held fixed), GroupNorm and LayerNorm get their
    per-example gradients from the hooks (Σ g·x̂, Σ g), equal to one backward per example; torch.func is
    not called."""
    import importlib

    mb = importlib.import_module("radvar.variance.minibatch")  # the module (radvar.variance.minibatch is the function)
    torch.manual_seed(0)
    model = _ConvNorms().train()
    for m in (model.bn, model.gn, model.ln):
        nn.init.normal_(m.weight)
        nn.init.normal_(m.bias)
    g = torch.Generator().manual_seed(3)
    x, y = torch.randn(10, 2, 5, 5, generator=g), torch.randint(0, 3, (10,), generator=g)
    monkeypatch.setattr(mb, "_func_sq_norms", lambda *a: pytest.fail("torch.func path used"))
    norms, _ = per_example_sq_norms(model, x, y, F.cross_entropy)
    h = model.conv(x).detach()
    ref = _ConvNorms()
    ref.load_state_dict(model.state_dict())
    ref.bn.running_mean, ref.bn.running_var = h.mean((0, 2, 3)), h.var((0, 2, 3), unbiased=False)
    ref.eval()
    params = [p for n, p in ref.named_parameters() if n.split(".")[0] in ("bn", "gn", "ln")]
    want = torch.stack([sum(t.double().square().sum() for t in torch.autograd.grad(
        F.cross_entropy(ref(x[i:i + 1]), y[i:i + 1]), params)) for i in range(len(x))])
    torch.testing.assert_close(norms[mb.OTHER], want, rtol=1e-6, atol=1e-10)


def test_minibatch_on_batchnorm2d_without_running_stats():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 4, 3), nn.BatchNorm2d(4, track_running_stats=False), nn.Flatten(),
                          nn.Linear(4 * 4 * 4, 3)).train()
    g = torch.Generator().manual_seed(2)
    x, y = torch.randn(12, 2, 6, 6, generator=g), torch.randint(0, 3, (12,), generator=g)
    report = minibatch(model, (x, y), F.cross_entropy, 4)
    assert torch.isfinite(torch.tensor(report.per_layer["data_variance"].to_numpy())).all()
    assert model[1].running_mean is None and model[1].training


def test_minibatch_with_active_dropout_leaves_the_global_rng_alone():
    model = _Net(dropout=0.5).train()
    x, y = _pair(n=24)
    state = torch.get_rng_state()
    report = minibatch(model, (x, y), F.cross_entropy, 8, plan=Subsample(0.5))
    assert torch.equal(torch.get_rng_state(), state)
    assert report.total["trace_sigma"].iloc[0] > 0 and report.total["rad_variance"].iloc[0] > 0


def test_tune_variance_budget_on_batchnorm_and_dropout():
    model = _Net(dropout=0.3).train()
    x, y = _pair(n=48)
    plan = radvar.tune(model, (x, y), F.cross_entropy, variance_budget=0.5, relative=True, batch_size=16)
    assert plan.provenance["data_variance"] > 0
    assert sorted(plan) == ["bn", "fc1", "fc2"]  # the train-mode BatchNorm is a propagating site


CNN = """
import torch
from torch import nn


def make():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Dropout(0.2),
                         nn.Flatten(), nn.Linear(4 * 8 * 8, 10))
"""


def test_cli_analyze_on_train_mode_batchnorm_and_dropout(tmp_path):
    (tmp_path / "cnn.py").write_text(CNN)
    result = CliRunner().invoke(cli, ["analyze", f"{tmp_path / 'cnn.py'}:make", "--data", "synthetic:3x8x8:10:64",
                                      "--batch-size", "16", "--sketch", "subsample:0.5", "-q"])
    assert result.exit_code == 0, result.stderr
    assert re.search(r"data noise [0-9.e+-]+ \(all parameters, batch 16\)", result.stdout), result.stdout
