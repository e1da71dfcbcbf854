"""The ledger's numbers and the RNG contract."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import radvar
from radvar import zoo
from radvar.memory import saved_bytes
from radvar.sketch import Bernoulli, Importance, Projection, Subsample


def test_ledger_counts_unique_storages_and_excludes_parameters():
    lin = nn.Linear(10, 3)
    x = torch.randn(4, 10)
    report = saved_bytes(lin, x)
    assert report.total == x.numel() * 4  # the input; the weight is a parameter
    model = nn.Sequential(nn.Linear(10, 6), nn.ReLU(), nn.Linear(6, 2))
    report = saved_bytes(model, x, F.cross_entropy, torch.tensor([0, 1, 0, 1]))
    per = dict(zip(report.per_module["module"], report.per_module["bytes"]))
    # ReLU saves its output, which Linear 2 saves too: one storage, counted once
    assert per["0"] == 160 and per["1"] == 4 * 6 * 4 and per["2"] == 0
    assert report.total == sum(per.values())
    assert "total saved for backward" in report.summary()


@pytest.mark.parametrize("factory,shape", [(zoo.mlp, (784,)), (zoo.cnn, (3, 32, 32))], ids=["mlp", "cnn"])
def test_paper_models_keep_at_least_8x_fewer_bytes_at_keep_0_1(factory, shape):
    model = factory()
    x, y = zoo.synthetic(150, shape, 10)
    plain = saved_bytes(model, x, F.cross_entropy, y).total
    rad = saved_bytes(radvar.convert(model, Subsample(0.1)), x, F.cross_entropy, y).total
    assert plain / rad >= 8.0, plain / rad


@pytest.mark.parametrize("sketch", [Subsample(0.2), Bernoulli(0.2), Projection(0.2), Importance(0.2)],
                         ids=lambda s: s.label())
def test_global_rng_untouched_and_seed_reproduces_bitwise(sketch):
    model = radvar.convert(zoo.cnn(in_channels=1, image=8), sketch)
    x = torch.randn(3, 1, 8, 8)
    state = torch.get_rng_state()

    def grads(seed):
        radvar.seed(seed)
        model.zero_grad()
        model(x).sum().backward()
        return [p.grad.clone() for p in model.parameters()]

    a, b, c = grads(7), grads(7), grads(8)
    assert torch.equal(torch.get_rng_state(), state)
    assert all(torch.equal(u, v) for u, v in zip(a, b))
    assert any(not torch.equal(u, v) for u, v in zip(a, c))


def test_dropout_draws_unchanged_by_conversion():
    model = nn.Sequential(nn.Linear(8, 8), nn.Dropout(0.5), nn.Linear(8, 2))
    rad = radvar.convert(model, Subsample(0.5))
    x = torch.randn(16, 8)
    torch.manual_seed(3)
    ref = model[1](model[0](x))
    torch.manual_seed(3)
    got = rad[1](rad[0](x))
    assert torch.equal(ref, got)


def test_seed_rejects_non_int():
    with pytest.raises(TypeError, match="n must be an int"):
        radvar.seed(1.5)


def test_keys_differing_only_in_high_bits_give_different_streams():
    from radvar import rng

    a = torch.rand(4, generator=rng.generator(5, "cpu"))
    b = torch.rand(4, generator=rng.generator(5 + 2**32, "cpu"))
    assert not torch.equal(a, b)
    assert torch.equal(a, torch.rand(4, generator=rng.generator(5, "cpu")))


class _UnusedBranch(nn.Module):
    """A model computing a branch whose output the loss never uses: its graph is freed mid-forward."""

    def __init__(self):
        super().__init__()
        self.unused = nn.Sequential(nn.Linear(32, 256), nn.Linear(256, 4))
        self.used = nn.Sequential(nn.Linear(32, 256), nn.Linear(256, 4))

    def forward(self, x):
        self.unused(x)
        return self.used(x)


def test_ledger_deterministic_with_unused_branch():
    torch.manual_seed(0)
    model = _UnusedBranch()
    x, y = torch.randn(64, 32), torch.randint(0, 4, (64,))
    # the unused branch packs x (shared with the used branch: counted once) and its 64x256 hidden
    expected = saved_bytes(model.used, x, F.cross_entropy, y).total + 64 * 256 * 4
    totals = [saved_bytes(model, x, F.cross_entropy, y).total for _ in range(12)]
    assert totals == [expected] * 12


def test_ledger_frees_saved_outputs_after_measuring():
    import gc
    import weakref

    model = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 2))
    refs = []
    model[1].register_forward_hook(lambda m, args, out: refs.append(weakref.ref(out)))
    saved_bytes(model, torch.randn(4, 8), F.cross_entropy, torch.tensor([0, 1, 0, 1]))
    gc.collect()
    assert refs and refs[0]() is None  # Tanh saves its output: packed as itself it would never be freed
