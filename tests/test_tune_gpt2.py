"""radvar.tune on a small transformers GPT-2: the plan's ledger bytes (functional attention sites included,
as ``"<module>:*"`` site entries) are within the budget, also after the plan is copied into a Plan subclass."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import radvar
from radvar.convert import _convert as convert
from radvar.memory import saved_bytes
from radvar.sketch import Quantize

transformers = pytest.importorskip("transformers")

VOCAB = 1024


def _loss(out, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(out.logits.flatten(0, -2), y.flatten())


@pytest.fixture(scope="module")
def gpt2():
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(n_layer=2, n_embd=64, n_head=4, n_positions=32, vocab_size=VOCAB,
                                  bos_token_id=0, eos_token_id=0)
    g = torch.Generator().manual_seed(0)
    x, y = torch.randint(0, VOCAB, (4, 32), generator=g), torch.randint(0, VOCAB, (4, 32), generator=g)
    return transformers.GPT2LMHeadModel(cfg).train(), x, y


def _tune(model, x, y, budget):
    radvar.seed(0)
    return radvar.tune(model, (x, y), _loss, budget=budget, families=[Quantize.family()], probes=4)


def test_unreachable_fraction_names_the_smallest_feasible(gpt2):
    """At this size the exact rest (embeddings, logits, loss) alone exceeds 15% of the exact bytes."""
    with pytest.raises(ValueError, match=r"budget [\d,]+ bytes is below .* the smallest feasible budget is "
                                         r"[\d,]+ bytes \(0\.\d+ of the exact [\d,]+\)"):
        _tune(*gpt2, 0.15)


class _Labelled(radvar.Plan):
    """A Plan subclass, as benchmarks/bench_models.py's TunedPlan re-wraps the tuned plan."""


def test_tuned_plan_ledger_bytes_are_within_budget_after_a_copy(gpt2):
    model, x, y = gpt2
    plan = _tune(model, x, y, 0.3)
    p = plan.provenance
    assert any(k.endswith(":*") for k in plan.sites)  # the attention's functional sites are part of the plan
    measured = saved_bytes(convert(model, plan), (x,), _loss, y).total
    assert measured == p["measured_bytes"] <= p["budget"]["bytes"]
    copy = _Labelled(plan, p)
    assert copy == plan and copy.sites == plan.sites
    assert saved_bytes(convert(model, copy), (x,), _loss, y).total == measured
