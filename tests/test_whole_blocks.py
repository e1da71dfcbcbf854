"""Whole blocks of real architectures, converted with one sketch for everything radvar can randomize:
every parameter's gradient is unbiased (float64, thresholds from the sample variance of the draws), and an
all-exact plan is bitwise plain autograd.

Blocks: transformers' GPT2Block (dropout off, and on), BertLayer and LlamaDecoderLayer (with its rotary
embedding), all on scaled_dot_product_attention, and radvar.zoo's ResNet BasicBlock (train-mode BatchNorm,
with and without its downsampling branch). Whatever kinds radvar has twins or functional routes for are
sketched; the rest runs exactly, so these tests cover each new kind inside a real block as it lands.
"""

from __future__ import annotations

from typing import Callable

import pytest
import torch
from torch import nn

import radvar
from radvar.apps.architectures import BasicBlock
from radvar.sketch import Quantize, Subsample

from .stats import assert_unbiased
from .test_whole_models import convert_quietly

transformers = pytest.importorskip("transformers")
pytestmark = pytest.mark.usefixtures("one_thread")

HIDDEN, HEADS, SEQ, BATCH = 16, 2, 6, 2
DRAWS = 120


class LlamaLayer(nn.Module):
    """A LlamaDecoderLayer fed its rotary (cos, sin) by the model's LlamaRotaryEmbedding, as LlamaModel does."""

    def __init__(self, cfg: "transformers.LlamaConfig"):
        super().__init__()
        from transformers.models.llama.modeling_llama import LlamaDecoderLayer, LlamaRotaryEmbedding

        self.layer = LlamaDecoderLayer(cfg, layer_idx=0)
        self.rotary = LlamaRotaryEmbedding(cfg)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(x.shape[1]).unsqueeze(0)
        return self.layer(x, position_embeddings=self.rotary(x, positions))


def gpt2(dropout: float) -> nn.Module:
    from transformers.models.gpt2.modeling_gpt2 import GPT2Block

    cfg = transformers.GPT2Config(n_layer=1, n_embd=HIDDEN, n_head=HEADS, n_positions=SEQ, vocab_size=8,
                                  bos_token_id=0, eos_token_id=0, resid_pdrop=dropout, attn_pdrop=dropout,
                                  embd_pdrop=dropout, attn_implementation="sdpa")
    return GPT2Block(cfg, layer_idx=0)


def bert() -> nn.Module:
    from transformers.models.bert.modeling_bert import BertLayer

    return BertLayer(transformers.BertConfig(hidden_size=HIDDEN, num_attention_heads=HEADS,
                                             intermediate_size=2 * HIDDEN, hidden_dropout_prob=0.0,
                                             attention_probs_dropout_prob=0.0, attn_implementation="sdpa"))


def llama() -> nn.Module:
    return LlamaLayer(transformers.LlamaConfig(hidden_size=HIDDEN, intermediate_size=24, num_attention_heads=HEADS,
                                               num_key_value_heads=1, max_position_embeddings=SEQ, vocab_size=8,
                                               attn_implementation="sdpa"))


def _tokens() -> torch.Tensor:
    return torch.randn(BATCH, SEQ, HIDDEN, generator=torch.Generator().manual_seed(2), dtype=torch.float64)


def _images(channels: int) -> torch.Tensor:
    return torch.randn(4, channels, 6, 6, generator=torch.Generator().manual_seed(2), dtype=torch.float64)


# name -> (block factory, input factory, whether its forward draws dropout)
BLOCKS: dict[str, tuple[Callable[[], nn.Module], Callable[[], torch.Tensor], bool]] = {
    "gpt2": (lambda: gpt2(0.0), _tokens, False),
    "gpt2_dropout": (lambda: gpt2(0.2), _tokens, True),
    "bert": (bert, _tokens, False),
    "llama": (llama, _tokens, False),
    "resnet_basic": (lambda: BasicBlock(4, 4), lambda: _images(4), False),
    "resnet_downsample": (lambda: BasicBlock(4, 6, stride=2), lambda: _images(4), False),
}
CHEAP_BITS = {"gpt2": (1, 2, 4), "resnet_basic": (1, 2, 4)}  # the other blocks: 2 bits


def _block(name: str) -> tuple[nn.Module, torch.Tensor, torch.Tensor, bool]:
    """(block in float64, train mode; its input; a fixed output gradient; whether it draws dropout)."""
    factory, inputs, dropout = BLOCKS[name]
    torch.manual_seed(0)
    block = factory().double().train()
    x = inputs().requires_grad_()
    with torch.no_grad():
        gy = torch.randn(block(x).shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    return block, x, gy, dropout


def _grads(block: nn.Module, x: torch.Tensor, gy: torch.Tensor, dropout_seed: int | None = None) -> torch.Tensor:
    """∂⟨block(x), gy⟩ for every parameter and for x, concatenated (dropout drawn from ``dropout_seed``)."""
    if dropout_seed is not None:
        torch.manual_seed(dropout_seed)
    wrt = [*block.parameters(), x]
    return torch.cat([g.reshape(-1) for g in torch.autograd.grad(block(x), wrt, gy)])


def _sketched(block: nn.Module) -> list[str]:
    return [n for n, m in block.named_modules() if getattr(m, "sketch", None) is not None]


@pytest.mark.parametrize("name", BLOCKS)
def test_all_exact_plan_and_keep_one_are_bitwise_plain(name):
    block, x, gy, dropout = _block(name)
    seed = 5 if dropout else None
    plain = _grads(block, x, gy, seed)
    for plan in (None, Subsample(1.0)):
        assert torch.equal(_grads(convert_quietly(block, plan), x, gy, seed), plain), plan


@pytest.mark.parametrize("name,bits", [(n, b) for n in BLOCKS for b in CHEAP_BITS.get(n, (2,))])
def test_every_parameter_gradient_is_unbiased(name, bits):
    """Draws of every parameter's (and the input's) gradient under uniform Quantize(bits): their mean is the
    exact gradient, entry by entry (z-test, Bonferroni over entries, sd from the draws). With dropout, each
    draw is paired with the exact gradient at the same dropout seed; the differences have mean zero whether
    or not the converted block draws the same masks, and the pairing removes the dropout noise where it does."""
    block, x, gy, dropout = _block(name)
    rad = convert_quietly(block, Quantize(bits))
    assert _sketched(rad), f"{name}: nothing sketched"
    if not dropout:
        assert_unbiased(torch.stack([_grads(rad, x, gy) for _ in range(DRAWS)]), _grads(block, x, gy), rtol=1e-9)
        return
    reference = _grads(block, x, gy, 0)
    diffs = torch.stack([_grads(rad, x, gy, i) - _grads(block, x, gy, i) for i in range(DRAWS)])
    assert_unbiased(diffs + reference, reference, rtol=1e-9)  # shifted, so that round-off is judged at scale


def test_the_sketch_varies_the_gradients():
    """The unbiasedness checks are not vacuous: under Quantize(1) the gradients of a GPT-2 block differ
    between draws."""
    block, x, gy, _ = _block("gpt2")
    rad = convert_quietly(block, Quantize(1))
    radvar.seed(0)
    assert not torch.equal(_grads(rad, x, gy), _grads(rad, x, gy))
