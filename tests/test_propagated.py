"""Propagated variance (radvar.variance.propagated): probe estimates against Monte Carlo, the analytic and
empirical reports, the tuner on propagating sites, and upper-confidence ranking of estimated variances."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import radvar
from radvar import variance
from radvar.sketch import Quantize, Subsample
from radvar.tradeoff import allocate, candidates
from radvar.tradeoff.tune import measured_bytes
from radvar.variance import Capture
from radvar.variance.propagated import Shared, method_label, propagated
from radvar.variance.statistics import agreement, holm

pytestmark = pytest.mark.usefixtures("one_thread")


class Net(nn.Module):
    """Linear -> nn.GELU ("act1") -> Linear -> F.gelu in forward (site ":gelu.0") -> nn.LayerNorm ("norm")
    -> Linear -> nn.SiLU ("act2") -> Linear."""

    def __init__(self, width: int = 8):
        super().__init__()
        self.lin1, self.act1, self.lin2 = nn.Linear(5, width), nn.GELU(), nn.Linear(width, width)
        self.norm, self.lin3, self.act2, self.lin4 = nn.LayerNorm(width), nn.Linear(width, width), nn.SiLU(), \
            nn.Linear(width, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm(F.gelu(self.lin2(self.act1(self.lin1(x)))))
        return self.lin4(self.act2(self.lin3(h)))


def setup() -> tuple[Net, tuple[torch.Tensor, torch.Tensor]]:
    return Net().double(), (torch.randn(12, 5, dtype=torch.float64), torch.arange(12) % 3)


def test_probe_rows_agree_with_monte_carlo_for_each_kind():
    """GELU (Quantize 2 bits), LayerNorm (Quantize 2 bits) and SiLU (Subsample 0.5) sites next to a sketched
    Linear input: analytic (600 probes per site) against 500-draw Monte Carlo of each entry alone. No Holm
    rejection of z from both standard errors (0.01); the analytic value inside the empirical 99% interval for
    at least 3 of the 4 rows (a probe estimate has its own standard error, here about the Monte Carlo one);
    the analytic total (first order) at most the upper end of the interval of the true total, which adds the
    non-negative product terms (here the SiLU's half-subsampled signal passing through the LayerNorm's sketched
    backward)."""
    model, batch = setup()
    plan = radvar.Plan({"act1": Quantize(2), "lin2": Quantize(2), "norm": Quantize(2), "act2": Subsample(0.5)})
    a = variance.analytic(model, batch, F.cross_entropy, plan, probes=600)
    e = variance.empirical(model, batch, F.cross_entropy, plan, draws=500)
    table = agreement(a, e)
    reject, _ = holm(table["p"].to_numpy(), 0.01)
    assert not reject.any(), table
    assert table["inside_ci"].sum() >= 3, table[["layer", "rad_variance_analytic", "ci_low", "ci_high"]]
    rows, mc = a.per_layer.set_index("layer"), e.per_layer.set_index("layer")
    sites = ["act1", "norm", "act2"]
    assert (rows.loc[sites, "method"] == method_label(600)).all() and (rows.loc[sites, "rad_se"] > 0).all()
    assert rows.loc["lin2", "method"] == "closed form"
    assert (mc.loc[sites, "method"] == "Monte Carlo (500 draws, this site alone)").all()
    assert a.meta["propagated"]["sites"] == sites
    assert a.total["rad_variance"].iloc[0] == pytest.approx(rows["rad_variance"].sum())
    assert a.total["rad_variance"].iloc[0] <= e.total["ci_high"].iloc[0]


def test_functional_site_agrees_with_monte_carlo():
    """A routed F.gelu named in the plan (1-bit Quantize): analytic's probe row against empirical's 500 draws."""
    model, batch = setup()
    plan = radvar.Plan({":gelu.0": Quantize(1)})
    a = variance.analytic(model, batch, F.cross_entropy, plan, probes=600)
    e = variance.empirical(model, batch, F.cross_entropy, plan, draws=500)
    row, mc = a.per_layer.iloc[0], e.per_layer.iloc[0]
    assert (row["layer"], row["type"], row["method"]) == (":gelu.0", "gelu (functional)", method_label(600))
    assert (mc["layer"], mc["type"]) == (":gelu.0", "gelu (functional)")
    z = (row["rad_variance"] - mc["rad_variance"]) / math.sqrt(row["rad_se"] ** 2 + mc["rad_se"] ** 2)
    assert abs(z) < 3.3 and mc["ci_low"] <= row["rad_variance"] <= mc["ci_high"], (row, mc)


def test_exact_sketches_and_bad_input():
    model, batch = setup()
    out = propagated(model, batch, F.cross_entropy, {"act1": [None, Subsample(1.0), Quantize(8)]}, probes=4)["act1"]
    assert [(e.variance, e.method) for e in out[:2]] == [(0.0, "exact"), (0.0, "exact")]
    assert out[2].variance > 0 and out[2].se > 0 and out[2].method == "propagated (4 probes)"
    with pytest.raises(ValueError, match=r"'lin1' is a Linear, not a propagating site; propagating modules of this "
                                         r"model: \['act1', 'norm', 'act2'\]"):
        propagated(model, batch, F.cross_entropy, {"lin1": Quantize(2)})
    with pytest.raises(ValueError, match=r"probes must be an int >= 2 .*got 1"):
        propagated(model, batch, F.cross_entropy, {"act1": Quantize(2)}, probes=1)
    with pytest.raises(ValueError, match=r"functional site\(s\) \['lin1:gelu.0'\] that no call reached"):
        propagated(model, batch, F.cross_entropy, {"lin1:gelu.0": Quantize(2)})


def test_a_probes_policy_stops_once_the_standard_error_is_small_enough():
    """Probes(most, rtol): rounds of ROUND probes, stopping when se <= rtol x estimate. A loose rtol stops after
    the first round with the very draws a fixed ROUND-probe estimate makes (same seed); rtol far below the
    draws' spread runs to ``most``; the stopped estimate meets its own rule."""
    from radvar.variance.propagated import ROUND, Probes

    model, batch = setup()

    def probe(policy):
        radvar.seed(3)
        return propagated(model, batch, F.cross_entropy, {"norm": Subsample(0.5)}, probes=policy)["norm"][0]

    fixed, loose, strict = probe(ROUND), probe(Probes(16, rtol=10.0)), probe(Probes(16, rtol=1e-6))
    assert (loose.variance, loose.se, loose.method) == (fixed.variance, fixed.se, method_label(ROUND))
    assert strict.method == method_label(16) and strict.se > 1e-6 * strict.variance
    middle = probe(Probes(64, rtol=0.1))
    assert middle.method == method_label(middle.probes)
    assert ROUND <= middle.probes <= 64 and (middle.se <= 0.1 * middle.variance or middle.probes == 64)
    assert (loose.probes, strict.probes) == (ROUND, 16)
    assert method_label([4, 8, 4]) == "propagated (4-8 probes)" and method_label([4, 4]) == method_label(4)
    for bad, match in [(dict(most=1), r"most must be an int >= 2"), (dict(most=8, rtol=0.0), r"rtol must be"),
                       (dict(most=8, rtol=float("inf")), r"rtol must be")]:
        with pytest.raises(ValueError, match=match):
            Probes(**bad)


def test_stopping_early_leaves_the_estimate_unbiased_within_its_noise():
    """The tuner's policy (SITE_PROBES: at most 8, rtol 0.1) over 40 seeds, against 4,000 fixed probes: the mean of the
    stopped estimates differs from the reference by less than 3.3 standard errors (its spread over the seeds
    and the reference's se). Stopping on the draws' own spread could bias the mean low."""
    from radvar.tradeoff.candidates import SITE_PROBES

    model, batch = setup()
    for site, sketch in [("norm", Subsample(0.5)), ("act2", Subsample(0.1))]:
        radvar.seed(0)
        ref = propagated(model, batch, F.cross_entropy, {site: sketch}, probes=4000)[site][0]
        values = []
        for s in range(40):
            radvar.seed(100 + s)
            est = propagated(model, batch, F.cross_entropy, {site: sketch}, probes=SITE_PROBES)[site][0]
            values.append(est.variance)
        v = np.array(values)
        z = (v.mean() - ref.variance) / math.sqrt(v.var(ddof=1) / len(v) + ref.se ** 2)
        assert abs(z) < 3.3, (site, v.mean(), ref.variance, z)


def test_batched_and_looped_probe_backward_passes_agree():
    """_push: the batched backward (used off the CPU) and one backward per probe give the same gradients."""
    from radvar.variance.propagated import _push

    model, (x, _) = setup()
    h = model.lin2(model.act1(model.lin1(x)))
    params = list(model.parameters())
    signals = [[torch.randn_like(h)] for _ in range(3)]
    batched, looped = list(_push([h], signals, params, batched=True)), list(_push([h], signals, params, batched=False))
    for a, b in zip(batched, looped):
        assert [g is None for g in a] == [g is None for g in b] and any(g is None for g in a)
        for g, r in zip(a, b):
            if g is not None:
                torch.testing.assert_close(g, r)


class Block(nn.Module):
    """Linear -> GELU -> LayerNorm -> Linear -> SiLU -> Linear."""

    def __init__(self):
        super().__init__()
        self.lin1, self.act1, self.norm = nn.Linear(16, 48), nn.GELU(), nn.LayerNorm(48)
        self.lin2, self.act2, self.lin3 = nn.Linear(48, 48), nn.SiLU(), nn.Linear(48, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin3(self.act2(self.lin2(self.norm(self.act1(self.lin1(x))))))


def test_tune_sketches_propagating_sites_within_the_measured_budget():
    model, x, y = Block(), torch.randn(48, 16), torch.arange(48) % 4
    fams = (Quantize.family(), Subsample.family())
    plan = radvar.tune(model, (x, y), F.cross_entropy, budget=0.3, families=fams, probes=16)
    prov = plan.provenance
    assert prov["measured_bytes"] <= prov["budget"]["bytes"]
    assert prov["measured_bytes"] == measured_bytes(model, plan, (x, y), F.cross_entropy)
    rows = {r["layer"]: r for r in prov["per_layer"]}
    sites = [n for n in ("act1", "norm", "act2") if plan[n] is not None]
    assert len(sites) >= 2, plan  # GELU, LayerNorm and SiLU inputs are worth sketching at 30% of the bytes
    assert {rows[n]["method"] for n in sites} == {method_label(16)}
    cands = candidates.candidates(model, ((x,), y), F.cross_entropy, fams, probes=16)
    site = cands.table[cands.table["layer"] == "act1"]
    assert set(site["family"]) == {"exact", "Quantize(per-row)", "Subsample(shared)"}
    assert (site.loc[site["family"] != "exact", "se"] > 0).all()
    # bytes are measured: a 2-bit sketch of f'(x), 48 x 48 floats, keeps the codes and (lo, step) per row
    q2 = site[[s == Quantize(2) for s in site["sketch"]]].iloc[0]
    assert q2["bytes"] == Quantize(2).saved_bytes((48, 48), torch.float32)
    assert site[site["family"] == "exact"].iloc[0]["bytes"] == 48 * 48 * 4


def test_tune_sketches_functional_sites_per_module():
    """The F.gelu that Net's forward calls is a site of the model itself: the tuner offers the unit ':*' (every
    site of that module), its bytes measured; the plan names it as a pattern and the ledger agrees."""
    model, x, y = Net(width=32), torch.randn(64, 5), torch.arange(64) % 3
    fams = (Quantize.family(), Subsample.family())
    cands = candidates.candidates(model, ((x,), y), F.cross_entropy, fams, probes=16)
    unit = cands.table[cands.table["layer"] == ":*"]
    assert set(unit["family"]) == {"exact", "Quantize(per-row)", "Subsample(shared)"}
    assert unit[unit["family"] == "exact"].iloc[0]["bytes"] == 64 * 32 * 4  # F.gelu keeps its float32 input
    plan = radvar.tune(model, (x, y), F.cross_entropy, budget=0.3, families=fams, probes=16)
    prov = plan.provenance
    assert isinstance(plan.sites[":*"], Quantize)
    assert prov["measured_bytes"] == prov["predicted_bytes"] <= prov["budget"]["bytes"]


def test_site_candidates_keeping_the_exact_bytes_are_not_probed():
    """A norm keeps two sketches of z, so Subsample(0.9) keeps more than its exact input: exact dominates it
    (fewer bytes, variance 0) and the tuner neither probes nor offers it; Subsample(0.01) stays."""
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Flatten(),
                          nn.Linear(8 * 6 * 6, 3))
    x, y = torch.randn(8, 3, 6, 6), torch.arange(8) % 3
    cands = candidates.candidates(model, ((x,), y), F.cross_entropy, (Subsample.family(),), probes=4)
    site = cands.table[cands.table["layer"] == "1"]
    exact = int(site.loc[site["family"] == "exact", "bytes"].iloc[0])
    assert exact >= 8 * 8 * 6 * 6 * 4  # its input, and the batch statistics
    assert list(site.loc[site["family"] != "exact", "keep"]) == [0.01]
    assert (site.loc[site["family"] != "exact", "bytes"] < exact).all()


def test_candidates_and_probe_estimates_are_reused_from_the_capture_memo():
    """radvar analyze hands one capture to tune and to the report: the second candidates call returns the
    first's result. minibatch's first RAD batch probes the planned site afresh: the tuner picked the plan on
    its estimates, which are biased low for the options picked (an option chosen for a low estimate)."""
    model, x, y = Block(), torch.randn(48, 16), torch.arange(48) % 4
    xb, yb = x[:24].clone(), y[:24].clone()  # the first batch of 24
    stats = variance.capture(model, (xb, yb), F.cross_entropy)
    fams = (Quantize.family(),)
    first = candidates.candidates(model, ((xb,), yb), F.cross_entropy, fams, probes=4, stats=stats)
    assert candidates.candidates(model, ((xb,), yb), F.cross_entropy, fams, probes=4, stats=stats) is first
    assert candidates.candidates(model, ((xb,), yb), F.cross_entropy, fams, probes=8, stats=stats) is not first
    est = stats.memo[("propagated", "act1", Quantize(2), variance.Probes(4))]
    again = propagated(model, (xb, yb), F.cross_entropy, {"act1": Quantize(2)}, 4, memo=stats.memo)
    assert again["act1"][0] is est
    memo = dict(stats.memo)
    mb = variance.minibatch(model, (x, y), F.cross_entropy, 24, plan=radvar.Plan({"act1": Quantize(2)}),
                            stats=stats, probes=4)
    fresh = mb.meta["propagated"]["first_batch"]["act1"]
    assert fresh > 0 and fresh != est.variance and stats.memo == memo


def test_projection_site_candidates_must_fit_their_random_matrix():
    """draw_fits: a shared Projection on a site input of n features per example draws n x k entries."""
    from radvar.sketch import Projection

    small, big = [(16, 64, 16, 16)], [(16, 64, 32, 32)]  # n = 16,384 and 65,536 per example
    assert candidates.draw_fits(Projection(0.01), small)  # 16,384 x 164
    assert not candidates.draw_fits(Projection(0.9), small)  # 16,384 x 14,746
    assert not candidates.draw_fits(Projection(0.01), big)  # 65,536 x 656
    assert candidates.draw_fits(Quantize(2), big) and candidates.draw_fits(Subsample(0.9), big)


def test_estimated_variances_are_ranked_by_an_upper_confidence_value():
    """A Monte Carlo estimate that came out tiny but with a large standard error (the conv Projection case)
    loses to a closed form of moderate value at the same bytes; with se = 0 it would win."""
    def table(se: float) -> pd.DataFrame:
        return pd.DataFrame([
            {"layer": "conv", "type": "Conv2d", "family": "exact", "keep": 1.0, "k": None, "sketch": None,
             "bytes": 1000, "variance": 0.0, "se": 0.0, "method": "exact"},
            {"layer": "conv", "type": "Conv2d", "family": "Projection(shared)", "keep": 0.01, "k": 1,
             "sketch": Subsample(0.01), "bytes": 10, "variance": 1.2e-5, "se": se, "method": "estimate"},
            {"layer": "conv", "type": "Conv2d", "family": "Quantize(per-row)", "keep": 0.0625, "k": None,
             "sketch": Quantize(2), "bytes": 10, "variance": 1e-3, "se": 0.0, "method": "closed form"}])

    picks = {}
    for se in (2e-3, 0.0):
        t = table(se)
        t["ucb"], t["shared"] = t["variance"] + candidates.UCB_Z * t["se"], [Shared()] * len(t)
        cands = candidates.Candidates(t[candidates.COLUMNS], 0, 1000, 1, Capture({}, 0.0, 1))
        alloc = allocate.allocate(cands, budget=10)
        picks[se] = alloc.per_layer["family"].iloc[0]
        assert alloc.ucb == pytest.approx(float(alloc.per_layer["ucb"].sum()))
    assert picks == {2e-3: "Quantize(per-row)", 0.0: "Projection(shared)"}
    assert np.isclose(candidates.UCB_Z, 2.326)


class Attend(nn.Module):
    """Linear -> nn.MultiheadAttention ("attn", self-attention) -> Linear -> F.scaled_dot_product_attention in
    forward (site ":sdpa.0") -> mean over positions -> Linear."""

    def __init__(self):
        super().__init__()
        self.inp, self.attn = nn.Linear(4, 8), nn.MultiheadAttention(8, 2, batch_first=True)
        self.qkv, self.out = nn.Linear(8, 24), nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.inp(x)
        h = self.attn(h, h, h, need_weights=False)[0]
        q, k, v = self.qkv(h).chunk(3, -1)
        return self.out(F.scaled_dot_product_attention(q, k, v).mean(1))


@pytest.mark.slow
@pytest.mark.parametrize("site", ["attn", ":sdpa.0"])
def test_attention_sites_agree_with_monte_carlo(site):
    """The MultiheadAttention twin and a routed sdpa (4-bit Quantize of Q, K, V and P): 500 probes against
    500 draws, z from both standard errors and inside the 99% interval."""
    model, x = Attend().double(), torch.randn(6, 5, 4, dtype=torch.float64)
    batch = (x, torch.arange(6) % 3)
    plan = radvar.Plan({site: Quantize(4)})
    table = agreement(variance.analytic(model, batch, F.cross_entropy, plan, probes=500),
                      variance.empirical(model, batch, F.cross_entropy, plan, draws=500))
    assert abs(table["z"].iloc[0]) < 3.3 and table["inside_ci"].iloc[0], table


class DropAttend(nn.Module):
    """:class:`Attend` with dropout ``p`` everywhere: an ``nn.Dropout`` after the first Linear (torch's generator),
    the MultiheadAttention's and the sdpa call's attention dropout (radvar keys when sketched)."""

    def __init__(self, p: float):
        super().__init__()
        self.inp, self.drop = nn.Linear(4, 8), nn.Dropout(p)
        self.attn = nn.MultiheadAttention(8, 2, dropout=p, batch_first=True)
        self.qkv, self.out, self.p = nn.Linear(8, 24), nn.Linear(8, 3), p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.drop(self.inp(x))
        h = self.attn(h, h, h, need_weights=False)[0]
        q, k, v = self.qkv(h).chunk(3, -1)
        return self.out(F.scaled_dot_product_attention(q, k, v, dropout_p=self.p).mean(1))


@pytest.mark.parametrize("site", ["attn", ":sdpa.0"])
def test_attention_dropout_is_held_fixed(site):
    """With dropout 0.3 the RAD variance of an attention site is the sketch's noise given the dropout masks: the
    exact pass, the reference and the probes share them (propagated), and so do empirical's exact pass and draws.
    At 8-bit Quantize the probe estimate stays within 1000x of the estimate without dropout (here ~60x: another
    forward; with the masks mixed in it was ~1e7x), and, both estimates started at the same stream positions
    (the same masks), it agrees with 300 Monte Carlo draws: z from both standard errors, inside the 99% interval."""
    x = torch.randn(6, 5, 4, dtype=torch.float64)
    batch, plan = (x, torch.arange(6) % 3), radvar.Plan({site: Quantize(8)})
    found = {}
    for p in (0.0, 0.3):
        torch.manual_seed(0)
        model = DropAttend(p).double()
        found[p] = propagated(model, batch, F.cross_entropy, {site: Quantize(8)}, probes=64)[site][0]
    assert 0 < found[0.3].variance < 1000 * found[0.0].variance, found
    torch.manual_seed(1), radvar.seed(1)
    a = variance.analytic(model, batch, F.cross_entropy, plan, probes=300)
    torch.manual_seed(1), radvar.seed(1)
    e = variance.empirical(model, batch, F.cross_entropy, plan, draws=300)
    table = agreement(a, e)
    assert abs(table["z"].iloc[0]) < 3.3 and table["inside_ci"].iloc[0], table.T
