"""Probes scored against shared random directions (radvar.variance.propagated, ``Probes(directions=Z)``):
unbiased against probes pushed back, standard errors that match the spread over seeds (for one site, and for a
sum of sites, whose shared direction noise is counted), the memory cap, and the fallback to backward probes."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import stats
from torch import nn

import radvar
from radvar.sketch import Bernoulli, Quantize, Subsample
from radvar.variance.propagated import Probes, Shared, method_label, propagated, sum_se
from radvar.variance.statistics import holm

from .test_propagated import DropAttend, setup

pytestmark = pytest.mark.usefixtures("one_thread")

SITES = {"act1": [Quantize(2), Subsample(0.5)], "norm": [Quantize(2), Bernoulli(0.3), Subsample(0.5)],
         "act2": [Subsample(0.5)], ":gelu.0": [Quantize(2)]}  # sites of test_propagated.Net: a GELU and a SiLU twin, a LayerNorm, a routed F.gelu


def _agreeing(pushed: dict, estimated: dict) -> list[float]:
    """The z-scores of each site's estimates against those pushed back, from both standard errors (a pushed
    estimate with no spread, a sketch with one outcome, is left out); asserts no Holm rejection at 0.01."""
    z = [(a.variance - b.variance) / math.hypot(a.se, b.se)
         for name in pushed for b, a in zip(pushed[name], estimated[name]) if b.se > 1e-12 * b.variance]
    reject, _ = holm(2 * stats.norm.sf(np.abs(z)), 0.01)
    assert not reject.any(), z
    return z


def test_direction_estimates_agree_with_backward_probes():
    """Each (site, sketch) of the four kinds: 300 probes scored against 48 directions (the GELUs' and the
    LayerNorm's sketches with independent entries: 48 directions averaged over the sketch in closed form) against
    3,000 probes pushed back; no Holm rejection at 0.01 of the z-scores from both standard errors."""
    model, batch = setup()
    radvar.seed(1)
    pushed = propagated(model, batch, F.cross_entropy, SITES, 3000)
    radvar.seed(2)
    scored = propagated(model, batch, F.cross_entropy, SITES, Probes(300, directions=48))
    assert len(_agreeing(pushed, scored)) == 6  # act1's Subsample(0.5, shared) has one outcome up to symmetry
    averaged = {(name, e.sketch) for name in SITES for e in scored[name] if e.method == method_label(0, 48)}
    assert averaged == {("act1", Quantize(2)), (":gelu.0", Quantize(2)), ("norm", Quantize(2)),
                        ("norm", Bernoulli(0.3)), ("act1", Subsample(0.5)), ("act2", Subsample(0.5))}
    # elementwise sites under sketches with independent entries or totals-only closed forms, the row norm
    # under sketches with independent entries; its Subsample is probed
    assert {e.method for name in SITES for e in scored[name] if (name, e.sketch) not in averaged} == \
        {method_label(300, 48)}


def test_sketch_averaged_scores_agree_with_backward_probes():
    """The GELU and SiLU twins and the routed F.gelu under the other sketches with independent entries (Importance,
    Bernoulli per example): 48 directions averaged over the sketch in closed form against 2,000 probes pushed
    back; no Holm rejection at 0.01 of the z-scores from both standard errors."""
    from radvar.sketch import Importance

    model, batch = setup()
    sites = {"act1": [Importance(0.3), Bernoulli(0.3)], "act2": [Importance(0.5)], ":gelu.0": [Bernoulli(0.5)]}
    radvar.seed(3)
    pushed = propagated(model, batch, F.cross_entropy, sites, 2000)
    radvar.seed(4)
    averaged = propagated(model, batch, F.cross_entropy, sites, Probes(2, directions=48))
    assert {e.method for name in sites for e in averaged[name]} == {method_label(0, 48)}
    assert len(_agreeing(pushed, averaged)) == 4


def test_subsample_and_shared_mask_scores_agree_with_backward_probes(monkeypatch):
    """Elementwise sites under sketches that keep entries of d and rescale them (Subsample without and with
    replacement, shared and per example; Bernoulli with one mask for all rows): the sketch's own closed form
    on the column and row totals of the contributions, 48 directions, against 2,000 probes pushed back; no
    Holm rejection at 0.01. Treating a shared Subsample's draws as independent entries (Var d̂ = d²(n/k − 1))
    misses their correlation and is rejected (here by 19 standard errors with replacement)."""
    from radvar.sketch.base import kept_count

    model, batch = setup()
    sites = {"act1": [Subsample(0.3), Subsample(0.3, per_example=True), Subsample(0.5, replace=True)],
             "act2": [Bernoulli(0.4, per_example=False)], ":gelu.0": [Subsample(0.6, per_example=True, replace=True)]}
    radvar.seed(5)
    pushed = propagated(model, batch, F.cross_entropy, sites, 2000)
    radvar.seed(6)
    averaged = propagated(model, batch, F.cross_entropy, sites, Probes(2, directions=48))
    assert {e.method for name in sites for e in averaged[name]} == {method_label(0, 48)}
    assert len(_agreeing(pushed, averaged)) == 5
    monkeypatch.setattr(Subsample, "independent_entries", property(lambda self: True))
    monkeypatch.setattr(Subsample, "entry_variance",
                        lambda self, x: x.square() * (x.shape[-1] / kept_count(self.keep, x.shape[-1]) - 1))
    radvar.seed(6)
    wrong = propagated(model, batch, F.cross_entropy, {"act1": [Subsample(0.5, replace=True)]},
                       Probes(2, directions=48))["act1"][0]
    right = pushed["act1"][2]
    assert abs(wrong.variance - right.variance) > 8 * math.hypot(wrong.se, right.se)


def test_layer_norm_scores_averaged_over_its_two_sketches_agree_with_backward_probes():
    """A LayerNorm's error is bilinear in its two sketches of z (and reaches γ): averaged in closed form over
    coarse sketches, where the bilinear part is most of it (1 bit, 10% and 20% kept; dropping that part moves
    the estimates by 15-26 standard errors), 400 directions against 4,000 probes pushed back; no Holm rejection
    at 0.01."""
    from radvar.sketch import Importance

    torch.manual_seed(0)
    model, batch = setup()
    sites = {"norm": [Quantize(1), Bernoulli(0.1), Importance(0.2)]}
    radvar.seed(1)
    pushed = propagated(model, batch, F.cross_entropy, sites, 4000)
    radvar.seed(2)
    averaged = propagated(model, batch, F.cross_entropy, sites, Probes(2, directions=400))
    assert {e.method for e in averaged["norm"]} == {method_label(0, 400)}
    assert len(_agreeing(pushed, averaged)) == 3


def test_standard_errors_match_the_spread_over_seeds():
    """40 seeds of the tuner's policy (8 probes, 8 directions): per (site, sketch) and for the sum over all sites
    (whose direction noise is shared), the spread of the estimates over the seeds against the mean reported se².
    The ratio s² / mean(se²) of 40 independent estimates lies in the chi-square(39) 0.1%-99.9% range [0.47, 1.86]
    if se is right; the se is an upper bound (by the probe x direction interaction), so only the upper end is
    tight: the bound below is halved."""
    model, batch = setup()
    sites = {"act1": [Quantize(2)], "norm": [Quantize(2), Subsample(0.5)], "act2": [Subsample(0.5)]}
    values, ses, totals, total_se = [], [], [], []
    for seed in range(40):
        radvar.seed(100 + seed)
        out = propagated(model, batch, F.cross_entropy, sites, Probes(8, directions=8))
        ests = [e for n in sites for e in out[n]]
        values.append([e.variance for e in ests])
        ses.append([e.se for e in ests])
        totals.append(sum(e.variance for e in ests))
        total_se.append(sum_se((e.se, e.shared) for e in ests))
    low, high = stats.chi2.ppf([0.001, 0.999], 39) / 39
    assert {e.method for e in ests} == {method_label(0, 8), method_label(8, 8)}  # averaged, and probed (norm's
    for j in range(len(ests)):                                                   # Subsample)
        ratio = np.var(np.array(values)[:, j], ddof=1) / np.mean(np.array(ses)[:, j] ** 2)
        assert low / 2 < ratio < high, (ests[j].sketch, ratio)
    ratio = np.var(totals, ddof=1) / np.mean(np.square(total_se))
    assert low / 2 < ratio < high, ratio


def test_minibatch_standard_errors_match_the_spread_over_seeds():
    """minibatch's RAD rows and total with the tuner's policy spread over 4 RAD batches (4 probes x 4 directions
    on each, :func:`radvar.variance.minibatch.spread`): over 40 seeds the spread of each site's mean over the
    batches, and of the RAD total, against the mean reported se², in the bounds of the test above."""
    model = setup()[0]
    gen = torch.Generator().manual_seed(3)
    x, y = torch.randn(48, 5, dtype=torch.float64, generator=gen), torch.arange(48) % 3
    plan = radvar.Plan({"act1": Quantize(2), "norm": Subsample(0.5), "act2": Subsample(0.5)})
    rows, totals = [], []
    for seed in range(40):
        radvar.seed(200 + seed)
        rep = radvar.variance.minibatch(model, (x, y), F.cross_entropy, 12, plan=plan, probes=Probes(8, directions=8))
        rows.append(rep.per_layer.set_index("layer").loc[list(plan), ["rad_variance", "rad_se"]].to_numpy())
        totals.append(rep.total[["rad_variance", "rad_se"]].to_numpy()[0])
    methods = rep.per_layer.set_index("layer")["method"]
    assert methods["act1"] == methods["act2"] == method_label(0, 4, 4) and methods["norm"] == method_label(4, 4, 4)
    low, high = stats.chi2.ppf([0.001, 0.999], 39) / 39
    for series in [*np.stack(rows).transpose(1, 0, 2), np.array(totals)]:
        ratio = np.var(series[:, 0], ddof=1) / np.mean(series[:, 1] ** 2)
        assert low / 2 < ratio < high, ratio


def test_sum_se_adds_shared_direction_noise_per_direction():
    """sum_se: estimates sharing nothing add in quadrature; two estimates with the same directions add their
    direction means first (here exactly opposite, so their direction parts cancel); other keys stay apart."""
    a = Shared(((7, (1.0, 3.0)),))
    b = Shared(((7, (3.0, 1.0)),))
    assert a.variance() == pytest.approx(1.0) and (a + b).means == ((7, (4.0, 4.0)),) and (a + b).variance() == 0
    assert sum_se([(0.3, Shared()), (0.4, Shared())]) == pytest.approx(0.5)
    assert sum_se([(2.0, a), (2.0, b)]) == pytest.approx(math.sqrt(3 + 3))  # probe parts 4 - 1 each, shared 0
    c = Shared(((8, (3.0, 1.0)),))
    assert sum_se([(2.0, a), (2.0, c)]) == pytest.approx(math.sqrt(8))  # independent directions: quadrature


def test_fewer_directions_where_their_tangents_would_not_fit(monkeypatch):
    """The tangents may take DIRECTION_BYTES: with room for 3 directions' tangents, 3 are drawn; without room for
    2, every probe is pushed back (the method says which)."""
    import sys

    module = sys.modules["radvar.variance.propagated"]  # the package exports the function under the same name
    model, batch = setup()
    per = 2 * 12 * 8 * 8  # the GELU's and the norm's inputs: 12 x 8 float64 each
    for room, act1, norm in [(3 * per, method_label(0, 3), method_label(4, 3)),
                             (2 * per - 1, method_label(4), method_label(4))]:
        monkeypatch.setattr(module, "DIRECTION_BYTES", room)
        out = propagated(model, batch, F.cross_entropy, {"act1": Subsample(0.5), "norm": Subsample(0.5)},
                         Probes(4, directions=8))
        assert (out["act1"][0].method, out["norm"][0].method) == (act1, norm)  # the GELU's averaged over its sketch


class Doubled(torch.autograd.Function):
    """2x, with a backward but no forward-mode derivative."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        return 2 * x

    @staticmethod
    def backward(ctx, g: torch.Tensor) -> torch.Tensor:
        return 2 * g


def test_a_model_without_forward_mode_derivatives_gets_backward_probes():
    """An op without a forward-mode derivative upstream of the site: every probe is pushed back, and the estimate
    is the one directions=None gives from the same seed (the failed passes draw nothing from radvar's stream)."""

    class Custom(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin1, self.act, self.lin2 = nn.Linear(5, 8), nn.GELU(), nn.Linear(8, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.lin2(self.act(Doubled.apply(self.lin1(x))))

    torch.manual_seed(0)
    model, batch = Custom().double(), (torch.randn(12, 5, dtype=torch.float64), torch.arange(12) % 3)
    radvar.seed(5)
    fallback = propagated(model, batch, F.cross_entropy, {"act": Quantize(2)}, Probes(6, directions=8))["act"][0]
    radvar.seed(5)
    pushed = propagated(model, batch, F.cross_entropy, {"act": Quantize(2)}, Probes(6))["act"][0]
    assert (fallback.method, fallback.directions) == (method_label(6), 0)
    assert (fallback.variance, fallback.se) == (pushed.variance, pushed.se)


def test_bad_directions_are_refused():
    for bad in (1, 0, True, 2.5):
        with pytest.raises(ValueError, match=r"directions must be an int >= 2"):
            Probes(8, directions=bad)


def test_tangents_are_the_backward_maps_transpose_with_dropout_and_attention(monkeypatch):
    """DropAttend (dropout 0.3 in nn.Dropout, in the MultiheadAttention twin and in a routed sdpa): the forward-mode
    passes replay the exact pass's dropout masks and run attention through sdpa's math backend, so for every site
    argument t and direction z, ⟨tangent_z(t), u⟩ = ⟨z, J_tᵀ-backward of u⟩ for a random u (the identity the
    scores rest on), to float64 rounding."""
    import sys

    module = sys.modules["radvar.variance.propagated"]
    estimate, checked = module._estimate, []

    def check(site, sketch, probes, params, index, directions=None):
        for call in site.calls:
            for t in call.grad_inputs:
                if id(t) in directions.tangents:
                    u = torch.randn_like(t)
                    pushed = torch.autograd.grad(t, params, u, retain_graph=True, allow_unused=True)
                    for z in range(directions.count):
                        along = sum(float((directions.of(j, z) * g).sum()) for j, g in enumerate(pushed)
                                    if g is not None)
                        checked.append((float(directions.tangents[id(t)][z] @ u.reshape(-1)), along))
        return estimate(site, sketch, probes, params, index, directions)

    monkeypatch.setattr(module, "_estimate", check)
    model, x = DropAttend(0.3).double(), torch.randn(6, 5, 4, dtype=torch.float64)
    out = propagated(model, (x, torch.arange(6) % 3), F.cross_entropy, {"attn": Quantize(2), ":sdpa.0": Quantize(2)},
                     Probes(2, directions=3))
    assert {e[0].method for e in out.values()} == {method_label(2, 3)}
    assert len(checked) == 3 * 4  # the attention's input (q is k is v), the sdpa call's q, k and v
    for lhs, rhs in checked:
        assert lhs == pytest.approx(rhs, rel=1e-9, abs=1e-12)


def test_forward_mode_passes_stop_after_the_last_site_call():
    """What runs after the last site call (a language model's head over its vocabulary) is skipped: the head runs
    in the exact pass only."""
    model, batch = setup()
    calls = []
    model.lin4.register_forward_pre_hook(lambda mod, args: calls.append(1))
    out = propagated(model, batch, F.cross_entropy, {"act1": Subsample(0.5), "act2": Subsample(0.5)},
                     Probes(2, directions=3))
    assert {e[0].method for e in out.values()} == {method_label(0, 3)} and len(calls) == 1


def test_no_forward_mode_pass_without_a_sketch_to_probe(monkeypatch):
    """Sites whose sketches are all exact are answered without probes, and without the directions' passes."""
    import sys

    module = sys.modules["radvar.variance.propagated"]
    passes = []
    monkeypatch.setattr(module, "_tangent_pass", lambda *args: passes.append(1))
    model, batch = setup()
    out = propagated(model, batch, F.cross_entropy, {"act1": [None, Subsample(1.0)]}, Probes(4, directions=3))
    assert [e.method for e in out["act1"]] == ["exact", "exact"] and not passes
