"""The plan ``radvar analyze`` shows, and where it came from.

* ``--sketch`` without ``--budget``: that sketch on every randomizable layer;
* otherwise :func:`radvar.tradeoff.tune` under ``--budget`` (families from
  ``--sketch``, keeps ignored); without ``--budget`` the budget is the ledger
  bytes of the paper's uniform Subsample(0.1) plan: the recommendation answers
  "what is the least-variance plan in the memory of the paper's setting?".
"""

from __future__ import annotations

from radvar import Plan, memory
from radvar.convert import _convert as convert  # no CoverageWarning: the CLI reports coverage itself
from radvar.sketch import Sketch, Subsample
from radvar.tradeoff import DEFAULT_FAMILIES, tune
from radvar.tradeoff.candidates import SITE_PROBES
from radvar._data import take_batch
from radvar.variance import Capture, Probes

from .options import Problem
from .specs import Budget

PAPER = Subsample(0.1)  # the paper's "same sample" estimator at its keep fraction


def choose(problem: Problem, batch_size: int, budget: Budget | None, families: list[Sketch],
           stats: Capture | None = None, max_slowdown: float | None = None,
           probes: int | Probes = SITE_PROBES) -> tuple[Plan, str]:
    """The plan to analyse and one line saying where it came from (``stats``: the capture of the
    first ``batch_size`` examples to tune on, when the caller has one; ``max_slowdown``: the tuner's
    step-time budget, which also makes a plain ``--sketch`` a family to tune from; ``probes``: the
    tuner's probe passes per propagating site and sketch)."""
    if budget is None and families and max_slowdown is None:
        return Plan.uniform(problem.model, families[0]), f"uniform {families[0].label()} (--sketch)"
    if budget is None:
        (x,), y = take_batch((problem.x, problem.y), batch_size, "analyze")
        paper = memory.saved_bytes(convert(problem.model, PAPER), x, problem.loss_fn, y).total
        value, source = paper, f"the memory of uniform {PAPER.label()}: {paper:,} bytes"
    else:
        value, source = budget.value, f"--budget {budget}"
    plan = tune(problem.model, (problem.x, problem.y), problem.loss_fn, budget=value, batch_size=batch_size,
                families=families or DEFAULT_FAMILIES, stats=stats, max_slowdown=max_slowdown, probes=probes)
    limit = "" if max_slowdown is None else f" within {max_slowdown:g}x the plain step time"
    return plan, f"recommended by radvar.tune for {source}{limit}"
