"""``radvar analyze``: where the memory goes, what a RAD plan saves, what it costs in variance."""

from __future__ import annotations

import json
import math
import time

import click

import radvar
from radvar import report as report_lib
from radvar.tradeoff import DEFAULT_KEEPS
from radvar.tradeoff.candidates import SITE_PROBES
from radvar.tradeoff.tune import take_batch
from radvar.variance.propagated import ROUND, Probes, reporting

from . import main, plans, specs
from .report import echo_analysis
from .options import (check_batch_size, load_problem, log, output_option, problem_options, progress, runtime_options,
                      ticker, timing_context)


@click.command()
@problem_options
@output_option()
@click.option("--batch-size", type=click.IntRange(min=1), default=150, show_default=True,
              help="Training batch size analysed (data noise is tr Σ / batch size).")
@click.option("--budget", "budget_spec", metavar="F|BYTES",
              help="Memory budget of the recommended plan: a fraction in (0, 1] of the exact (compact) saved "
                   "bytes, or bytes (2000000, 2MB, 1.5MiB) [default: the memory of uniform Subsample(0.1)].")
@click.option("--sketch", "sketch_specs", multiple=True, metavar="KIND:KEEP[:OPT]",
              help="Sketch family (repeatable), e.g. subsample:0.1 or importance:0.1. Alone: analyse that "
                   "uniform plan; with --budget: the families radvar.tune chooses from.")
@click.option("--draws", type=click.IntRange(min=0), default=0, show_default=True,
              help="Monte Carlo draws checking the plan's closed-form RAD variance (0: none; else >= 2).")
@click.option("--probes", type=click.IntRange(min=2), default=SITE_PROBES.most, show_default=True,
              help="Most probes per propagating site (norm, activation, attention) and sketch, when tuning and "
                   "for the plan's variance (spread over its RAD batches): fewer is faster, with larger standard "
                   "errors.")
@click.option("--directions", type=click.IntRange(min=0), default=SITE_PROBES.directions, show_default=True,
              metavar="Z", help="Score the probes against Z random directions shared by all sites (one forward-mode "
                                "pass each; spread over the RAD batches as --probes) instead of one backward pass "
                                "per probe; 0: a backward pass per probe "
                                "(slower, smaller standard errors).")
@click.option("--probe-rtol", type=click.FloatRange(min=0.0), default=SITE_PROBES.rtol, show_default=True,
              metavar="R", help=f"Stop probing a site and sketch once the standard error is at most R times the "
                                f"estimate (checked every {ROUND} probes); 0: always --probes.")
@click.option("--max-slowdown", "slowdown_spec", metavar="RATIO",
              help="Recommend the least-variance plan whose predicted step time is within RATIO (> 1) times "
                   "the plain PyTorch step (per-layer timings cached per machine).")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), metavar="DIR",
              help="Write report.md, report.html (figures embedded), analysis.json and PNGs here.")
@click.option("--json", "json_path", metavar="PATH|-", help="Write the analysis JSON to PATH, or to stdout with -.")
@click.option("--format", "fmt", type=click.Choice(report_lib.FORMATS), default="table", show_default=True,
              help="How to print the per-layer table on stdout.")
@runtime_options
def analyze(model: str | None, data_spec: str | None, loss_spec: str, model_args: tuple[str, ...],
            weights: str | None, seed: int, device: str, output_key: str | None, batch_size: int,
            budget_spec: str | None, sketch_specs: tuple[str, ...], draws: int, probes: int, directions: int,
            probe_rtol: float, slowdown_spec: str | None, out_dir: str | None, json_path: str | None, fmt: str) -> None:
    """Where memory goes, what RAD saves, what it costs, which plan.

    MODEL defaults to the paper MLP on scikit-learn digits. Prints, per layer:
    saved bytes exact -> plan, RAD variance, data noise, the plan's sketch and
    keep; then the totals. --out writes a report folder.
    """
    start = main.STARTED or time.perf_counter()  # the whole command, imports included, when run as `radvar`
    budget = specs.parse_budget(budget_spec) if budget_spec is not None else None
    families = [specs.parse_sketch(s) for s in sketch_specs]
    max_slowdown = None if slowdown_spec is None else specs.parse_max_slowdown(slowdown_spec)
    if draws == 1:
        raise specs.SpecError("--draws: 1 draw has no variance; use 0 (no Monte Carlo check) or at least 2")
    if not math.isfinite(probe_rtol):
        raise specs.SpecError(f"--probe-rtol: must be a finite number >= 0 (0: always --probes), got {probe_rtol}")
    if directions == 1:
        raise specs.SpecError("--directions: 1 direction has no standard error; use 0 (a backward pass per probe) "
                              "or at least 2")
    policy = Probes(probes, probe_rtol or None, directions or None)
    if out_dir is not None:
        report_lib.check_target(out_dir)
    if json_path not in (None, "-"):
        report_lib.check_writable(json_path)
    problem = load_problem(model, data_spec, loss_spec, model_args, weights, seed, device, output_key)
    check_batch_size(problem, batch_size)
    log(f"analyze: {problem.meta['model']} on {problem.meta['data']} ({problem.meta['examples']} examples), "
        f"batch {batch_size}")
    with progress(None, "analyze") as bar, reporting(ticker(bar)):  # and a tick per probed (site, sketch)
        tick = ticker(bar)
        (xb,), yb = take_batch((problem.x, problem.y), batch_size, "analyze")
        stats = radvar.variance.capture(problem.model, (xb, yb), problem.loss_fn)  # shared by tune and report
        tick("statistics")
        plan, source = plans.choose(problem, batch_size, budget, families, stats, max_slowdown, policy)
        tick("plan")
        analysis = report_lib.analyze(problem.model, (problem.x, problem.y), problem.loss_fn,
                                      batch_size=batch_size, plan=plan, families=families or None,
                                      draws=draws, progress=tick, stats=stats, keeps=DEFAULT_KEEPS,  # the tuner's
                                      probes=policy)
    analysis.meta = {**problem.meta, "batch_size": batch_size, "plan": source, **analysis.meta,
                     "radvar": radvar.__version__, **timing_context(), "seconds": round(time.perf_counter() - start, 2)}
    if out_dir is not None:
        path = report_lib.write_report(analysis, out_dir, started=start)
        log(f"report written to {path}/ (report.html, report.md, analysis.json)")
    if json_path == "-":
        click.echo(json.dumps(analysis.to_dict(), indent=2))
        return
    if json_path is not None:
        report_lib.write_text(json_path, json.dumps(analysis.to_dict(), indent=2) + "\n")
        log(f"analysis JSON written to {json_path}")
    echo_analysis(analysis, fmt)
    if fmt != "json":  # what radvar can sketch of the saved bytes, and what it leaves exact and why
        (xb,), yb = take_batch((problem.x, problem.y), batch_size, "analyze")
        cover = report_lib.coverage(problem.model, xb, problem.loss_fn, yb, plan)
        click.echo("\n" + "\n".join(cover.summary_lines()))
