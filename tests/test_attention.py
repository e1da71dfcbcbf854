"""RAD attention (radvar.ops.attention, radvar.layers.attention): exactness, unbiasedness, dropout, memory, errors."""

from __future__ import annotations

import math
import re

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import radvar
from radvar import memory, rng
from radvar.layers.attention import RADMultiheadAttention, sdpa_op, softmax_op
from radvar.layers.functional import FUNCTION_KINDS, functional_sites, intercept
from radvar.layers.linear import RADLinear
from radvar.ops.attention import _dropout_scale, rad_sdpa, rad_softmax
from radvar.sketch import Bernoulli, Projection, Quantize, Subsample
from radvar.variance.propagated import propagated
from radvar.variance.statistics import Welford, mean_ci

from .stats import assert_unbiased, assert_unbiased_projected

pytestmark = pytest.mark.usefixtures("one_thread")

SKETCHES = [Quantize(1), Quantize(2), Quantize(4), Subsample(0.5), Subsample(0.5, per_example=True),
            Bernoulli(0.5)]
DRAWS = 200
F64 = torch.float64


def _inputs(hq: int = 2, hkv: int = 2, batch: tuple[int, int] = (2, 2), L: int = 4, S: int = 5,
            E: int = 3, Ev: int = 4) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(3)
    q = torch.randn(batch[0], hq, L, E, dtype=F64, generator=g)
    k = torch.randn(batch[1], hkv, S, E, dtype=F64, generator=g)
    v = torch.randn(batch[1], hkv, S, Ev, dtype=F64, generator=g)
    return tuple(t.requires_grad_() for t in (q, k, v))


def _padding_mask() -> torch.Tensor:
    """(batch, 1, L, S) bool: example 0 sees only its first 3 keys, and query row 1 of example 1 sees none."""
    m = torch.ones(2, 1, 4, 5, dtype=torch.bool)
    m[0, ..., 3:] = False
    m[1, :, 1] = False
    return m


def _float_mask() -> torch.Tensor:
    g = torch.Generator().manual_seed(5)
    m = torch.randn(4, 5, dtype=F64, generator=g)
    m[0, 2] = -math.inf
    return m.requires_grad_()


CASES = {  # name -> (input kwargs, sdpa kwargs)
    "plain": ({}, {}),
    "causal": ({"L": 3}, {"is_causal": True}),
    "bool padding": ({}, {"attn_mask": _padding_mask()}),
    "float mask": ({"batch": (1, 2)}, {"attn_mask": _float_mask(), "scale": 0.7}),
    "dropout": ({}, {"dropout_p": 0.3}),
    "gqa": ({"hq": 4, "hkv": 2}, {"enable_gqa": True, "is_causal": True}),
    "gqa, padding, dropout": ({"hq": 4, "hkv": 2}, {"enable_gqa": True, "attn_mask": _padding_mask(),
                                                  "dropout_p": 0.3}),
}


def _reference(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False,
               drop=None):
    """The math of F.scaled_dot_product_attention under autograd, with a given dropout scale M/(1 − p)."""
    if enable_gqa:
        k, v = (t.repeat_interleave(q.shape[-3] // k.shape[-3], dim=-3) for t in (k, v))
    s = q @ k.transpose(-2, -1) * (1 / math.sqrt(q.shape[-1]) if scale is None else scale)
    if is_causal:
        s = s.masked_fill(~torch.ones(s.shape[-2:], dtype=torch.bool).tril(), -math.inf)
    if attn_mask is not None:
        s = s.masked_fill(~attn_mask, -math.inf) if attn_mask.dtype == torch.bool else s + attn_mask
    p = torch.softmax(s, -1).nan_to_num(0.0)
    return (p if drop is None else p * drop) @ v


def _drop_key() -> int:
    """The dropout key the next rad_sdpa call draws (its sixth key), leaving the stream where it was."""
    state = rng.get_state()
    key = [rng.next_key() for _ in range(6)][-1]
    rng.set_state(state)
    return key


def _grad_draw(sketch, case: str) -> tuple[torch.Tensor, torch.Tensor]:
    """One draw of the rad gradients and the exact gradients for the same dropout mask, flattened."""
    shape_kw, kw = CASES[case]
    q, k, v = _inputs(**shape_kw)
    mask = kw.get("attn_mask")
    wrt = [q, k, v] + ([mask] if mask is not None and mask.requires_grad else [])
    drop = None
    if kw.get("dropout_p"):
        lead = torch.broadcast_shapes(q.shape[:-2], k.shape[:-3] + q.shape[-3:-2],
                                      () if mask is None else mask.shape[:-2])
        shape = lead + (q.shape[-2], k.shape[-2])
        drop = _dropout_scale(torch.Size(shape), kw["dropout_p"], _drop_key(), q)
    out = rad_sdpa(q, k, v, **kw, sketch=sketch)
    go = torch.cos(torch.arange(out.numel(), dtype=F64)).view(out.shape)
    got = torch.autograd.grad(out, wrt, go)
    exact = torch.autograd.grad(_reference(q, k, v, **kw, drop=drop), wrt, go)
    return torch.cat([g.flatten() for g in got]), torch.cat([g.flatten() for g in exact])


# ---- exactness ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("case", list(CASES))
def test_forward_equals_sdpa(case):
    shape_kw, kw = CASES[case]
    q, k, v = _inputs(**shape_kw)
    kw = {**kw, "dropout_p": 0.0}
    torch.testing.assert_close(rad_sdpa(q, k, v, **kw, sketch=Quantize(2)),
                               F.scaled_dot_product_attention(q, k, v, **kw), rtol=1e-12, atol=1e-12)


def test_broadcast_batch_causal_rectangular_and_3d_inputs():
    q, k, v = _inputs(batch=(1, 2), L=3, S=5)  # a query batch of 1 broadcasts, as learned queries do
    for kw in ({"is_causal": True}, {}):
        torch.testing.assert_close(rad_sdpa(q, k, v, **kw, sketch=Quantize(2)),
                                   F.scaled_dot_product_attention(q, k, v, **kw), rtol=1e-12, atol=1e-12)
    q3, k3, v3 = (t[0] for t in (q, k, v))
    torch.testing.assert_close(rad_sdpa(q3, k3, v3, sketch=Quantize(2)),
                               F.scaled_dot_product_attention(q3, k3, v3), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("sketch", [None, Subsample(1.0), "inside radvar.exact"])
def test_exact_is_bitwise_sdpa_with_torchs_dropout(sketch):
    q, k, v = _inputs()
    kw = {"attn_mask": _padding_mask(), "dropout_p": 0.2}

    def grads(fn):
        torch.manual_seed(7)
        out = fn(q, k, v, **kw)
        return (out, *torch.autograd.grad(out.sin().sum(), (q, k, v)))

    if sketch == "inside radvar.exact":
        with radvar.exact():
            got = grads(lambda *a, **kw: rad_sdpa(*a, **kw, sketch=Quantize(2)))
    else:
        got = grads(lambda *a, **kw: rad_sdpa(*a, **kw, sketch=sketch))
    for a, b in zip(got, grads(F.scaled_dot_product_attention)):
        assert torch.equal(a, b)


# ---- unbiasedness ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("sketch, case", [(Quantize(2), case) for case in CASES] + [
    (sketch, "gqa, padding, dropout") for sketch in SKETCHES if sketch != Quantize(2)] + [(Quantize(1), "float mask")],
    ids=lambda x: x if isinstance(x, str) else x.label())
def test_gradients_are_unbiased(sketch, case):
    """∂Q, ∂K, ∂V (and ∂mask for a float mask that needs it) against the exact ones for the same dropout mask."""
    draws = DRAWS if sketch.kind == "quantize" else 2 * DRAWS  # products of scaled samples have heavier tails
    got, exact = (torch.stack(d) for d in zip(*(_grad_draw(sketch, case) for _ in range(draws))))
    assert got.std(0).max() > 1e-6  # the sketches do vary
    # E[got − exact] = 0, tested as got − exact + exact₀ against exact₀ (exact₀ sets the scale of the rounding slack)
    assert_unbiased(got - exact + exact[0], exact[0], rtol=1e-12)


def test_masked_probabilities_stay_exactly_zero_under_quantize():
    """Rows of P with masked keys keep exact zeros, so no gradient reaches a masked key from that row."""
    q, k, v = _inputs()
    mask = torch.ones(2, 1, 4, 5, dtype=torch.bool)
    mask[..., 4] = False  # key 4 is masked for every query
    for bits in (1, 2):
        _, gk, gv = torch.autograd.grad(rad_sdpa(q, k, v, attn_mask=mask, sketch=Quantize(bits)).sum(), (q, k, v))
        assert torch.all(gk[..., 4, :] == 0) and torch.all(gv[..., 4, :] == 0)


# ---- dropout ------------------------------------------------------------------------------------------------

def test_dropout_is_reproducible_by_seed_and_leaves_torchs_rng_alone():
    q, k, v = _inputs()
    torch_state = torch.get_rng_state()
    outs = []
    for seed in (1, 1, 2):
        radvar.seed(seed)
        outs.append(rad_sdpa(q, k, v, dropout_p=0.5, sketch=Quantize(2)))
    assert torch.equal(torch.get_rng_state(), torch_state)
    assert torch.equal(outs[0], outs[1]) and not torch.equal(outs[0], outs[2])


def test_dropout_output_is_unbiased_and_p_one_gives_zeros():
    q, k, v = _inputs()
    outs = torch.stack([rad_sdpa(q, k, v, dropout_p=0.4, sketch=Quantize(2)).detach() for _ in range(DRAWS)])
    assert_unbiased(outs, F.scaled_dot_product_attention(q, k, v))
    out = rad_sdpa(q, k, v, dropout_p=1.0, sketch=Quantize(2))
    assert torch.equal(out, torch.zeros_like(out))
    assert all(torch.equal(g, torch.zeros_like(g)) for g in torch.autograd.grad(out.sum(), (q, k, v)))


# ---- softmax ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("call", ["F.softmax dim=1", "torch.softmax dim=-1 dtype", "F.softmax dim=0 dtype="])
@pytest.mark.parametrize("sketch", [Quantize(1), Quantize(2), Quantize(4), Subsample(0.5, per_example=True)],
                         ids=lambda s: s.label())
def test_softmax_is_exact_forward_and_unbiased(sketch, call):
    g = torch.Generator().manual_seed(2)
    x = torch.randn(3, 5, 4, dtype=F64, generator=g).requires_grad_()
    gy = torch.randn(3, 5, 4, dtype=F64, generator=g)
    exact_fn, rad_fn = {
        "F.softmax dim=1": (lambda x: F.softmax(x, 1), lambda x: rad_softmax(x, 1, sketch=sketch)),
        "torch.softmax dim=-1 dtype": (lambda x: torch.softmax(x.float(), -1, torch.float64),
                                       lambda x: rad_softmax(x.float(), -1, torch.float64, sketch=sketch)),
        "F.softmax dim=0 dtype=": (lambda x: F.softmax(x, dim=0, dtype=F64),
                                   lambda x: rad_softmax(x, dim=0, dtype=F64, sketch=sketch)),
    }[call]
    y = exact_fn(x)
    torch.testing.assert_close(rad_fn(x), y, rtol=1e-6, atol=1e-7)
    exact, = torch.autograd.grad(y, x, gy)
    draws = torch.stack([torch.autograd.grad(rad_fn(x), x, gy)[0] for _ in range(DRAWS)])
    # rounded probabilities make two-valued entries, some with zero sample variance: test projections
    check = assert_unbiased_projected if sketch.kind == "quantize" else assert_unbiased
    check(draws, exact, rtol=1e-6)  # the float32 call rounds its input


def test_softmax_exact_paths_are_bitwise():
    x = torch.randn(3, 4, dtype=F64, requires_grad=True)
    for sketch in (None, Subsample(1.0)):
        assert torch.equal(rad_softmax(x, -1, sketch=sketch), F.softmax(x, -1))
    with radvar.exact():
        y = rad_softmax(x, 0, sketch=Quantize(2))
    assert torch.equal(y, F.softmax(x, 0))
    assert torch.equal(torch.autograd.grad(y.sum(), x)[0], torch.autograd.grad(F.softmax(x, 0).sum(), x)[0])


# ---- nn.MultiheadAttention ----------------------------------------------------------------------------------

def _mha(**kwargs) -> nn.MultiheadAttention:
    torch.manual_seed(11)
    return nn.MultiheadAttention(6, 2, **kwargs).double()


MHA_CASES = {  # name -> (constructor kwargs, call kwargs, self-attention?)
    "self, batch_first, padding + causal mask, weights": (
        {"batch_first": True},
        {"key_padding_mask": torch.tensor([[False] * 5, [False] * 3 + [True] * 2]),
         "attn_mask": torch.ones(5, 5, dtype=torch.bool).triu(1), "is_causal": True,
         "need_weights": True}, True),
    "self, seq first, is_causal hint, no weights": (
        {}, {"attn_mask": nn.Transformer.generate_square_subsequent_mask(5, dtype=F64), "is_causal": True,
             "need_weights": False}, True),
    "cross, kdim/vdim, bias_kv, zero attn, per-head weights": (
        {"kdim": 4, "vdim": 3, "add_bias_kv": True, "add_zero_attn": True},
        {"need_weights": True, "average_attn_weights": False}, False),
    "cross, unbatched, bool attn_mask": (
        {}, {"attn_mask": torch.tensor([[False, True, False, False, False]] * 5)}, False),
}


def _mha_inputs(module: nn.MultiheadAttention, case: str) -> tuple[torch.Tensor, ...]:
    self_attn = MHA_CASES[case][2]
    g = torch.Generator().manual_seed(4)
    unbatched = "unbatched" in case
    lead = (5,) if unbatched else ((2, 5) if module.batch_first else (5, 2))
    x = torch.randn(*lead, 6, dtype=F64, generator=g).requires_grad_()
    if self_attn:
        return x, x, x
    kv = [torch.randn(*lead, d, dtype=F64, generator=g) for d in (module.kdim, module.vdim)]
    return x, *kv


def _mha_grads(module: nn.Module, inputs, call) -> torch.Tensor:
    out, weights = module(*inputs, **call)
    loss = (out * torch.cos(torch.arange(out.numel(), dtype=F64)).view(out.shape)).sum()
    if weights is not None:
        loss = loss + (weights * torch.sin(torch.arange(weights.numel(), dtype=F64)).view(weights.shape)).sum()
    wrt = [inputs[0], *module.parameters()]
    return torch.cat([g.flatten() for g in torch.autograd.grad(loss, wrt)])


@pytest.mark.parametrize("sketch, case", [(Quantize(2), case) for case in MHA_CASES] + [
    (sketch, "self, batch_first, padding + causal mask, weights") for sketch in SKETCHES if sketch != Quantize(2)],
    ids=lambda x: x if isinstance(x, str) else x.label())
def test_mha_exact_is_bitwise_and_randomized_is_unbiased(sketch, case):
    """Every parameter's gradient (in_proj, out_proj, bias_k/v) and the query's, weights in the loss if returned."""
    ctor, call, _ = MHA_CASES[case]
    plain = _mha(**ctor)
    inputs = _mha_inputs(plain, case)
    exact = _mha_grads(plain, inputs, call)
    assert torch.equal(_mha_grads(radvar.convert(plain, None), inputs, call), exact)
    model = radvar.convert(plain, sketch)
    assert isinstance(model, RADMultiheadAttention) and isinstance(model.out_proj, RADLinear)
    draws = torch.stack([_mha_grads(model, inputs, call) for _ in range(DRAWS * 3 // 4)])
    assert draws.std(0).max() > 1e-6
    assert_unbiased(draws, exact, rtol=1e-12)


def test_mha_sampling_sketch_and_dropout_draws_from_radvar():
    plain = _mha(batch_first=True, dropout=0.3)
    model = radvar.convert(plain, Subsample(0.5, per_example=True))
    x = torch.randn(2, 5, 6, dtype=F64, requires_grad=True)
    state = torch.get_rng_state()
    radvar.seed(3)
    a = model(x, x, x, need_weights=False)[0]
    radvar.seed(3)
    assert torch.equal(model(x, x, x, need_weights=False)[0], a)
    assert torch.equal(torch.get_rng_state(), state)
    with torch.no_grad():  # eval with no gradient: torch's own forward (its fast path only outside routing)
        torch.testing.assert_close(model.eval()(x, x, x)[0], plain.eval()(x, x, x)[0], rtol=1e-12, atol=1e-14)


def test_mha_with_exact_attention_still_runs_a_randomized_out_proj():
    """Only out_proj randomized: its twin is called (torch's own forward would read its weight directly)."""
    plain = _mha(batch_first=True)
    model = radvar.convert(plain, radvar.Plan({"out_proj": Quantize(2)}))
    x = torch.randn(2, 5, 6, dtype=F64)
    by_module = memory.saved_bytes(model, (x, x, x)).by_module
    assert by_module["out_proj"] == Quantize(2).saved_bytes((10, 6), F64)


def test_mha_refuses_families_it_does_not_take():
    msg = re.escape("sketch family 'projection' is not allowed; allowed: ['quantize', 'subsample', 'bernoulli']")
    with pytest.raises(ValueError, match=msg):
        radvar.Plan({"": Projection(0.5)}).validate(_mha())
    assert "" not in radvar.Plan.uniform(_mha(), Projection(0.5))  # uniform skips it; out_proj still takes it


# ---- routing, real callers and memory -------------------------------------------------------------------------

def test_registered_function_kinds():
    assert FUNCTION_KINDS["sdpa"].functions == (F.scaled_dot_product_attention,)
    assert set(FUNCTION_KINDS["softmax"].functions) == {F.softmax, torch.softmax, torch.Tensor.softmax}


def _routed_grads(model: nn.Module, x: torch.Tensor, plan, **kwargs) -> torch.Tensor:
    with intercept(model, plan):
        out = model(x, **kwargs)
    out = out[0] if isinstance(out, tuple) else getattr(out, "last_hidden_state", out)
    loss = (out * torch.cos(torch.arange(out.numel(), dtype=F64)).view(out.shape)).sum()
    params = list(model.parameters())
    grads = torch.autograd.grad(loss, params, allow_unused=True)  # a BERT pooler is not in the loss
    return torch.cat([(torch.zeros_like(p) if g is None else g).flatten() for p, g in zip(params, grads)])


def test_zoo_vit_attention_routes_its_sdpa_call_unbiasedly():
    from radvar.apps.architectures import Attention

    torch.manual_seed(0)
    model = Attention(8, 2).double()
    x = torch.randn(2, 5, 8, dtype=F64)
    sites = {s for s, name in functional_sites(model, x).items() if name == "sdpa"}
    assert len(sites) == 1
    exact = _routed_grads(model, x, None)
    draws = torch.stack([_routed_grads(model, x, {s: sdpa_op(Quantize(2)) for s in sites}) for _ in range(DRAWS)])
    assert_unbiased(draws, exact, rtol=1e-12)


@pytest.mark.parametrize("arch", ["gpt2", "bert", "llama"])
def test_transformers_sdpa_attention_routes_unbiasedly(arch):
    """What transformers' sdpa_attention_forward passes (bool padding masks, is_causal, GQA with enable_gqa)."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    if arch == "gpt2":
        model = transformers.GPT2Model(transformers.GPT2Config(
            n_layer=1, n_embd=8, n_head=2, vocab_size=20, n_positions=8, attn_pdrop=0.0, resid_pdrop=0.0,
            embd_pdrop=0.0))
    elif arch == "bert":
        model = transformers.BertModel(transformers.BertConfig(
            num_hidden_layers=1, hidden_size=8, num_attention_heads=2, intermediate_size=8, vocab_size=20,
            attention_probs_dropout_prob=0.0, hidden_dropout_prob=0.0))
    else:
        model = transformers.LlamaModel(transformers.LlamaConfig(
            num_hidden_layers=1, hidden_size=8, num_attention_heads=4, num_key_value_heads=2, intermediate_size=8,
            vocab_size=20))
    model = model.double()
    with torch.no_grad():  # O(1) scores: at init (std 0.02) P is so near uniform that a row's rounding is
        for p in model.parameters():  # nearly deterministic and its rare other outcome evades a 100-draw z-test
            p.normal_(0.0, 0.5)
    ids = torch.tensor([[1, 2, 3, 4, 5], [6, 7, 8, 9, 10]])
    padding = {"attention_mask": torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])} if arch != "llama" else {}
    sites = {s for s, name in functional_sites(model, ids).items() if name == "sdpa"}
    assert len(sites) == 1
    exact = _routed_grads(model, ids, None, **padding)
    draws = torch.stack([_routed_grads(model, ids, {s: sdpa_op(Quantize(2)) for s in sites}, **padding)
                         for _ in range(DRAWS // 2)])
    assert draws.std(0).max() > 1e-6
    assert_unbiased(draws, exact, rtol=1e-12)


def test_eager_softmax_routes():
    class Eager(nn.Module):
        def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
            return nn.functional.softmax(q @ k.transpose(-2, -1), dim=-1, dtype=torch.float32).to(q.dtype) @ v

    q, k, v = (t.float() for t in _inputs())
    model = Eager()
    assert functional_sites(model, q, k, v)[":softmax.0"] == "softmax"
    with intercept(model, {":softmax.0": softmax_op(Quantize(2))}):
        y = model(q, k, v)
    torch.testing.assert_close(y, model(q, k, v))
    assert y.grad_fn is not None


def test_saved_bytes_are_the_sketches_gpt2_sized():
    """batch 8, 4 heads, seq 128, head dim 64, causal, dropout 0.1: two sketches of P and one each of Q, K, V.

    Plain SDPA on CPU keeps 9,437,184 bytes with dropout (the math path: scaled Q and Kᵀ, P, the dropout
    mask, P_d, V) and 4,210,688 without (the fused kernel: Q, K, V, O and the log-sum-exp); 2-bit
    sketches keep 589,824, 16.0x and 7.1x fewer (the two draws of P share one (lo, Δ) tensor).
    """
    q, k, v = (torch.randn(8, 4, 128, 64, requires_grad=True) for _ in range(3))
    sketch = Quantize(2)
    rad = memory.saved_bytes_of(lambda: rad_sdpa(q, k, v, dropout_p=0.1, is_causal=True, sketch=sketch))
    shared_bounds = 2 * (8 * 4 * 128) * 4  # one float32 (lo, Δ) per row, kept once for both draws of P
    assert rad == 3 * sketch.saved_bytes((8 * 4 * 128, 64)) + 2 * sketch.saved_bytes((8 * 4 * 128, 128)) - shared_bounds
    for p in (0.1, 0.0):
        plain = memory.saved_bytes_of(lambda: F.scaled_dot_product_attention(q, k, v, dropout_p=p, is_causal=True))
        assert plain >= 4 * q.numel() * 4  # at least Q, K, V and O in full
        assert plain / rad > 6.5


class _TwoAttentions(nn.Module):
    """The zoo ViT's Attention (a functional sdpa site), an nn.MultiheadAttention, a head."""

    def __init__(self):
        super().__init__()
        from radvar.apps.architectures import Attention

        self.attn, self.mha, self.head = Attention(8, 2), nn.MultiheadAttention(8, 2, batch_first=True), nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.attn(x)
        return self.head(self.mha(h, h, h, need_weights=False)[0].mean(1))


@pytest.mark.parametrize("site", ["attn:sdpa.0", pytest.param("mha", marks=pytest.mark.slow)])
def test_propagated_variance_agrees_with_monte_carlo(site):
    """The probe estimate of the added gradient variance against 500 draws of that site alone (99% interval)."""
    torch.manual_seed(0)
    model = _TwoAttentions().double()
    x, y = torch.randn(4, 5, 8, dtype=F64), torch.tensor([0, 1, 2, 0])
    est = propagated(model, (x, y), F.cross_entropy, {site: Quantize(2)}, probes=200)[site][0]
    params = list(model.parameters())
    exact = torch.autograd.grad(F.cross_entropy(model(x), y), params)
    randomized = radvar.convert(model, radvar.Plan({"mha": Quantize(2)})) if site == "mha" else model
    d = Welford()
    for _ in range(500):
        if site == "mha":
            loss = F.cross_entropy(randomized(x), y)
        else:
            with intercept(model, {site: sdpa_op(Quantize(2))}):
                loss = F.cross_entropy(model(x), y)
        grads = torch.autograd.grad(loss, list(randomized.parameters()))
        d.update(sum(float((g - e).square().sum()) for g, e in zip(grads, exact)))
    lo, hi = mean_ci(float(d.mean), float(d.variance), 500, 0.99)
    assert lo <= est.variance <= hi, (est, lo, hi)


# ---- bad input ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs, error, msg", [
    ({"sketch": "2 bits"}, TypeError, "rad_sdpa: sketch must be a radvar.sketch.Sketch or None (exact), got '2 bits'"),
    ({"sketch": Quantize(2, view="rows")}, ValueError, "rad_sdpa: view 'rows' is not allowed; allowed: [None, 'features']"),
    ({"dropout_p": 1.5}, ValueError, "rad_sdpa: dropout_p must be a drop probability in [0, 1], got 1.5"),
    ({"attn_mask": torch.ones(4, 5, dtype=torch.bool), "is_causal": True}, ValueError,
     "rad_sdpa: attn_mask and is_causal=True are exclusive"),
    ({"attn_mask": torch.ones(4, 5, dtype=torch.int64)}, TypeError,
     "rad_sdpa: attn_mask must be None, a bool tensor or a tensor of the query's dtype torch.float64, got torch.int64"),
    ({"enable_gqa": True, "hkv": 3}, ValueError, "rad_sdpa: enable_gqa needs (..., heads, seq, dim) tensors whose "
                                                 "key/value heads divide the query heads"),
    ({"value_float32": True}, TypeError, "rad_sdpa: query, key and value must have one dtype, got torch.float64, "
                                         "torch.float64, torch.float32"),
])
def test_bad_input_names_the_value(kwargs, error, msg):
    kwargs = {"sketch": Quantize(2), **kwargs}
    q, k, v = _inputs(hq=4 if "hkv" in kwargs else 2, hkv=kwargs.pop("hkv", 2))
    if kwargs.pop("value_float32", False):
        v = v.float()
    with pytest.raises(error, match=re.escape(msg)):
        rad_sdpa(q, k, v, **kwargs)


def test_mha_bad_input_names_the_shape():
    model = radvar.convert(_mha(batch_first=True), Quantize(2))
    x = torch.randn(2, 5, 6, dtype=F64)
    with pytest.raises(RuntimeError, match=re.escape("key_padding_mask is (2, 4); allowed: (2, 5) (batch, source length)")):
        model(x, x, x, key_padding_mask=torch.zeros(2, 4, dtype=torch.bool))
    with pytest.raises(RuntimeError, match=re.escape("the 2-D attn_mask is (5, 4); allowed: (5, 5)")):
        model(x, x, x, attn_mask=torch.zeros(5, 4, dtype=F64))
    with pytest.raises(RuntimeError, match=re.escape("is_causal=True needs attn_mask")):
        model(x, x, x, is_causal=True)


def test_softmax_bad_input():
    with pytest.raises(TypeError, match=re.escape("rad_softmax: sketch must be a radvar.sketch.Sketch or None")):
        rad_softmax(torch.randn(2, 3), -1, sketch=0.5)
    with pytest.raises(ValueError, match=re.escape("rad_softmax: dim must be an int in [-2, 1] for a 2-D input, "
                                                   "got 2")):
        rad_softmax(torch.randn(2, 3, requires_grad=True), 2, sketch=Quantize(2))
