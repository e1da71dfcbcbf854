"""``radvar train``: train a model with a plan (or a uniform sketch) and write its learning curve.

Parses options only; the loop is :func:`radvar.train.fit`. Writes
``history.csv`` and ``learning_curve.png`` into ``--out``. With ``--budget`` the
plan re-tunes itself every ``--retune-every`` steps (``fit(plan="auto")``), and
``noise.csv/json``, ``retune.csv/json`` (each plan switch with its reason) and
``noise.png`` go into ``--out`` too (the first two as training goes).
"""

from __future__ import annotations

from pathlib import Path

import click
import matplotlib
import torch

import radvar
from radvar.report import atomic_folder
from radvar.sketch import check_keep
from radvar.train import fit, save_figure
from radvar.train.monitor import load as load_noise
from radvar.train.monitor import plot_noise

from . import specs
from .options import check_batch_size, load_problem, log, output_option, problem_options, quiet, runtime_options

RUN_FILES = ["history.csv", "learning_curve.png", "noise.csv", "noise.json", "noise.png", "retune.csv", "retune.json"]
OPTIMIZERS = {"sgd": lambda lr: (lambda p: torch.optim.SGD(p, lr=lr, momentum=0.9)),
              "adam": lambda lr: (lambda p: torch.optim.Adam(p, lr=lr))}


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _auto(budget_spec: str | None, retune_every: str | None, fixed: bool) -> tuple[float | int | None, int | None]:
    """(budget, retune interval) of an adaptive run from --budget F|BYTES and --retune-every N, or (None, None)."""
    if budget_spec is None:
        if retune_every is not None:
            raise specs.SpecError(f"--retune-every {retune_every} needs --budget (the plan re-tunes within it)")
        return None, None
    if fixed:
        raise specs.SpecError("--budget re-tunes the plan during training; it cannot be combined with --plan or --keep")
    every = 200 if retune_every is None else retune_every.strip()
    if not (isinstance(every, int) or every.isdigit()) or int(every) < 1:
        raise specs.SpecError(f"--retune-every: {retune_every!r} is not a whole number of steps >= 1")
    return specs.parse_budget(budget_spec).value, int(every)


def _plan(plan_path: str | None, keep: float | None, sketch_spec: str) -> radvar.Plan | radvar.sketch.Sketch | None:
    """--plan FILE, or --sketch KIND[:OPT...] with --keep F (or KIND:KEEP[:OPT...]), or None (exact)."""
    if plan_path is not None:
        if keep is not None:
            raise specs.SpecError("--plan and --keep are exclusive: a plan sets each layer's keep")
        return radvar.Plan.load(plan_path)
    parts = sketch_spec.split(":")
    has_keep = len(parts) > 1 and _is_number(parts[1])
    if keep is None:
        return specs.parse_sketch(sketch_spec) if has_keep else None
    check_keep(keep, "--keep")
    return specs.parse_sketch(":".join([parts[0], repr(keep), *parts[2 if has_keep else 1:]]))


@click.command()
@problem_options
@output_option()
@click.option("--plan", "plan_path", type=str, metavar="PLAN.json", help="A plan saved by radvar.Plan.save.")
@click.option("--keep", type=float, help="Keep fraction of a uniform sketch on every randomizable layer.")
@click.option("--sketch", "sketch_spec", default="subsample", show_default=True, metavar="KIND[:KEEP][:OPT]",
              help="Sketch kind (and options) used with --keep.")
@click.option("--steps", type=click.IntRange(min=1), default=500, show_default=True)
@click.option("--batch-size", type=click.IntRange(min=1), default=150, show_default=True)
@click.option("--optimizer", "opt_name", type=click.Choice(sorted(OPTIMIZERS)), default="sgd", show_default=True,
              help="sgd (momentum 0.9) or adam.")
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=0.05, show_default=True)
@click.option("--eval-split", type=click.FloatRange(0, 1, max_open=True), default=0.2, show_default=True,
              help="Fraction of the data held out for evaluation (the last examples).")
@click.option("--log-every", type=click.IntRange(min=1), default=10, show_default=True)
@click.option("--amp", type=click.Choice(["bf16", "fp16"]), default=None, help="Mixed precision (fp16: CUDA only).")
@click.option("--compile", "compile_", is_flag=True, help="torch.compile the model (RAD layers run eagerly).")
@click.option("--checkpoint", type=str, metavar="FILE",
              help="Save a weights-only checkpoint here (every --log-every steps and at the end).")
@click.option("--resume", is_flag=True, help="Continue from --checkpoint if it exists (bitwise the uninterrupted run).")
@click.option("--budget", "budget_spec", metavar="F|BYTES",
              help="Adaptive plan: re-tune it within this memory budget, a fraction in (0, 1] of the exact saved "
                   "bytes or bytes (2000000, 2MB, 1.5MiB).")
@click.option("--retune-every", "retune_every", metavar="N",
              help="With --budget: re-tune the plan every N steps [default: 200].")
@click.option("--co-optimize", "co_optimize", is_flag=True,
              help="With --budget: a re-tune may also change the batch size (B/4 .. 4B of --batch-size).")
@click.option("--out", type=click.Path(file_okay=False), default="radvar-train", show_default=True)
@runtime_options
def train(model: str | None, data_spec: str | None, loss_spec: str, model_args: tuple[str, ...], weights: str | None,
          seed: int, device: str, output_key: str | None, plan_path: str | None, keep: float | None, sketch_spec: str,
          steps: int, batch_size: int, opt_name: str, lr: float, eval_split: float, log_every: int, amp: str | None,
          compile_: bool, checkpoint: str | None, resume: bool, budget_spec: str | None, retune_every: str | None,
          co_optimize: bool, out: str) -> None:
    """Train MODEL (default: the paper MLP on digits) exactly or with RAD; write history.csv and a plot."""
    budget, every = _auto(budget_spec, retune_every, fixed=plan_path is not None or keep is not None)
    plan = "auto" if budget is not None else _plan(plan_path, keep, sketch_spec)
    if co_optimize and budget is None:
        raise specs.SpecError("--co-optimize needs --budget (the batch size is re-chosen at the plan's re-tunes)")
    if resume and checkpoint is None:
        raise specs.SpecError("--resume needs --checkpoint FILE")
    if checkpoint is not None and Path(out).absolute() in Path(checkpoint).absolute().parents:
        raise specs.SpecError(f"--checkpoint {checkpoint!r} is inside --out {out!r}; put it elsewhere "
                              "(the run folder is written whole when the run ends, so it cannot hold the checkpoint)")
    problem = load_problem(model, data_spec, loss_spec, model_args, weights, seed, device, output_key)
    check_batch_size(problem, batch_size)
    n_eval = int(len(problem.x) * eval_split)
    n_train = len(problem.x) - n_eval
    train_data = (problem.x[:n_train], problem.y[:n_train])
    eval_data = (problem.x[n_train:], problem.y[n_train:]) if n_eval else None
    log(f"train: {problem.meta['model']} on {problem.meta['data']} ({n_train} train, {n_eval} eval), "
        f"plan {plan!r}{f' (budget {budget}, re-tuned every {every} steps)' if every else ''}, "
        f"{steps} steps of {batch_size}")
    out_dir = Path(out)
    # The run is written into a hidden sibling folder that replaces --out only when everything is
    # written: a folder holding files radvar did not write is refused before training, and a failed
    # or interrupted run leaves nothing behind.
    with atomic_folder(out_dir, "train", RUN_FILES) as tmp:
        history = fit(problem.model, train_data, loss_fn=problem.loss_fn, optimizer=OPTIMIZERS[opt_name](lr),
                      plan=plan, steps=steps, batch_size=batch_size, eval_data=eval_data, amp=amp, compile=compile_,
                      device=problem.meta["device"], seed=seed,
                      log_every=log_every, checkpoint=checkpoint, checkpoint_every=log_every if checkpoint else None,
                      resume=resume, progress=not quiet(), budget=budget, retune_every=every,
                      log_dir=tmp if budget is not None else None, co_optimize=co_optimize)
        history.save_csv(tmp / "history.csv")
        matplotlib.use("Agg")  # files only, no display
        save_figure(history.plot().figure, tmp / "learning_curve.png")
        if budget is not None:
            save_figure(plot_noise(load_noise(tmp / "noise.csv")), tmp / "noise.png")
    click.echo(history.summary())
    click.echo(f"wrote {out_dir / 'history.csv'} and {out_dir / 'learning_curve.png'}")
    if budget is not None:
        click.echo(f"{history.attrs['switches']} plan switches logged with their reasons in "
                   f"{out_dir / 'retune.csv'}; noise log {out_dir / 'noise.csv'} and {out_dir / 'noise.png'}")
