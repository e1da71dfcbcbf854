"""Whole models: saved bytes and step time, plain PyTorch vs radvar, and what stays exact.

Models, random weights, no downloads, CPU float32, train mode:

* ``resnet18`` — ``radvar.zoo.resnet18`` (torchvision's layout), 10 classes, batch 16 of 3x64x64;
* ``vit_tiny`` — ``radvar.zoo.vit`` at ViT-tiny size (embed 192, depth 12, heads 3) on 64x64
  images with 8x8 patches (65 tokens), 10 classes, batch 8;
* ``gpt2``, ``bert``, ``llama`` — transformers' GPT2LMHeadModel, BertForMaskedLM and
  LlamaForCausalLM from configs: 4 layers, hidden 256, 4 heads (MLP 1024; Llama's SwiGLU 688),
  a ``--vocab`` of 1024 tokens, batch 8 of 128 tokens, the library's default attention
  (scaled_dot_product_attention). The loss is a token-level cross entropy on the logits
  against random tokens (logits and the loss's saved tensors grow with the vocabulary).

For each ``--sketch`` (uniform over what radvar can randomize; default ``quantize:2``) and,
with ``--tune F``, the plan ``radvar.tune`` picks at F times the exact bytes from those families:
bytes autograd keeps for backward (saved-tensor ledger), their ratio to plain, the fraction of
the plain bytes radvar can sketch (:func:`radvar.report.coverage`), the median step time
ratio to plain, steps interleaved in one process (:func:`radvar.bench.compare`; wall clock, and the
process's CPU time, which other processes on a shared machine do not inflate), and, with
``--probes P``, the predicted RAD variance of the whole gradient, E‖Ĝ − G‖² summed over all
parameters (:func:`radvar.variance.analytic`: closed forms for linear inputs, P probe passes for
each sketch whose error propagates; about a CPU minute per model and configuration). Then, per
model, the five module types that keep the most bytes exact, and why.

    python benchmarks/bench_models.py [--models gpt2 ...] [--sketch quantize:2 ...] [--tune 0.15]
                                      [--reps 5] [--probes 2] [--out benchmarks/results/bench_models.txt]

``--analyze`` instead times ``radvar analyze`` itself (issue 12's goal: ResNet-18 <= 60 s, ViT-tiny <= 30 s)
on ``resnet18`` and ``vit_tiny`` as above, with 64 synthetic 3x64x64 examples, batch 16, 2 threads, in this
process (the command's own imports excluded), and prints the wall and CPU seconds of each.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
import warnings
from typing import Callable

import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

import radvar
from radvar_cli.specs import parse_sketch
from radvar import bench, variance, zoo
from radvar.report import coverage, format_bytes, write_text

LAYERS, HIDDEN, HEADS, SEQ, TOKEN_BATCH = 4, 256, 4, 128, 8
NOTES: list[str] = []  # configurations that could not be measured, and why


def token_loss(out, y: torch.Tensor) -> torch.Tensor:
    """Cross entropy of the logits (a ModelOutput's ``.logits``, or the tensor) against the targets."""
    logits = getattr(out, "logits", out)
    return F.cross_entropy(logits.flatten(0, -2), y.flatten())


def _tokens(vocab: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    return (torch.randint(0, vocab, (TOKEN_BATCH, SEQ), generator=gen),
            torch.randint(0, vocab, (TOKEN_BATCH, SEQ), generator=gen))


def resnet18(vocab: int) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    return (zoo.resnet18(classes=10), *zoo.synthetic(16, (3, 64, 64), 10))


def vit_tiny(vocab: int) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    return (zoo.vit(image=64, patch=8, classes=10), *zoo.synthetic(8, (3, 64, 64), 10))


def gpt2(vocab: int) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    import transformers

    cfg = transformers.GPT2Config(n_layer=LAYERS, n_embd=HIDDEN, n_head=HEADS, n_positions=SEQ, vocab_size=vocab,
                                  bos_token_id=0, eos_token_id=0)
    return (transformers.GPT2LMHeadModel(cfg), *_tokens(vocab))


def bert(vocab: int) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    import transformers

    cfg = transformers.BertConfig(hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
                                  intermediate_size=4 * HIDDEN, vocab_size=vocab, max_position_embeddings=SEQ)
    return (transformers.BertForMaskedLM(cfg), *_tokens(vocab))


def llama(vocab: int) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    import transformers

    cfg = transformers.LlamaConfig(hidden_size=HIDDEN, intermediate_size=688, num_hidden_layers=LAYERS,
                                   num_attention_heads=HEADS, num_key_value_heads=HEADS, vocab_size=vocab,
                                   max_position_embeddings=SEQ)
    return (transformers.LlamaForCausalLM(cfg), *_tokens(vocab))


class TunedPlan(radvar.Plan):
    """The plan radvar.tune chose, with the ``label`` that bench.compare names configurations by."""

    def label(self) -> str:
        return f"radvar.tune at {self.provenance['budget']['bytes'] / self.provenance['exact_bytes']:.2g} of exact"


MODELS: dict[str, Callable[[int], tuple[nn.Module, torch.Tensor, torch.Tensor]]] = {
    "resnet18": resnet18, "vit_tiny": vit_tiny, "gpt2": gpt2, "bert": bert, "llama": llama}
ANALYZE: dict[str, list[str]] = {  # `radvar analyze` arguments of the same two models
    "resnet18": ["radvar.apps.architectures:resnet18", "--model-arg", "classes=10"],
    "vit_tiny": ["radvar.apps.architectures:vit", "--model-arg", "image=64", "--model-arg", "patch=8",
                 "--model-arg", "classes=10"]}


def analyze_seconds(name: str, threads: int = 2) -> tuple[float, float]:
    """(wall, CPU) seconds of ``radvar analyze`` on ``name`` (:data:`ANALYZE`): batch 16 of 64 synthetic 3x64x64
    examples, ``threads`` torch threads, its table discarded."""
    import contextlib
    import io

    from radvar_cli.commands import cli

    torch.set_num_threads(threads)
    args = ["analyze", *ANALYZE[name], "--data", "synthetic:3x64x64:10:64", "--batch-size", "16", "--quiet"]
    wall, cpu = time.perf_counter(), time.process_time()
    with contextlib.redirect_stdout(io.StringIO()):
        code = cli.main(args, prog_name="radvar", standalone_mode=False)  # an error's exit status is returned
    if code:
        raise RuntimeError(f"radvar analyze {name} exited with status {code}")
    return time.perf_counter() - wall, time.process_time() - cpu


def measure(name: str, sketches: list, tune: float | None, vocab: int, reps: int,
            probes: int | None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(one row per configuration, the five types keeping the most exact bytes under the first sketch)."""
    torch.manual_seed(0)
    radvar.seed(0)
    model, x, y = MODELS[name](vocab)
    model.train()
    configs = list(sketches)
    if tune is not None:
        try:
            plan = radvar.tune(model, (x, y), token_loss, budget=tune, families=sketches)
            configs.append(TunedPlan(plan, plan.provenance))  # dict(plan) would drop its sites
        except ValueError as e:  # e.g. a budget below what the exact part alone keeps
            NOTES.append(f"{name}: no tuned plan at {tune:g} of the exact bytes: {e}")
    frame = bench.compare(model, x, y, token_loss, configs, reps=reps, warmup=1)
    frame["config"] = [frame["config"].iloc[0]] + [c.label() for c in configs]  # compare numbers plans
    covers = [coverage(model, x, token_loss, y, c) for c in configs]
    frame.insert(0, "model", name)
    frame["sketchable"] = [float("nan")] + [c.total["fraction_sketchable"] for c in covers]
    frame["rad_variance"] = float("nan")
    if probes is not None:
        frame["rad_variance"] = [0.0] + [float(variance.analytic(model, (x, y), token_loss, c, probes=probes)
                                               .total["rad_variance"].iloc[0]) for c in configs]
    left = covers[0].exact_left() if covers else pd.DataFrame(columns=["type", "reason", "bytes", "modules"])
    top = (left.assign(modules=left["modules"].map(len)).groupby("type", sort=False)
           .agg(bytes=("bytes", "sum"), modules=("modules", "sum"), why=("reason", lambda r: "; ".join(dict.fromkeys(r))))
           .sort_values("bytes", ascending=False).head(5).reset_index())
    top.insert(0, "model", name)
    top["share"] = top["bytes"] / frame["saved_bytes"].iloc[0]
    return frame, top


def markdown(frame: pd.DataFrame, columns: dict[str, Callable]) -> str:
    head = "| " + " | ".join(columns) + " |\n|" + "---|" * len(columns) + "\n"
    return head + "".join("| " + " | ".join(f(r) for f in columns.values()) + " |\n" for r in frame.to_dict("records"))


def report(frames: list[pd.DataFrame], tops: list[pd.DataFrame], header: str) -> str:
    frame = pd.concat(frames)
    variance_column = {} if frame["rad_variance"].isna().all() else {
        "predicted RAD variance": lambda r: "-" if pd.isna(r["rad_variance"]) else f"{r['rad_variance']:.3g}"}
    main = markdown(frame, {
        "model": lambda r: r["model"], "config": lambda r: r["config"],
        "saved bytes": lambda r: format_bytes(r["saved_bytes"]),
        "plain / config": lambda r: f"{r['memory_ratio']:.2f}x",
        "sketchable": lambda r: "-" if pd.isna(r["sketchable"]) else f"{r['sketchable']:.1%}",
        "step ms": lambda r: f"{r['step_ms']:.0f}", "time / plain": lambda r: f"{r['time_ratio']:.2f}x",
        "CPU time / plain": lambda r: f"{r['cpu_ratio']:.2f}x", **variance_column})
    exact = markdown(pd.concat(tops), {
        "model": lambda r: r["model"], "type left exact": lambda r: f"`{r['type']}`",
        "modules": lambda r: str(r["modules"]), "bytes": lambda r: format_bytes(r["bytes"]),
        "share of plain": lambda r: f"{r['share']:.1%}", "why": lambda r: r["why"]})
    notes = "".join(f"\n- {n}" for n in NOTES)
    return (f"{header}\n\n{main}\nWhat stays exact under the first sketch (top 5 types by bytes):\n\n{exact}"
            + (f"\nNot measured:\n{notes}\n" if notes else ""))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    ap.add_argument("--sketch", nargs="+", default=["quantize:2"], metavar="KIND:KEEP[:OPT]",
                    help="uniform sketches to compare, as in `radvar analyze --sketch`")
    ap.add_argument("--tune", type=float, metavar="F", help="add radvar.tune's plan at F x the exact bytes")
    ap.add_argument("--vocab", type=int, default=1024, help="vocabulary of the transformers models")
    ap.add_argument("--reps", type=int, default=5, help="timed steps per configuration (after 1 warm-up)")
    ap.add_argument("--probes", type=int, metavar="P",
                    help="add the predicted RAD variance, with P probe passes per propagating site")
    ap.add_argument("--out", metavar="PATH", help="also write the report here")
    ap.add_argument("--analyze", action="store_true",
                    help="time `radvar analyze` on resnet18 and vit_tiny (2 threads) instead")
    args = ap.parse_args()
    if args.analyze:
        for name in [m for m in args.models if m in ANALYZE]:
            wall, cpu = analyze_seconds(name)
            print(f"radvar analyze {name}: {wall:.1f} s wall, {cpu:.1f} s CPU (2 threads, load "
                  f"{os.getloadavg()[0]:.1f})", flush=True)
        return
    torch.set_num_threads(1)
    warnings.simplefilter("ignore", radvar.CoverageWarning)  # the table says what stays exact and why
    sketches = [parse_sketch(s) for s in args.sketch]
    start = time.perf_counter()
    frames, tops = [], []
    for name in args.models:
        frame, top = measure(name, sketches, args.tune, args.vocab, args.reps, args.probes)
        frames.append(frame)
        tops.append(top)
        print(f"{name} done ({time.perf_counter() - start:.0f} s)", file=sys.stderr)
    header = (f"bench_models: torch {torch.__version__}, {platform.machine()} CPU ({os.cpu_count()} cores, load "
              f"{os.getloadavg()[0]:.1f} at the end), 1 thread, float32, median of {args.reps} interleaved steps; "
              f"vocab {args.vocab}"
              + (f"; predicted variance by radvar.variance.analytic ({args.probes} probes per propagating site)"
                 if args.probes else "") + f"; {time.perf_counter() - start:.0f} s")
    text = report(frames, tops, header)
    print(text)
    if args.out:
        write_text(args.out, text)


if __name__ == "__main__":
    main()
