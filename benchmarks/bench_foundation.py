"""Foundation benchmark: plain PyTorch vs radvar at keep 0.1, side by side in one process.

Models (batch): the paper MLP 784-300-300-300-10 (150), the paper CNN on
3x32x32 inputs (150), a wide MLP 2048-2048-2048-2048-10 (512). For every
sketch: bytes kept for backward (saved-tensor ledger) and the median
forward+backward step time, each as a ratio to plain PyTorch; ``pair_ratio`` is
the median over rounds of the sketch's step over the plain step of the same
round (what the README table prints, with the machine noted at the top).
``--threads 2 1`` measures every model at each torch thread count in turn
(``torch.set_num_threads``), one step-time column per count; the goals
(:data:`GOALS`) are judged at the first.

    python benchmarks/bench_foundation.py                        # table
    python benchmarks/bench_foundation.py --json                 # one JSON object
    python benchmarks/bench_foundation.py --quick                # fewer repetitions
    python benchmarks/bench_foundation.py --markdown --threads 2 1  # the README table, with the goals
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
GOALS = {  # (model, config label): step-time goal as a pair ratio to plain PyTorch (2 CPU threads)
    ("paper_mlp", "Subsample(0.1, shared)"): 1.2,
    ("paper_mlp", "Subsample(0.1, per-example)"): 1.8,
    ("paper_mlp", "Importance(0.1, per-example)"): 1.8,
    ("paper_cnn", "Subsample(0.1, shared)"): 1.1,
    ("paper_cnn", "Importance(0.1, per-example)"): 1.4,
    ("wide_mlp", "Subsample(0.1, shared)"): 0.8,
    ("wide_mlp", "Importance(0.1, per-example)"): 1.0,
    ("wide_mlp", "Quantize(2 bits, per-row)"): 1.0,
}
NAMES = {"paper_mlp": "paper MLP 784-300-300-300-10", "paper_cnn": "paper CNN, 3x32x32",
         "wide_mlp": "wide MLP 2048-2048-2048-2048-10"}
MODELS = {
    "paper_mlp": (zoo.mlp, (784,), 150, 40),
    "paper_cnn": (zoo.cnn, (3, 32, 32), 150, 10),
    "wide_mlp": (zoo.wide_mlp, (2048,), 512, 8),
}


def run(models: list[str], quick: bool, threads: list[int]) -> dict:
    """Per thread count (in turn), per model: :func:`radvar.bench.compare`'s rows as records."""
    out = {"torch": torch.__version__, "threads": threads, "keep": KEEP,
           "machine": f"{platform.machine()} {cost.cpu_name()}, {os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}",
           "runs": []}
    print(f"machine: {out['machine']}; torch {torch.__version__}", file=sys.stderr)
    before = torch.get_num_threads()
    try:
        for count in threads:
            torch.set_num_threads(count)
            torch.manual_seed(0)
            radvar.seed(0)
            run_models = {}
            for name in models:
                factory, shape, batch, reps = MODELS[name]
                x, y = zoo.synthetic(batch, shape, 10)
                frame = bench.compare(factory(), x, y, F.cross_entropy, SKETCHES,
                                      reps=max(3, reps // 4) if quick else reps)
                run_models[name] = frame.to_dict(orient="records")
                print(f"\n{name} (batch {batch}), {threads_label(count)}", file=sys.stderr)
                print(frame.to_string(index=False, float_format=lambda v: f"{v:.2f}"), file=sys.stderr)
            out["runs"].append({"threads": count, "models": run_models})
    finally:
        torch.set_num_threads(before)
    return out


def threads_label(count: int) -> str:
    """``1 thread``, ``2 threads``."""
    return f"{count} thread{'s' if count > 1 else ''}"


def verdict(goal: float, ratio: float) -> str:
    """``met`` or ``not met``: a pair ratio against its goal."""
    return "met" if ratio <= goal else "not met"


def markdown(result: dict) -> str:
    """The README table: bytes, fewer bytes, the pair ratio at each thread count and the goal (judged at the
    first thread count) for every model and sketch."""
    runs = result["runs"]
    counts = [threads_label(r["threads"]) for r in runs]
    lines = ["| model (batch) | sketch | saved bytes | fewer bytes | step time vs plain, "
             + " | ".join(counts) + " | goal |", "|---|---|---|---|" + "---|" * len(runs) + "---|"]
    for name, rows in runs[0]["models"].items():
        batch = MODELS[name][2]
        for i, row in enumerate(rows):
            goal = GOALS.get((name, row["config"]))
            ratios = [f"1x ({r['models'][name][i]['step_ms']:.2f} ms)" if i == 0
                      else f"{r['models'][name][i]['pair_ratio']:.2f}x" for r in runs]
            judged = "" if goal is None else f"≤ {goal:g}x: {verdict(goal, row['pair_ratio'])}"
            lines.append(f"| {f'{NAMES[name]} ({batch})' if i == 0 else ''} | {row['config']} | "
                         f"{row['saved_bytes']:,} | {row['memory_ratio']:.1f}x | {' | '.join(ratios)} | {judged} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    ap.add_argument("--quick", action="store_true", help="fewer repetitions")
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    ap.add_argument("--threads", nargs="+", type=int, default=[torch.get_num_threads()], metavar="N",
                    help="torch thread counts to measure at, in turn (default: torch's current); goals are "
                         "judged at the first")
    ap.add_argument("--markdown", action="store_true", help="print the README table (with the goals) on stdout")
    args = ap.parse_args()
    if any(t < 1 for t in args.threads):
        ap.error(f"--threads: thread counts must be >= 1, got {args.threads}")
    result = run(args.models, args.quick, args.threads)
    if args.json:
        print(json.dumps(result, indent=2))
    if args.markdown:
        print(markdown(result))
    first = result["runs"][0]
    print(f"\ngoals (pair ratio to plain PyTorch, {first['threads']} threads):", file=sys.stderr)
    for (name, config), goal in GOALS.items():
        rows = {r["config"]: r for r in first["models"].get(name, [])}
        if config in rows:
            got = rows[config]["pair_ratio"]
            print(f"  {name:10s} {config:30s} {got:.2f}x  goal <= {goal:g}x  {verdict(goal, got)}", file=sys.stderr)


if __name__ == "__main__":
    main()
