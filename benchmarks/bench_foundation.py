"""Foundation benchmark: plain PyTorch vs radvar at keep 0.1, side by side in one process.

Models (batch): the paper MLP 784-300-300-300-10 (150), the paper CNN on
3x32x32 inputs (150), a wide MLP 2048-2048-2048-2048-10 (512). For every
sketch: bytes kept for backward (saved-tensor ledger) and the median
forward+backward step time, each as a ratio to plain PyTorch; ``pair_ratio`` is
the median over rounds of the sketch's step over the plain step of the same
round (what the README table prints, with the machine noted at the top).

    python benchmarks/bench_foundation.py            # table
    python benchmarks/bench_foundation.py --json     # one JSON object
    python benchmarks/bench_foundation.py --quick    # fewer repetitions
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys

import torch
import torch.nn.functional as F

import radvar
from radvar import bench, zoo
from radvar.bench import cost
from radvar.sketch import Bernoulli, Importance, Projection, Quantize, Subsample

KEEP = 0.1
SKETCHES = [
    Subsample(KEEP),                      # the paper's "same sample"
    Subsample(KEEP, per_example=True),    # "different sample"
    Bernoulli(KEEP),
    Projection(KEEP),
    Importance(KEEP),
    Quantize(2),                          # uniform 2-bit stochastic rounding
]
MODELS = {
    "paper_mlp": (zoo.mlp, (784,), 150, 40),
    "paper_cnn": (zoo.cnn, (3, 32, 32), 150, 10),
    "wide_mlp": (zoo.wide_mlp, (2048,), 512, 8),
}


def run(models: list[str], quick: bool) -> dict:
    torch.manual_seed(0)
    radvar.seed(0)
    out = {"torch": torch.__version__, "threads": torch.get_num_threads(), "keep": KEEP,
           "machine": f"{platform.machine()} {cost.cpu_name()}, {os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}",
           "models": {}}
    print(f"machine: {out['machine']}; torch {torch.__version__}, {out['threads']} threads", file=sys.stderr)
    for name in models:
        factory, shape, batch, reps = MODELS[name]
        x, y = zoo.synthetic(batch, shape, 10)
        frame = bench.compare(factory(), x, y, F.cross_entropy, SKETCHES, reps=max(3, reps // 4) if quick else reps)
        out["models"][name] = frame.to_dict(orient="records")
        print(f"\n{name} (batch {batch})", file=sys.stderr)
        print(frame.to_string(index=False, float_format=lambda v: f"{v:.2f}"), file=sys.stderr)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    ap.add_argument("--quick", action="store_true", help="fewer repetitions")
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    args = ap.parse_args()
    result = run(args.models, args.quick)
    if args.json:
        print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
