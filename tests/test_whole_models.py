"""Whole transformers models (GPT-2, BERT, Llama from tiny configs, random weights): convert, train a step,
the coverage report agrees with the saved-tensor ledger to the byte, and uniform Quantize(2) keeps the byte
ratio floors (ResNet-18 and GPT-2)."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F

import radvar
from radvar import memory, zoo
from radvar.report import coverage
from radvar.sketch import Quantize, Subsample

transformers = pytest.importorskip("transformers")
pytestmark = pytest.mark.usefixtures("one_thread")

VOCAB, SEQ, BATCH = 64, 16, 2


def gpt2() -> torch.nn.Module:
    return transformers.GPT2LMHeadModel(transformers.GPT2Config(
        n_layer=2, n_embd=32, n_head=2, n_positions=SEQ, vocab_size=VOCAB, bos_token_id=0, eos_token_id=0,
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0))


def bert() -> torch.nn.Module:
    return transformers.BertForMaskedLM(transformers.BertConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, vocab_size=VOCAB,
        max_position_embeddings=SEQ, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0))


def llama() -> torch.nn.Module:
    return transformers.LlamaForCausalLM(transformers.LlamaConfig(
        hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
        vocab_size=VOCAB, max_position_embeddings=SEQ))


MODELS = [gpt2, bert, llama]


def token_loss(out, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(out.logits.flatten(0, 1), y.flatten())


def tokens() -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    return torch.randint(0, VOCAB, (BATCH, SEQ), generator=gen), torch.randint(0, VOCAB, (BATCH, SEQ), generator=gen)


def convert_quietly(model: torch.nn.Module, plan) -> torch.nn.Module:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", radvar.CoverageWarning)  # embeddings, norms and attention stay exact
        return radvar.convert(model, plan)


def grads(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, dict]:
    model.zero_grad(set_to_none=True)
    loss = token_loss(model(x), y)
    loss.backward()
    return loss.detach(), {n: p.grad for n, p in model.named_parameters()}


@pytest.mark.parametrize("factory", MODELS, ids=lambda f: f.__name__)
def test_converted_model_trains(factory):
    model, (x, y) = factory().train(), tokens()
    rad = convert_quietly(model, Subsample(0.5))
    assert any(getattr(m, "sketch", None) is not None for m in rad.modules())  # at least the LM head
    loss, g = grads(rad, x, y)
    assert torch.isfinite(loss)
    for name, grad in g.items():
        assert grad is not None and torch.isfinite(grad).all(), name


@pytest.mark.parametrize("factory", MODELS, ids=lambda f: f.__name__)
def test_all_exact_conversion_is_bitwise_plain(factory):
    model, (x, y) = factory().train(), tokens()
    loss, g = grads(model, x, y)
    loss_c, g_c = grads(convert_quietly(model, None), x, y)
    assert torch.equal(loss, loss_c)
    for name in g:
        assert torch.equal(g[name], g_c[name]), name


@pytest.mark.parametrize("factory", MODELS, ids=lambda f: f.__name__)
def test_coverage_totals_are_the_ledger_totals(factory):
    model, (x, y) = factory().train(), tokens()
    cov = coverage(model, x, token_loss, y, Subsample(0.25))
    plain = memory.saved_bytes(model, x, token_loss, y)
    converted = memory.saved_bytes(convert_quietly(model, Subsample(0.25)), x, token_loss, y)
    frame = cov.per_layer
    assert cov.total["bytes_plain"] == plain.total == frame["bytes_plain"].sum()
    assert cov.total["bytes_converted"] == converted.total == frame["bytes_converted"].sum()
    assert cov.total["bytes_converted"] == cov.total["bytes_exact"] + frame[frame["status"] != "exact"][
        "bytes_converted"].sum()
    assert 0 < cov.total["fraction_sketchable"] < 1
    assert (frame[frame["status"] == "exact"]["why"] != "").all()


# The "never below" floors of plain / converted saved bytes under uniform Quantize(2) (measured at full
# size by benchmarks/bench_models.py); byte counts are deterministic, so small configurations check them fast.
BYTE_FLOORS = {"resnet18": 6.0, "gpt2": 4.0}


def _resnet18_batch() -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor, object]:
    return (zoo.resnet18(classes=10).train(), *zoo.synthetic(2, (3, 64, 64), 10), F.cross_entropy)


def _gpt2_batch() -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor, object]:
    return (gpt2().train(), *tokens(), token_loss)


@pytest.mark.parametrize("name,factory", [("resnet18", _resnet18_batch), ("gpt2", _gpt2_batch)])
def test_uniform_two_bit_saves_at_least_the_floor(name, factory):
    model, x, y, loss = factory()
    plain = memory.saved_bytes(model, x, loss, y).total
    converted = memory.saved_bytes(radvar.convert(model, Quantize(2)), x, loss, y).total
    assert plain / converted >= BYTE_FLOORS[name], (name, plain, converted, plain / converted)
