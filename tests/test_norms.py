"""Normalization layer kinds: exact plans bitwise plain, the two-sketch backward against autograd with exact z,
unbiasedness for every family in float64, BatchNorm bookkeeping, the transformers RMSNorm classes, the
functional routes, saved bytes by the ledger, and bad input."""

from __future__ import annotations

import copy
import re
from typing import Callable

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import radvar
from radvar import rng
from radvar.layers import functional, norms, twin_for
from radvar.layers.registry import propagating
from radvar.memory import saved_bytes
from radvar.ops import norm as norm_op
from radvar.sketch import Bernoulli, Importance, Projection, Quantize, Subsample

from .stats import assert_unbiased

transformers = pytest.importorskip("transformers")
from transformers.models.gemma.modeling_gemma import GemmaRMSNorm  # noqa: E402
from transformers.models.llama.modeling_llama import LlamaRMSNorm  # noqa: E402
from transformers.models.mistral.modeling_mistral import MistralRMSNorm  # noqa: E402
from transformers.models.olmo2.modeling_olmo2 import Olmo2RMSNorm  # noqa: E402
from transformers.models.t5.modeling_t5 import T5LayerNorm  # noqa: E402


def _affine(module: nn.Module) -> nn.Module:
    """Non-trivial γ, β (the defaults 1, 0 would hide a swapped term)."""
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g))
    return module


def _case(name: str) -> tuple[nn.Module, torch.Tensor]:
    """A float64 module (training mode) and input."""
    g = torch.Generator().manual_seed(3)
    modules: dict[str, Callable[[], tuple[nn.Module, tuple[int, ...]]]] = {
        "layer_norm": lambda: (nn.LayerNorm(6), (4, 2, 6)),
        "layer_norm_2d_shape": lambda: (nn.LayerNorm([2, 3]), (5, 2, 3)),
        "layer_norm_plain": lambda: (nn.LayerNorm(6, elementwise_affine=False), (4, 6)),
        "rms_norm": lambda: (nn.RMSNorm(6), (4, 2, 6)),
        "rms_norm_eps": lambda: (nn.RMSNorm(6, eps=0.3), (4, 6)),
        "group_norm": lambda: (nn.GroupNorm(2, 4), (3, 4, 3)),
        "batch_norm1d": lambda: (nn.BatchNorm1d(3), (6, 3)),
        "batch_norm2d": lambda: (nn.BatchNorm2d(3), (3, 3, 2, 2)),
        "batch_norm3d": lambda: (nn.BatchNorm3d(2, momentum=None), (2, 2, 2, 1, 2)),
        "batch_norm_untracked": lambda: (nn.BatchNorm2d(3, track_running_stats=False), (2, 3, 2, 2)),
        "llama": lambda: (LlamaRMSNorm(6), (4, 6)),
        "gemma": lambda: (GemmaRMSNorm(6), (4, 6)),
        "t5": lambda: (T5LayerNorm(6), (4, 6)),
    }
    module, shape = modules[name]()
    return _affine(module).double(), torch.randn(shape, generator=g, dtype=torch.float64)


CASES = ["layer_norm", "layer_norm_2d_shape", "layer_norm_plain", "rms_norm", "rms_norm_eps", "group_norm",
         "batch_norm1d", "batch_norm2d", "batch_norm3d", "batch_norm_untracked", "llama", "gemma", "t5"]
UNBIASED_CASES = ["layer_norm", "rms_norm", "group_norm", "batch_norm2d", "llama", "gemma"]
SKETCHES = [Quantize(1), Quantize(2), Quantize(4), Subsample(0.5, per_example=True), Subsample(0.5),
            Bernoulli(0.5), Importance(0.5), Projection(0.5)]


def _grads(module: nn.Module, x: torch.Tensor, gy: torch.Tensor) -> tuple[torch.Tensor, ...]:
    x = x.clone().requires_grad_()
    out = module(x)
    return (out, *torch.autograd.grad(out, [x, *(p for p in module.parameters() if p.requires_grad)], gy))


@pytest.fixture
def unsketched(monkeypatch):
    """Subsample(1) forced through the RAD op: z kept whole, the RAD backward math unchanged."""
    monkeypatch.setattr(Subsample, "exact", property(lambda self: False))
    return Subsample(1.0)


# ---- exactness ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", CASES)
@pytest.mark.parametrize("plan", ["exact", "keep=1"])
def test_exact_plan_is_bitwise_plain_autograd(name, plan):
    module, x = _case(name)
    rad = radvar.convert(copy.deepcopy(module), None if plan == "exact" else Subsample(1.0))
    assert twin_for(module) is type(rad) and propagating(rad)
    for step in range(2):  # twice: running statistics feed the second step
        gy = torch.randn(x.shape, generator=torch.Generator().manual_seed(step), dtype=x.dtype)
        for a, b in zip(_grads(module, x, gy), _grads(rad, x, gy)):
            assert torch.equal(a, b)
    assert all(torch.equal(a, b) for a, b in zip(module.buffers(), rad.buffers()))


@pytest.mark.parametrize("name", CASES)
@pytest.mark.parametrize("needs", ["all", "input only", "params only"])
def test_rad_backward_with_exact_z_is_autograd(name, needs, unsketched):
    """The two-sketch formulas with ẑ₁ = ẑ₂ = z give autograd's gradients (float64; the transformers
    classes compute z in float32, so to float32 precision); forward and running statistics are bitwise."""
    module, x = _case(name)
    if needs == "params only" and not list(module.parameters()):
        pytest.skip("no parameters")
    rad = radvar.convert(copy.deepcopy(module), unsketched)
    if needs == "input only":
        for m in (module, rad):
            m.requires_grad_(False)
    gy = torch.randn(x.shape, generator=torch.Generator().manual_seed(1), dtype=x.dtype)
    xa, xb = x.clone().requires_grad_(needs != "params only"), x.clone().requires_grad_(needs != "params only")
    ya, yb = module(xa), rad(xb)
    assert torch.equal(ya, yb) and all(torch.equal(a, b) for a, b in zip(module.buffers(), rad.buffers()))
    wrt = lambda m, xi: ([xi] if xi.requires_grad else []) + [p for p in m.parameters() if p.requires_grad]  # noqa: E731
    tol = 1e-6 if name in ("llama", "gemma", "t5") else 1e-12
    for a, b in zip(torch.autograd.grad(ya, wrt(module, xa), gy), torch.autograd.grad(yb, wrt(rad, xb), gy)):
        torch.testing.assert_close(b, a, rtol=tol, atol=tol)


@pytest.mark.parametrize("frozen", [False, True])
def test_eval_batch_norm_is_exact_and_keeps_only_what_gamma_needs(frozen):
    module, x = _case("batch_norm2d")
    module.train()(x)  # running statistics away from (0, 1)
    module.eval().requires_grad_(not frozen)
    rad = radvar.convert(copy.deepcopy(module), Quantize(2))
    gy = torch.randn(x.shape, generator=torch.Generator().manual_seed(2), dtype=x.dtype)
    for a, b in zip(_grads(module, x, gy), _grads(rad, x, gy)):
        torch.testing.assert_close(b, a, rtol=1e-12, atol=1e-12)
    channels = x.shape[1] * 8  # 1/√(running var + ε), float64
    x = x.clone().requires_grad_()
    assert saved_bytes(rad, x).total == channels + (0 if frozen else x.numel() * 8 + channels)


def test_running_statistics_follow_torch_over_steps():
    for momentum in (0.1, None):
        plain = nn.BatchNorm1d(4, momentum=momentum)
        rad = radvar.convert(copy.deepcopy(plain), Quantize(2))
        for step in range(3):
            x = torch.randn(5, 4, 3, generator=torch.Generator().manual_seed(step)).requires_grad_()
            assert torch.equal(plain(x), rad(x))
        for (name, a), b in zip(plain.named_buffers(), rad.buffers()):
            assert torch.equal(a, b), name
        assert int(rad.num_batches_tracked) == 3


# ---- unbiasedness ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", UNBIASED_CASES)
@pytest.mark.parametrize("sketch", SKETCHES, ids=lambda s: s.label())
def test_every_gradient_is_unbiased(name, sketch):
    """Per-entry z-tests (Bonferroni, bound from the draws' sd) of ∂x, ∂γ, ∂β over 200 draws, float64."""
    module, x = _case(name)
    if name.startswith("batch"):
        sketch = Quantize(2, view="positions") if sketch == Quantize(2) else sketch  # both views
    rad = radvar.convert(copy.deepcopy(module), sketch)
    gy = torch.randn(x.shape, generator=torch.Generator().manual_seed(5), dtype=x.dtype)
    exact = _grads(module, x, gy)[1:]
    radvar.seed(0)
    draws = [torch.stack(d) for d in zip(*(_grads(rad, x, gy)[1:] for _ in range(200)))]
    assert not torch.equal(draws[0][0], draws[0][1])  # randomized
    for d, e in zip(draws, exact):
        assert_unbiased(d, e, rtol=1e-6 if name in ("llama", "gemma") else 1e-12)


@pytest.mark.parametrize("bits", [1, 2])
def test_variance_of_layer_norm_gradients_inside_the_monte_carlo_interval(bits):
    """E‖∂x̂ − ∂x‖² = Σ_rows (1/2σ²)[m²V + ‖z‖²s + Vs + 2mc + w] and E‖∂γ̂ − ∂γ‖² = ½ Σ g² v (docs/norms.md),
    v the per-entry rounding variance, against 500 draws (99% t-interval)."""
    from radvar.variance.statistics import mean_ci

    module, x = _case("layer_norm")
    x = x.reshape(-1, 6)
    gy = torch.randn(x.shape, generator=torch.Generator().manual_seed(5), dtype=x.dtype)
    sketch, n = Quantize(bits), x.shape[1]
    var, mean = torch.var_mean(x, 1, correction=0, keepdim=True)
    rstd = (var + module.eps).rsqrt()
    z = (x - mean) * rstd
    v, gh = sketch.entry_variance(z), gy * module.weight.detach()
    m, big_v = (gh * z).mean(1), v.sum(1)
    s, c, w = (gh ** 2 * v).sum(1) / n ** 2, (gh * z * v).sum(1) / n, (gh ** 2 * v ** 2).sum(1) / n ** 2
    predicted = [float((rstd[:, 0] ** 2 / 2 * (m ** 2 * big_v + z.square().sum(1) * s + big_v * s + 2 * m * c + w)).sum()),
                 float(0.5 * (gy ** 2 * v).sum())]
    exact = _grads(module, x, gy)[1:3]
    rad = radvar.convert(copy.deepcopy(module), sketch)
    radvar.seed(1)
    draws = [_grads(rad, x, gy)[1:3] for _ in range(500)]
    for i in range(2):
        sq = torch.stack([(d[i] - exact[i]).square().sum() for d in draws])
        low, high = mean_ci(float(sq.mean()), float(sq.var()), len(sq), 0.99)
        assert low <= predicted[i] <= high, (i, low, predicted[i], high)


def test_two_independent_sketches_are_needed():
    """One sketch used in both factors of z·mean(ĝ ⊙ z) is biased: E[ẑ_i ẑ_j] = z_i z_j + Cov(ẑ_i, ẑ_j)."""
    module, x = _case("layer_norm")
    gy = torch.randn(x.shape, generator=torch.Generator().manual_seed(5), dtype=x.dtype)
    exact = _grads(module, x, gy)[1]
    rad = radvar.convert(copy.deepcopy(module), Quantize(1))
    radvar.seed(0)
    draws = torch.stack([_grads(rad, x, gy)[1] for _ in range(300)])
    assert_unbiased(draws, exact)
    same_key = norm_op.RADNormFunction.apply
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(norm_op.RADNormFunction, "apply",
                   lambda *a: same_key(*a[:-1], (a[-1][0], a[-1][0])))
        radvar.seed(0)
        biased = torch.stack([_grads(rad, x, gy)[1] for _ in range(300)])
    with pytest.raises(AssertionError, match="biased"):
        assert_unbiased(biased, exact)


# ---- transformers classes ----------------------------------------------------------------------------------------

def test_transformers_rms_norms_are_matched_by_formula():
    for cls in (LlamaRMSNorm, MistralRMSNorm, Olmo2RMSNorm, T5LayerNorm, GemmaRMSNorm):
        twin = twin_for(cls(4))
        assert twin is not None and issubclass(twin, cls) and twin.propagates, cls
    qwen = radvar.convert(transformers.Qwen2Model(transformers.Qwen2Config(
        vocab_size=16, hidden_size=8, intermediate_size=8, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=1)), Quantize(2))
    assert type(qwen.norm).__name__ == "RADQwen2RMSNorm" and qwen.norm.sketch == Quantize(2)

    class Shifted(LlamaRMSNorm):  # a different formula: stays exact
        def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
            return super().forward(hidden_states) + 1.0

    Shifted.__module__ = "transformers.models.llama.modeling_llama"
    assert twin_for(Shifted(4)) is None
    from transformers.models.qwen3_next.modeling_qwen3_next import Qwen3NextRMSNormGated
    assert twin_for(Qwen3NextRMSNormGated(4)) is None


def test_transformers_twin_pickles_and_copies(tmp_path):
    rad = radvar.convert(nn.Sequential(LlamaRMSNorm(4)), Quantize(2))
    torch.save(rad, tmp_path / "model.pt")
    for back in (torch.load(tmp_path / "model.pt", weights_only=False), copy.deepcopy(rad)):
        assert type(back[0]) is type(rad[0]) and back[0].sketch == Quantize(2)
        assert torch.equal(back[0].weight, rad[0].weight) and twin_for(back[0]) is type(rad[0])


@pytest.mark.parametrize("cls", [LlamaRMSNorm, Olmo2RMSNorm, T5LayerNorm, GemmaRMSNorm])
@pytest.mark.parametrize("dtype,weight_dtype", [(torch.bfloat16, torch.float32), (torch.bfloat16, torch.bfloat16),
                                                (torch.float16, torch.float32)])
def test_transformers_dtype_behaviour_is_kept(cls, dtype, weight_dtype):
    """The twin runs the class's own forward: output dtype and values bitwise; gradients in the input's and
    the weight's dtypes."""
    module = _affine(cls(8)).to(weight_dtype)
    rad = radvar.convert(copy.deepcopy(module), Quantize(4))
    x = torch.randn(3, 8, generator=torch.Generator().manual_seed(0)).to(dtype).requires_grad_()
    y_plain, y_rad = module(x), rad(x)
    assert y_rad.dtype == y_plain.dtype and torch.equal(y_plain, y_rad)
    gx, gw = torch.autograd.grad(y_rad.float().sum(), [x, rad.weight])
    assert gx.dtype == dtype and gw.dtype == weight_dtype


# ---- functional routes -------------------------------------------------------------------------------------------

class _Functional(nn.Module):
    """The four functions on one input, summed (side by side, so each z is of plain Gaussian data)."""

    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(2)
        self.w = nn.Parameter(torch.randn(8, generator=g, dtype=torch.float64))
        self.b = nn.Parameter(torch.randn(8, generator=g, dtype=torch.float64))
        self.register_buffer("mean", torch.zeros(8, dtype=torch.float64))
        self.register_buffer("var", torch.ones(8, dtype=torch.float64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (F.layer_norm(x, (8,), weight=self.w, bias=self.b) + F.rms_norm(x, [8], self.w, eps=1e-3)
                + F.batch_norm(x.unsqueeze(-1), self.mean, self.var, self.w, self.b, training=True).squeeze(-1)
                + F.group_norm(x, 2, self.w, bias=self.b))


def test_functional_routes_take_the_torch_signature_and_are_unbiased():
    model = _Functional()
    x = torch.randn(6, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    sites = functional.functional_sites(copy.deepcopy(model), x)
    assert sites == {":layer_norm.0": "layer_norm", ":rms_norm.0": "rms_norm", ":batch_norm.0": "batch_norm",
                     ":group_norm.0": "group_norm"}
    gy = torch.randn(6, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    plain = copy.deepcopy(model)
    exact = _grads(plain, x, gy)
    ops = {site: functional.FUNCTION_KINDS[kind].factory(Quantize(2)) for site, kind in sites.items()}
    draws = []
    radvar.seed(0)
    for _ in range(300):
        with functional.intercept(model, ops):
            out, *grads = _grads(model, x, gy)
        if not draws:  # one step: running statistics as torch updates them
            assert torch.equal(model.mean, plain.mean) and torch.equal(model.var, plain.var)
        draws.append(grads)
    assert torch.equal(out, exact[0])
    for d, e in zip(zip(*draws), exact[1:]):
        assert_unbiased(torch.stack(d), e, rtol=1e-12)


def test_functional_route_keeps_sketches_not_the_input():
    x = torch.randn(8, 64, 256).requires_grad_()
    plain = saved_bytes(nn.LayerNorm(256), x).total
    op = functional.FUNCTION_KINDS["layer_norm"].factory(Quantize(2))
    ledger = radvar.memory.saved_bytes_of(lambda: op(x, (256,), None, None, 1e-5))
    assert ledger == 2 * (8 * 64 * 256 * 2 // 8) + 8 * 64 * 8 + 8 * 64 * 4 < plain / 7


# ---- saved bytes -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("sketch", [Quantize(2), Quantize(1, group=8), Subsample(0.25), Projection(0.25)],
                         ids=lambda s: s.label())
@pytest.mark.parametrize("input_grad", [True, False])
def test_ledger_counts_two_sketches_and_one_sigma_per_reduction_set(sketch, input_grad):
    """Two sketches of the view (one when only γ needs a gradient; Quantize's bounds are shared), plus 1/σ."""
    for module, x, view, sigmas in [
            (nn.LayerNorm(32), torch.randn(4, 5, 32), (20, 32), 20),
            (nn.BatchNorm2d(8), torch.randn(4, 8, 4, 4), (4, 128) if sketch.view is None else (32, 16), 8),
            (nn.GroupNorm(2, 8), torch.randn(4, 8, 4, 4), (4, 128), 8)]:
        x.requires_grad_(input_grad)
        total = saved_bytes(radvar.convert(module, sketch), x).total
        one = sketch.saved_bytes(view)
        bounds = 2 * view[0] * (view[1] // (sketch.group or view[1])) * 4 if isinstance(sketch, Quantize) else 0
        assert total == (2 * one - bounds if input_grad else one) + 4 * sigmas, type(module).__name__


@pytest.mark.parametrize("sketch", [Quantize(1), Quantize(4, group=4), Quantize(2, sample=Subsample(0.5)),
                                    Subsample(0.5), Projection(0.5)], ids=lambda s: s.label())
def test_compress_draws_are_the_draws_of_compress(sketch):
    """Two draws at once (Quantize: one grid, one bounds tensor) equal two compress calls with the same keys."""
    x = torch.randn(5, 16, generator=torch.Generator().manual_seed(0))
    draws = sketch.compress_draws(x, [rng.generator(k, "cpu") for k in (3, 4)])
    for (saved, meta), key in zip(draws, (3, 4)):
        alone, meta_alone = sketch.compress(x, rng.generator(key, "cpu"))
        assert meta == meta_alone and all(torch.equal(a, b) for a, b in zip(saved, alone))
    if isinstance(sketch, Quantize) and sketch.sample is None:
        assert draws[0][0][1] is draws[1][0][1]


def test_resnet_batch_norm_and_gpt2_layer_norm_bytes():
    """The figures in docs/norms.md: BatchNorm2d at 16x64x32x32 and a GPT-2 LayerNorm at 8x128x256."""
    bn, ln = nn.BatchNorm2d(64), nn.LayerNorm(256)
    xb, xl = torch.randn(16, 64, 32, 32).requires_grad_(), torch.randn(8, 128, 256).requires_grad_()
    assert saved_bytes(bn, xb).total == 4_195_328 and saved_bytes(ln, xl).total == 1_056_768
    assert saved_bytes(radvar.convert(bn, Quantize(2)), xb).total == 524_672
    assert saved_bytes(radvar.convert(ln, Quantize(2)), xl).total == 143_360


# ---- plans and bad input -----------------------------------------------------------------------------------------

def test_plans_cover_norms_with_every_family():
    model = nn.Sequential(nn.Conv2d(2, 4, 3), nn.BatchNorm2d(4), nn.GroupNorm(2, 4), nn.Flatten(), nn.LayerNorm(16))
    for sketch in SKETCHES:
        plan = radvar.Plan.uniform(model, sketch)
        assert {"1", "2", "4"} <= set(plan.layers if hasattr(plan, "layers") else dict(plan))
    with pytest.raises(ValueError, match=re.escape("view 'rows' is not allowed; allowed: [None, 'features']")):
        radvar.convert(nn.Sequential(nn.LayerNorm(4)), radvar.Plan({"0": Quantize(2, view="rows")}))


@pytest.mark.parametrize("op,args", [
    (norm_op.rad_layer_norm, lambda x: (x, (4,), None, None, 1e-5)),
    (norm_op.rad_batch_norm, lambda x: (x, None, None, None, None, True, 0.1, 1e-5)),
    (norm_op.rad_group_norm, lambda x: (x, 2, None, None, 1e-5))])
def test_bad_view_and_sketch_name_the_value(op, args):
    x = torch.randn(3, 4, requires_grad=True)
    allowed = "[None, 'features']" if op is norm_op.rad_layer_norm else "[None, 'examples', 'positions']"
    with pytest.raises(ValueError, match=re.escape(f"view 'rows' is not offered; allowed: {allowed}")):
        op(*args(x), Quantize(2, view="rows"))
    with pytest.raises(TypeError, match="sketch must be a radvar.sketch.Sketch or None, got 'q2'"):
        op(*args(x), "q2")


def test_torch_errors_stay_torch_errors():
    x = torch.randn(3, 5, requires_grad=True)
    with pytest.raises(RuntimeError, match="normalized_shape"):
        norm_op.rad_layer_norm(x, (4,), None, None, 1e-5, Quantize(2))
    with pytest.raises(RuntimeError, match="divisible by num_groups"):
        norm_op.rad_group_norm(x, 2, None, None, 1e-5, Quantize(2))
    with pytest.raises(ValueError, match="Expected more than 1 value per channel"):
        norm_op.rad_batch_norm(torch.randn(1, 5, requires_grad=True), None, None, None, None, True, 0.1, 1e-5,
                               Quantize(2))


def test_exact_inside_radvar_exact_and_no_grad_keeps_nothing_random():
    module, x = _case("layer_norm")
    rad = radvar.convert(copy.deepcopy(module), Quantize(1))
    gy = torch.ones_like(x)
    with rng.exact():
        assert all(torch.equal(a, b) for a, b in zip(_grads(module, x, gy), _grads(rad, x, gy)))
    with torch.no_grad():
        assert torch.equal(rad(x), module(x))
