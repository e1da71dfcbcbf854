"""GPU check of radvar.train: CUDA peak memory, largest batch, step time, AMP and compile, on the paper CNN.

Run: ``python benchmarks/gpu_check.py [--limit-gib 2] [--reps 20]``. Without a
CUDA device it says so and exits 0. On one H100 it takes about a minute or two.

Measured side by side in one process (paper CNN, 3x32x32 synthetic inputs):

1. peak allocated memory of one forward+backward step at batch 150
   (``radvar.memory.cuda_peak_bytes``): plain PyTorch, radvar exact (compact
   activations), RAD same-sample keep 0.1; ratios to plain;
2. the largest batch whose step peaks under ``--limit-gib`` GiB
   (``radvar.train.max_batch_size``), exact vs RAD keep 0.1, and their ratio
   (the issue's goal: at least 6x);
3. median step time at batch 150, plain vs every sketch family at keep 0.1
   (Quantize: 2 bits) (``radvar.bench.compare``);
4. ``radvar.train.fit`` for a few steps with bf16, fp16 (GradScaler) and
   ``compile=True``: final loss, CUDA peak per step, mean step time.
"""

from __future__ import annotations

import argparse
import sys
import time

import torch
import torch.nn.functional as F

import radvar
from radvar import bench, sketch, zoo
from radvar.memory import cuda_peak_bytes
from radvar.train import fit, max_batch_size

GiB = 1 << 30


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit-gib", type=float, default=2.0, help="peak-memory limit for the batch search")
    parser.add_argument("--reps", type=int, default=20, help="timed steps per configuration")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("gpu_check: no CUDA device (torch.cuda.is_available() is False); nothing measured")
        return 0
    started = time.perf_counter()
    dev = torch.device("cuda")
    print(f"device: {torch.cuda.get_device_name(dev)}, torch {torch.__version__}")
    radvar.seed(0)
    torch.manual_seed(0)
    model = zoo.cnn().to(dev)
    x, y = (t.to(dev) for t in zoo.synthetic(150, (3, 32, 32), 10, seed=0))
    rad = sketch.Subsample(0.1)

    # 1. peak memory of one step at batch 150
    configs = {"plain PyTorch": model, "radvar exact": radvar.convert(model, None),
               "RAD same sample 0.1": radvar.convert(model, rad)}
    peaks = {}
    for name, net in configs.items():
        def step(net=net):
            F.cross_entropy(net(x), y).backward()
        step()  # warm-up: cuDNN workspaces, allocator
        net.zero_grad(set_to_none=True)
        peaks[name] = cuda_peak_bytes(step, dev)
        net.zero_grad(set_to_none=True)
    print("\n1. CUDA peak memory rise of one step, batch 150")
    for name, b in peaks.items():
        print(f"   {name:22s} {b / 2**20:9.2f} MiB   plain/config = {peaks['plain PyTorch'] / b:5.2f}x")

    # 2. largest batch under the limit
    limit = int(args.limit_gib * GiB)
    sample = (x[:32], y[:32])
    caps = {name: max_batch_size(model, plan, sample, F.cross_entropy, memory_limit=limit, device=dev)
            for name, plan in (("radvar exact", None), ("RAD same sample 0.1", rad))}
    print(f"\n2. largest batch whose step peaks under {args.limit_gib:g} GiB")
    for name, cap in caps.items():
        print(f"   {name:22s} batch {cap.batch_size:7d}  (peak {cap.measured_bytes / GiB:.3f} GiB)")
    ratio = caps["RAD same sample 0.1"].batch_size / max(1, caps["radvar exact"].batch_size)
    print(f"   RAD / exact batch ratio: {ratio:.2f}x (goal >= 6x: {'met' if ratio >= 6 else 'NOT met'})")

    # 3. step time, interleaved: every sketch family at keep 0.1 (Quantize: 2 bits)
    families = [rad, sketch.Subsample(0.1, per_example=True), sketch.Bernoulli(0.1), sketch.Projection(0.1),
                sketch.Importance(0.1), sketch.Quantize(2)]
    frame = bench.compare(model, x, y, F.cross_entropy, families, reps=args.reps)
    print("\n3. step time at batch 150 (median, interleaved; pair_ratio: median per-round ratio), every family")
    print(frame.to_string(index=False))

    # 4. fit with AMP and compile
    print("\n4. radvar.train.fit, 30 steps of 150, RAD same sample 0.1")
    data = tuple(t.to(dev) for t in zoo.synthetic(1500, (3, 32, 32), 10, seed=1))
    settings = [{"amp": None}, {"amp": "bf16"}, {"amp": "fp16"}, {"compile": True}]
    for kw in settings:
        torch.manual_seed(0)
        t0 = time.perf_counter()
        hist = fit(zoo.cnn(), data, loss_fn=F.cross_entropy, optimizer=lambda p: torch.optim.SGD(p, lr=0.01),
                   plan=rad, steps=30, batch_size=150, device=dev, seed=0, log_every=10, progress=False, **kw)
        last = hist.iloc[-1]
        print(f"   {str(kw):20s} loss {last['loss']:.4f}  peak/step {hist['cuda_peak_bytes'].max() / 2**20:8.2f} MiB  "
              f"saved (ledger) {last['saved_bytes'] / 2**20:7.2f} MiB  step {hist['step_time_s'].iloc[1:].mean() * 1e3:7.2f} ms"
              f"  (wall {time.perf_counter() - t0:.1f} s)")
    print(f"\ntotal {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
