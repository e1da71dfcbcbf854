"""The compact ReLU + RAD Linear fusion (radvar.layers.sequential) is invisible: same output,
gradients and saved bytes as the two modules run apart, and off wherever a hook could see the pair."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import radvar
from radvar.layers.sequential import FusingSequential, fuse
from radvar.memory import saved_bytes_of
from radvar.sketch import Bernoulli, Importance, Quantize, Subsample

SKETCHES = [Subsample(0.3), Subsample(0.3, per_example=True), Bernoulli(0.3), Importance(0.3), Quantize(2)]


def _mlp(activation: nn.Module) -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(20, 32), activation, nn.Linear(32, 16), activation, nn.Linear(16, 4))


def _step(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor], int]:
    """Output, parameter gradients and saved bytes of one seeded step."""
    radvar.seed(7)
    model.zero_grad()
    holder = {}
    nbytes = saved_bytes_of(lambda: holder.setdefault("out", model(x)),
                            exclude=list(model.parameters()))
    out = holder["out"]
    F.cross_entropy(out, y).backward()
    return out.detach(), [p.grad.clone() for p in model.parameters()], nbytes


def _data() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randn(24, 20, generator=g, requires_grad=True), torch.randint(0, 4, (24,), generator=g)


@pytest.mark.parametrize("activation", [nn.ReLU(), nn.LeakyReLU(0.1), nn.LeakyReLU(-0.2)],
                         ids=["relu", "leaky", "negative-slope"])
@pytest.mark.parametrize("sketch", SKETCHES, ids=repr)
def test_fused_pair_matches_the_modules_run_apart(activation, sketch):
    x, y = _data()
    fused = radvar.convert(_mlp(activation), sketch)
    assert type(fused) is FusingSequential
    apart = radvar.convert(_mlp(activation), sketch)
    apart.__class__ = nn.Sequential
    out_f, grads_f, bytes_f = _step(fused, x, y)
    gx_f = x.grad.clone()
    x.grad = None
    out_a, grads_a, bytes_a = _step(apart, x, y)
    torch.testing.assert_close(out_f, out_a, rtol=0, atol=0)
    for gf, ga in zip(grads_f, grads_a):
        torch.testing.assert_close(gf, ga, rtol=0, atol=0)
    torch.testing.assert_close(gx_f, x.grad, rtol=0, atol=0)
    assert bytes_f == bytes_a


def test_fused_pair_makes_one_function_call_per_layer():
    model = radvar.convert(_mlp(nn.ReLU()), Subsample(0.3))
    calls = []
    out = model(torch.randn(8, 20, requires_grad=True))
    seen, stack = set(), [out.grad_fn]
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        calls.append(type(node).__name__)
        stack.extend(next_fn for next_fn, _ in node.next_functions)
    assert not any("LeakyReLU" in name for name in calls), calls
    assert sum("RADLinearFunction" in name for name in calls) == 3  # one per Linear, the ReLUs inside two


def test_a_hook_on_either_module_turns_fusion_off():
    model = radvar.convert(_mlp(nn.ReLU()), Subsample(0.3))
    seen = []
    model[1].register_forward_hook(lambda module, args, out: seen.append(out.shape))
    model(torch.randn(8, 20))
    assert seen == [(8, 32), (8, 16)]  # the shared ReLU ran as a module both times


def test_exact_mode_and_exact_twins_do_not_fuse():
    model = radvar.convert(_mlp(nn.ReLU()), Subsample(0.3))
    x, y = _data()
    with radvar.exact():
        out, grads, _ = _step(model, x, y)
    plain = _mlp(nn.ReLU())
    out_p, grads_p, _ = _step(plain, x, y)
    torch.testing.assert_close(out, out_p)
    for g, gp in zip(grads, grads_p):
        torch.testing.assert_close(g, gp)


def test_fuse_keeps_state_dict_keys_and_leaves_other_sequentials_alone():
    model = radvar.convert(_mlp(nn.ReLU()), Subsample(0.3))
    assert list(model.state_dict()) == list(_mlp(nn.ReLU()).state_dict())
    unpaired = nn.Sequential(nn.ReLU(), nn.Linear(3, 3))  # plain modules: nothing to fuse
    assert type(fuse(unpaired)) is nn.Sequential


@pytest.mark.parametrize("activation", [nn.ReLU(), nn.LeakyReLU(0.1)], ids=["relu", "leaky"])
@pytest.mark.parametrize("mode", ["exact-plan", "radvar.exact", "frozen-weights"])
def test_a_pair_whose_linear_runs_exact_keeps_no_mask(activation, mode):
    """An exact linear that trains keeps the ReLU's output, so the pair runs torch.relu: the output and gradients
    are plain PyTorch's bitwise and the saved bytes are plain PyTorch's, the 1-bit masks the modules run apart
    keep beside that output fewer. A LeakyReLU stays compact (torch's keeps its input, a second tensor), and so
    does a ReLU before a frozen linear (which keeps nothing)."""
    x, y = _data()
    plan = None if mode == "exact-plan" else Subsample(0.3)
    model = radvar.convert(_mlp(activation), plan)
    assert type(model) is FusingSequential
    apart = radvar.convert(_mlp(activation), plan)
    apart.__class__ = nn.Sequential
    plain = _mlp(activation)
    if mode == "frozen-weights":
        for m in (model, apart, plain):
            for p in m.parameters():
                p.requires_grad_(False)
    with radvar.exact() if mode == "radvar.exact" else torch.enable_grad():
        runs = []
        for m in (model, apart, plain):
            if mode == "frozen-weights":
                radvar.seed(7)
                holder = {}
                nbytes = saved_bytes_of(lambda: holder.setdefault("out", m(x)), exclude=list(m.parameters()))
                F.cross_entropy(holder["out"], y).backward()
                runs.append((holder["out"].detach(), [x.grad.clone()], nbytes))
                x.grad = None
            else:
                runs.append(_step(m, x, y))
    (out, grads, nbytes), (_, _, bytes_apart), (out_p, grads_p, bytes_p) = runs
    torch.testing.assert_close(out, out_p, rtol=0, atol=0)
    for g, gp in zip(grads, grads_p):
        torch.testing.assert_close(g, gp, rtol=0, atol=0)
    if isinstance(activation, nn.LeakyReLU) or mode == "frozen-weights":  # the mask is less than what torch keeps
        assert nbytes == bytes_apart < bytes_p
    else:
        assert nbytes == bytes_p
        assert bytes_apart - nbytes == (24 * 32 + 24 * 16) // 8  # the two masks, beside outputs the linears keep
