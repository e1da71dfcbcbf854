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
import sys
import statistics
import time
from pathlib import Path

import pandas as pd
import torch
from torch import nn

import radvar
from radvar import variance, zoo
from radvar.sketch import Subsample
from radvar.variance.statistics import agreement, holm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo root: the tests' matrix cases
from tests.variance_cases import SKETCHES, four_kinds, linear_loss, plan_for  # noqa: E402

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
          f"(one capture, the ledger measured once for the plan, bytes at other keeps predicted by Sketch.saved_bytes); empirical() 200 draws {e * 1e3:.1f} ms; "
          f"ratio {e / a:.1f}x (medians of 5, interleaved)")
    print(f"capture + layer_variance over the same grid (no ledger): {c * 1e3:.1f} ms; ratio {e / c:.1f}x")


def matrix() -> None:
    model, inputs, targets = four_kinds()
    tables = []
    for other in (False, True):
        for sk in SKETCHES:
            plan = plan_for(sk, other)
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
