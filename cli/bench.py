"""``radvar bench``: plain PyTorch vs RAD sketches, saved bytes and step time (radvar.bench.compare)."""

from __future__ import annotations

import json

import click

from radvar import bench as bench_lib
from radvar.report import tables
from radvar._data import take_batch

from . import specs
from .options import (check_batch_size, log, load_problem, output_option, problem_options, progress, runtime_options,
                      timing_context)

# the foundation benchmark's set: same sample, different sample, Bernoulli, projection, importance
DEFAULT_SKETCHES = ("subsample:0.1", "subsample:0.1:per-example", "bernoulli:0.1", "projection:0.1",
                    "importance:0.1")


@click.command()
@problem_options
@output_option()
@click.option("--batch-size", type=click.IntRange(min=1), default=150, show_default=True)
@click.option("--sketch", "sketch_specs", multiple=True, metavar="KIND:KEEP[:OPT]",
              help=f"Sketch to compare (repeatable) [default: {', '.join(DEFAULT_SKETCHES)}].")
@click.option("--reps", type=click.IntRange(min=1), default=20, show_default=True, help="Timed steps per config.")
@click.option("--format", "fmt", type=click.Choice(tables.FORMATS), default="table", show_default=True)
@runtime_options
def bench(model: str | None, data_spec: str | None, loss_spec: str, model_args: tuple[str, ...],
          weights: str | None, seed: int, device: str, output_key: str | None, batch_size: int,
          sketch_specs: tuple[str, ...],
          reps: int, fmt: str) -> None:
    """Plain PyTorch vs sketches: saved bytes and step time.

    Steps of all configurations are interleaved in one process (radvar.bench.compare).
    """
    sketches = [specs.parse_sketch(s) for s in sketch_specs or DEFAULT_SKETCHES]
    problem = load_problem(model, data_spec, loss_spec, model_args, weights, seed, device, output_key)
    check_batch_size(problem, batch_size)
    (x,), y = take_batch((problem.x, problem.y), batch_size, "bench")  # copies: the ledger counts whole storages
    context = timing_context()
    log(f"bench: {problem.meta['model']} on {problem.meta['data']}, batch {len(x)}, {reps} reps; torch "
        f"{context['torch']}, {context['threads']} threads, radvar kernels {context['kernels']}")
    warmup = 3
    with progress((warmup + reps) * (len(sketches) + 1), "bench") as bar:
        frame = bench_lib.compare(problem.model, x, y, problem.loss_fn, sketches, reps=reps, warmup=warmup,
                                  progress=lambda _: bar.update())
    if fmt == "json":
        click.echo(json.dumps({"meta": {**problem.meta, "batch_size": len(x), "reps": reps, **context},
                               "configs": frame.to_dict(orient="records")}, indent=2))
    else:
        click.echo(tables.render(tables.bench_table(frame), fmt))
