"""Quantize benchmark: speed and bytes of b-bit stochastic rounding, and its variance at equal memory.

1. Speed, side by side in one process (``radvar.bench.compare``, steps interleaved):
   forward+backward of a RAD Linear with ``Quantize(b)`` against plain ``nn.Linear``,
   as ratios, plus the time of one ``compress`` and one ``restore`` of its input
   as a fraction of the plain step; the bytes the Linear keeps, measured by the
   ledger, against its float32 input.
2. Variance on the digits MLP 64-300-300-300-10 (scikit-learn's 8x8 digits,
   batch 150, after 40 SGD steps): the total weight-gradient RAD variance
   (``radvar.variance.analytic``, closed forms) of ``Quantize(b)`` against
   ``Importance`` and per-example ``Subsample`` at the same fraction of a float32
   input (b/32), each with its ledger bytes; the data noise of an exact batch of 150
   (``radvar.variance.minibatch``) for scale, and a Monte Carlo check of the
   2-bit figure (``radvar.variance.empirical``, 99% interval).

    python benchmarks/bench_quantize.py            # tables
    python benchmarks/bench_quantize.py --quick    # fewer repetitions and draws
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

import radvar
from radvar import bench, rng, variance, zoo
from radvar.memory import saved_bytes
from radvar.sketch import Importance, Quantize, Subsample

BITS = (1, 2, 4, 8)
LINEARS = {"linear 300->300, batch 150": (300, 300, 150), "linear 2048->2048, batch 512": (2048, 2048, 512)}
SEED, BATCH, TRAIN_STEPS = 0, 150, 40


def _median_seconds(fn, reps: int) -> float:
    times = []
    for _ in range(reps + 2):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times[2:])


def speed(reps: int) -> pd.DataFrame:
    """Per Linear shape and sketch: the Linear's ledger bytes and the model's step time vs plain (MSE loss),
    compress/restore time vs the plain step. Subsample(1/16, per-example) is a reference RAD sketch."""
    rows = []
    for name, (n_in, n_out, batch) in LINEARS.items():
        torch.manual_seed(SEED)
        model = nn.Sequential(nn.Linear(n_in, n_out))
        x, y = torch.randn(batch, n_in), torch.randn(batch, n_out)
        sketches = {s.label(): s for s in [*(Quantize(b) for b in BITS), Subsample(1 / 16, per_example=True)]}
        frame = bench.compare(model, x, y, F.mse_loss, list(sketches.values()), reps=reps)
        plain_ms = float(frame.loc[0, "step_ms"])
        for _, r in frame.iterrows():
            sketch = sketches.get(r["config"])
            ledger = saved_bytes(radvar.convert(model, sketch), x, F.mse_loss, y).per_module
            layer = int(ledger.loc[ledger["module"] == "0", "bytes"].sum())
            row = {"layer": name, "config": r["config"], "linear_bytes": layer,
                   "linear_bytes_vs_plain": layer / (x.numel() * x.element_size()), "step_vs_plain": r["time_ratio"],
                   "compress_vs_step": float("nan"), "restore_vs_step": float("nan")}
            if sketch is not None:
                gen = rng.generator(1, "cpu")
                saved, meta = sketch.compress(x, gen)
                row["compress_vs_step"] = _median_seconds(lambda: sketch.compress(x, gen), reps) * 1e3 / plain_ms
                restore_s = _median_seconds(lambda: sketch.restore(saved, meta, gen), reps)
                row["restore_vs_step"] = restore_s * 1e3 / plain_ms
            rows.append(row)
    return pd.DataFrame(rows)


def digits_mlp() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """The MLP after TRAIN_STEPS SGD steps (lr 0.1, momentum 0.9, batch 150) on all 1,797 digits."""
    torch.manual_seed(SEED)
    x, y = zoo.digits()
    model = zoo.mlp(in_features=64)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    gen = torch.Generator().manual_seed(SEED)
    for _ in range(TRAIN_STEPS):
        idx = torch.randint(0, len(x), (BATCH,), generator=gen)
        opt.zero_grad()
        F.cross_entropy(model(x[idx]), y[idx]).backward()
        opt.step()
    return model, x, y


def variances(draws: int) -> tuple[pd.DataFrame, dict]:
    """Total weight-gradient RAD variance per sketch at equal fractions of float32, ledger bytes, data noise."""
    model, x, y = digits_mlp()
    batch = (x[:BATCH].clone(), y[:BATCH].clone())
    exact_bytes = saved_bytes(radvar.convert(model, None), batch[0], F.cross_entropy, batch[1]).total
    rows = []
    for bits in BITS:
        keep = bits / 32
        for sketch in (Quantize(bits), Importance(keep), Subsample(keep, per_example=True)):
            report = variance.analytic(model, batch, F.cross_entropy, sketch)
            ledger = saved_bytes(radvar.convert(model, sketch), batch[0], F.cross_entropy, batch[1]).total
            rows.append({"fraction of fp32": f"1/{32 // bits}", "sketch": sketch.label(),
                         "rad_variance": float(report.total["rad_variance"].iloc[0]),
                         "ledger_bytes": ledger, "bytes_vs_exact": ledger / exact_bytes})
    frame = pd.DataFrame(rows)
    frame["vs_quantize"] = frame["rad_variance"] / frame.groupby("fraction of fp32")["rad_variance"].transform("first")
    noise = variance.minibatch(model, (x, y), F.cross_entropy, BATCH)
    weights = noise.per_layer[noise.per_layer["layer"].isin(report.per_layer["layer"])]
    radvar.seed(SEED)
    mc = variance.empirical(model, batch, F.cross_entropy, Quantize(2), draws=draws)
    extra = {"exact_bytes": exact_bytes,
             "data_noise_total": float(noise.total["data_variance"].iloc[0]),
             "data_noise_weights": float(weights["data_variance"].sum()),
             "quantize2_analytic": float(frame.loc[frame["sketch"] == Quantize(2).label(), "rad_variance"].iloc[0]),
             "quantize2_empirical": float(mc.total["rad_variance"].iloc[0]),
             "quantize2_ci": (float(mc.total["ci_low"].iloc[0]), float(mc.total["ci_high"].iloc[0])),
             "draws": draws}
    return frame, extra


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer repetitions and Monte Carlo draws")
    args = ap.parse_args()
    torch.set_num_threads(1)
    radvar.seed(SEED)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s)")
    table = speed(reps=10 if args.quick else 40)
    print("\n## Speed and bytes: RAD Linear with Quantize(b) vs plain nn.Linear (same process)\n")
    print(table.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    frame, extra = variances(draws=100 if args.quick else 500)
    print(f"\n## Digits MLP 64-300-300-300-10, batch {BATCH}, after {TRAIN_STEPS} SGD steps: "
          f"weight-gradient RAD variance at equal memory (analytic)\n")
    print(frame.to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    q2 = extra["quantize2_analytic"]
    print(f"\nexact ledger bytes: {extra['exact_bytes']:,}")
    print(f"data noise at batch {BATCH} (exact minibatch variance): weights {extra['data_noise_weights']:.4g}, "
          f"all parameters {extra['data_noise_total']:.4g}; Quantize(2) RAD variance / weight data noise = "
          f"{q2 / extra['data_noise_weights']:.3f}")
    low, high = extra["quantize2_ci"]
    print(f"Quantize(2) analytic {q2:.4g} vs Monte Carlo ({extra['draws']} draws) "
          f"{extra['quantize2_empirical']:.4g}, 99% interval [{low:.4g}, {high:.4g}]: "
          f"{'inside' if low <= q2 <= high else 'OUTSIDE'}")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
