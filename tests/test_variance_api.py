"""radvar.variance: per-example norms vs torch.func, keep grids, reports, bad input."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn
from torch.func import functional_call, grad, vmap

import radvar
from radvar import variance, zoo
from radvar.sketch import Importance, Subsample, inclusion_probabilities
from radvar.variance.minibatch import OTHER, per_example_sq_norms

CE = nn.functional.cross_entropy


pytestmark = pytest.mark.usefixtures("one_thread")


def _small() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(5)
    model = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1, groups=1), nn.LayerNorm([3, 5, 5]), nn.ReLU(),
                          nn.Flatten(), nn.Linear(75, 4)).double()
    return model, torch.randn(9, 2, 5, 5, generator=g, dtype=torch.float64), torch.randint(0, 4, (9,), generator=g)


def test_per_example_norms_match_torch_func():
    model, x, y = _small()
    norms, sums = per_example_sq_norms(model, x, y, CE)
    params = {k: v.detach() for k, v in model.named_parameters()}
    per = vmap(grad(lambda p, a, b: CE(functional_call(model, p, (a[None],)), b[None])), in_dims=(None, 0, 0))(params, x, y)
    sq = {k: v.flatten(1).square().sum(1) for k, v in per.items()}
    torch.testing.assert_close(norms["0"], sq["0.weight"])
    torch.testing.assert_close(norms["0.bias"], sq["0.bias"])
    torch.testing.assert_close(norms["4"], sq["4.weight"])
    torch.testing.assert_close(norms["4.bias"], sq["4.bias"])
    torch.testing.assert_close(norms[OTHER], sq["1.weight"] + sq["1.bias"])
    torch.testing.assert_close(sums["4"], per["4.weight"].sum(0).reshape(-1))


def test_per_example_norms_do_not_depend_on_the_chunk():
    """Chunks of 1, 4 and 9 examples give the same norms and sums, a training-mode BatchNorm normalising with
    the statistics of all the examples in each (a model with other parameters and a per-example fast path)."""
    model, x, y = _small()
    model = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.BatchNorm2d(3), model[1:]).double().train()
    whole = per_example_sq_norms(model, x, y, CE)
    for chunk in (1, 4, 9):
        norms, sums = per_example_sq_norms(model, x, y, CE, chunk=chunk)
        assert norms.keys() == whole[0].keys() and sums.keys() == whole[1].keys()
        for k in norms:
            torch.testing.assert_close(norms[k], whole[0][k])
            torch.testing.assert_close(sums[k], whole[1][k])
    with pytest.raises(ValueError, match="chunk must be a positive int"):
        per_example_sq_norms(model, x, y, CE, chunk=0)


def test_per_example_norms_through_attention_say_nothing_about_batching_rules(recwarn):
    """vmap has no batching rule for CPU flash attention and loops inside torch, warning each call; the
    per-example norms (every radvar analyze of a transformer) keep that to themselves, and match a loop."""
    from radvar.apps.architectures import vit

    model = vit(image=16, patch=8, embed=16, depth=1, heads=2, classes=3)
    x, y = torch.randn(4, 3, 16, 16), torch.arange(4) % 3
    norms, _ = per_example_sq_norms(model, x, y, CE)
    assert not [w for w in recwarn.list if "batching rule" in str(w.message)]
    total = sum(norms.values())  # every parameter once: the layers, their biases, the rest (OTHER)
    for i in range(4):
        model.zero_grad()
        CE(model(x[i:i + 1]), y[i:i + 1]).backward()
        whole = sum(p.grad.double().square().sum() for p in model.parameters())
        assert torch.isclose(total[i], whole, rtol=1e-4), (i, total[i], whole)


def test_minibatch_trace_and_total_picture():
    model, x, y = _small()
    rep = variance.minibatch(model, (x, y), CE, 3, plan=Subsample(0.5))
    params = {k: v.detach() for k, v in model.named_parameters()}
    per = vmap(grad(lambda p, a, b: CE(functional_call(model, p, (a[None],)), b[None])), in_dims=(None, 0, 0))(params, x, y)
    flat = torch.cat([v.flatten(1) for v in per.values()], 1)
    trace = float((flat - flat.mean(0)).square().sum() / (x.shape[0] - 1))
    tot = rep.total.iloc[0]
    assert tot["trace_sigma"] == pytest.approx(trace, rel=1e-9)
    assert tot["data_variance"] == pytest.approx(trace / 3, rel=1e-9)
    assert tot["equivalent_batch_size"] == pytest.approx(trace / (trace / 3 + tot["rad_variance"]), rel=1e-9)
    assert 0 < tot["equivalent_batch_size"] < 3 and tot["small_batch_bytes"] <= tot["bytes_plan"]
    rows = rep.per_layer.set_index("layer")
    assert set(rows.index) == {"0", "1", "4"}  # the ReLU "1" propagates: its own row, a probe estimate
    assert rows.at["1", "method"].startswith("propagated") and rows.at["1", "rad_se"] > 0
    assert tot["rad_variance"] == pytest.approx(rows["rad_variance"].sum(), rel=1e-12)


def test_keep_grid_and_importance_fast_form():
    x, y = zoo.digits()
    model = zoo.mlp(in_features=64, hidden=32, depth=2)
    rep = variance.analytic(model, (x[:40].clone(), y[:40].clone()), CE, Importance(0.3), keeps=[0.1, 0.3, 1.0])
    assert len(rep.per_layer) == 3 * 3 and len(rep.total) == 3
    assert (rep.per_layer.loc[rep.per_layer["keep"] == 1.0, "rad_variance"] == 0).all()
    v = rep.per_layer.groupby("keep")["rad_variance"].sum()
    assert v[0.1] > v[0.3] > 0
    # the cached sorted form equals Σ (1/π − 1) x² ‖g‖² with π from the sketch itself
    cap = variance.capture(model, (x[:40], y[:40]), CE)
    acts, grads = {}, {}

    def hook(module, args, out):
        acts[0] = args[0].detach()
        out.register_hook(lambda g: grads.__setitem__(0, g))

    handle = model[0].register_forward_hook(hook)
    CE(model(x[:40]), y[:40]).backward()
    handle.remove()
    pi = inclusion_probabilities(acts[0], 0.3).double()
    xs = acts[0].double()
    direct = float(((1 / pi.clamp_min(1e-300) - 1) * (pi > 0) * xs ** 2 * grads[0].double().square().sum(1, keepdim=True)).sum())
    value, method = variance.layer_variance(cap["0"], Importance(0.3))
    assert value == pytest.approx(direct, rel=1e-5) and method == "closed form"


def test_report_json_roundtrip_summary_plot(tmp_path):
    import matplotlib
    matplotlib.use("Agg")
    x, y = zoo.digits()
    model = zoo.mlp(in_features=64, hidden=16, depth=1)
    rep = variance.analytic(model, (x[:30].clone(), y[:30].clone()), CE, Subsample(0.2), keeps=[0.2, 0.5])
    back = variance.VarianceReport.from_dict(json.loads(json.dumps(rep.to_dict())))
    assert back.per_layer["rad_variance"].tolist() == rep.per_layer["rad_variance"].tolist()
    assert "rad_variance" in rep.summary() and "<table" in rep._repr_html_()
    ax = rep.plot()
    ax.figure.savefig(tmp_path / "v.png")


def test_bad_input():
    x, y = zoo.digits()
    model = zoo.mlp(in_features=64, hidden=8, depth=1)
    with pytest.raises(ValueError, match="data is empty"):
        variance.minibatch(model, [], CE, 4)
    with pytest.raises(ValueError, match="batch_size 50 is larger than the data"):
        variance.minibatch(model, (x[:10], y[:10]), CE, 50)
    with pytest.raises(ValueError, match="scalar"):
        variance.analytic(model, (x[:10], y[:10]), lambda o, t: CE(o, t, reduction="none"), Subsample(0.5))
    with pytest.raises(ValueError, match="scalar"):
        variance.minibatch(model, (x[:10], y[:10]), lambda o, t: o, 2)
    with pytest.raises(ValueError, match="'nope'"):
        variance.analytic(model, (x[:10], y[:10]), CE, radvar.Plan({"nope": Subsample(0.5)}))
    with pytest.raises(ValueError, match="batch is empty"):
        variance.analytic(model, (x[:0], y[:0]), CE, Subsample(0.5))
    with pytest.raises(ValueError, match="draws must be an int >= 2"):
        variance.empirical(model, (x[:10], y[:10]), CE, Subsample(0.5), draws=1)
    with pytest.raises(ValueError, match="keeps is empty"):
        variance.analytic(model, (x[:10], y[:10]), CE, Subsample(0.5), keeps=[])
    with pytest.raises(ValueError, match="keep must be in"):
        variance.analytic(model, (x[:10], y[:10]), CE, Subsample(0.5), keeps=[0.0])
    with pytest.raises(TypeError, match="plan must be"):
        variance.analytic(model, (x[:10], y[:10]), CE, "half")


@pytest.mark.slow
def test_variance_study_quick_runs():
    """The percent-format study runs as a script (about a minute on 2 cores)."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    done = subprocess.run([sys.executable, str(root / "analyses" / "variance_study.py"), "--quick"],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "Importance vs uniform" in (root / "analyses" / "results" / "variance_study_quick.md").read_text()


def test_spread_shares_one_estimates_probe_budget_over_the_rad_batches():
    """minibatch averages a propagating site's estimate over k RAD batches: each takes ⌈P/√k⌉ probes and ⌈Z/√k⌉
    directions (at least 2 of each), or ⌈P/k⌉ probes pushed back; the stopping rule unchanged."""
    from radvar.variance import Probes
    from radvar.variance.minibatch import spread

    assert spread(Probes(8, rtol=0.1, directions=8), 4) == Probes(4, rtol=0.1, directions=4)
    assert spread(Probes(4, directions=12), 3) == Probes(3, directions=7)
    assert spread(Probes(64), 4) == Probes(16) and spread(Probes(6), 4) == Probes(2)
    assert spread(Probes(8, directions=2), 1) == Probes(8, directions=2)
