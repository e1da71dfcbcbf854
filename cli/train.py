"""``radvar train``: train a model with a plan (or a uniform sketch) and write its learning curve.

Parses options only; the loop is :func:`radvar.train.fit`. Writes
``history.csv`` and ``learning_curve.png`` into ``--out``.
"""

from __future__ import annotations

from pathlib import Path

import click
import matplotlib
import torch

import radvar
from radvar.train import fit, save_figure

from . import specs
from .options import load_problem, log, output_option, problem_options, quiet, runtime_options

OPTIMIZERS = {"sgd": lambda lr: (lambda p: torch.optim.SGD(p, lr=lr, momentum=0.9)),
              "adam": lambda lr: (lambda p: torch.optim.Adam(p, lr=lr))}


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


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
@click.option("--out", type=click.Path(file_okay=False), default="radvar-train", show_default=True)
@runtime_options
def train(model: str | None, data_spec: str | None, loss_spec: str, model_args: tuple[str, ...], weights: str | None,
          seed: int, device: str, output_key: str | None, plan_path: str | None, keep: float | None, sketch_spec: str,
          steps: int, batch_size: int, opt_name: str, lr: float, eval_split: float, log_every: int, amp: str | None,
          compile_: bool, checkpoint: str | None, resume: bool, out: str) -> None:
    """Train MODEL (default: the paper MLP on digits) exactly or with RAD; write history.csv and a plot."""
    plan = _plan(plan_path, keep, sketch_spec)
    if resume and checkpoint is None:
        raise specs.SpecError("--resume needs --checkpoint FILE")
    problem = load_problem(model, data_spec, loss_spec, model_args, weights, seed, device, output_key)
    n_eval = int(len(problem.x) * eval_split)
    n_train = len(problem.x) - n_eval
    train_data = (problem.x[:n_train], problem.y[:n_train])
    eval_data = (problem.x[n_train:], problem.y[n_train:]) if n_eval else None
    log(f"train: {problem.meta['model']} on {problem.meta['data']} ({n_train} train, {n_eval} eval), "
        f"plan {plan!r}, {steps} steps of {batch_size}")
    history = fit(problem.model, train_data, loss_fn=problem.loss_fn, optimizer=OPTIMIZERS[opt_name](lr), plan=plan,
                  steps=steps, batch_size=batch_size, eval_data=eval_data, amp=amp, compile=compile_,
                  device=problem.meta["device"], seed=seed,
                  log_every=log_every, checkpoint=checkpoint, checkpoint_every=log_every if checkpoint else None,
                  resume=resume, progress=not quiet())
    out_dir = Path(out)  # made only once training succeeded: a failed run leaves no folder behind
    out_dir.mkdir(parents=True, exist_ok=True)
    history.save_csv(out_dir / "history.csv")
    matplotlib.use("Agg")  # files only, no display
    save_figure(history.plot().figure, out_dir / "learning_curve.png")
    click.echo(history.summary())
    click.echo(f"wrote {out_dir / 'history.csv'} and {out_dir / 'learning_curve.png'}")
