"""Variance analysis benchmark: analytic vs Monte Carlo speed, and the full agreement matrix.

1. Paper MLP (zoo.mlp(in_features=64)) on scikit-learn digits, batch 150:
   ``analytic`` over 10 keep values vs ``empirical`` with 200 draws, timed in
   the same process; prints the ratio.
2. Every sketch x layer kind x view (Linear 2-D/3-D features and rows; Conv1d
   reflect-padded and Conv2d strided/grouped, positions and examples): the
   analytic variance against a 500-draw Monte Carlo, whether it lies inside
   the 99% CI, and the Holm-corrected agreement test.

Run: python benchmarks/bench_variance.py [--skip-matrix]
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time

import pandas as pd
import torch
from torch import nn

import radvar
from radvar import variance, zoo
from radvar.sketch import Bernoulli, Importance, Projection, Subsample
from radvar.variance.statistics import agreement, holm

SKETCHES = [
    Bernoulli(0.3), Bernoulli(0.3, per_example=False),
    Subsample(0.3), Subsample(0.3, per_example=True), Subsample(0.3, replace=True),
    Subsample(0.3, per_example=True, replace=True),
    Projection(0.3), Projection(0.3, dist="gaussian"), Projection(0.3, per_example=True),
    Projection(0.3, dist="gaussian", per_example=True), Importance(0.3),
]


class FourKinds(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin2 = nn.Linear(10, 4)
        self.lin3 = nn.Linear(8, 3)
        self.conv1 = nn.Conv1d(3, 4, 3, padding=1, padding_mode="reflect")
        self.conv2 = nn.Conv2d(4, 6, 3, stride=2, padding=1, groups=2)

    def forward(self, a, b, c, d):
        return self.lin2(a), self.lin3(b), self.conv1(c), self.conv2(d)


def linear_loss(outs, targets) -> torch.Tensor:
    return sum((o * t).sum() for o, t in zip(outs, targets))


def speed() -> None:
    batch = zoo.synthetic(150, (784,), 10)
    model = zoo.mlp()  # the paper's 784-300-300-300-10
    loss = nn.functional.cross_entropy
    keeps = [0.02, 0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.7, 1.0]
    variance.analytic(model, batch, loss, Subsample(0.1), keeps=keeps)  # warm-up
    t_a, t_e, t_c = [], [], []
    for _ in range(5):
        start = time.perf_counter()
        variance.analytic(model, batch, loss, Subsample(0.1), keeps=keeps)
        t_a.append(time.perf_counter() - start)
        start = time.perf_counter()
        variance.empirical(model, batch, loss, Subsample(0.1), draws=200)
        t_e.append(time.perf_counter() - start)
        start = time.perf_counter()
        stats = variance.capture(model, batch, loss, importance=False)
        for keep in keeps:
            for layer in stats.layers.values():
                variance.layer_variance(layer, Subsample(keep))
        t_c.append(time.perf_counter() - start)
    a, e, c = statistics.median(t_a), statistics.median(t_e), statistics.median(t_c)
    print(f"paper MLP 784-300-300-300-10, batch 150, Subsample: analytic() over {len(keeps)} keeps {a * 1e3:.1f} ms "
          f"(one capture + one measured ledger forward per keep); empirical() 200 draws {e * 1e3:.1f} ms; "
          f"ratio {e / a:.1f}x (medians of 5, interleaved)")
    print(f"capture + layer_variance over the same grid (no ledger): {c * 1e3:.1f} ms; ratio {e / c:.1f}x")


def matrix() -> None:
    g = torch.Generator().manual_seed(3)
    model = FourKinds().double()
    shapes = [(6, 10), (2, 4, 8), (3, 3, 9), (3, 4, 6, 5)]
    inputs = tuple(torch.relu(torch.randn(s, generator=g, dtype=torch.float64)) for s in shapes)
    targets = tuple(torch.randn(o.shape, generator=g, dtype=torch.float64) for o in model(*inputs))
    tables = []
    for other in (False, True):
        for sk in SKETCHES:
            lin = dataclasses.replace(sk, axis="rows") if other else sk
            conv = dataclasses.replace(sk, axis="examples") if other else sk
            plan = radvar.Plan({"lin2": lin, "lin3": lin, "conv1": conv, "conv2": conv})
            a = variance.analytic(model, (inputs, targets), linear_loss, plan)
            e = variance.empirical(model, (inputs, targets), linear_loss, plan, draws=500, confidence=0.99)
            t = agreement(a, e)
            t["method"] = a.per_layer["method"].to_numpy()
            tables.append(t)
    table = pd.concat(tables, ignore_index=True)
    table["reject_holm"], _ = holm(table["p"].to_numpy(), 0.01)
    with pd.option_context("display.width", 220, "display.max_rows", 200, "display.float_format", "{:.4g}".format):
        print(table[["layer", "sketch", "rad_variance_analytic", "rad_variance_empirical", "ci_low", "ci_high",
                     "inside_ci", "z", "method"]].to_string(index=False))
    print(f"analytic inside the 99% CI of 500 draws: {int(table['inside_ci'].sum())} of {len(table)}; "
          f"Holm-corrected agreement rejections at 0.01: {int(table['reject_holm'].sum())}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--skip-matrix", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    radvar.seed(0)
    speed()
    if not args.skip_matrix:
        matrix()
