"""What functional routing costs: the TorchFunctionMode and module hooks of a routed model, per call.

A model converted with functional sites in its plan runs every forward under a
``TorchFunctionMode`` that sees every torch call, plus a pre- and a post-hook on
every module (:mod:`radvar.layers.functional`). This script times, steps
interleaved in one process (CPU, float32, one thread; the process's CPU time, which a
shared machine's load does not inflate as it does wall time; median of ``--reps``):

* ``exact twins`` — ``convert(model, None)``: the model's twins, no routing;
* ``routed, sites exact`` — the same twins with routing installed and every site left
  exact (``Plan({"*:*": None})``): the difference to the line above is the routing alone;
* ``uniform Quantize(2)`` — ``convert(model, Quantize(2))`` (sites routed to RAD ops), for scale.

End to end, the difference is within the noise of a shared CPU, so the script
also times the two costs directly: a tiny torch call (``t + 1`` on 4 floats) with
and without a routed model's mode active, and a call of 20 ``nn.Identity`` in an ``nn.Sequential`` with and
without the routing hooks (per module call; median of 15 batches). It counts the
torch calls the mode sees and the module calls in one forward of each model, and
gives the routing cost per forward they imply. Models: ``bench_models.py``'s GPT-2 (4 layers, hidden 256, 4 heads, batch 8
of 128 tokens) and Llama.

    python benchmarks/bench_routing.py [--models gpt2 llama] [--reps 15]
                                       [--out benchmarks/results/bench_routing.txt]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

import radvar
from bench_models import MODELS, token_loss
from radvar.convert import _convert
from radvar.layers.functional import route
from radvar.sketch import Quantize


class _Count(TorchFunctionMode):
    """Counts every torch call made under it."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        self.calls += 1
        return func(*args, **(kwargs or {}))


def counts(model: nn.Module, x: torch.Tensor) -> tuple[int, int]:
    """(torch calls, module calls) of one forward."""
    modules = 0

    def hook(*_: object) -> None:
        nonlocal modules
        modules += 1

    handles = [m.register_forward_pre_hook(hook) for m in model.modules()]
    with torch.no_grad(), _Count() as mode:
        model(x)
    for h in handles:
        h.remove()
    return mode.calls, modules


def per_call(fn, n: int = 20_000, batches: int = 15) -> float:
    """Median seconds per call of ``fn`` over ``batches`` batches of ``n`` calls."""
    times = []
    for _ in range(batches):
        start = time.process_time()
        for _ in range(n):
            fn()
        times.append((time.process_time() - start) / n)
    return statistics.median(times)


def unit_costs() -> tuple[float, float]:
    """(seconds added per torch call under the mode, seconds added per module call by the hooks)."""
    t = torch.ones(4)
    plain_call = per_call(lambda: t + 1)
    identity = nn.Sequential(*(nn.Identity() for _ in range(20)))  # the root's cost shared by 21 module calls
    plain_module = per_call(lambda: identity(t), n=2_000) / 21
    route(identity, {"*:*": None})
    router = next(h.router for h in identity._forward_pre_hooks.values())
    router.enter("", True)  # as the root's pre-hook does: the mode is on
    try:
        routed_call = per_call(lambda: t + 1)
    finally:
        router.leave(True)
    routed_module = per_call(lambda: identity(t), n=2_000) / 21
    return routed_call - plain_call, routed_module - plain_module


def timed(fn) -> float:
    start = time.process_time()
    fn()
    return time.process_time() - start


def measure(name: str, reps: int, costs: tuple[float, float]) -> list[str]:
    torch.manual_seed(0)
    radvar.seed(0)
    model, x, y = MODELS[name](1024)
    model.train()
    exact = _convert(model, None)
    routed = _convert(model, None)
    route(routed, {"*:*": None})
    configs = {"exact twins": exact, "routed, sites exact": routed, "uniform Quantize(2)": _convert(model, Quantize(2))}
    fwd: dict[str, list[float]] = {k: [] for k in configs}
    step: dict[str, list[float]] = {k: [] for k in configs}
    for rep in range(reps + 2):
        for label, m in configs.items():
            def one_step(m=m) -> None:
                m.zero_grad(set_to_none=True)
                token_loss(m(x), y).backward()

            f, s = timed(lambda m=m: m(x)), timed(one_step)
            if rep >= 2:
                fwd[label].append(f)
                step[label].append(s)
    calls, module_calls = counts(exact, x)
    med_f = {k: statistics.median(v) for k, v in fwd.items()}
    min_f = {k: min(v) for k, v in fwd.items()}
    med_s = {k: statistics.median(v) for k, v in step.items()}
    added = min_f["routed, sites exact"] - min_f["exact twins"]
    lines = [f"### {name}: {calls} torch calls and {module_calls} module calls per forward", "",
             "| config | forward ms (median) | forward ms (fastest) | step ms (median) | step / exact twins |",
             "|---|---|---|---|---|"]
    for label in configs:
        lines.append(f"| {label} | {med_f[label] * 1e3:.1f} | {min_f[label] * 1e3:.1f} | {med_s[label] * 1e3:.1f} | "
                     f"{med_s[label] / med_s['exact twins']:.3f}x |")
    implied = calls * costs[0] + module_calls * costs[1]
    lines += ["", f"measured difference of the fastest forwards: {added * 1e3:+.2f} ms "
                  f"({added / min_f['exact twins']:+.1%} of the forward); implied by the unit costs: "
                  f"{implied * 1e3:.2f} ms per forward ({implied / min_f['exact twins']:.2%} of the forward, "
                  f"{implied / med_s['exact twins']:.2%} of a step)", ""]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["gpt2", "llama"], choices=sorted(MODELS))
    parser.add_argument("--reps", type=int, default=15)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    header = (f"bench_routing: torch {torch.__version__}, {platform.processor() or platform.machine()}, "
              f"{torch.get_num_threads()} thread, process CPU time, median of {args.reps} interleaved reps\n")
    costs = unit_costs()
    units = (f"unit costs: {costs[0] * 1e6:.2f} us per torch call under the mode, "
             f"{costs[1] * 1e6:.2f} us per module call for the two hooks\n")
    text = header + units + "\n" + "\n".join(line for name in args.models for line in measure(name, args.reps, costs))
    print(text)
    if args.out:
        radvar.report.write_text(args.out, text)


if __name__ == "__main__":
    main()
