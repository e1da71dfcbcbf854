"""``radvar tune``: the least-variance plan under a memory budget, saved as JSON (radvar.tradeoff.tune)."""

from __future__ import annotations

import click

from radvar.report import check_writable
from radvar.tradeoff import DEFAULT_FAMILIES, tune as tune_lib

from . import specs
from .options import check_batch_size, load_problem, log, output_option, problem_options, runtime_options


@click.command()
@problem_options
@output_option("--model-output")
@click.option("--budget", "budget_spec", required=True, metavar="F|BYTES",
              help="A fraction in (0, 1] of the exact (compact) saved bytes, or bytes (2000000, 2MB, 1.5MiB).")
@click.option("--batch-size", type=click.IntRange(min=1), default=150, show_default=True)
@click.option("--sketch", "sketch_specs", multiple=True, metavar="KIND:KEEP[:OPT]",
              help="Sketch families to choose from (repeatable; keep ignored; quantize:BITS) [default: same "
                   "sample, different sample, projection, importance, quantize].")
@click.option("-o", "--output", "output", required=True, metavar="PLAN.json", help="Where to save the plan.")
@click.option("--max-slowdown", "slowdown_spec", metavar="RATIO",
              help="Also keep the predicted step time within RATIO (> 1) times the plain PyTorch step "
                   "(per-layer timings cached per machine).")
@runtime_options
def tune(model: str | None, data_spec: str | None, loss_spec: str, model_args: tuple[str, ...],
         weights: str | None, seed: int, device: str, output_key: str | None, budget_spec: str, batch_size: int,
         sketch_specs: tuple[str, ...], output: str, slowdown_spec: str | None) -> None:
    """The least-variance plan under a memory budget, saved as JSON.

    Chooses every layer's sketch and keep for MODEL under --budget (radvar.tune)
    and writes a radvar.Plan to -o.
    """
    budget = specs.parse_budget(budget_spec)
    max_slowdown = None if slowdown_spec is None else specs.parse_max_slowdown(slowdown_spec)
    families = [specs.parse_sketch(s) for s in sketch_specs] or list(DEFAULT_FAMILIES)
    check_writable(output)
    problem = load_problem(model, data_spec, loss_spec, model_args, weights, seed, device, output_key)
    check_batch_size(problem, batch_size)
    log(f"tune: {problem.meta['model']} on {problem.meta['data']}, batch {batch_size}, budget {budget}")
    plan = tune_lib(problem.model, (problem.x, problem.y), problem.loss_fn, budget=budget.value,
                    batch_size=batch_size, families=families, max_slowdown=max_slowdown)
    plan.save(output)
    p = plan.provenance
    for name, sketch in plan.items():
        click.echo(f"{name:>20}  {sketch.label() if sketch is not None else 'exact'}")
    click.echo(f"saved for backward: {p['measured_bytes']:,} bytes measured (budget {p['budget']['bytes']:,}; "
               f"exact {p['exact_bytes']:,}); predicted RAD variance {p['predicted_rad_variance']:.3g}")
    if p.get("step_time"):
        click.echo(f"predicted step time: {p['step_time']['predicted_slowdown']:.2f}x plain "
                   f"(--max-slowdown {max_slowdown:g})")
    log(f"plan written to {output}")
