"""Elementwise activations: bytes kept for backward and step time, plain PyTorch vs a sketch of f'(x).

Each activation twin of :mod:`radvar.layers.activations` on a GPT-2-like MLP activation, a float32
tensor of shape (batch 8, 128 tokens, ``--features`` 1024), CPU. The model is a learned bias (which
keeps nothing) followed by the activation, and the loss the sum of the output, so the ledger's bytes
are the activation's own. Per configuration: saved bytes (:mod:`radvar.memory`), the ratio plain /
sketched, bits kept per entry, and the median forward+backward time as a ratio to plain, steps
interleaved in one process (:func:`radvar.bench.compare`).

    python benchmarks/bench_activations.py [--features 1024] [--reps 10] [--only GELU NewGELUActivation]
"""

from __future__ import annotations

import argparse
import platform
import sys

import pandas as pd
import torch
from torch import nn

import radvar
from radvar.bench import PLAIN, compare
from radvar.layers.activations import HF_DERIVATIVES
from radvar.sketch import Bernoulli, Quantize

SKETCHES = [Quantize(1), Quantize(2), Quantize(4), Quantize(8), Bernoulli(0.125)]


class Bias(nn.Module):
    """x + b: a parameter upstream of the activation (so that it has a gradient) that keeps nothing."""

    def __init__(self, n: int):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(n))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.bias


def activations() -> dict[str, nn.Module]:
    """torch's classes with a twin, then transformers' where it imports."""
    found = {"GELU": nn.GELU(), "GELU(tanh)": nn.GELU("tanh"), "SiLU": nn.SiLU(), "Tanh": nn.Tanh(),
             "Sigmoid": nn.Sigmoid(), "Softplus": nn.Softplus(), "Mish": nn.Mish(), "Hardswish": nn.Hardswish(),
             "ReLU6": nn.ReLU6()}
    try:
        from transformers import activations as hf
    except ImportError:
        return found
    options = {"ClippedGELUActivation": {"min": -10, "max": 10}}
    found.update({name: getattr(hf, name)(**options.get(name, {})) for name in HF_DERIVATIVES if hasattr(hf, name)})
    return found


def loss(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The sum of the output (keeps nothing; ``target`` is unused)."""
    return out.sum()


def run(features: int, reps: int, only: list[str] | None) -> pd.DataFrame:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(8, 128, features, generator=gen)
    target = torch.zeros(8)
    rows = []
    for name, act in activations().items():
        if only and name not in only:
            continue
        frame = compare(nn.Sequential(Bias(features), act), x, target, loss, SKETCHES, reps=reps)
        frame.insert(0, "activation", name)
        rows.append(frame)
    table = pd.concat(rows, ignore_index=True)
    table["bits_per_entry"] = table["saved_bytes"] * 8 / x.numel()
    return table[["activation", "config", "saved_bytes", "bits_per_entry", "memory_ratio", "time_ratio"]]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--features", type=int, default=1024)
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--only", nargs="*", help="activation names (as in the table) to run")
    args = ap.parse_args()
    torch.set_num_threads(1)
    radvar.seed(0)
    print(f"torch {torch.__version__}, {platform.processor() or platform.machine()}, "
          f"{torch.get_num_threads()} thread(s); x: 8 x 128 x {args.features} float32 "
          f"({8 * 128 * args.features * 4:,} bytes)")
    table = run(args.features, args.reps, args.only)
    table["config"] = table["config"].replace(PLAIN, "plain")
    print(table.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
