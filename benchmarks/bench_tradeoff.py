"""Solver speed: 1,000 layers x 20 keep values, Lagrangian water-filling on convex hulls.

Each layer l gets m_l(p) = A_l p + c_l bytes and v_l(p) = a_l (1/p - 1) on 20 keeps
(the model of docs/design.md §5), plus exact (p = 1, v = 0), with A_l, a_l, c_l drawn from a fixed
seed. Prints the median wall time of :func:`radvar.tradeoff.solve.lagrangian` over
repetitions, its duality gap, and the exact solver on a 12-layer slice for scale.

    python benchmarks/bench_tradeoff.py [--layers 1000] [--keeps 20] [--reps 5]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from radvar.tradeoff import solve


def instance(layers: int, keeps: int, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(seed)
    p = np.append(np.geomspace(0.01, 0.95, keeps - 1), 1.0)
    out = []
    for _ in range(layers):
        big, a, c = rng.uniform(1e3, 1e7), rng.lognormal(0.0, 2.0), rng.uniform(0, 1e3)
        out.append((np.round(big * p + c).astype(np.int64), a * (1 / p - 1)))
    return out


def timed(fn, reps: int) -> tuple[float, solve.Solution]:
    times, sol = [], None
    for _ in range(reps):
        start = time.perf_counter()
        sol = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), sol


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=1000)
    parser.add_argument("--keeps", type=int, default=20)
    parser.add_argument("--reps", type=int, default=5)
    args = parser.parse_args()
    opts = instance(args.layers, args.keeps)
    full = sum(int(m[-1]) for m, _ in opts)
    for frac in (0.1, 0.3):
        budget = int(frac * full)
        sec, sol = timed(lambda: solve.lagrangian(opts, budget=budget), args.reps)
        print(f"lagrangian  {args.layers} layers x {args.keeps} keeps, budget {frac:.0%} of exact: "
              f"{sec * 1e3:8.1f} ms (median of {args.reps}); variance {sol.variance:.6g}, "
              f"LP bound {sol.bound:.6g}, relative gap {sol.gap / sol.variance:.2e}")
    vb = 0.05 * sum(float(v[0]) for _, v in opts)
    sec, sol = timed(lambda: solve.lagrangian(opts, variance_budget=vb), args.reps)
    print(f"lagrangian  variance budget 5% of the all-min-keep variance: {sec * 1e3:8.1f} ms; "
          f"bytes {sol.bytes:,}, relative gap {sol.gap / sol.bytes:.2e}")
    small = opts[:12]
    budget = int(0.3 * sum(int(m[-1]) for m, _ in small))
    sec_e, ex = timed(lambda: solve.exact(small, budget=budget), args.reps)
    sec_l, lg = timed(lambda: solve.lagrangian(small, budget=budget), args.reps)
    print(f"12-layer slice, budget 30%: exact {sec_e * 1e3:.1f} ms (variance {ex.variance:.6g}), "
          f"lagrangian {sec_l * 1e3:.1f} ms (variance {lg.variance:.6g}, {lg.variance / ex.variance - 1:.2e} above)")


if __name__ == "__main__":
    main()
